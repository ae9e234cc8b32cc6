package afpacket

import (
	"fmt"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
)

// Receive ring geometry (TPACKET_V2). The kernel puts a frame's MAC header
// at offset 76 of a ring slot (TPACKET_ALIGN(52+16) + the 10-byte virtio
// header - 14), so a slot for an MTU-sized frame needs 76+14+4+MTU bytes
// (the 4 for an unstripped VLAN tag). Slots are sized for the MTU, not for
// 64 KiB GSO frames: with 64 KiB slots a 16 MiB ring holds only 240
// frames and a peer sending MTU-sized frames (TSO off, or a real NIC
// without GRO) overflowed it within microseconds (~11% of frames lost in
// the tso-off test). Frames larger than a slot take the PACKET_COPY_THRESH
// path instead: the kernel queues the whole frame on the socket's receive
// queue, marks its (truncated) slot TP_STATUS_COPY, and we recvmsg(2) it
// straight into gVisor buffers, in ring order.
const (
	macOffset  = 76
	vnetHdrLen = 10 // struct virtio_net_hdr
	ringBytes  = 8 << 20

	// sockaddr_ll follows the tpacket2_hdr, TPACKET_ALIGN'ed.
	sllOffset = (int(unsafe.Sizeof(unix.Tpacket2Hdr{})) + 15) &^ 15

	// The largest frame taken from the socket queue: 64 KiB of IP plus
	// Ethernet and VLAN headers, read into a header view, one pooled 64
	// KiB view and a small one. Larger frames (BIG TCP) are dropped and
	// counted.
	copyMax  = headSize + buffer.MaxChunkSize + copyTail
	copyTail = 4096

	// rcvBuf bounds the frames queued by the copy path (their truesize,
	// ~64-128 KiB each); when full, the kernel truncates instead of
	// queueing, and those frames count as drops.
	rcvBuf = 32 << 20
)

// groBatch bounds how many frames GRO may see between flushes.
const groBatch = 64

type rxRing struct {
	buf       []byte
	frameSize int
	perBlock  int
	blockSize int
	frames    int
	next      int // the slot we expect the kernel to fill next
}

// newRxRing sets up the ring with slots for frames of up to mtu bytes of
// payload.
func newRxRing(fd int, mtu uint32) (*rxRing, error) {
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V2); err != nil {
		return nil, fmt.Errorf("PACKET_VERSION TPACKET_V2: %w", err)
	}
	// Any non-zero value enables the copy path.
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_COPY_THRESH, 1); err != nil {
		return nil, fmt.Errorf("PACKET_COPY_THRESH: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvBuf); err != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvBuf)
	}
	r := &rxRing{frameSize: 2048}
	for r.frameSize < macOffset+header.EthernetMinimumSize+4+int(mtu) {
		r.frameSize *= 2
	}
	r.blockSize = max(1<<20, r.frameSize)
	r.perBlock = r.blockSize / r.frameSize
	blocks := max(2, ringBytes/r.blockSize)
	r.frames = blocks * r.perBlock
	req := unix.TpacketReq{Block_size: uint32(r.blockSize), Block_nr: uint32(blocks), Frame_size: uint32(r.frameSize), Frame_nr: uint32(r.frames)}
	if err := unix.SetsockoptTpacketReq(fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &req); err != nil {
		return nil, fmt.Errorf("PACKET_RX_RING %+v: %w", req, err)
	}
	buf, err := unix.Mmap(fd, 0, r.blockSize*blocks, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("mmap rx ring: %w", err)
	}
	r.buf = buf
	return r, nil
}

func (r *rxRing) unmap() { _ = unix.Munmap(r.buf) }

// frame returns slot i's header and bytes. Slots are laid out block by
// block and never straddle two.
func (r *rxRing) frame(i int) (*unix.Tpacket2Hdr, []byte) {
	off := (i/r.perBlock)*r.blockSize + (i%r.perBlock)*r.frameSize
	f := r.buf[off : off+r.frameSize : off+r.frameSize]
	return (*unix.Tpacket2Hdr)(unsafe.Pointer(&f[0])), f
}

// The kernel and we hand slots back and forth through tp_status: the
// kernel writes the slot, then stores TP_STATUS_USER (with a barrier); we
// read the slot after an atomic load of the status and give it back by
// storing TP_STATUS_KERNEL.
func loadStatus(h *unix.Tpacket2Hdr) uint32     { return atomic.LoadUint32(&h.Status) }
func storeStatus(h *unix.Tpacket2Hdr, s uint32) { atomic.StoreUint32(&h.Status, s) }

// rxLoop drains the ring into d until stopped through e.rxStop.
func (e *Endpoint) rxLoop(d stack.NetworkDispatcher, done chan<- struct{}) {
	defer close(done)
	// Software GRO merges consecutive MTU-sized segments of a flow into
	// one large segment, so TCP processes one segment per ring batch
	// instead of per frame. It is flushed when the ring runs dry, so it
	// never holds a packet while we sleep, and every groBatch frames, so a
	// busy ring does not hold one either.
	var g gro.GRO
	g.Init(true)
	g.Dispatcher = d
	// Release what GRO holds: into a detached NIC, which drops it.
	defer g.Flush()
	r := e.ring
	var evs [2]unix.EpollEvent
	batch := 0
	for !e.rxStopping.Load() {
		h, f := r.frame(r.next)
		if loadStatus(h)&unix.TP_STATUS_USER == 0 {
			g.Flush()
			batch = 0
			n, err := e.rxWait.Wait(evs[:], time.Time{})
			if err != nil {
				// epoll_wait on our own set has no other failure
				// than ENOMEM; try again rather than go deaf.
				continue
			}
			for _, ev := range evs[:n] {
				if ev.Fd == rxWaitStop {
					return
				}
				if ev.Events&unix.EPOLLERR != 0 {
					// A pending socket error (e.g. ENETDOWN when the
					// interface goes away) keeps the socket ready
					// until read.
					_, _ = unix.GetsockoptInt(e.fd, unix.SOL_SOCKET, unix.SO_ERROR)
				}
				if ev.Events&unix.EPOLLHUP != 0 {
					return
				}
			}
			continue
		}
		e.rxSlot(&g, h, f)
		storeStatus(h, unix.TP_STATUS_KERNEL)
		if batch++; batch == groBatch {
			g.Flush()
			batch = 0
		}
		r.next++
		if r.next == r.frames {
			r.next = 0
		}
	}
}

// rxSlot takes the frame of one ring slot (or, for a TP_STATUS_COPY slot,
// from the socket queue) and hands it to GRO, which delivers it.
func (e *Endpoint) rxSlot(g *gro.GRO, h *unix.Tpacket2Hdr, f []byte) {
	status := loadStatus(h)
	if status&unix.TP_STATUS_COPY != 0 {
		e.rxQueued(g)
		return
	}
	mac, snap := int(h.Mac), int(h.Snaplen)
	if mac < sllOffset+unix.SizeofSockaddrLinklayer+vnetHdrLen || mac+snap > len(f) || snap < header.EthernetMinimumSize {
		e.rxDrops.Add(1)
		return
	}
	if snap < int(h.Len) {
		// Too large for a slot and not queued either (receive
		// buffer full).
		e.rxDrops.Add(1)
		return
	}
	if status&unix.TP_STATUS_VLAN_VALID != 0 {
		// The kernel stripped a VLAN tag: the frame belongs to a VLAN
		// we do not serve.
		return
	}
	data := f[mac : mac+snap]
	proto, ok := e.wanted(data)
	if !ok {
		return
	}
	// Checksums: the virtio header says whether the kernel vouches for
	// the frame; if not, verify it here (see checksumOK).
	if !checksumOK(proto, data[header.EthernetMinimumSize:], rxChecksumTrusted(f[mac-vnetHdrLen:mac])) {
		e.rxCsumErrors.Add(1)
		return
	}
	e.deliver(g, proto, frameBuffer(data), snap)
}

// rxQueued reads the frame of a TP_STATUS_COPY slot from the socket's
// receive queue, where the kernel put it whole, into gVisor buffers (split
// like frameBuffer's).
func (e *Endpoint) rxQueued(g *gro.GRO) {
	var vnet [vnetHdrLen]byte
	views := [3]*buffer.View{buffer.NewViewSize(headSize), buffer.NewViewSize(buffer.MaxChunkSize), buffer.NewViewSize(copyTail)}
	n, _, flags, _, err := unix.RecvmsgBuffers(e.fd, [][]byte{vnet[:], views[0].AsSlice(), views[1].AsSlice(), views[2].AsSlice()}, nil, unix.MSG_DONTWAIT|unix.MSG_TRUNC)
	n -= vnetHdrLen
	if err != nil || flags&unix.MSG_TRUNC != 0 || n < header.EthernetMinimumSize || n > copyMax {
		for _, v := range views {
			v.Release()
		}
		e.rxDrops.Add(1)
		return
	}
	var b buffer.Buffer
	left := n
	for _, v := range views {
		if left == 0 {
			v.Release()
			continue
		}
		k := min(left, v.Size())
		v.CapLength(k)
		_ = b.Append(v)
		left -= k
	}
	proto, ok := e.wanted(views[0].AsSlice())
	if ok && !rxChecksumTrusted(vnet[:]) {
		// Rare: large frames are GSO/GRO frames, which the kernel
		// marks checksum-partial. Verify on a flat copy.
		ok = checksumOK(proto, b.Flatten()[header.EthernetMinimumSize:], false)
		if !ok {
			e.rxCsumErrors.Add(1)
		}
	}
	if !ok {
		b.Release()
		return
	}
	e.deliver(g, proto, b, n)
}

// headSize is the size of the first view of a received frame, which holds
// the headers (Ethernet 14 + IPv6 40 + TCP up to 60 = 114). Keeping the
// headers out of the payload's chunk matters: gVisor takes views of the
// headers that share the chunk and then pulls the headers up again, which
// copies the whole shared chunk (copy-on-write) — for a 64 KiB frame in
// one chunk that was ~17% of the receive path's CPU. fdbased splits its
// receive buffers the same way (a first view of 128 bytes).
const headSize = 128

// frameBuffer copies a frame out of the ring into a gVisor buffer of two
// views: the headers (headSize bytes) and the rest.
func frameBuffer(data []byte) buffer.Buffer {
	if len(data) <= headSize {
		return buffer.MakeWithView(buffer.NewViewWithData(data))
	}
	b := buffer.MakeWithView(buffer.NewViewWithData(data[:headSize]))
	_ = b.Append(buffer.NewViewWithData(data[headSize:]))
	return b
}

// wanted reports whether an Ethernet frame (at least its header) is for
// the stack: to our MAC or a group address, carrying IPv4, IPv6 or ARP.
func (e *Endpoint) wanted(frame []byte) (tcpip.NetworkProtocolNumber, bool) {
	eth := header.Ethernet(frame)
	if dst := eth.DestinationAddress(); dst != e.LinkAddress() && dst[0]&1 == 0 {
		// Unicast to another MAC: a veth or promiscuous device shows
		// us frames for others.
		return 0, false
	}
	switch proto := eth.Type(); proto {
	case header.IPv4ProtocolNumber, header.IPv6ProtocolNumber, header.ARPProtocolNumber:
		return proto, true
	}
	return 0, false
}

// deliver passes a checked frame of size bytes (Ethernet header included)
// to GRO, which passes it to the stack.
func (e *Endpoint) deliver(g *gro.GRO, proto tcpip.NetworkProtocolNumber, frame buffer.Buffer, size int) {
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: frame})
	defer pkt.DecRef()
	if _, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize); !ok {
		e.rxDrops.Add(1)
		return
	}
	pkt.NetworkProtocolNumber = proto
	pkt.RXChecksumValidated = true // verified, or vouched for by the kernel
	e.rxPackets.Add(1)
	e.rxBytes.Add(uint64(size))
	g.Enqueue(pkt)
}

// rxChecksumTrusted reads a received frame's virtio-net header flags.
// NEEDS_CSUM means the frame is checksum-partial: built on this host (by
// the kernel's TCP with checksum offload, crossing a veth), its L4
// checksum field holds only the pseudo-header sum and will never be
// completed; it never crossed a wire, and the kernel itself accepts such
// frames (CHECKSUM_PARTIAL) without a check. DATA_VALID means the device
// or the kernel verified it (CHECKSUM_UNNECESSARY). Anything else must be
// verified in software.
func rxChecksumTrusted(vnet []byte) bool {
	return vnet[0]&(unix.VIRTIO_NET_HDR_F_NEEDS_CSUM|unix.VIRTIO_NET_HDR_F_DATA_VALID) != 0
}

// checksumOK is the software half of the RX checksum offload this endpoint
// claims. gVisor takes "checksum validated" per NIC, not per packet (the
// NIC overwrites each packet's RXChecksumValidated with the endpoint's
// CapabilityRXChecksumOffload), and a checksum-partial frame would fail
// its check, so we claim the capability and keep its promise here: the
// IPv4 header checksum is always verified (the kernel always completes
// it); the TCP or UDP checksum is verified unless the kernel vouches for
// the frame (trusted). Malformed packets pass: gVisor's parsers reject
// them with the right counters. Not verifiable per frame, and so passed
// unverified: IP fragments (their L4 checksum covers the reassembled
// datagram) and IPv6 packets with extension headers before TCP/UDP.
func checksumOK(proto tcpip.NetworkProtocolNumber, b []byte, trusted bool) bool {
	switch proto {
	case header.IPv4ProtocolNumber:
		if len(b) < header.IPv4MinimumSize {
			return true
		}
		ip := header.IPv4(b)
		hl := int(ip.HeaderLength())
		total := int(ip.TotalLength())
		if hl < header.IPv4MinimumSize || hl > total || total > len(b) {
			return true
		}
		if !ip[:hl].IsChecksumValid() {
			return false
		}
		if trusted || ip.More() || ip.FragmentOffset() != 0 {
			return true
		}
		return l4ChecksumOK(ip.TransportProtocol(), ip.SourceAddress(), ip.DestinationAddress(), b[hl:total], true)
	case header.IPv6ProtocolNumber:
		if trusted || len(b) < header.IPv6MinimumSize {
			return true
		}
		ip := header.IPv6(b)
		end := header.IPv6MinimumSize + int(ip.PayloadLength())
		if end > len(b) {
			return true
		}
		return l4ChecksumOK(ip.TransportProtocol(), ip.SourceAddress(), ip.DestinationAddress(), b[header.IPv6MinimumSize:end], false)
	}
	return true
}

// l4ChecksumOK verifies a whole TCP or UDP segment's checksum; other
// protocols pass (ICMP is always verified by gVisor).
func l4ChecksumOK(p tcpip.TransportProtocolNumber, src, dst tcpip.Address, seg []byte, v4 bool) bool {
	switch p {
	case header.TCPProtocolNumber:
		if len(seg) < header.TCPMinimumSize {
			return true
		}
	case header.UDPProtocolNumber:
		if len(seg) < header.UDPMinimumSize {
			return true
		}
		if v4 && header.UDP(seg).Checksum() == 0 {
			return true // no checksum: allowed on IPv4 only
		}
	default:
		return true
	}
	xsum := header.PseudoHeaderChecksum(p, src, dst, uint16(len(seg)))
	return checksum.Checksum(seg, xsum) == 0xffff
}
