package netstack_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/hoststack/hoststack/agent/apply"
	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/rules"
	"github.com/hoststack/hoststack/engine/session"
	enginetls "github.com/hoststack/hoststack/engine/tls"
	"github.com/hoststack/hoststack/engine/transport/netstack"
	"github.com/hoststack/hoststack/engine/transport/netstack/link/afpacket"
	"github.com/hoststack/hoststack/engine/transport/netstack/link/afxdp"
	"github.com/hoststack/hoststack/engine/transport/netstack/link/dpdk"
	"github.com/hoststack/hoststack/internal/certstest"
	"github.com/hoststack/hoststack/internal/echotest"
	"github.com/hoststack/hoststack/internal/netnstest"
)

// links are the link layers the transport is tested on (plus dpdk when
// built with -tags dpdk: make test-dpdk).
var links = []string{"afpacket", "afxdp"}

// newLink opens a link endpoint of kind on end's veth for the addresses.
func newLink(t testing.TB, kind string, end netnstest.End, addrs []netip.Prefix) stack.LinkEndpoint {
	t.Helper()
	switch kind {
	case "afpacket":
		ep, err := afpacket.New(afpacket.Options{Interface: end.Dev, Netns: end.Path(), Addrs: addrs})
		if err != nil {
			t.Fatalf("afpacket: %v", err)
		}
		return ep
	case "afxdp":
		ep, err := afxdp.New(afxdp.Options{Interface: end.Dev, Netns: end.Path(), Addrs: addrs})
		if err != nil {
			t.Fatalf("afxdp: %v", err)
		}
		return ep
	case "dpdk":
		ep, err := dpdk.New(dpdk.Options{Interface: end.Dev, Netns: end.Path(), Addrs: addrs})
		if err != nil {
			t.Fatalf("dpdk: %v", err)
		}
		return ep
	}
	t.Fatalf("unknown link %q", kind)
	return nil
}

// node is an engine whose transport is a userspace stack on one end of
// the pair, with the namespace team/web and its attach socket.
type node struct {
	eng   *session.Engine
	tr    *netstack.Transport
	sock  string
	table *rules.Table
}

func newNode(t testing.TB, kind string, end netnstest.End, addrs ...string) *node {
	t.Helper()
	// No test but the one of the close timer may depend on it: an hour
	// stands for never.
	return newNodeClosing(t, kind, end, time.Hour, addrs...)
}

func newNodeClosing(t testing.TB, kind string, end netnstest.End, closeTimeout time.Duration, addrs ...string) *node {
	t.Helper()
	var ps []netip.Prefix
	for _, a := range addrs {
		ps = append(ps, netip.MustParsePrefix(a))
	}
	tr, err := netstack.New(netstack.Options{Link: newLink(t, kind, end, ps), Addrs: ps, CloseTimeout: closeTimeout, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	n := &node{tr: tr, table: new(rules.Table)}
	n.eng, err = session.New(session.Config{RunDir: t.TempDir(), Transport: tr, Rules: apply.RuleLookup{Table: n.table},
		Logf: func(string, ...any) {}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		n.eng.Close()
		tr.Close()
	})
	n.sock, err = n.eng.AddNamespace(session.NamespaceConfig{Namespace: "team", Name: "web", SegmentSize: 256 << 20,
		RxFifoSize: 4 << 20, TxFifoSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (n *node) attach(t testing.TB, name string) *client.App {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a, err := client.Attach(ctx, client.Options{Socket: n.sock, Name: name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// pair is two namespaces on a veth whose senders compute checksums (an
// XDP program sees frames as sent: veth would pass checksum-partial ones).
func pair(t testing.TB) *netnstest.Pair {
	p := netnstest.NewPair(t)
	for _, e := range []netnstest.End{p.A, p.B} {
		netnstest.Run(t, "ip", "netns", "exec", e.NS, "ethtool", "-K", e.Dev, "tx", "off")
	}
	return p
}

func dial(app *client.App, addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return app.Dial(ctx, "tcp", addr)
}

// TestWithKernelPeer: over each link layer, an app's sessions through the
// userspace stack reach a plain kernel TCP server (IPv4 and IPv6) from the
// stack's own address, the app's listener is reachable from a kernel
// client, and refusals and resets reach the app as errors.
func TestWithKernelPeer(t *testing.T) {
	for _, kind := range links {
		t.Run(kind, func(t *testing.T) {
			p := pair(t)
			n := newNode(t, kind, p.A, "10.99.0.11/24", "fd99::11/64")
			app := n.attach(t, "web")
			msg := bytes.Repeat([]byte("userspace tcp "), 300_000)

			for _, srv := range []string{"10.99.0.2", "fd99::2"} {
				ln := netnstest.Listen(t, p.B.Path(), "tcp", net.JoinHostPort(srv, "0"))
				peers := echotest.Serve(ln)
				c, err := dial(app, ln.Addr().String())
				if err != nil {
					t.Fatalf("dial %s: %v", ln.Addr(), err)
				}
				src := c.LocalAddr().(*net.TCPAddr).IP.String()
				if err := echotest.RoundTrip(c, msg, 60*time.Second); err != nil {
					t.Fatalf("%s: %v", srv, err)
				}
				if got := (<-peers).(*net.TCPAddr).IP.String(); got != src || !strings.HasSuffix(got, "::11") && got != "10.99.0.11" {
					t.Errorf("server saw %s, app's local address %s; want the stack's own", got, src)
				}
			}

			ln, err := app.Listen("tcp", ":0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			peers := echotest.Serve(ln)
			port := ln.Addr().(*net.TCPAddr).Port
			for _, dst := range []string{"10.99.0.11", "fd99::11"} {
				c, err := netnstest.Dial(p.B.Path(), "tcp", net.JoinHostPort(dst, fmt.Sprint(port)))
				if err != nil {
					t.Fatalf("kernel client to %s: %v", dst, err)
				}
				if err := echotest.RoundTrip(c, msg[:100_000], 60*time.Second); err != nil {
					t.Fatalf("inbound to %s: %v", dst, err)
				}
				<-peers
			}

			if _, err := dial(app, "10.99.0.2:1"); !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("dial a closed port: %v, want ECONNREFUSED", err)
			}
			rst := netnstest.Listen(t, p.B.Path(), "tcp", "10.99.0.2:0")
			go func() {
				c, err := rst.Accept()
				if err != nil {
					return
				}
				_, _ = io.ReadFull(c, make([]byte, 5))
				_ = c.(*net.TCPConn).SetLinger(0)
				c.Close()
			}()
			c, err := dial(app, rst.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) {
				t.Errorf("read after the server's reset: %v, want ECONNRESET", err)
			}
		})
	}
}

// TestTwoEngines: two nodes, each an engine on its own userspace stack
// over the same link layer, talk to each other.
func TestTwoEngines(t *testing.T) {
	for _, kind := range links {
		t.Run(kind, func(t *testing.T) {
			p := pair(t)
			a := newNode(t, kind, p.A, "10.99.0.11/24", "fd99::11/64")
			b := newNode(t, kind, p.B, "10.99.0.12/24", "fd99::12/64")
			ln, err := b.attach(t, "server").Listen("tcp", ":7000")
			if err != nil {
				t.Fatal(err)
			}
			peers := echotest.Serve(ln)
			cli := a.attach(t, "client")
			for _, dst := range []string{"10.99.0.12:7000", "[fd99::12]:7000"} {
				c, err := dial(cli, dst)
				if err != nil {
					t.Fatalf("dial %s: %v", dst, err)
				}
				if err := echotest.RoundTrip(c, bytes.Repeat([]byte{7, 1, 3}, 1<<20), 60*time.Second); err != nil {
					t.Fatalf("%s: %v", dst, err)
				}
				if r := (<-peers).(*net.TCPAddr).IP.String(); r != "10.99.0.11" && r != "fd99::11" {
					t.Errorf("server saw %s", r)
				}
			}
		})
	}
}

// TestRulesAndUDP: global rules refuse connects and inbound sessions; UDP
// datagrams travel both ways with a kernel peer.
func TestRulesAndUDP(t *testing.T) {
	p := pair(t)
	n := newNode(t, "afpacket", p.A, "10.99.0.11/24", "fd99::11/64")
	app := n.attach(t, "web")
	set, _, err := rules.Compile([]rules.Rule{
		{Namespace: "team/web", Scope: rules.Global, Proto: rules.TCP, Action: rules.Deny, Name: "team/no-7001",
			Local: netip.MustParsePrefix("0.0.0.0/0"), Remote: netip.MustParsePrefix("10.99.0.2/32"), RemotePort: 7001},
		{Namespace: "team/web", Scope: rules.Global, Proto: rules.TCP, Action: rules.Deny, Name: "team/no-inbound-b",
			Local: netip.MustParsePrefix("10.99.0.11/32"), LocalPort: 7002, Remote: netip.MustParsePrefix("10.99.0.2/32")},
	})
	if err != nil {
		t.Fatal(err)
	}
	n.table.Store(set)
	if _, err := dial(app, "10.99.0.2:7001"); !errors.Is(err, syscall.EACCES) || !strings.Contains(err.Error(), "team/no-7001") {
		t.Fatalf("denied connect: %v", err)
	}
	ln, err := app.Listen("tcp", ":7002")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	peers := echotest.Serve(ln)
	c, err := netnstest.Dial(p.B.Path(), "tcp", "10.99.0.11:7002")
	if err == nil {
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("denied inbound: %v, want ECONNRESET", err)
	}
	select {
	case r := <-peers:
		t.Fatalf("the app accepted a denied session from %s", r)
	default:
	}

	pc, err := app.ListenPacket("udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	port := pc.LocalAddr().(*net.UDPAddr).Port
	peer := netnstest.ListenPacket(t, p.B.Path(), "udp", ":0")
	_ = pc.SetDeadline(time.Now().Add(30 * time.Second))
	_ = peer.SetDeadline(time.Now().Add(30 * time.Second))
	for _, fam := range []struct{ app, peer string }{{"10.99.0.11", "10.99.0.2"}, {"fd99::11", "fd99::2"}} {
		if _, err := peer.WriteTo([]byte("ping "+fam.app), &net.UDPAddr{IP: net.ParseIP(fam.app), Port: port}); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1500)
		k, from, err := pc.ReadFrom(buf)
		if err != nil || string(buf[:k]) != "ping "+fam.app || from.(*net.UDPAddr).IP.String() != fam.peer {
			t.Fatalf("app got %q from %v: %v", buf[:k], from, err)
		}
		if _, err := pc.WriteTo([]byte("pong"), from); err != nil {
			t.Fatal(err)
		}
		k, from, err = peer.ReadFrom(buf)
		if err != nil || string(buf[:k]) != "pong" || from.(*net.UDPAddr).IP.String() != fam.app {
			t.Fatalf("peer got %q from %v: %v", buf[:k], from, err)
		}
	}
}

// TestTLS: over the userspace stack, a stock crypto/tls client reaches an
// app's TLS listener and an app dials a stock TLS server; the app reads
// and writes plaintext.
func TestTLS(t *testing.T) {
	p := pair(t)
	ca := certstest.NewCA(t, "test CA")
	store := &enginetls.Store{}
	srvPair := ca.Issue(t, "edge.team")
	if err := store.Set("team", "edge", srvPair.CertPEM, srvPair.KeyPEM); err != nil {
		t.Fatal(err)
	}
	if err := store.SetCA("team", "edge", ca.PEM); err != nil {
		t.Fatal(err)
	}
	ps := []netip.Prefix{netip.MustParsePrefix("10.99.0.11/24")}
	tr, err := netstack.New(netstack.Options{Link: newLink(t, "afpacket", p.A, ps), Addrs: ps, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	eng, err := session.New(session.Config{RunDir: t.TempDir(), Transport: tr, TLS: store, Logf: func(string, ...any) {}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { eng.Close(); tr.Close() }()
	sock, err := eng.AddNamespace(session.NamespaceConfig{Namespace: "team", Name: "edge", SegmentSize: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	n := &node{eng: eng, tr: tr, sock: sock}
	app := n.attach(t, "edge")

	ln, err := app.ListenTLS("tcp", ":8443", client.TLSConfig{CertKeyPair: "edge"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	echotest.Serve(ln)
	raw, err := netnstest.Dial(p.B.Path(), "tcp", "10.99.0.11:8443")
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(raw, &tls.Config{ServerName: "edge.team", RootCAs: ca.Pool()})
	if err := echotest.RoundTrip(tc, bytes.Repeat([]byte("tls over netstack "), 10_000), 60*time.Second); err != nil {
		t.Fatalf("stock client to the app's TLS listener: %v", err)
	}

	outside := ca.Issue(t, "api.outside")
	sl := tls.NewListener(netnstest.Listen(t, p.B.Path(), "tcp", "10.99.0.2:0"), &tls.Config{Certificates: []tls.Certificate{outside.TLS}})
	echotest.Serve(sl)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := app.DialTLS(ctx, "tcp", sl.Addr().String(), client.TLSConfig{ServerName: "api.outside", Trust: "edge"})
	if err != nil {
		t.Fatalf("DialTLS over netstack: %v", err)
	}
	if err := echotest.RoundTrip(c, bytes.Repeat([]byte("out "), 50_000), 60*time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestNoGoroutinePerSession: sessions through the userspace stack are
// served by the transport's loops: 100 open sessions, each of which moved
// bytes both ways, add no goroutine each (a pump per session did), and
// closing them lets the peer read the end of stream.
func TestNoGoroutinePerSession(t *testing.T) {
	p := pair(t)
	n := newNode(t, "afpacket", p.A, "10.99.0.11/24")
	app := n.attach(t, "web")
	// The server keeps its connections without a goroutine each: it
	// answers each with one byte, from the accepting goroutine.
	ln := netnstest.Listen(t, p.B.Path(), "tcp", "10.99.0.2:0")
	accepted := make(chan net.Conn, 128)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte{1})
			accepted <- c
		}
	}()
	open := func() net.Conn {
		t.Helper()
		c, err := dial(app, ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte{2}); err != nil {
			t.Fatal(err)
		}
		var b [1]byte
		_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.ReadFull(c, b[:]); err != nil {
			t.Fatal(err)
		}
		return c
	}
	first := open() // the loops start with the first session
	defer first.Close()
	<-accepted
	before := runtime.NumGoroutine()
	const sessions = 100
	var conns, peers []net.Conn
	for range sessions {
		conns = append(conns, open())
		peers = append(peers, <-accepted)
	}
	if grown := runtime.NumGoroutine() - before; grown > sessions/10 {
		t.Fatalf("%d open sessions added %d goroutines", sessions, grown)
	}
	for i, c := range conns {
		c.Close()
		var b [2]byte
		_ = peers[i].SetReadDeadline(time.Now().Add(30 * time.Second))
		if n, err := io.ReadFull(peers[i], b[:]); n != 1 || b[0] != 2 || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("session %d: the peer read %d bytes %v, %v; want the app's byte, then the end of stream", i, n, b[:n], err)
		}
		peers[i].Close()
	}
}

// TestCloseResetsWhatCannotDrain: an app closes a session whose peer reads
// nothing; what it wrote cannot leave, so once the close timeout passed
// the loop resets the endpoint (the peer reads ECONNRESET, not a clean end
// of stream) and releases the session's fifos.
func TestCloseResetsWhatCannotDrain(t *testing.T) {
	p := pair(t)
	n := newNodeClosing(t, "afpacket", p.A, 300*time.Millisecond, "10.99.0.11/24")
	app := n.attach(t, "web")
	ln := netnstest.Listen(t, p.B.Path(), "tcp", "10.99.0.2:0")
	key := session.NamespaceConfig{Namespace: "team", Name: "web"}.Key()
	if err := echotest.UndrainableClose(ln, func(addr string) (net.Conn, error) { return dial(app, addr) }, func() bool {
		st, _ := n.eng.NamespaceStats(key)
		return st.FifoBytesInUse == 0
	}); err != nil {
		t.Fatal(err)
	}
}

// TestQuietSessionGivesPagesBack: the pages of an rx fifo that a burst
// walked over are given back once the session was quiet for a while and
// moves again (the loops trim as the kernel transport's pollers do).
func TestQuietSessionGivesPagesBack(t *testing.T) {
	p := pair(t)
	n := newNode(t, "afpacket", p.A, "10.99.0.11/24")
	app := n.attach(t, "web")
	ln := netnstest.Listen(t, p.B.Path(), "tcp", "10.99.0.2:0")
	key := session.NamespaceConfig{Namespace: "team", Name: "web"}.Key()
	if err := echotest.QuietGivesPagesBack(ln, func(addr string) (net.Conn, error) { return dial(app, addr) }, 8<<20, func() int64 {
		st, _ := n.eng.NamespaceStats(key)
		return st.SegmentResident
	}); err != nil {
		t.Fatal(err)
	}
}
