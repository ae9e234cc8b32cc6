// Package netstack is hoststack's userspace transport: sessions to the
// outside world are carried by gVisor's TCP/IP stack (gvisor.dev/gvisor/pkg/
// tcpip) running on a node interface through a link layer of
// engine/transport/netstack/link (AF_XDP, AF_PACKET or DPDK), with the app
// namespace's own addresses — not the kernel's.
//
// The engine's FIFOs are fed straight from and into the stack's endpoints:
// a few loops (GOMAXPROCS, loop.go) move the bytes of every plain TCP
// session with Endpoint.Read into the app's rx fifo (the stack copies its
// segments into shared memory, nothing in between) and Endpoint.Write from
// the app's tx fifo (the stack copies from shared memory into its send
// buffer), woken by the endpoints' waiter queues (the session itself is the
// waiter entry's listener) and the app's kicks: no goroutine per session.
// TLS sessions keep stream.Pump's goroutines around crypto/tls.
//
// TCP and UDP, IPv4 and IPv6, listen, connect, accept, half-close and
// reset; global-scope SessionRules are judged by the engine before a
// connect starts and as a session is accepted, and per datagram for UDP.
package netstack

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv6"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/hoststack/hoststack/engine/session"
)

// Defaults for zero Options fields.
const (
	DefaultConnectTimeout = 30 * time.Second
	DefaultCloseTimeout   = 30 * time.Second
	// DefaultBufferSize is the default TCP send and receive buffer of a
	// session; the stack may grow the receive buffer to MaxBufferSize.
	DefaultBufferSize = 1 << 20
	MaxBufferSize     = 8 << 20
)

// Route sends traffic for Dst through the gateway Via (invalid Via: on
// link).
type Route struct {
	Dst netip.Prefix
	Via netip.Addr
}

// Options configures a Transport.
type Options struct {
	// Link is the link endpoint the stack runs on; the Transport owns it
	// from New on (Close closes the stack, which detaches it).
	Link stack.LinkEndpoint
	// Addrs are the stack's own addresses with their on-link prefixes.
	Addrs []netip.Prefix
	// Routes beyond the on-link prefixes (a default route, typically).
	Routes []Route
	// ConnectTimeout bounds a TCP handshake; CloseTimeout bounds how long
	// what an app wrote before closing may take to leave.
	ConnectTimeout, CloseTimeout time.Duration
	// Logf logs what no app can be told; nil: silent.
	Logf func(format string, args ...any)
}

// nic is the stack's one NIC.
const nic tcpip.NICID = 1

// Transport is the netstack transport. It implements session.Transport,
// session.StreamListener, session.PacketTransport and session.HostAddresser.
type Transport struct {
	opts  Options
	s     *stack.Stack
	addrs []netip.Prefix

	mu     sync.Mutex
	closed bool
	flows  sync.WaitGroup // session goroutines and the loops' sessions
	loops  []*loop        // made with the first session (under mu)
	next   int            // the loop for the next session (under mu)
}

var (
	_ session.Transport       = (*Transport)(nil)
	_ session.StreamListener  = (*Transport)(nil)
	_ session.PacketTransport = (*Transport)(nil)
	_ session.HostAddresser   = (*Transport)(nil)
)

// New builds the stack on opts.Link with opts.Addrs and the routes.
func New(opts Options) (*Transport, error) {
	if opts.Link == nil {
		return nil, errors.New("netstack: no link endpoint")
	}
	if len(opts.Addrs) == 0 {
		return nil, errors.New("netstack: no address: the stack needs addresses of its own")
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = DefaultConnectTimeout
	}
	if opts.CloseTimeout <= 0 {
		opts.CloseTimeout = DefaultCloseTimeout
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	s := stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, ipv6.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
	})
	fail := func(format string, args ...any) (*Transport, error) {
		s.Close()
		s.Wait()
		return nil, fmt.Errorf("netstack: "+format, args...)
	}
	for _, opt := range []tcpip.SettableTransportProtocolOption{
		func() *tcpip.TCPSACKEnabled { v := tcpip.TCPSACKEnabled(true); return &v }(),
		func() *tcpip.TCPModerateReceiveBufferOption {
			v := tcpip.TCPModerateReceiveBufferOption(true)
			return &v
		}(),
		&tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: DefaultBufferSize, Max: MaxBufferSize},
		&tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: DefaultBufferSize, Max: MaxBufferSize},
	} {
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, opt); err != nil {
			return fail("tcp option %T: %v", opt, err)
		}
	}
	if err := s.CreateNIC(nic, opts.Link); err != nil {
		return fail("create nic: %v", err)
	}
	var routes []tcpip.Route
	var addrs []netip.Prefix
	for _, p := range opts.Addrs {
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits())
		pa := tcpip.ProtocolAddress{Protocol: proto(p.Addr()), AddressWithPrefix: tcpip.AddressWithPrefix{
			Address: tcpip.AddrFromSlice(p.Addr().AsSlice()), PrefixLen: p.Bits()}}
		if err := s.AddProtocolAddress(nic, pa, stack.AddressProperties{}); err != nil {
			return fail("address %s: %v", p, err)
		}
		routes = append(routes, tcpip.Route{Destination: pa.AddressWithPrefix.Subnet(), NIC: nic})
		addrs = append(addrs, p)
	}
	for _, r := range opts.Routes {
		sub, err := subnet(r.Dst)
		if err != nil {
			return fail("route %s: %v", r.Dst, err)
		}
		rt := tcpip.Route{Destination: sub, NIC: nic}
		if r.Via.IsValid() {
			rt.Gateway = tcpip.AddrFromSlice(r.Via.Unmap().AsSlice())
		}
		routes = append(routes, rt)
	}
	s.SetRouteTable(routes)
	return &Transport{opts: opts, s: s, addrs: addrs}, nil
}

// subnet converts a prefix to a tcpip.Subnet.
func subnet(p netip.Prefix) (tcpip.Subnet, error) {
	p = p.Masked()
	n := len(p.Addr().AsSlice())
	mask := make([]byte, n)
	for i := 0; i < p.Bits(); i++ {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	return tcpip.NewSubnet(tcpip.AddrFromSlice(p.Addr().AsSlice()), tcpip.MaskFromBytes(mask))
}

func proto(a netip.Addr) tcpip.NetworkProtocolNumber {
	if a.Unmap().Is4() {
		return ipv4.ProtocolNumber
	}
	return ipv6.ProtocolNumber
}

// Name returns "netstack".
func (t *Transport) Name() string { return "netstack" }

// Stack is the gVisor stack, for tests and diagnostics.
func (t *Transport) Stack() *stack.Stack { return t.s }

// Host reports the stack's own addresses as the app namespace's one host:
// in Interface mode every app of the namespace shares them.
func (t *Transport) Host(_ string, addr netip.Addr) (string, bool) {
	addr = addr.Unmap()
	for _, p := range t.addrs {
		if p.Addr() == addr {
			return "", true
		}
	}
	return "", false
}

// HostAddr returns the stack's first address of like's family.
func (t *Transport) HostAddr(_, _ string, like netip.Addr) (netip.Addr, bool) {
	for _, p := range t.addrs {
		if p.Addr().Is4() == like.Unmap().Is4() {
			return p.Addr(), true
		}
	}
	return netip.Addr{}, false
}

// Close stops the stack: every session it carries is aborted.
func (t *Transport) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	t.mu.Unlock()
	t.s.Close()
	t.flows.Wait()
	t.mu.Lock()
	loops := t.loops
	t.loops = nil
	t.mu.Unlock()
	for _, l := range loops {
		l.close()
	}
	t.s.Wait()
	return nil
}

// serve hands a plain TCP session to one of the loops (GOMAXPROCS of
// them, round robin) unless the transport is closed: false then, and the
// caller aborts ep and finishes f.
func (t *Transport) serve(f *session.Flow, ep tcpip.Endpoint, wq *waiter.Queue, peer netip.AddrPort) bool {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return false
	}
	if t.loops == nil {
		for range runtime.GOMAXPROCS(0) {
			t.loops = append(t.loops, newLoop(t))
		}
	}
	l := t.loops[t.next%len(t.loops)]
	t.next++
	t.flows.Add(1)
	t.mu.Unlock()
	l.add(f, ep, wq, peer)
	return true
}

// start runs fn as a session goroutine unless the transport is closed.
func (t *Transport) start(fn func()) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	t.flows.Add(1)
	go func() {
		defer t.flows.Done()
		fn()
	}()
	return true
}

func fullAddr(ap netip.AddrPort) tcpip.FullAddress {
	fa := tcpip.FullAddress{Port: ap.Port()}
	if a := ap.Addr().Unmap(); a.IsValid() && !a.IsUnspecified() {
		fa.Addr = tcpip.AddrFromSlice(a.AsSlice())
	}
	return fa
}

func addrPort(fa tcpip.FullAddress) netip.AddrPort {
	a, _ := netip.AddrFromSlice(fa.Addr.AsSlice())
	return netip.AddrPortFrom(a.Unmap(), fa.Port)
}
