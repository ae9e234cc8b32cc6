// Package stacktest puts a gVisor network stack on a link endpoint for the
// tests of the link layers and the netstack transport, and checks bulk
// transfers end to end.
package stacktest

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// NIC is the id of the one NIC of a stack from New.
const NIC tcpip.NICID = 1

// New returns a stack with IPv4, IPv6, ARP, TCP and UDP on ep as NIC 1, the
// given addresses (prefixes, e.g. 10.99.0.11/24) assigned, and an on-link
// route for each prefix. The stack is closed on cleanup.
func New(t testing.TB, ep stack.LinkEndpoint, addrs ...netip.Prefix) *stack.Stack {
	t.Helper()
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	t.Cleanup(func() {
		s.Close()
		s.Wait()
	})
	if err := s.CreateNIC(NIC, ep); err != nil {
		t.Fatalf("create nic: %v", err)
	}
	// A stack answers ARP and neighbour solicitations, and lets TCP use
	// SACK and a window large enough for a veth.
	sack := tcpip.TCPSACKEnabled(true)
	if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, &sack); err != nil {
		t.Fatalf("tcp sack: %v", err)
	}
	var routes []tcpip.Route
	for _, p := range addrs {
		proto := ipv4.ProtocolNumber
		if p.Addr().Is6() {
			proto = ipv6.ProtocolNumber
		}
		pa := tcpip.ProtocolAddress{Protocol: proto, AddressWithPrefix: tcpip.AddressWithPrefix{
			Address: tcpip.AddrFromSlice(p.Addr().AsSlice()), PrefixLen: p.Bits()}}
		if err := s.AddProtocolAddress(NIC, pa, stack.AddressProperties{}); err != nil {
			t.Fatalf("add address %s: %v", p, err)
		}
		routes = append(routes, tcpip.Route{Destination: pa.AddressWithPrefix.Subnet(), NIC: NIC})
	}
	s.SetRouteTable(routes)
	return s
}

// FullAddress is the tcpip form of ap on NIC 1.
func FullAddress(ap netip.AddrPort) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: NIC, Addr: tcpip.AddrFromSlice(ap.Addr().AsSlice()), Port: ap.Port()}
}

// Proto is the network protocol number of a.
func Proto(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Is4() {
		return ipv4.ProtocolNumber
	}
	return ipv6.ProtocolNumber
}

// Source is a reproducible pseudo-random byte stream of a given length that
// also hashes what it produced.
type Source struct {
	left int64
	rng  *rand.ChaCha8
	h    hashWriter
}

type hashWriter interface {
	io.Writer
	Sum([]byte) []byte
}

// NewSource returns n bytes of pseudo-random data seeded by seed.
func NewSource(n int64, seed uint64) *Source {
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	return &Source{left: n, rng: rand.NewChaCha8(s), h: sha256.New()}
}

// Read implements io.Reader.
func (s *Source) Read(p []byte) (int, error) {
	if s.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > s.left {
		p = p[:s.left]
	}
	_, _ = s.rng.Read(p)
	s.h.Write(p)
	s.left -= int64(len(p))
	return len(p), nil
}

// Sum is the SHA-256 of what was read so far.
func (s *Source) Sum() []byte { return s.h.Sum(nil) }

// Sink hashes and counts what is written to it.
type Sink struct {
	N int64
	h hashWriter
}

// NewSink returns an empty Sink.
func NewSink() *Sink { return &Sink{h: sha256.New()} }

// Write implements io.Writer.
func (s *Sink) Write(p []byte) (int, error) {
	s.h.Write(p)
	s.N += int64(len(p))
	return len(p), nil
}

// Sum is the SHA-256 of what was written.
func (s *Sink) Sum() []byte { return s.h.Sum(nil) }

// Check compares a source with what a sink received.
func Check(src *Source, dst *Sink, n int64) error {
	if dst.N != n {
		return fmt.Errorf("received %d bytes, want %d", dst.N, n)
	}
	if !bytes.Equal(src.Sum(), dst.Sum()) {
		return fmt.Errorf("sha256 of the %d bytes received differs from what was sent", n)
	}
	return nil
}
