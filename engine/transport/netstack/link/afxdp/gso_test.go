package afxdp

import (
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/hoststack/hoststack/internal/netnstest"
)

// gsoPacket builds a packet the way gVisor's TCP and IP build one for a
// host-GSO link: Ethernet, IPv4 or IPv6, TCP with 12 bytes of options and
// a payload spread over several views, with only the pseudo-header sum in
// the TCP checksum.
func gsoPacket(t *testing.T, v6 bool, payload []byte, mss uint16, flags header.TCPFlags) *stack.PacketBuffer {
	t.Helper()
	var data buffer.Buffer
	for off := 0; off < len(payload); off += 1000 { // several views
		data.Append(buffer.NewViewWithData(payload[off:min(off+1000, len(payload))]))
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{ReserveHeaderBytes: 14 + 40 + 32, Payload: data})
	const optLen = 12
	tcp := header.TCP(pkt.TransportHeader().Push(header.TCPMinimumSize + optLen))
	tcp.Encode(&header.TCPFields{SrcPort: 1234, DstPort: 80, SeqNum: 0xfffff000, AckNum: 77,
		DataOffset: header.TCPMinimumSize + optLen, Flags: flags, WindowSize: 5000})
	for i := range optLen {
		tcp[header.TCPMinimumSize+i] = byte(i + 1)
	}
	tcpLen := uint16(len(tcp) + len(payload))
	var src, dst tcpip.Address
	gso := stack.GSO{NeedsCsum: true, CsumOffset: header.TCPChecksumOffset, MSS: mss, MaxSize: gsoMaxSize}
	if v6 {
		src, dst = tcpip.AddrFrom16(netip.MustParseAddr("fd99::11").As16()), tcpip.AddrFrom16(netip.MustParseAddr("fd99::2").As16())
		ip := header.IPv6(pkt.NetworkHeader().Push(header.IPv6MinimumSize))
		ip.Encode(&header.IPv6Fields{PayloadLength: tcpLen, TransportProtocol: header.TCPProtocolNumber, HopLimit: 64, SrcAddr: src, DstAddr: dst})
		gso.Type, gso.L3HdrLen = stack.GSOTCPv6, header.IPv6MinimumSize
	} else {
		src, dst = tcpip.AddrFrom4([4]byte{10, 99, 0, 11}), tcpip.AddrFrom4([4]byte{10, 99, 0, 2})
		ip := header.IPv4(pkt.NetworkHeader().Push(header.IPv4MinimumSize))
		ip.Encode(&header.IPv4Fields{TotalLength: header.IPv4MinimumSize + tcpLen, ID: 0xfffe, Flags: header.IPv4FlagDontFragment,
			TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: src, DstAddr: dst})
		ip.SetChecksum(^ip.CalculateChecksum())
		gso.Type, gso.L3HdrLen = stack.GSOTCPv4, header.IPv4MinimumSize
	}
	tcp.SetChecksum(header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, tcpLen))
	eth := header.Ethernet(pkt.LinkHeader().Push(header.EthernetMinimumSize))
	eth.Encode(&header.EthernetFields{SrcAddr: "\x02\x00\x00\x00\x00\x01", DstAddr: "\x02\x00\x00\x00\x00\x02", Type: map[bool]tcpip.NetworkProtocolNumber{false: header.IPv4ProtocolNumber, true: header.IPv6ProtocolNumber}[v6]})
	pkt.GSOOptions = gso
	return pkt
}

// TestSegmentation checks the frames writeFrame cuts from host-GSO packets
// as a receiver on a wire would: lengths, IPv4 IDs and header checksums,
// sequence numbers, flags, full TCP checksums and the payload, for IPv4 and
// IPv6, a payload that is and one that is not a multiple of the MSS, and
// one that fits a single frame.
func TestSegmentation(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		for _, size := range []int{1448*5 + 100, 1448 * 4, 700, 0} {
			t.Run(fmt.Sprintf("v6=%v/size=%d", v6, size), func(t *testing.T) {
				payload := make([]byte, size)
				for i := range payload {
					payload[i] = byte(i * 7)
				}
				const mss = 1448
				flags := header.TCPFlagAck | header.TCPFlagPsh | header.TCPFlagFin | header.TCPFlagCwr
				pkt := gsoPacket(t, v6, payload, mss, flags)
				defer pkt.DecRef()
				want := max(1, (size+mss-1)/mss)
				n := txFrames(pkt)
				if n != want {
					t.Fatalf("txFrames = %d, want %d", n, want)
				}
				var got []byte
				var id uint16
				for seg := range n {
					buf := make([]byte, frameSize)
					l := writeFrame(buf, pkt, seg, n)
					f := buf[:l]
					var tcpSeg []byte
					var src, dst tcpip.Address
					if v6 {
						ip := header.IPv6(f[14:])
						if int(ip.PayloadLength()) != len(f)-14-header.IPv6MinimumSize {
							t.Fatalf("seg %d: IPv6 payload length %d, frame %d", seg, ip.PayloadLength(), len(f))
						}
						tcpSeg, src, dst = ip.Payload(), ip.SourceAddress(), ip.DestinationAddress()
					} else {
						ip := header.IPv4(f[14:])
						if int(ip.TotalLength()) != len(f)-14 || !ip.IsChecksumValid() {
							t.Fatalf("seg %d: IPv4 total length %d (frame %d), checksum valid %v", seg, ip.TotalLength(), len(f), ip.IsChecksumValid())
						}
						if seg == 0 {
							id = ip.ID()
						} else if ip.ID() != id+uint16(seg) {
							t.Fatalf("seg %d: IPv4 ID %#x, first %#x", seg, ip.ID(), id)
						}
						tcpSeg, src, dst = ip.Payload(), ip.SourceAddress(), ip.DestinationAddress()
					}
					sum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, uint16(len(tcpSeg)))
					if checksum.Checksum(tcpSeg, sum) != 0xffff {
						t.Fatalf("seg %d: bad TCP checksum", seg)
					}
					tcp := header.TCP(tcpSeg)
					if s := tcp.SequenceNumber(); s != 0xfffff000+uint32(seg*mss) {
						t.Fatalf("seg %d: seq %#x", seg, s)
					}
					fl := tcp.Flags()
					last, first := seg == n-1, seg == 0
					if fl.Contains(header.TCPFlagFin) != last || fl.Contains(header.TCPFlagPsh) != last ||
						fl.Contains(header.TCPFlagCwr) != first || !fl.Contains(header.TCPFlagAck) {
						t.Fatalf("seg %d of %d: flags %v", seg, n, fl)
					}
					if len(tcp.Options()) != 12 || tcp.Options()[11] != 12 {
						t.Fatalf("seg %d: options %v", seg, tcp.Options())
					}
					if len(tcp.Payload()) > mss {
						t.Fatalf("seg %d: %d payload bytes", seg, len(tcp.Payload()))
					}
					got = append(got, tcp.Payload()...)
				}
				if !bytes.Equal(got, payload) {
					t.Fatalf("payload differs: %d bytes, want %d", len(got), len(payload))
				}
			})
		}
	}
	// A segment that cannot fit a frame is refused, not truncated.
	pkt := gsoPacket(t, false, make([]byte, 8000), 5000, header.TCPFlagAck)
	defer pkt.DecRef()
	if n := txFrames(pkt); n != 0 {
		t.Fatalf("txFrames of a 5000-byte MSS = %d, want 0", n)
	}
}

// TestSegmentationOnTheWire sends from the stack with B's veth verifying
// checksums itself (rx checksumming off: by default veth marks what it
// receives as already verified), so a frame with a bad IP or TCP checksum
// is dropped by B's kernel and the transfer cannot complete; B's TCP
// checksum error counter must stay put.
func TestSegmentationOnTheWire(t *testing.T) {
	e := newEnv(t, ModeAuto)
	netnstest.Run(t, "ip", "netns", "exec", e.p.B.NS, "ethtool", "-K", e.p.B.Dev, "rx", "off")
	before := csumErrors(t, e.p.B)
	for _, v6 := range []bool{false, true} {
		c, k := e.dialFromStack(t, v6)
		transfer(t, c, k, size(16<<20), 31, 60*time.Second)
	}
	if d := csumErrors(t, e.p.B) - before; d != 0 {
		t.Fatalf("B counted %d TCP checksum errors", d)
	}
}

// csumErrors is the sum of B's TCP and TCPv6 InCsumErrors counters.
func csumErrors(t *testing.T, end netnstest.End) uint64 {
	t.Helper()
	var total uint64
	for _, f := range []string{"/proc/net/snmp", "/proc/net/snmp6"} {
		out, err := inNS(end.NS, "cat", f)
		if err != nil {
			t.Fatalf("%s: %v: %s", f, err, out)
		}
		lines := strings.Split(string(out), "\n")
		for i, l := range lines {
			if strings.HasPrefix(l, "Tcp6InCsumErrors") {
				v, _ := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(l, "Tcp6InCsumErrors")), 10, 64)
				total += v
			}
			// snmp: a "Tcp:" header line, then a "Tcp:" value line.
			if strings.HasPrefix(l, "Tcp: ") && i+1 < len(lines) && strings.HasPrefix(lines[i+1], "Tcp: ") && strings.Contains(l, "InCsumErrors") {
				names, vals := strings.Fields(l), strings.Fields(lines[i+1])
				for j, n := range names {
					if n == "InCsumErrors" && j < len(vals) {
						v, _ := strconv.ParseUint(vals[j], 10, 64)
						total += v
					}
				}
			}
		}
	}
	return total
}
