package afxdp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/xdp"

	"github.com/hoststack/hoststack/engine/netns"
	"github.com/hoststack/hoststack/engine/shm"
)

// Mode is the AF_XDP data path mode.
type Mode string

const (
	// ModeAuto uses zero-copy where the driver supports it and copy mode
	// otherwise. The empty Mode means ModeAuto.
	ModeAuto Mode = "auto"
	// ModeCopy forces copy mode (works on every interface, e.g. veth).
	ModeCopy Mode = "copy"
	// ModeZeroCopy requires zero-copy; New fails where the driver lacks it.
	ModeZeroCopy Mode = "zerocopy"
)

// Options configure New.
type Options struct {
	// Interface is the Linux interface name.
	Interface string
	// Netns is the path of the network namespace holding Interface ("" is
	// this process's namespace).
	Netns string
	// Addrs are the addresses the userspace stack owns: only traffic for
	// them is steered to the socket. Prefix lengths are ignored here.
	Addrs []netip.Prefix
	// MTU is the link MTU; 0 means the interface's MTU.
	MTU uint32
	// Queue is the RX queue the socket binds to (default 0). Traffic for
	// the owned addresses arriving on other queues goes to the kernel, so on
	// multi-queue NICs steer it to this queue (ethtool -N / -L).
	Queue uint32
	// ZeroCopy selects the mode; "" is ModeAuto.
	ZeroCopy Mode
}

// Stats are the endpoint's counters. The Kernel* fields come from the
// socket's XDP_STATISTICS.
type Stats struct {
	RXPackets uint64 // frames delivered to the stack
	RXBytes   uint64
	RXDrops   uint64 // frames taken off the RX ring but not delivered (bad descriptor, not for us, not attached)
	TXPackets uint64 // frames queued on the TX ring
	TXBytes   uint64
	TXDrops   uint64 // packets given to WritePackets and dropped (too large, no room in time, closed)

	RXBadDescs   uint64 // RX descriptors that failed validation (never freed)
	CompBadAddrs uint64 // completion ring addresses that failed validation (never freed)
	TXRingFull   uint64 // times WritePackets found no TX slot or frame free
	TXKicks      uint64 // sendto wake-ups of the TX path
	TXKickErrors uint64 // sendto kicks that failed hard (e.g. ENETDOWN); retried
	FillWakeups  uint64 // wake-ups for a fill ring flagged NEED_WAKEUP
	Polls        uint64 // times the RX goroutine blocked in poll(2)

	KernelRXDropped      uint64 // dropped by the kernel (e.g. fill ring empty in copy mode)
	KernelRXInvalid      uint64
	KernelTXInvalid      uint64
	KernelRXRingFull     uint64
	KernelFillRingEmpty  uint64
	KernelTXRingEmpty    uint64
	KernelStatsAvailable uint64 // 1 when the Kernel* fields were read
}

// Ring and UMEM geometry. Frames are 4 KiB (one page: copy mode puts a
// frame at XDP_PACKET_HEADROOM, so up to 3840 bytes per frame). The UMEM has
// twice as many frames as a ring has slots, so the fill ring can hold at most
// half of them and TX always has frames once completions are reaped.
//
// New uses 4096-slot rings and a 32 MiB UMEM (nDescLarge): on a bulk flow
// the stack has up to a send buffer of MTU frames in flight, and with
// 1024-slot rings (half the frames sit idle in the fill ring when only ACKs
// come back) WritePackets kept finding the TX ring or the frames full and
// kicked and slept itself; the larger rings measured ~8% more single-flow
// throughput on veth. The kernel charges a UMEM to RLIMIT_MEMLOCK unless
// the process has CAP_IPC_LOCK (root normally has), so without it New
// first raises the soft limit (to the hard limit, or without limit where
// root may); where the limit stays too low, or registration fails anyway,
// it falls back to 1024-slot rings and an 8 MiB UMEM (nDesc, nFrames),
// within the default limit. (With CAP_IPC_LOCK and a low limit pkg/xdp
// logs that the UMEM "may exceed RLIMIT_MEMLOCK"; it does not apply.)
const (
	frameSize     = 4096
	nDesc         = 1024
	nFrames       = 2 * nDesc
	nDescLarge    = 4096
	nFramesLarge  = 2 * nDescLarge
	xdpHeadroom   = 256 // XDP_PACKET_HEADROOM
	maxFrameBytes = frameSize - xdpHeadroom

	bindBusyWait = 2 * time.Second

	// txBudget is the copy-mode transmit budget per kick we ask for.
	txBudget = 256
)

// Frame states, guarded by the UMEM lock.
const (
	frameKernel uint8 = iota // free, in the fill ring, or with the kernel
	frameTX                  // on the TX ring, waiting for completion
	frameRX                  // handed back on the RX ring, being copied
)

// Endpoint is an AF_XDP link endpoint. It implements stack.LinkEndpoint.
type Endpoint struct {
	fd       int
	evfd     int        // wakes the RX goroutine from its wait on Close
	rxWait   *shm.Epoll // the socket and evfd
	ifindex  int
	queue    uint32
	txBudget int // frames per copy-mode kick, when raised (0: kernel default)
	mode     Mode
	umemLen  uint64
	ringSize uint32 // slots per ring: nDescLarge, or nDesc as a fallback

	cb     *xdp.ControlBlock
	fillH  ringHeader
	txH    ringHeader
	hdrMem [][]byte // our own mappings of the ring headers

	st  *steering
	lnk link.Link // keeps the program attached; a dropped link detaches it

	mtu atomic.Uint32

	mu         sync.RWMutex
	dispatcher stack.NetworkDispatcher
	mac        tcpip.LinkAddress
	onClose    func()

	// frames is the per-frame ownership state and inKernel the number of
	// frames on the fill ring or with the kernel for RX; both guarded by
	// cb.UMEM's lock.
	frames   []uint8
	inKernel uint32

	txMu       sync.Mutex    // serialises TX ring producers
	kickCh     chan struct{} // wakes the TX kicker
	kickerIdle atomic.Bool   // the kicker sleeps on kickCh
	done       chan struct{} // closed by Close

	closeMu   sync.RWMutex // held for writing while the socket is torn down
	closed    atomic.Bool
	closeOnce sync.Once
	wg        sync.WaitGroup

	c counters
}

type counters struct {
	rxPackets, rxBytes, rxDrops, txPackets, txBytes, txDrops atomic.Uint64
	rxBad, compBad, txRingFull, txKicks, txKickErrors        atomic.Uint64
	fillWakeups, polls                                       atomic.Uint64
}

var _ stack.LinkEndpoint = (*Endpoint)(nil)

// ringHeader points at a ring's shared producer, consumer and flags words.
type ringHeader struct {
	producer, consumer, flags *uint32
}

func (h ringHeader) queued() uint32 {
	return atomic.LoadUint32(h.producer) - atomic.LoadUint32(h.consumer)
}

func (h ringHeader) needWakeup() bool {
	return atomic.LoadUint32(h.flags)&unix.XDP_RING_NEED_WAKEUP != 0
}

// New opens an AF_XDP socket on opts.Interface's RX queue opts.Queue,
// attaches the steering program and starts the RX and TX goroutines. Frames that
// arrive before a stack attaches are dropped.
func New(opts Options) (*Endpoint, error) {
	switch opts.ZeroCopy {
	case "":
		opts.ZeroCopy = ModeAuto
	case ModeAuto, ModeCopy, ModeZeroCopy:
	default:
		return nil, fmt.Errorf("afxdp: unknown mode %q (want %q, %q or %q)", opts.ZeroCopy, ModeAuto, ModeCopy, ModeZeroCopy)
	}
	if opts.Interface == "" {
		return nil, errors.New("afxdp: no interface")
	}
	if len(opts.Addrs) == 0 {
		return nil, errors.New("afxdp: no addresses: the program would steer nothing")
	}
	e := &Endpoint{fd: -1, evfd: -1, kickCh: make(chan struct{}, 1), done: make(chan struct{})}
	err := netns.Do(opts.Netns, func() error { return e.open(opts) })
	if err != nil {
		e.teardown()
		return nil, fmt.Errorf("afxdp on %s: %w", opts.Interface, err)
	}
	e.kickerIdle.Store(true)
	e.wg.Add(2)
	go e.rxLoop()
	go e.txLoop()
	return e, nil
}

// open does everything that depends on the namespace: interface lookup,
// socket creation and bind (both resolve ifindex in the caller's
// namespace), and the XDP attach.
func (e *Endpoint) open(opts Options) error {
	ifc, err := net.InterfaceByName(opts.Interface)
	if err != nil {
		return err
	}
	e.ifindex = ifc.Index
	e.queue = opts.Queue
	e.mac = tcpip.LinkAddress(ifc.HardwareAddr)
	if len(e.mac) != 6 {
		return fmt.Errorf("not an Ethernet interface (hardware address %v)", ifc.HardwareAddr)
	}
	mtu := opts.MTU
	if mtu == 0 {
		mtu = uint32(ifc.MTU)
	}
	if mtu+header.EthernetMinimumSize > maxFrameBytes {
		return fmt.Errorf("MTU %d does not fit a %d-byte frame", mtu, maxFrameBytes)
	}
	e.mtu.Store(mtu)

	if e.evfd, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK); err != nil {
		return fmt.Errorf("eventfd: %w", err)
	}
	if e.fd, err = unix.Socket(unix.AF_XDP, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0); err != nil {
		return fmt.Errorf("AF_XDP socket: %w", err)
	}
	if e.rxWait, err = shm.NewEpoll(); err != nil {
		return err
	}
	if err := e.rxWait.Add(e.fd, unix.EPOLLIN, rxWaitSocket); err != nil {
		return err
	}
	if err := e.rxWait.Add(e.evfd, unix.EPOLLIN, rxWaitClose); err != nil {
		return err
	}
	// The large geometry where the memlock limit allows it, else (or if
	// registering it fails: a failed registration leaves the socket
	// without a UMEM, so it can be tried again) the small one.
	var largeErr error
	if hasCap(unix.CAP_IPC_LOCK) || raiseMemlock(nFramesLarge*frameSize) {
		largeErr = e.newUMEM(nDescLarge, opts.Queue)
	}
	if e.cb == nil {
		if err := e.newUMEM(nDesc, opts.Queue); err != nil {
			if largeErr != nil {
				err = fmt.Errorf("%w (with a %d MiB UMEM: %v)", err, nFramesLarge*frameSize>>20, largeErr)
			}
			return err
		}
	}
	if err := e.mapHeaders(); err != nil {
		return err
	}
	// Hand the kernel its receive buffers before traffic can arrive.
	e.cb.UMEM.Lock()
	e.fill()
	e.cb.UMEM.Unlock()

	// Bind: no mode flag lets the kernel pick zero-copy and fall back to
	// copy; NEED_WAKEUP lets a zero-copy driver sleep until we kick it.
	flags := uint16(unix.XDP_USE_NEED_WAKEUP)
	switch opts.ZeroCopy {
	case ModeCopy:
		flags |= unix.XDP_COPY
	case ModeZeroCopy:
		flags |= unix.XDP_ZEROCOPY
	}
	// The kernel releases a closed socket's claim on its queue from a work
	// queue, so right after another endpoint on this queue closed, bind
	// answers EBUSY for a moment: retry that for a while.
	sa := &unix.SockaddrXDP{Flags: flags, Ifindex: uint32(e.ifindex), QueueID: opts.Queue}
	for wait, waited := time.Millisecond, time.Duration(0); ; wait = min(2*wait, 50*time.Millisecond) {
		err := unix.Bind(e.fd, sa)
		if err == nil {
			break
		}
		if err != unix.EBUSY || waited > bindBusyWait {
			return fmt.Errorf("bind to queue %d (mode %s): %w", opts.Queue, opts.ZeroCopy, err)
		}
		time.Sleep(wait)
		waited += wait
	}
	e.mode = ModeCopy
	// Copy mode sends at most XDP_MAX_TX_SKB_BUDGET frames per kick (32
	// by default); kernels since 6.17 let us raise it, cutting syscalls.
	// Older kernels refuse the option, which is fine.
	if unix.SetsockoptInt(e.fd, unix.SOL_XDP, unix.XDP_MAX_TX_SKB_BUDGET, txBudget) == nil {
		e.txBudget = txBudget
	}
	if v, err := unix.GetsockoptInt(e.fd, unix.SOL_XDP, unix.XDP_OPTIONS); err == nil && v&unix.XDP_OPTIONS_ZEROCOPY != 0 {
		e.mode = ModeZeroCopy
	}

	if e.st, err = newSteering(opts.Queue, opts.Addrs); err != nil {
		return err
	}
	if err := e.st.xsks.Put(opts.Queue, uint32(e.fd)); err != nil {
		return fmt.Errorf("adding the socket to the XSKMAP: %w", err)
	}
	// Driver mode where the driver has XDP (veth does), generic otherwise.
	e.lnk, err = link.AttachXDP(link.XDPOptions{Program: e.st.prog, Interface: e.ifindex})
	if err != nil {
		var gerr error
		e.lnk, gerr = link.AttachXDP(link.XDPOptions{Program: e.st.prog, Interface: e.ifindex, Flags: link.XDPGenericMode})
		if gerr != nil {
			return fmt.Errorf("attaching the XDP program: %w (generic mode: %v)", err, gerr)
		}
	}
	return nil
}

// newUMEM sets the geometry to rings of ringSize slots and a UMEM of twice
// as many frames, and creates them on the socket.
func (e *Endpoint) newUMEM(ringSize, queue uint32) error {
	nf := 2 * ringSize
	e.ringSize, e.umemLen, e.frames = ringSize, uint64(nf)*frameSize, make([]uint8, nf)
	var err error
	e.cb, err = xdp.NewFromSocket(e.fd, uint32(e.ifindex), queue, xdp.Opts{
		NFrames: nf, FrameSize: frameSize, NDescriptors: ringSize, Bind: false,
	})
	if err != nil {
		e.cb = nil
	}
	return err
}

// hasCap reports whether the calling thread has capability c in its
// effective set (c < 64).
func hasCap(c uint) bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if unix.Capget(&hdr, &data[0]) != nil {
		return false
	}
	return data[c/32].Effective&(1<<(c%32)) != 0
}

// raiseMemlock raises RLIMIT_MEMLOCK's soft limit towards need bytes:
// without limit where it may (root with CAP_SYS_RESOURCE), else up to the
// hard limit. It reports whether the limit now allows need. The limit is process-wide and inherited by
// children; the kernel ignores it for processes with CAP_IPC_LOCK.
func raiseMemlock(need uint64) bool {
	var r unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_MEMLOCK, &r) != nil {
		return false
	}
	if r.Cur >= need {
		return true
	}
	if unix.Geteuid() == 0 {
		inf := unix.Rlimit{Cur: unix.RLIM_INFINITY, Max: unix.RLIM_INFINITY}
		if unix.Setrlimit(unix.RLIMIT_MEMLOCK, &inf) == nil {
			return true
		}
	}
	// Up to the hard limit: even if that is short of need, it may let the
	// fallback UMEM register.
	if r.Cur < r.Max {
		raised := unix.Rlimit{Cur: r.Max, Max: r.Max}
		if unix.Setrlimit(unix.RLIMIT_MEMLOCK, &raised) == nil {
			r = raised
		}
	}
	return r.Cur >= need
}

// mapHeaders maps the fill and TX rings a second time to read their
// consumer and flags words, which pkg/xdp keeps private. It must run before
// bind: the kernel refuses ring mappings on a bound socket.
func (e *Endpoint) mapHeaders() error {
	var off unix.XDPMmapOffsets
	size := uint32(unsafe.Sizeof(off))
	if _, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(e.fd), unix.SOL_XDP, unix.XDP_MMAP_OFFSETS,
		uintptr(unsafe.Pointer(&off)), uintptr(unsafe.Pointer(&size)), 0); errno != 0 {
		return fmt.Errorf("XDP_MMAP_OFFSETS: %w", errno)
	}
	m := func(pgoff int64, ro unix.XDPRingOffset, descSize uint64) (ringHeader, error) {
		mem, err := unix.Mmap(e.fd, pgoff, int(ro.Desc+uint64(e.ringSize)*descSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return ringHeader{}, fmt.Errorf("mapping ring header: %w", err)
		}
		e.hdrMem = append(e.hdrMem, mem)
		word := func(o uint64) *uint32 { return (*uint32)(unsafe.Pointer(&mem[o])) }
		return ringHeader{producer: word(ro.Producer), consumer: word(ro.Consumer), flags: word(ro.Flags)}, nil
	}
	var err error
	if e.fillH, err = m(unix.XDP_UMEM_PGOFF_FILL_RING, off.Fr, 8); err != nil {
		return err
	}
	e.txH, err = m(unix.XDP_PGOFF_TX_RING, off.Tx, uint64(unsafe.Sizeof(unix.XDPDesc{})))
	return err
}

// Mode is the AF_XDP mode in use: ModeCopy or ModeZeroCopy.
func (e *Endpoint) Mode() Mode { return e.mode }

// Close detaches the XDP program, stops the goroutines and releases the
// socket, its rings and the UMEM. It is idempotent; the stack calls it when
// the NIC is removed. (It has no error result because stack.LinkEndpoint
// defines Close without one; teardown failures are not actionable.)
func (e *Endpoint) Close() {
	// The close action runs first and outside the Once: gVisor's (set by
	// CreateNIC) removes the NIC, which closes this endpoint again from
	// inside; that inner Close does the teardown, and this one then finds
	// it done instead of deadlocking on itself.
	e.mu.Lock()
	f := e.onClose
	e.onClose = nil
	e.mu.Unlock()
	if f != nil {
		f()
	}
	e.closeOnce.Do(func() {
		e.closed.Store(true)
		close(e.done)
		e.wake()
		e.wg.Wait()
		e.txMu.Lock() // no writer left inside; later ones see closed
		defer e.txMu.Unlock()
		e.closeMu.Lock()
		defer e.closeMu.Unlock()
		e.teardown()
	})
}

// teardown releases whatever open created. The program goes first so the
// kernel stops redirecting to a socket that is going away.
func (e *Endpoint) teardown() {
	if e.lnk != nil {
		e.lnk.Close()
		e.lnk = nil
	}
	if e.st != nil {
		// Drop the map's reference to the socket now; closing the map
		// frees it (and the reference) only later, from a work queue.
		e.st.xsks.Delete(e.queue)
		e.st.close()
		e.st = nil
	}
	for _, m := range e.hdrMem {
		unix.Munmap(m)
	}
	e.hdrMem = nil
	if e.fd >= 0 {
		// The ring mappings pkg/xdp made hold the socket open; without
		// unmapping them the socket, its rings and its UMEM pin would
		// outlive Close. pkg/xdp has no teardown, so find them by the
		// socket's inode; the UMEM is found through a frame slice.
		unmapSocket(e.fd)
		if e.cb != nil {
			base := e.cb.UMEM.Get(unix.XDPDesc{Addr: 0, Len: 1})
			unix.Syscall(unix.SYS_MUNMAP, uintptr(unsafe.Pointer(&base[0])), uintptr(e.umemLen), 0)
			e.cb = nil
		}
		unix.Close(e.fd)
		e.fd = -1
	}
	if e.evfd >= 0 {
		unix.Close(e.evfd)
		e.evfd = -1
	}
	if e.rxWait != nil {
		e.rxWait.Close()
		e.rxWait = nil
	}
}

// The keys of rxWait's two descriptors.
const (
	rxWaitSocket = iota
	rxWaitClose
)

// Stats returns a snapshot of the counters.
func (e *Endpoint) Stats() Stats {
	s := Stats{
		RXPackets: e.c.rxPackets.Load(), RXBytes: e.c.rxBytes.Load(), RXDrops: e.c.rxDrops.Load(),
		TXPackets: e.c.txPackets.Load(), TXBytes: e.c.txBytes.Load(), TXDrops: e.c.txDrops.Load(),
		RXBadDescs: e.c.rxBad.Load(), CompBadAddrs: e.c.compBad.Load(), TXRingFull: e.c.txRingFull.Load(),
		TXKicks: e.c.txKicks.Load(), TXKickErrors: e.c.txKickErrors.Load(), FillWakeups: e.c.fillWakeups.Load(),
		Polls: e.c.polls.Load(),
	}
	e.closeMu.RLock()
	defer e.closeMu.RUnlock()
	if e.closed.Load() || e.fd < 0 {
		return s
	}
	var ks unix.XDPStatistics
	size := uint32(unsafe.Sizeof(ks))
	if _, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(e.fd), unix.SOL_XDP, unix.XDP_STATISTICS,
		uintptr(unsafe.Pointer(&ks)), uintptr(unsafe.Pointer(&size)), 0); errno == 0 {
		s.KernelRXDropped, s.KernelRXInvalid, s.KernelTXInvalid = ks.Rx_dropped, ks.Rx_invalid_descs, ks.Tx_invalid_descs
		s.KernelRXRingFull, s.KernelFillRingEmpty, s.KernelTXRingEmpty = ks.Rx_ring_full, ks.Rx_fill_ring_empty_descs, ks.Tx_ring_empty_descs
		s.KernelStatsAvailable = 1
	}
	return s
}

// MTU implements stack.LinkEndpoint.
func (e *Endpoint) MTU() uint32 { return e.mtu.Load() }

// SetMTU implements stack.LinkEndpoint; values that do not fit a frame are
// clamped.
func (e *Endpoint) SetMTU(mtu uint32) {
	e.mtu.Store(min(mtu, maxFrameBytes-header.EthernetMinimumSize))
}

// MaxHeaderLength implements stack.LinkEndpoint.
func (e *Endpoint) MaxHeaderLength() uint16 { return header.EthernetMinimumSize }

// LinkAddress implements stack.LinkEndpoint.
func (e *Endpoint) LinkAddress() tcpip.LinkAddress {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.mac
}

// SetLinkAddress implements stack.LinkEndpoint.
func (e *Endpoint) SetLinkAddress(addr tcpip.LinkAddress) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.mac = addr
}

// Capabilities implements stack.LinkEndpoint: the stack resolves neighbours
// itself and computes and verifies every checksum (the socket carries raw
// frames, with no offload metadata).
func (e *Endpoint) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityResolutionRequired
}

// Attach implements stack.LinkEndpoint.
func (e *Endpoint) Attach(d stack.NetworkDispatcher) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.dispatcher = d
}

// IsAttached implements stack.LinkEndpoint.
func (e *Endpoint) IsAttached() bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return e.dispatcher != nil
}

// Wait implements stack.LinkEndpoint: after Close it waits for the RX and
// TX goroutines to end. Before Close they run regardless of attachment (the
// RX ring must keep draining), so Wait does not block then.
func (e *Endpoint) Wait() {
	if e.closed.Load() {
		e.wg.Wait()
	}
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
	eth.Encode(&header.EthernetFields{SrcAddr: src, DstAddr: pkt.EgressRoute.RemoteLinkAddress, Type: pkt.NetworkProtocolNumber})
}

// ParseHeader implements stack.LinkEndpoint.
func (e *Endpoint) ParseHeader(pkt *stack.PacketBuffer) bool {
	_, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize)
	return ok
}

// SetOnCloseAction implements stack.LinkEndpoint.
func (e *Endpoint) SetOnCloseAction(f func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.onClose = f
}

// wake makes the RX goroutine return from poll.
func (e *Endpoint) wake() {
	if e.evfd < 0 {
		return
	}
	one := [8]byte{1}
	unix.Write(e.evfd, one[:])
}

// gsoMaxSize is the largest TCP segment the stack hands WritePackets,
// which cuts it into MTU-sized frames (host GSO, see gso.go).
const gsoMaxSize = 1 << 16

var _ stack.GSOEndpoint = (*Endpoint)(nil)

// GSOMaxSize implements stack.GSOEndpoint.
func (e *Endpoint) GSOMaxSize() uint32 { return gsoMaxSize }

// SupportedGSO implements stack.GSOEndpoint: host GSO. gVisor's TCP hands
// WritePackets segments of up to 64 KiB with TCP GSO options, and
// WritePackets cuts them into MTU-sized frames with complete headers and
// checksums (see writeFrame), as a NIC's TSO would.
func (e *Endpoint) SupportedGSO() stack.SupportedGSO { return stack.HostGSOSupported }
