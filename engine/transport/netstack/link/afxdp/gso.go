package afxdp

import (
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// Segmentation. The endpoint offers host GSO to the stack: gVisor's TCP
// hands WritePackets one packet of up to 64 KiB with TCP GSO options (the
// TCP checksum left to the link), and WritePackets cuts it into MSS-sized
// segments directly in UMEM frames, the way a NIC does TSO: each frame gets
// a copy of the headers with the IP length (and IPv4 ID, incremented per
// segment, and header checksum), the TCP sequence number, flags (FIN and
// PSH only on the last segment, CWR only on the first) and a full TCP
// checksum, so every frame is complete and correct on the wire. Compared
// with gVisor GSO (the stack cuts the segment itself and sends each packet
// through IP, the NIC and WritePackets) this saves a packet buffer and a
// trip down the stack per MTU frame.

// txFrames is how many frames pkt takes: 1, or for a TCP GSO packet one per
// MSS of payload; 0 when it cannot be sent (a segment does not fit a frame,
// or the headers are not what GSO implies).
func txFrames(pkt *stack.PacketBuffer) int {
	g := &pkt.GSOOptions
	if g.Type != stack.GSOTCPv4 && g.Type != stack.GSOTCPv6 {
		if pkt.Size() > frameSize {
			return 0
		}
		return 1
	}
	lh, nh, th := len(pkt.LinkHeader().Slice()), len(pkt.NetworkHeader().Slice()), len(pkt.TransportHeader().Slice())
	if lh+nh+th != pkt.HeaderSize() || th < header.TCPMinimumSize ||
		(g.Type == stack.GSOTCPv4 && nh < header.IPv4MinimumSize) || (g.Type == stack.GSOTCPv6 && nh < header.IPv6MinimumSize) {
		return 0
	}
	payload := pkt.Data().Size()
	mss := int(g.MSS)
	if mss == 0 || mss > payload {
		mss = payload
	}
	if lh+nh+th+mss > frameSize {
		return 0
	}
	if payload == 0 {
		return 1
	}
	return (payload + mss - 1) / mss
}

// writeFrame writes frame seg of the nseg frames of pkt (see txFrames) into
// buf, a whole UMEM frame, and returns its length.
func writeFrame(buf []byte, pkt *stack.PacketBuffer, seg, nseg int) uint32 {
	g := &pkt.GSOOptions
	if g.Type != stack.GSOTCPv4 && g.Type != stack.GSOTCPv6 {
		return uint32(copyRange(buf, pkt, 0, pkt.Size()))
	}
	lh, nh, th := len(pkt.LinkHeader().Slice()), len(pkt.NetworkHeader().Slice()), len(pkt.TransportHeader().Slice())
	hdr := lh + nh + th
	payload := pkt.Data().Size()
	mss := int(g.MSS)
	if mss == 0 || mss > payload {
		mss = payload
	}
	off := seg * mss
	n := min(mss, payload-off)
	copyRange(buf[:hdr], pkt, 0, hdr)
	copyRange(buf[hdr:hdr+n], pkt, hdr+off, n)

	tcpLen := th + n
	var xsum uint16
	if g.Type == stack.GSOTCPv4 {
		ip := header.IPv4(buf[lh : lh+nh])
		ip.SetTotalLength(uint16(nh + tcpLen))
		ip.SetID(ip.ID() + uint16(seg))
		ip.SetChecksum(0)
		ip.SetChecksum(^ip.CalculateChecksum())
		xsum = header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(tcpLen))
	} else {
		ip := header.IPv6(buf[lh : lh+nh])
		ip.SetPayloadLength(uint16(nh - header.IPv6MinimumSize + tcpLen))
		xsum = header.PseudoHeaderChecksum(header.TCPProtocolNumber, ip.SourceAddress(), ip.DestinationAddress(), uint16(tcpLen))
	}
	tcp := header.TCP(buf[lh+nh : hdr])
	tcp.SetSequenceNumber(tcp.SequenceNumber() + uint32(off))
	flags := tcp.Flags()
	if seg != nseg-1 {
		flags &^= header.TCPFlagFin | header.TCPFlagPsh
	}
	if seg != 0 {
		flags &^= header.TCPFlagCwr
	}
	tcp.SetFlags(uint8(flags))
	tcp.SetChecksum(0)
	tcp.SetChecksum(^checksum.Checksum(buf[lh+nh:hdr+n], xsum))
	return uint32(hdr + n)
}

// copyRange copies n bytes of pkt from offset off (0 is the first header
// byte) into dst and returns n. It walks the packet's view list in place:
// PacketBuffer.AsSlices would allocate per packet.
func copyRange(dst []byte, pkt *stack.PacketBuffer, off, n int) int {
	vl, skip := pkt.AsViewList()
	skip += off
	w := 0
	for v := vl.Front(); v != nil && w < n; v = v.Next() {
		b := v.AsSlice()
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		w += copy(dst[w:n], b[skip:])
		skip = 0
	}
	return w
}
