package afpacket

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/rawfile"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/stack/gro"
)

// Receive ring geometry (TPACKET_V2). A frame must hold the tpacket2
// header, the sockaddr_ll, the virtio-net header and a whole GSO/GRO frame:
// the kernel puts the MAC header at offset 76 (TPACKET_ALIGN(52+16) + 10 -
// 14) and a GSO frame is up to 14+65535 bytes, so 65625 bytes. Blocks of
// 1 MiB hold 15 frames of 69904 bytes (a multiple of TPACKET_ALIGNMENT);
// a frame may not straddle two blocks. 16 blocks = 240 frames = 16 MiB:
// 240 full-size frames (~15 MiB of TCP data) or, from a peer that does not
// use TSO, 240 MTU-sized ones.
const (
	blockSize  = 1 << 20
	blockNR    = 16
	frameSize  = (blockSize / 15) &^ 15
	frameNR    = blockNR * (blockSize / frameSize)
	vnetHdrLen = 10 // struct virtio_net_hdr

	// sockaddr_ll follows the tpacket2_hdr, TPACKET_ALIGN'ed.
	sllOffset = (int(unsafe.Sizeof(unix.Tpacket2Hdr{})) + 15) &^ 15
)

type rxRing struct {
	buf  []byte
	next int // the frame we expect the kernel to fill next
}

func newRxRing(fd int) (*rxRing, error) {
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V2); err != nil {
		return nil, fmt.Errorf("PACKET_VERSION TPACKET_V2: %w", err)
	}
	req := unix.TpacketReq{Block_size: blockSize, Block_nr: blockNR, Frame_size: frameSize, Frame_nr: frameNR}
	if err := unix.SetsockoptTpacketReq(fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &req); err != nil {
		return nil, fmt.Errorf("PACKET_RX_RING: %w", err)
	}
	buf, err := unix.Mmap(fd, 0, blockSize*blockNR, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("mmap rx ring: %w", err)
	}
	return &rxRing{buf: buf}, nil
}

func (r *rxRing) unmap() { _ = unix.Munmap(r.buf) }

// frame returns frame i's header. Frames are laid out block by block; with
// whole frames per block and blockSize a multiple of frameSize's count,
// frame i of block b starts at b*blockSize + (i%perBlock)*frameSize.
func (r *rxRing) frame(i int) (*unix.Tpacket2Hdr, []byte) {
	const perBlock = blockSize / frameSize
	off := (i/perBlock)*blockSize + (i%perBlock)*frameSize
	f := r.buf[off : off+frameSize : off+frameSize]
	return (*unix.Tpacket2Hdr)(unsafe.Pointer(&f[0])), f
}

// The kernel and we hand frames back and forth through tp_status: the
// kernel writes the frame, then stores TP_STATUS_USER (with a release
// barrier); we read the frame after an acquiring load of the status and
// give it back by storing TP_STATUS_KERNEL.
func loadStatus(h *unix.Tpacket2Hdr) uint32     { return atomic.LoadUint32(&h.Status) }
func storeStatus(h *unix.Tpacket2Hdr, s uint32) { atomic.StoreUint32(&h.Status, s) }

// rxLoop drains the ring into d until stopped through e.rxStop.
func (e *Endpoint) rxLoop(d stack.NetworkDispatcher, done chan<- struct{}) {
	defer close(done)
	// Software GRO merges consecutive MTU-sized segments of a flow into
	// one large segment, so TCP processes one segment per ring batch
	// instead of per frame. It is flushed when the ring runs dry, so it
	// never holds a packet while we sleep.
	var g gro.GRO
	g.Init(true)
	g.Dispatcher = d
	r := e.ring
	pfd := [2]rawfile.PollEvent{
		{FD: int32(e.rxStop.EFD), Events: unix.POLLIN},
		{FD: int32(e.fd), Events: unix.POLLIN | unix.POLLERR},
	}
	for {
		h, f := r.frame(r.next)
		if loadStatus(h)&unix.TP_STATUS_USER == 0 {
			g.Flush()
			pfd[0].Revents, pfd[1].Revents = 0, 0
			if _, errno := rawfile.BlockingPoll(&pfd[0], len(pfd), nil); errno != 0 && errno != unix.EINTR {
				// poll(2) on two valid fds has no other failure
				// than ENOMEM; try again rather than go deaf.
				continue
			}
			if pfd[0].Revents != 0 {
				return
			}
			if pfd[1].Revents&unix.POLLERR != 0 {
				// A pending socket error (e.g. ENETDOWN when the
				// interface goes away) keeps poll returning
				// until read.
				_, _ = unix.GetsockoptInt(e.fd, unix.SOL_SOCKET, unix.SO_ERROR)
			}
			if pfd[1].Revents&(unix.POLLHUP|unix.POLLNVAL) != 0 {
				return
			}
			continue
		}
		e.rxFrame(&g, h, f)
		storeStatus(h, unix.TP_STATUS_KERNEL)
		r.next++
		if r.next == frameNR {
			r.next = 0
		}
	}
}

// rxFrame copies one frame out of the ring and hands it to GRO (which
// delivers it to the stack).
func (e *Endpoint) rxFrame(g *gro.GRO, h *unix.Tpacket2Hdr, f []byte) {
	mac, snap := int(h.Mac), int(h.Snaplen)
	if mac < sllOffset+unix.SizeofSockaddrLinklayer+vnetHdrLen || mac+snap > len(f) || snap < header.EthernetMinimumSize {
		e.rxDrops.Add(1)
		return
	}
	if snap < int(h.Len) {
		// Larger than a frame (e.g. BIG TCP GRO beyond 64 KiB).
		e.rxDrops.Add(1)
		return
	}
	if loadStatus(h)&unix.TP_STATUS_VLAN_VALID != 0 {
		// The kernel stripped a VLAN tag: the frame belongs to a VLAN
		// we do not serve.
		return
	}
	data := f[mac : mac+snap]
	eth := header.Ethernet(data)
	if dst := eth.DestinationAddress(); dst != e.LinkAddress() && dst[0]&1 == 0 {
		// Unicast to another MAC: a veth or promiscuous device shows
		// us frames for others.
		return
	}
	proto := eth.Type()
	switch proto {
	case header.IPv4ProtocolNumber, header.IPv6ProtocolNumber, header.ARPProtocolNumber:
	default:
		return
	}
	// Checksums: the virtio header says whether the kernel vouches for
	// the frame; if not, verify it here (see checksumOK).
	if !checksumOK(proto, data[header.EthernetMinimumSize:], rxChecksumTrusted(f[mac-vnetHdrLen:mac])) {
		e.rxCsumErrors.Add(1)
		return
	}

	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{
		Payload: buffer.MakeWithView(buffer.NewViewWithData(data)),
	})
	defer pkt.DecRef()
	if _, ok := pkt.LinkHeader().Consume(header.EthernetMinimumSize); !ok {
		e.rxDrops.Add(1)
		return
	}
	pkt.NetworkProtocolNumber = proto
	pkt.RXChecksumValidated = true // verified above, or vouched for
	e.rxPackets.Add(1)
	e.rxBytes.Add(uint64(snap))
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
