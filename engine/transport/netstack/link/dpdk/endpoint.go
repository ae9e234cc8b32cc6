//go:build dpdk

package dpdk

/*
#include <stdlib.h>
#include "hs.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/hoststack/hoststack/engine/netns"
)

// Sizes of the port's rings and pool. The pool holds both rings' worth of
// mbufs, the RX lcore cache and a burst in flight, with room to spare;
// 2^n-1 is the size rte_mempool stores best.
const (
	rxDesc    = 1024
	txDesc    = 1024
	poolSize  = 8191
	poolCache = 256
	// afPacketFrames is the TPACKET ring size in frames per direction.
	afPacketFrames = 4096
)

// Polling: after any RX or TX the RX thread may keep polling for
// spinWindow, because a reply usually follows. Then, for af_packet, it
// blocks in poll(2) on the PMD's packet socket (the kernel wakes it when a
// frame lands in the ring) and an eventfd that stops it; for af_xdp, or if
// the socket cannot be found, it sleeps, doubling from minSleep to maxSleep
// while the queue stays empty.
//
// spinWindow is 0: on the two-core machines this was measured on, every
// microsecond spent spinning was taken from the goroutines the stack and
// the applications need (a 64-byte TCP round trip: 60-100 µs without
// spinning, 117 µs with 10 µs, 152 µs with 50 µs, 178 µs with 2 ms; bulk
// throughput unchanged within the noise). The thread still keeps polling
// without a pause for as long as bursts keep arriving.
const (
	spinWindow = 0
	minSleep   = 5 * time.Microsecond
	maxSleep   = 200 * time.Microsecond
	// maxBlock bounds a poll(2) on the RX socket, in case a wake-up is
	// ever missed.
	maxBlock = 100 * time.Millisecond
)

// TX coalescing: while the RX thread is polling, transmits wait until
// txFlushAt frames are pending or the oldest has waited txCoalesce, so that
// one PMD burst (one sendto for af_packet, measured at 8.8 µs a frame alone
// and 3.3 µs a frame in bursts of 32 on a veth here) carries several frames.
// When the RX thread sleeps or is not running, WritePackets flushes at once,
// so an idle endpoint adds no latency.
const (
	txFlushAt  = 32
	txCoalesce = 10 * time.Microsecond
)

var (
	portMu sync.Mutex // serialises probing and releasing ports
	devSeq atomic.Uint32
	epoch  = time.Now()
)

// now is a monotonic clock reading, cheap enough for the poll loop.
func now() int64 { return int64(time.Since(epoch)) }

// Endpoint is a gVisor link endpoint on a DPDK port. It implements
// stack.LinkEndpoint; the stack calls Close when its NIC is removed.
type Endpoint struct {
	opts      Options
	driver    string
	devName   string // the vdev name, e.g. net_af_packet3
	port      C.uint16_t
	pool      *C.struct_rte_mempool
	mac       [6]byte
	linkAddr  tcpip.LinkAddress
	mtu       atomic.Uint32
	maxFrame  uint32 // largest frame an mbuf holds
	ringBytes int    // size of one af_packet ring

	// txMu serialises the TX queue, the TX burst array and the pending
	// frames, and guards released (the port is gone).
	txMu         sync.Mutex
	txb          *C.struct_hs_burst
	txq          *C.struct_hs_txq
	pendingBytes uint64
	released     bool
	missed       uint64 // PMD drops at release
	// txPending (frames waiting) and pendingSince (now() of the oldest)
	// let the RX thread look without the lock.
	txPending    atomic.Int32
	pendingSince atomic.Int64
	// polling is true while the RX thread is between bursts and will look
	// at the pending frames again without blocking first.
	polling atomic.Bool

	// attachMu guards the dispatcher and the RX loop's lifecycle.
	attachMu   sync.Mutex
	dispatcher atomic.Pointer[stack.NetworkDispatcher]
	rxStop     atomic.Bool
	rxWG       sync.WaitGroup
	rxRunning  bool
	closed     bool // Close has begun; no new RX thread
	rxb        *C.struct_hs_burst
	lastActive atomic.Int64 // now() of the last RX or TX
	rxFD       int          // the PMD's RX socket to poll(2), or -1
	stopFD     int          // eventfd that wakes the RX thread to stop

	closeOnce sync.Once
	closeErr  error
	onClose   atomic.Pointer[func()]

	rxBursts, txBursts          atomic.Uint64 // for debugString: frames per burst
	rxPackets, rxBytes, rxDrops atomic.Uint64
	txPackets, txBytes, txDrops atomic.Uint64
}

var _ stack.LinkEndpoint = (*Endpoint)(nil)

// New probes a DPDK virtual device on opts.Interface inside opts.Netns,
// starts it, and returns it as a link endpoint. The first New in a process
// also starts DPDK's EAL (see the package documentation).
func New(opts Options) (*Endpoint, error) {
	drv, err := opts.driver()
	if err != nil {
		return nil, err
	}
	if opts.Interface == "" {
		return nil, errors.New("dpdk: Options.Interface is empty")
	}
	for _, p := range opts.Addrs {
		if !p.IsValid() {
			return nil, fmt.Errorf("dpdk: invalid address %v", p)
		}
	}
	if err := initEAL(); err != nil {
		return nil, err
	}
	n := devSeq.Add(1)
	e := &Endpoint{
		opts:    opts,
		driver:  drv,
		devName: "net_" + drv + strconv.FormatUint(uint64(n), 10),
		rxFD:    -1,
	}
	var mtu uint32
	err = netns.Do(opts.Netns, func() error {
		ifc, err := net.InterfaceByName(opts.Interface)
		if err != nil {
			return fmt.Errorf("dpdk: interface %s: %w", opts.Interface, err)
		}
		mtu = uint32(ifc.MTU)
		if opts.MTU > mtu {
			return fmt.Errorf("dpdk: MTU %d exceeds %s's MTU %d", opts.MTU, opts.Interface, mtu)
		}
		if opts.MTU != 0 {
			mtu = opts.MTU
		}
		// DPDK's hotplug and port setup are not documented as
		// thread-safe: one port at a time.
		portMu.Lock()
		defer portMu.Unlock()
		if err := e.open(n, mtu); err != nil {
			return err
		}
		if e.driver == DriverAFPacket {
			e.rxFD = packetSocket(int(C.hs_rx_fd(e.port)), ifc.Index)
			if e.rxFD >= 0 {
				// The socket is also the TX socket. A frame in its TX ring
				// stays charged to the socket until the receiver frees the
				// skb (across a veth, when the peer application has read
				// it), and with the default send buffer (~200 KB) the
				// kernel refuses frames long before the ring is full.
				_ = unix.SetsockoptInt(e.rxFD, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, e.ringBytes)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	e.stopFD, err = unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		_ = netns.Do(opts.Netns, func() error { C.hs_port_release(e.port); return nil })
		C.rte_mempool_free(e.pool)
		return nil, fmt.Errorf("dpdk: eventfd: %w", err)
	}
	e.mtu.Store(mtu)
	e.linkAddr = tcpip.LinkAddress(e.mac[:])
	e.txb = newBurst()
	e.rxb = newBurst()
	e.txq = newTxq()
	return e, nil
}

// open creates the pool, probes and starts the port. It runs inside the
// interface's namespace and undoes what it did when a step fails.
func (e *Endpoint) open(n uint32, mtu uint32) error {
	// Frames are at most mtu+14 (+4 for a VLAN tag a sender may add).
	room := uint32(C.RTE_MBUF_DEFAULT_BUF_SIZE)
	if need := uint32(C.RTE_PKTMBUF_HEADROOM) + mtu + 18; need > room {
		room = (need + 63) &^ 63
	}
	if room > 65535 {
		return fmt.Errorf("dpdk: MTU %d too large for an mbuf", mtu)
	}
	e.maxFrame = room - uint32(C.RTE_PKTMBUF_HEADROOM)

	poolName := C.CString("hs_pool" + strconv.FormatUint(uint64(n), 10))
	defer C.free(unsafe.Pointer(poolName))
	e.pool = C.hs_pool_create(poolName, poolSize, poolCache, C.uint16_t(room))
	if e.pool == nil {
		return fmt.Errorf("dpdk: creating the mbuf pool: %w", rteErrno())
	}

	devargs := e.devName + ",iface=" + e.opts.Interface
	switch e.driver {
	case DriverAFPacket:
		// framesz holds a TPACKET2 header, padding and the frame;
		// qdisc_bypass=0 keeps tc (shaping, netem) working on our TX
		// like it does for the kernel's traffic.
		frame := 2048
		for uint32(frame) < mtu+18+128 {
			frame *= 2
		}
		block := max(4096, frame)
		e.ringBytes = afPacketFrames * frame
		devargs += ",qpairs=1,qdisc_bypass=0,framesz=" + strconv.Itoa(frame) +
			",blocksz=" + strconv.Itoa(block) + ",framecnt=" + strconv.Itoa(afPacketFrames)
	case DriverAFXDP:
		devargs += ",start_queue=0,queue_count=1"
	}
	cargs := C.CString(devargs)
	defer C.free(unsafe.Pointer(cargs))
	if rc := C.rte_dev_probe(cargs); rc < 0 {
		C.rte_mempool_free(e.pool)
		return fmt.Errorf("dpdk: rte_dev_probe %s: %w", devargs, dpdkErrno(rc))
	}
	cname := C.CString(e.devName)
	defer C.free(unsafe.Pointer(cname))
	if rc := C.rte_eth_dev_get_port_by_name(cname, &e.port); rc < 0 {
		vdev := C.CString("vdev")
		_ = C.rte_eal_hotplug_remove(vdev, cname)
		C.free(unsafe.Pointer(vdev))
		C.rte_mempool_free(e.pool)
		return fmt.Errorf("dpdk: no port for %s: %w", e.devName, dpdkErrno(rc))
	}
	var stage C.int
	if rc := C.hs_port_start(e.port, e.pool, rxDesc, txDesc, C.uint16_t(mtu), &stage); rc < 0 {
		_ = C.hs_port_release(e.port)
		C.rte_mempool_free(e.pool)
		steps := []string{"rte_eth_dev_configure", "rte_eth_dev_adjust_nb_rx_tx_desc",
			"rte_eth_rx_queue_setup", "rte_eth_tx_queue_setup", "rte_eth_dev_start"}
		return fmt.Errorf("dpdk: %s on %s (%s): %w", steps[stage], e.devName, devargs, dpdkErrno(rc))
	}
	C.hs_mac(e.port, (*C.uint8_t)(unsafe.Pointer(&e.mac[0])))
	return nil
}

// packetSocket returns fd if it is an AF_PACKET socket bound to the
// interface with index ifindex, else -1.
func packetSocket(fd, ifindex int) int {
	if fd < 0 {
		return -1
	}
	if d, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN); err != nil || d != unix.AF_PACKET {
		return -1
	}
	sa, err := unix.Getsockname(fd)
	if ll, ok := sa.(*unix.SockaddrLinklayer); err != nil || !ok || ll.Ifindex != ifindex {
		return -1
	}
	return fd
}

// dpdkErrno is the error of a negative errno return.
func dpdkErrno(rc C.int) error {
	if rc >= 0 {
		return nil
	}
	return errnoOf(-int(rc))
}

// Close implements stack.LinkEndpoint.Close: it stops the RX thread and
// releases the port and its pool. It is idempotent; Shutdown returns the
// error Close cannot.
func (e *Endpoint) Close() { _ = e.Shutdown() }

// Shutdown is Close returning what went wrong releasing the port (the
// gVisor interface's Close has no result). Later calls return the same.
func (e *Endpoint) Shutdown() error {
	// The stack's close action removes the NIC, which calls Close again
	// (after releasing the stack's lock): that inner call does the work
	// below. It must run outside closeOnce, which does not nest.
	if f := e.onClose.Swap(nil); f != nil {
		(*f)()
	}
	e.closeOnce.Do(func() {
		e.attachMu.Lock()
		e.closed = true
		e.stopRX()
		e.dispatcher.Store(nil)
		e.attachMu.Unlock()

		e.txMu.Lock()
		e.flushLocked()
		e.released = true
		e.missed = uint64(C.hs_missed(e.port))
		e.txMu.Unlock()

		// Stop and close do interface ioctls (af_packet) and detach the
		// XDP program over netlink (af_xdp): in the interface's namespace.
		e.closeErr = netns.Do(e.opts.Netns, func() error {
			portMu.Lock()
			defer portMu.Unlock()
			if rc := C.hs_port_release(e.port); rc < 0 {
				return fmt.Errorf("dpdk: releasing %s: %w", e.devName, dpdkErrno(rc))
			}
			return nil
		})
		C.rte_mempool_free(e.pool)
		freeBurst(e.txb)
		freeBurst(e.rxb)
		freeTxq(e.txq)
		unix.Close(e.stopFD)
	})
	return e.closeErr
}

// Stats returns the counters. RxDrops includes what the PMD or the kernel
// ring missed.
func (e *Endpoint) Stats() Stats {
	e.txMu.Lock()
	missed := e.missed
	if !e.released {
		missed = uint64(C.hs_missed(e.port))
	}
	e.txMu.Unlock()
	return Stats{
		RxPackets: e.rxPackets.Load(),
		RxBytes:   e.rxBytes.Load(),
		RxDrops:   e.rxDrops.Load() + missed,
		TxPackets: e.txPackets.Load(),
		TxBytes:   e.txBytes.Load(),
		TxDrops:   e.txDrops.Load(),
	}
}

// MTU implements stack.LinkEndpoint.
func (e *Endpoint) MTU() uint32 { return e.mtu.Load() }

// SetMTU implements stack.LinkEndpoint. It can only lower the MTU: mbufs
// and rings are sized for the MTU New saw.
func (e *Endpoint) SetMTU(mtu uint32) {
	if mtu+header.EthernetMinimumSize <= e.maxFrame {
		e.mtu.Store(mtu)
	}
}

// MaxHeaderLength implements stack.LinkEndpoint: an Ethernet header.
func (*Endpoint) MaxHeaderLength() uint16 { return header.EthernetMinimumSize }

// LinkAddress implements stack.LinkEndpoint: the interface's MAC, which the
// stack shares with the kernel.
func (e *Endpoint) LinkAddress() tcpip.LinkAddress { return e.linkAddr }

// SetLinkAddress implements stack.LinkEndpoint. The address is fixed: it is
// the interface's, and frames to any other are filtered out.
func (*Endpoint) SetLinkAddress(tcpip.LinkAddress) {}

// Capabilities implements stack.LinkEndpoint: Ethernet needs ARP/NDP; no
// checksum offload, no GSO.
func (*Endpoint) Capabilities() stack.LinkEndpointCapabilities {
	return stack.CapabilityResolutionRequired
}

// ARPHardwareType implements stack.LinkEndpoint.
func (*Endpoint) ARPHardwareType() header.ARPHardwareType { return header.ARPHardwareEther }

// AddHeader implements stack.LinkEndpoint.
func (*Endpoint) AddHeader(pkt *stack.PacketBuffer) {
	eth := header.Ethernet(pkt.LinkHeader().Push(header.EthernetMinimumSize))
	eth.Encode(&header.EthernetFields{
		SrcAddr: pkt.EgressRoute.LocalLinkAddress,
		DstAddr: pkt.EgressRoute.RemoteLinkAddress,
		Type:    pkt.NetworkProtocolNumber,
	})
}

// ParseHeader implements stack.LinkEndpoint.
func (*Endpoint) ParseHeader(pkt *stack.PacketBuffer) bool {
	_, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize)
	return ok
}

// SetOnCloseAction implements stack.LinkEndpoint.
func (e *Endpoint) SetOnCloseAction(f func()) {
	if f == nil {
		e.onClose.Store(nil)
		return
	}
	e.onClose.Store(&f)
}

// IsAttached implements stack.LinkEndpoint.
func (e *Endpoint) IsAttached() bool { return e.dispatcher.Load() != nil }

// Attach implements stack.LinkEndpoint. The first attach starts the RX
// thread, which then runs until Close; detaching (nil) only makes it drop
// what it receives.
//
// Neither Attach(nil) nor Wait waits for the RX thread: gVisor calls both
// with the stack's lock held (Stack.Wait, RemoveNIC), and the RX thread may
// be inside a delivery that needs that lock (a reset for a closed
// endpoint looks up a route), so waiting there can deadlock. Close, which
// gVisor calls after releasing its lock, stops and waits for the thread; a
// delivery still in flight at Attach(nil) reaches a NIC that is already
// disabled and is dropped there.
func (e *Endpoint) Attach(d stack.NetworkDispatcher) {
	e.attachMu.Lock()
	defer e.attachMu.Unlock()
	if d == nil {
		e.dispatcher.Store(nil)
		return
	}
	if e.closed {
		return
	}
	e.dispatcher.Store(&d)
	if !e.rxRunning {
		e.rxRunning = true
		e.rxWG.Add(1)
		go e.rxLoop()
	}
}

// stopRX stops the RX thread and waits for it; attachMu is held.
func (e *Endpoint) stopRX() {
	if !e.rxRunning {
		return
	}
	e.rxStop.Store(true)
	_, _ = unix.Write(e.stopFD, []byte{1, 0, 0, 0, 0, 0, 0, 0})
	e.rxWG.Wait()
	e.rxRunning = false
}

// Wait implements stack.LinkEndpoint. It returns at once: see Attach for
// why; Close is what waits for the RX thread.
func (*Endpoint) Wait() {}

// WritePackets implements stack.LinkWriter. It copies each packet into an
// mbuf, queues it, and transmits the queue from the calling goroutine unless
// the RX thread is polling and will (see txCoalesce).
func (e *Endpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	list := pkts.AsSlice()
	e.txMu.Lock()
	defer e.txMu.Unlock()
	if e.released {
		return 0, &tcpip.ErrClosedForSend{}
	}
	t := now()
	e.lastActive.Store(t)
	b := e.txb
	for len(list) > 0 {
		// Gather up to a burst of packets that fit an mbuf.
		var batch [burst]*stack.PacketBuffer
		k := 0
		for len(list) > 0 && k < burst {
			pkt := list[0]
			list = list[1:]
			size := uint32(pkt.Size())
			if size > e.maxFrame {
				e.txDrops.Add(1)
				continue
			}
			batch[k] = pkt
			b.len[k] = C.uint32_t(size)
			k++
		}
		if k == 0 {
			break
		}
		if int(e.txq.n)+k > C.HS_TXQ {
			e.flushLocked()
		}
		if C.hs_tx_alloc(e.pool, b, C.uint16_t(k)) == 0 {
			// The pending frames may be what holds the pool.
			e.flushLocked()
			if C.hs_tx_alloc(e.pool, b, C.uint16_t(k)) == 0 {
				e.txDrops.Add(uint64(k))
				continue
			}
		}
		for i, pkt := range batch[:k] {
			dst := unsafe.Slice((*byte)(b.data[i]), int(b.len[i]))
			off := 0
			for _, s := range pkt.AsSlices() {
				off += copy(dst[off:], s)
			}
			e.pendingBytes += uint64(off)
		}
		if e.txq.n == 0 {
			e.pendingSince.Store(t)
		}
		C.hs_txq_add(e.txq, b, C.uint16_t(k))
		e.txPending.Store(int32(e.txq.n))
	}
	if e.txq.n >= txFlushAt || !e.polling.Load() {
		e.flushLocked()
	}
	return pkts.Len(), nil
}

// flushLocked hands the pending frames to the PMD; txMu is held.
func (e *Endpoint) flushLocked() {
	n := int(e.txq.n)
	if n == 0 {
		return
	}
	var dropped C.uint64_t
	sent := int(C.hs_txq_flush(e.port, e.txq, &dropped))
	e.txBursts.Add(1)
	e.txPackets.Add(uint64(sent))
	e.txBytes.Add(e.pendingBytes - uint64(dropped))
	if sent < n {
		e.txDrops.Add(uint64(n - sent))
	}
	e.pendingBytes = 0
	e.txPending.Store(0)
}

// flush is flushLocked for the RX thread.
func (e *Endpoint) flush() {
	e.txMu.Lock()
	if !e.released {
		e.flushLocked()
	}
	e.txMu.Unlock()
}

// rxLoop polls the RX queue on a locked OS thread until rxStop.
func (e *Endpoint) rxLoop() {
	defer e.rxWG.Done()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	// A registered thread gets an lcore id, hence a mempool cache for the
	// RX frees. Failure (no lcore slot left) only costs speed.
	if C.rte_thread_register() == 0 {
		defer C.rte_thread_unregister()
	}
	// Sleeps of a few microseconds need a small timer slack (default 50 µs).
	_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1000, 0, 0, 0)
	defer unix.Prctl(unix.PR_SET_TIMERSLACK, 0, 0, 0, 0)

	b := e.rxb
	var nfree C.uint16_t
	sleep := minSleep
	e.polling.Store(true)
	for !e.rxStop.Load() {
		n := C.hs_rx(e.port, b, nfree)
		nfree = n
		if n > 0 {
			sleep = minSleep
			e.lastActive.Store(now())
			e.rxBursts.Add(1)
			e.deliver(b, int(n))
		}
		if e.txPending.Load() > 0 && now()-e.pendingSince.Load() >= int64(txCoalesce) {
			e.flush()
		}
		if n > 0 || (spinWindow > 0 && now()-e.lastActive.Load() < int64(spinWindow)) {
			continue
		}
		// Going to sleep: from here on WritePackets flushes itself, and
		// whatever it queued before it saw polling go false is flushed
		// now.
		e.polling.Store(false)
		e.flush()
		if e.rxFD >= 0 {
			fds := [2]unix.PollFd{{Fd: int32(e.rxFD), Events: unix.POLLIN}, {Fd: int32(e.stopFD), Events: unix.POLLIN}}
			_, _ = unix.Poll(fds[:], int(maxBlock/time.Millisecond))
			e.lastActive.Store(now())
		} else {
			ts := unix.NsecToTimespec(int64(sleep))
			_ = unix.Nanosleep(&ts, nil)
			sleep = min(sleep*2, maxSleep)
		}
		e.polling.Store(true)
	}
	e.polling.Store(false)
	e.flush()
	if nfree > 0 {
		C.rte_pktmbuf_free_bulk(&b.m[0], C.uint(nfree))
	}
}

// blocking reports whether the RX thread blocks in poll(2) when idle
// (af_packet with its socket found) rather than sleeping.
func (e *Endpoint) blocking() bool { return e.rxFD >= 0 }

// deliver filters and hands n received frames to the stack.
func (e *Endpoint) deliver(b *C.struct_hs_burst, n int) {
	dp := e.dispatcher.Load()
	if dp == nil {
		e.rxDrops.Add(uint64(n))
		return
	}
	d := *dp
	var pkts, bytes, drops uint64
	for i := 0; i < n; i++ {
		size := int(b.len[i])
		if size < header.EthernetMinimumSize {
			drops++
			continue
		}
		var data []byte
		if b.segs[i] == 1 {
			data = unsafe.Slice((*byte)(b.data[i]), size)
		} else {
			// A chained mbuf (a frame larger than one mbuf): rare, so
			// gather it into Go memory first.
			data = make([]byte, size)
			if C.hs_rx_read(b, C.uint16_t(i), unsafe.Pointer(&data[0]), C.uint32_t(size)) != 0 {
				drops++
				continue
			}
		}
		dst, src := data[0:6], data[6:12]
		var typ tcpip.PacketType
		switch {
		case [6]byte(src) == e.mac:
			// Our own frame or the kernel's (they share the MAC): a
			// packet socket sees outgoing frames too.
			drops++
			continue
		case [6]byte(dst) == e.mac:
			typ = tcpip.PacketHost
		case [6]byte(dst) == [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}:
			typ = tcpip.PacketBroadcast
		case dst[0]&1 != 0:
			typ = tcpip.PacketMulticast
		default:
			drops++
			continue
		}
		proto := tcpip.NetworkProtocolNumber(uint16(data[12])<<8 | uint16(data[13]))
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
			// The one copy: mbuf (or gathered bytes) into a gVisor chunk.
			Payload: buffer.MakeWithData(data),
		})
		pkt.PktType = typ
		if _, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize); !ok {
			pkt.DecRef()
			drops++
			continue
		}
		d.DeliverNetworkPacket(proto, pkt)
		pkt.DecRef()
		pkts++
		bytes += uint64(size)
	}
	e.rxPackets.Add(pkts)
	e.rxBytes.Add(bytes)
	if drops > 0 {
		e.rxDrops.Add(drops)
	}
}

// debugString describes the port's DPDK counters and pool occupancy (for
// logs when something stalls); "" after Close.
func (e *Endpoint) debugString() string {
	e.txMu.Lock()
	defer e.txMu.Unlock()
	if e.released {
		return ""
	}
	var buf [512]C.char
	C.hs_port_debug(e.port, e.pool, &buf[0], C.int(len(buf)))
	return fmt.Sprintf("%s rx_bursts=%d tx_bursts=%d", C.GoString(&buf[0]), e.rxBursts.Load(), e.txBursts.Load())
}
