// Package afpacket is a gVisor netstack link endpoint on a Linux interface
// through one AF_PACKET socket, so the userspace stack can own addresses
// the kernel does not have on that interface.
//
// Design:
//
//   - One SOCK_RAW AF_PACKET socket per endpoint, created inside
//     Options.Netns (engine/netns.Do) and bound to the interface with
//     ETH_P_ALL. PACKET_IGNORE_OUTGOING keeps our own transmissions out of
//     the receive ring (an ETH_P_ALL tap otherwise sees every frame it
//     sends, a full copy of each 64 KiB GSO frame).
//   - PACKET_VNET_HDR: every frame in either direction carries a
//     virtio-net header. On transmit it lets the stack hand the kernel
//     64 KiB TCP segments with a partial checksum (gVisor's host GSO):
//     the kernel, the peer of a veth or the NIC segments and checksums
//     them. On receive it tells how the kernel sees the frame's checksum
//     (see "Checksums"), and large frames (a veth peer's TSO segments, a
//     NIC's GRO'd ones) arrive whole with a GSO type and are delivered to
//     gVisor as one large TCP segment.
//   - Receive: a TPACKET_V2 ring (PACKET_RX_RING) mapped into our memory,
//     drained by one goroutine that sleeps in poll(2) when the ring is
//     empty. Slots are sized for the interface's MTU (2 KiB at 1500; 8
//     MiB of ring, 4096 slots): frames larger than a slot (GSO/GRO) take
//     the PACKET_COPY_THRESH path, where the kernel queues the whole frame
//     on the socket and marks its slot TP_STATUS_COPY, and we recvmsg(2)
//     it straight into gVisor buffers, in ring order. (64 KiB slots for
//     everything held too few frames: a peer sending MTU-sized frames
//     overflowed the ring.) Frames pass through gVisor's software GRO
//     (pkg/tcpip/stack/gro), flushed whenever the ring runs dry.
//   - Transmit: sendmmsg(2) of the stack's batches with a virtio header
//     iovec in front of each frame (pkg/rawfile). On EAGAIN (socket send
//     buffer full, e.g. behind a qdisc) the writer waits for POLLOUT
//     rather than dropping; a frame the device refuses (ENOBUFS: a qdisc
//     or the veth peer's backlog dropped it) counts as a TX drop and TCP
//     recovers. The qdisc is not bypassed, so tc rules apply.
//
// Checksums: gVisor decides "checksum already verified" per NIC, not per
// packet (the NIC overwrites each packet's RXChecksumValidated with the
// endpoint's CapabilityRXChecksumOffload), and without that capability it
// verifies every TCP/UDP checksum, which fails for checksum-partial frames:
// a kernel sender with TX checksum offload (the default on a veth) leaves
// only the pseudo-header sum in the field, and the stack would drop every
// segment. So the endpoint claims RX checksum offload and keeps the
// promise itself, frame by frame, from the virtio header: NEEDS_CSUM
// (checksum-partial: built on this host, never crossed a wire; the kernel
// accepts these unverified too) and DATA_VALID (verified by the device or
// the kernel) are trusted; any other frame has its IPv4 header and TCP or
// UDP checksum verified here, and is dropped (counted in RxDrops) when
// wrong. The IPv4 header checksum is always verified. Not verifiable per
// frame and passed on unverified: IP fragments and IPv6 packets with
// extension headers. Because the virtio header carries the checksum
// state, no ethtool setting is needed on either end of a veth; the AF_XDP
// layer needs "ethtool -K <peer> tx off" only because XDP frames lack it.
//
// Why not gVisor's link/fdbased, which handles packet sockets: its
// PacketMMap dispatcher uses a TPACKET_V1 ring of 32 frames without
// virtio headers, and its readv/recvmmsg dispatchers read and discard the
// virtio header, so checksum-partial frames only work with RX checksum
// offload claimed for every frame, verified or not. It also starts
// goroutines from New that only its dispatch loop releases. Its transmit
// path is what this package does too (same header fields, sendmmsg via
// pkg/rawfile), plus backpressure on EAGAIN instead of dropping.
//
// Why TPACKET_V2 and not V3: a V3 block reaches user space only when full
// or when its retire timer (milliseconds) fires, which adds milliseconds
// to every lone ACK; V2 hands over each frame as soon as it is written.
//
// Addresses: the kernel need not (and should not) have the stack's
// addresses; the stack answers ARP and neighbour solicitation itself, with
// the interface's MAC address. The kernel still receives every frame: with
// forwarding off (the default) it drops IP packets for addresses it does
// not own without answering, and it ignores ARP for them; it may keep
// addresses of its own on the same subnet. With forwarding on (Kubernetes
// nodes, routers) it instead routes every packet for the stack's addresses
// back out of the interface (they are on-link and not its own) and sends
// ICMP redirects: the stack still works, but at a cost. An nftables drop
// rule for the stack's addresses on the interface's netdev ingress hook
// cures that without hiding anything from the endpoint, since AF_PACKET
// taps see a frame before that hook (see TestKernelForwarding); installing
// it is the transport's or the operator's call, not this package's. The
// endpoint copies every frame the interface receives into its ring (the
// kernel's own traffic too), so dedicate the interface to the stack where
// throughput matters.
//
// Sharp edge found in testing: a veth drops whole GSO frames (a qdisc,
// netem, XDP), so one loss takes up to 45 segments. gVisor's TCP as the
// sender recovers from such bursts far worse than the kernel's: often a
// run of retransmission timeouts, seconds instead of milliseconds. With 1%
// frame loss, 16 MiB transfers: 64 KiB GSO 7 of 32 runs slow (45 s in
// all), 32 KiB 3 of 32 (12 s), 16 KiB none of 12; lossless single-flow
// send rate (noisy, loaded 2-core machine) 64 KiB ~9, 32 KiB ~8, 16 KiB ~5
// Gbit/s. GSOMaxSize stays 64 KiB, the kernel's default. On a NIC, which
// segments in hardware, the wire loses single segments; on a veth the
// loss of whole frames is rare without tc rules (no TX drops in the bulk
// tests: the peer's backlog is drained in the sender's own softirq).
//
// Close has no error result, unlike the other link layers' documented
// shape, because stack.LinkEndpoint's Close has none and *Endpoint must
// implement stack.LinkEndpoint; nothing in closing an AF_PACKET socket
// and unmapping its ring can fail in a way a caller could act on.
package afpacket

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/stopfd"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/hoststack/hoststack/engine/netns"
	"github.com/hoststack/hoststack/engine/shm"
)

// Options configure New.
type Options struct {
	Interface string         // Linux interface name
	Netns     string         // path of the network namespace holding Interface ("" = this process's)
	Addrs     []netip.Prefix // the addresses the userspace stack owns on it (informational here)
	MTU       uint32         // 0 = the interface's MTU
}

// Stats are the endpoint's counters since New.
type Stats struct {
	RxPackets uint64 // frames delivered to the stack
	RxBytes   uint64 // their bytes, Ethernet header included
	RxDrops   uint64 // frames lost: ring full (kernel count), truncated, or with a bad checksum
	TxPackets uint64 // frames accepted by the kernel (a GSO frame counts once)
	TxBytes   uint64 // their bytes, Ethernet header included
	TxDrops   uint64 // frames the kernel refused (ENOBUFS, EMSGSIZE, ...)
}

// gsoMaxSize is the largest TCP segment the stack hands us; the kernel's
// default gso_max_size (and the IPv4 total-length field) allow 64 KiB.
const gsoMaxSize = 1 << 16

// Endpoint is a stack.LinkEndpoint (and stack.GSOEndpoint) on one
// interface.
type Endpoint struct {
	fd      int
	ifindex int
	ifMTU   uint32 // the interface's MTU when opened: sizes the ring's slots
	ring    *rxRing

	mtu  atomic.Uint32
	addr atomic.Value // tcpip.LinkAddress

	// mu guards the dispatcher and the receive goroutine's lifecycle.
	mu         sync.Mutex
	dispatcher stack.NetworkDispatcher
	attached   atomic.Bool // dispatcher != nil, readable without mu
	rxStop     stopfd.StopFD
	rxWait     *shm.Epoll // rxStop and the socket
	rxStopping atomic.Bool
	rxDone     chan struct{} // closed when the receive goroutine returns
	onClose    func()

	// closing is set before fdMu is taken for writing, so a writer
	// waiting for send-buffer space gives up instead of holding the
	// read lock forever; fdMu keeps the fd from being closed (and its
	// number reused) under a writer.
	closing atomic.Bool
	fdMu    sync.RWMutex
	closed  bool
	closeMu sync.Mutex

	rxPackets, rxBytes, rxDrops atomic.Uint64
	txPackets, txBytes, txDrops atomic.Uint64
	kernelDrops, rxCsumErrors   atomic.Uint64
}

var (
	_ stack.LinkEndpoint = (*Endpoint)(nil)
	_ stack.GSOEndpoint  = (*Endpoint)(nil)
)

// New opens an AF_PACKET socket on opts.Interface inside opts.Netns, with
// a receive ring and virtio-net headers. The endpoint starts receiving when
// a stack attaches it (CreateNIC).
func New(opts Options) (*Endpoint, error) {
	if opts.Interface == "" {
		return nil, errors.New("afpacket: no interface")
	}
	e := &Endpoint{fd: -1}
	err := netns.Do(opts.Netns, func() error {
		ifc, err := net.InterfaceByName(opts.Interface)
		if err != nil {
			return err
		}
		if len(ifc.HardwareAddr) != header.EthernetAddressSize {
			return fmt.Errorf("%s is not an Ethernet interface (hardware address %q)", opts.Interface, ifc.HardwareAddr)
		}
		e.ifindex = ifc.Index
		e.addr.Store(tcpip.LinkAddress(ifc.HardwareAddr))
		e.ifMTU = uint32(ifc.MTU)
		mtu := opts.MTU
		if mtu == 0 {
			mtu = e.ifMTU
		}
		e.mtu.Store(mtu)
		// Protocol 0: the socket receives nothing until bind below, so
		// no frame is queued before the ring and headers are set up.
		e.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		return err
	})
	if err != nil {
		// The socket may exist even so (e.g. the thread could not
		// return to its namespace).
		e.release()
		return nil, fmt.Errorf("afpacket: %s: %w", opts.Interface, err)
	}
	if err := e.setup(); err != nil {
		e.release()
		return nil, fmt.Errorf("afpacket: %s: %w", opts.Interface, err)
	}
	return e, nil
}

func (e *Endpoint) setup() error {
	// Order matters: the kernel refuses PACKET_VNET_HDR and
	// PACKET_VERSION once a ring exists.
	if err := unix.SetsockoptInt(e.fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
		return fmt.Errorf("PACKET_VNET_HDR: %w", err)
	}
	if err := unix.SetsockoptInt(e.fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		return fmt.Errorf("PACKET_IGNORE_OUTGOING: %w", err)
	}
	// A 64 KiB GSO frame takes 64 KiB of send buffer until the device
	// (or a qdisc) releases it; the default (~208 KiB) holds three.
	if err := unix.SetsockoptInt(e.fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sndBuf); err != nil {
		_ = unix.SetsockoptInt(e.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, sndBuf)
	}
	r, err := newRxRing(e.fd, e.ifMTU)
	if err != nil {
		return err
	}
	e.ring = r
	sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: e.ifindex}
	if err := unix.Bind(e.fd, sa); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	e.rxStop, err = stopfd.New()
	if err != nil {
		return err
	}
	// The receive goroutine sleeps parked in the netpoller, not in poll(2)
	// (see shm.Epoll: a thread asleep in a system call keeps its P).
	if e.rxWait, err = shm.NewEpoll(); err != nil {
		return err
	}
	if err := e.rxWait.Add(e.rxStop.EFD, unix.EPOLLIN, rxWaitStop); err != nil {
		return err
	}
	return e.rxWait.Add(e.fd, unix.EPOLLIN, rxWaitSocket)
}

// The keys of rxWait's two descriptors.
const (
	rxWaitStop = iota
	rxWaitSocket
)

// sndBuf is the socket send buffer; see setup.
const sndBuf = 4 << 20

// htons converts to network byte order on the little-endian hosts this
// runs on (amd64, arm64).
func htons(v uint16) uint16 { return v<<8 | v>>8 }

// release frees the ring and the fds (those that exist).
func (e *Endpoint) release() {
	if e.ring != nil {
		e.ring.unmap()
		e.ring = nil
	}
	if e.fd >= 0 {
		unix.Close(e.fd)
		e.fd = -1
	}
	if e.rxStop.EFD > 0 {
		unix.Close(e.rxStop.EFD)
		e.rxStop.EFD = -1
	}
	if e.rxWait != nil {
		e.rxWait.Close()
		e.rxWait = nil
	}
}

// Close detaches the endpoint from its stack (removing the NIC), stops the
// receive goroutine and closes the socket. It is idempotent, and safe to
// call whether the stack or the owner closes first. (No error result: see
// the package documentation.)
func (e *Endpoint) Close() {
	// The stack's close action removes the NIC, which detaches us
	// (Attach(nil)) and calls Close again: that inner call does the work.
	e.mu.Lock()
	act := e.onClose
	e.onClose = nil
	e.mu.Unlock()
	if act != nil {
		act()
	}

	e.closeMu.Lock()
	defer e.closeMu.Unlock()
	if e.closed {
		return
	}
	e.closed = true
	e.mu.Lock()
	e.stopRxLocked()
	e.joinRxLocked()
	e.mu.Unlock()
	e.closing.Store(true)
	e.fdMu.Lock()
	e.release()
	e.fdMu.Unlock()
}

// Stats returns the counters.
func (e *Endpoint) Stats() Stats {
	e.readKernelDrops()
	return Stats{
		RxPackets: e.rxPackets.Load(),
		RxBytes:   e.rxBytes.Load(),
		RxDrops:   e.rxDrops.Load() + e.kernelDrops.Load() + e.rxCsumErrors.Load(),
		TxPackets: e.txPackets.Load(),
		TxBytes:   e.txBytes.Load(),
		TxDrops:   e.txDrops.Load(),
	}
}

// readKernelDrops adds the kernel's ring-full drop count, which
// PACKET_STATISTICS resets on every read.
func (e *Endpoint) readKernelDrops() {
	e.fdMu.RLock()
	defer e.fdMu.RUnlock()
	if e.fd < 0 {
		return
	}
	if st, err := unix.GetsockoptTpacketStats(e.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil {
		e.kernelDrops.Add(uint64(st.Drops))
	}
}

// Attach implements stack.LinkEndpoint: a dispatcher starts the receive
// goroutine; nil tells it to stop, without waiting. The stack calls
// Attach(nil) and Wait while holding its own lock, which the receive
// goroutine may need to finish delivering a packet (ipv4 looks up the
// NIC's name under it), so waiting there could deadlock. Close, which the
// stack calls after releasing its locks, waits; so does a later Attach.
func (e *Endpoint) Attach(d stack.NetworkDispatcher) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if d == nil {
		e.stopRxLocked()
		return
	}
	if e.dispatcher != nil || e.ring == nil {
		return
	}
	// A receive goroutine told to stop must be gone before a new one
	// takes the ring.
	e.joinRxLocked()
	e.dispatcher = d
	e.attached.Store(true)
	e.rxDone = make(chan struct{})
	go e.rxLoop(d, e.rxDone)
}

// stopRxLocked tells the receive goroutine, if any, to stop.
func (e *Endpoint) stopRxLocked() {
	if e.dispatcher == nil {
		return
	}
	// The flag stops a goroutine that never finds the ring empty; the
	// eventfd wakes one sleeping in poll.
	e.rxStopping.Store(true)
	e.rxStop.Stop()
	e.dispatcher = nil
	e.attached.Store(false)
}

// joinRxLocked waits for a stopped receive goroutine to return.
func (e *Endpoint) joinRxLocked() {
	if e.rxDone == nil {
		return
	}
	<-e.rxDone
	e.rxDone = nil
	e.rxStopping.Store(false)
	// Consume the eventfd's count so that a later Attach can run again.
	var b [8]byte
	_, _ = unix.Read(e.rxStop.EFD, b[:])
}

// IsAttached implements stack.LinkEndpoint.
func (e *Endpoint) IsAttached() bool { return e.attached.Load() }

// Wait implements stack.LinkEndpoint. It does not wait for the receive
// goroutine (see Attach); Close does.
func (e *Endpoint) Wait() {}

// MTU implements stack.LinkEndpoint.
func (e *Endpoint) MTU() uint32 { return e.mtu.Load() }

// SetMTU implements stack.LinkEndpoint.
func (e *Endpoint) SetMTU(mtu uint32) { e.mtu.Store(mtu) }

// MaxHeaderLength implements stack.LinkEndpoint.
func (e *Endpoint) MaxHeaderLength() uint16 { return header.EthernetMinimumSize }

// LinkAddress implements stack.LinkEndpoint: the interface's MAC address.
func (e *Endpoint) LinkAddress() tcpip.LinkAddress { return e.addr.Load().(tcpip.LinkAddress) }

// SetLinkAddress implements stack.LinkEndpoint.
func (e *Endpoint) SetLinkAddress(a tcpip.LinkAddress) { e.addr.Store(a) }

// Capabilities implements stack.LinkEndpoint. RX checksum offload is
// claimed and implemented by checksumOK: frames the kernel vouches for are
// not verified again, the others are verified before delivery. TX
// checksum offload is not claimed: TCP's checksum is left to the kernel
// anyway through host GSO (NeedsCsum), and the rarer UDP and ICMP frames
// are cheap to checksum in gVisor.
func (e *Endpoint) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityResolutionRequired | stack.CapabilityRXChecksumOffload
}

// ARPHardwareType implements stack.LinkEndpoint.
func (e *Endpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareEther }

// AddHeader implements stack.LinkEndpoint.
func (e *Endpoint) AddHeader(pkt *stack.PacketBuffer) {
	eth := header.Ethernet(pkt.LinkHeader().Push(header.EthernetMinimumSize))
	src := pkt.EgressRoute.LocalLinkAddress
	if src == "" {
		src = e.LinkAddress()
	}
	eth.Encode(&header.EthernetFields{
		SrcAddr: src,
		DstAddr: pkt.EgressRoute.RemoteLinkAddress,
		Type:    pkt.NetworkProtocolNumber,
	})
}

// ParseHeader implements stack.LinkEndpoint.
func (e *Endpoint) ParseHeader(pkt *stack.PacketBuffer) bool {
	hdr, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize)
	if !ok {
		return false
	}
	pkt.NetworkProtocolNumber = header.Ethernet(hdr).Type()
	return true
}

// SetOnCloseAction implements stack.LinkEndpoint.
func (e *Endpoint) SetOnCloseAction(f func()) {
	e.mu.Lock()
	e.onClose = f
	e.mu.Unlock()
}

// GSOMaxSize implements stack.GSOEndpoint.
func (e *Endpoint) GSOMaxSize() uint32 { return gsoMaxSize }

// SupportedGSO implements stack.GSOEndpoint: the kernel segments (host GSO).
func (e *Endpoint) SupportedGSO() stack.SupportedGSO { return stack.HostGSOSupported }
