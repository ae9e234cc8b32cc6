package kernel_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/onsi/gomega"

	"github.com/hoststack/hoststack/agent/apply"
	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/rules"
	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/engine/transport/kernel"
	"github.com/hoststack/hoststack/internal/echotest"
	"github.com/hoststack/hoststack/internal/netnstest"
)

// podEnv is an engine whose kernel transport knows pods: each pod is a host
// with a network namespace and addresses, and its apps attach through its
// own socket (as through the CSI volume).
type podEnv struct {
	eng   *session.Engine
	tr    *kernel.Transport
	table *rules.Table
	socks map[string]string // pod → attach socket
}

type pod struct {
	name  string
	netns string
	addrs []string
}

func newPodEnv(t *testing.T, pods ...pod) *podEnv {
	t.Helper()
	byName := map[string]pod{}
	byIP := map[netip.Addr]string{}
	for _, p := range pods {
		byName[p.name] = p
		for _, a := range p.addrs {
			byIP[netip.MustParseAddr(a)] = p.name
		}
	}
	pe := &podEnv{table: new(rules.Table), socks: map[string]string{}}
	pe.tr = kernel.New(kernel.Options{CloseTimeout: time.Hour, Logf: t.Logf,
		Netns: func(host string) (string, error) {
			p, ok := byName[host]
			if !ok {
				return "", fmt.Errorf("unknown host %q", host)
			}
			return p.netns, nil
		},
		Hosts: func(a netip.Addr) (string, bool) {
			h, ok := byIP[a]
			return h, ok
		},
		HostAddrs: func(host string) []netip.Addr {
			var out []netip.Addr
			for _, a := range byName[host].addrs {
				out = append(out, netip.MustParseAddr(a))
			}
			return out
		}})
	eng, err := session.New(session.Config{RunDir: t.TempDir(), Transport: pe.tr, Rules: apply.RuleLookup{Table: pe.table}, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	pe.eng = eng
	if _, err := eng.AddNamespace(session.NamespaceConfig{Namespace: "team", Name: "web", SegmentSize: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, p := range pods {
		s, err := eng.Serve(session.SocketConfig{Path: filepath.Join(dir, p.name+".sock"), Host: p.name, Namespaces: []string{"team/web"}})
		if err != nil {
			t.Fatal(err)
		}
		pe.socks[p.name] = s.Path()
	}
	return pe
}

func (pe *podEnv) attach(t *testing.T, podName, app string, opts ...func(*client.Options)) *client.App {
	t.Helper()
	o := client.Options{Socket: pe.socks[podName], Name: app}
	for _, f := range opts {
		f(&o)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a, err := client.Attach(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// TestGlobalListenerAcceptsFromOutside: an app's listener also listens in
// its pod's network namespace; a plain kernel client in another namespace
// reaches it there, and the app sees the client's real address.
func TestGlobalListenerAcceptsFromOutside(t *testing.T) {
	tp := newTopo(t)
	pe := newPodEnv(t, pod{"pod-a", tp.A.Path(), []string{"10.99.0.1", "fd99::1"}})
	app := pe.attach(t, "pod-a", "server")
	ln, err := app.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	remotes := echotest.Serve(ln)
	msg := bytes.Repeat([]byte("outside in "), 100_000)
	for dst, from := range map[string]string{"10.99.0.1": "10.99.0.2", "fd99::1": "fd99::2"} {
		c, err := netnstest.Dial(tp.B.Path(), "tcp", net.JoinHostPort(dst, fmt.Sprint(port)))
		if err != nil {
			t.Fatalf("dial %s from outside: %v", dst, err)
		}
		if err := echotest.RoundTrip(c, msg, 20*time.Second); err != nil {
			t.Fatalf("%s: %v", dst, err)
		}
		if r := (<-remotes).(*net.TCPAddr); r.IP.String() != from {
			t.Errorf("app saw the session from %s, want the outside client's %s", r, from)
		}
	}
	if got := pe.tr.Stats().Accepted; got != 2 {
		t.Errorf("transport accepted %d sessions, want 2", got)
	}
	// closing the app's listener closes the pod's kernel listener
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	gomega.NewWithT(t).Eventually(func() error {
		c, err := netnstest.Dial(tp.B.Path(), "tcp", fmt.Sprintf("10.99.0.1:%d", port))
		if err == nil {
			c.Close()
		}
		return err
	}, 10*time.Second, 10*time.Millisecond).Should(gomega.MatchError(syscall.ECONNREFUSED))
}

// TestPodsShareAPort: two pods of one app namespace both listen on :8080 (a
// port is per pod, as with kernel sockets); an app connecting to a pod's
// address reaches that pod's listener through cut-through, not the kernel.
func TestPodsShareAPort(t *testing.T) {
	tp := newTopo(t)
	pe := newPodEnv(t,
		pod{"pod-a", tp.A.Path(), []string{"10.99.0.1", "fd99::1"}},
		pod{"pod-b", tp.B.Path(), []string{"10.99.0.2", "fd99::2"}})
	names := map[string]<-chan net.Addr{}
	for _, p := range []string{"pod-a", "pod-b"} {
		ln, err := pe.attach(t, p, "web-"+p).Listen("tcp", ":8080")
		if err != nil {
			t.Fatalf("%s listen: %v", p, err)
		}
		names[p] = echotest.Serve(ln)
	}
	cli := pe.attach(t, "pod-a", "client")
	for _, tc := range []struct{ dst, pod, src string }{{"10.99.0.2:8080", "pod-b", "10.99.0.1"}, {"[fd99::1]:8080", "pod-a", "fd99::1"}, {"127.0.0.1:8080", "pod-a", "127.0.0.1"}} {
		c, err := dial(t, cli, tc.dst)
		if err != nil {
			t.Fatalf("dial %s: %v", tc.dst, err)
		}
		if src := c.LocalAddr().(*net.TCPAddr).IP.String(); src != tc.src {
			t.Errorf("dial %s: local address %s, want the client pod's %s", tc.dst, src, tc.src)
		}
		if err := echotest.RoundTrip(c, []byte("which pod?"), 20*time.Second); err != nil {
			t.Fatalf("%s: %v", tc.dst, err)
		}
		select {
		case r := <-names[tc.pod]:
			if got := r.(*net.TCPAddr).IP.String(); got != tc.src {
				t.Errorf("%s saw the session from %s, want %s", tc.pod, got, tc.src)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s did not reach %s's listener", tc.dst, tc.pod)
		}
	}
	if got := pe.tr.Stats().Accepted; got != 0 {
		t.Errorf("the kernel accepted %d sessions; cut-through expected", got)
	}
	// the same pod cannot listen twice on the port
	if _, err := pe.attach(t, "pod-b", "again").Listen("tcp", ":8080"); !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("second listener in pod-b: %v, want EADDRINUSE", err)
	}
}

// TestScopes: a local-scope listener is not reachable from outside, a
// global-scope one is not in the app namespace's table (an app reaches it
// through the kernel).
func TestScopes(t *testing.T) {
	tp := newTopo(t)
	pe := newPodEnv(t, pod{"pod-a", tp.A.Path(), []string{"10.99.0.1"}})
	local := pe.attach(t, "pod-a", "local", func(o *client.Options) { o.Scope = client.ScopeLocal })
	lln, err := local.Listen("tcp", ":7001")
	if err != nil {
		t.Fatal(err)
	}
	echotest.Serve(lln)
	global := pe.attach(t, "pod-a", "global", func(o *client.Options) { o.Scope = client.ScopeGlobal })
	gln, err := global.Listen("tcp", ":7002")
	if err != nil {
		t.Fatal(err)
	}
	echotest.Serve(gln)
	if _, err := netnstest.Dial(tp.B.Path(), "tcp", "10.99.0.1:7001"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("outside dial of a local-scope listener: %v, want ECONNREFUSED", err)
	}
	cli := pe.attach(t, "pod-a", "client")
	for _, dst := range []string{"10.99.0.1:7001", "10.99.0.1:7002"} {
		c, err := dial(t, cli, dst)
		if err != nil {
			t.Fatalf("dial %s: %v", dst, err)
		}
		if err := echotest.RoundTrip(c, []byte("scope"), 20*time.Second); err != nil {
			t.Fatalf("%s: %v", dst, err)
		}
	}
	if got := pe.tr.Stats().Accepted; got != 1 {
		t.Errorf("the kernel accepted %d sessions, want 1 (the global-only listener)", got)
	}
}

// TestGlobalAcceptDeny: a global-scope SessionRule denying the outside
// client resets its connection; the app never sees it.
func TestGlobalAcceptDeny(t *testing.T) {
	tp := newTopo(t)
	pe := newPodEnv(t, pod{"pod-a", tp.A.Path(), []string{"10.99.0.1"}})
	set, _, err := rules.Compile([]rules.Rule{{Namespace: "team/web", Scope: rules.Global, Proto: rules.TCP, Action: rules.Deny,
		Name: "team/no-b", Local: netip.MustParsePrefix("0.0.0.0/0"), Remote: netip.MustParsePrefix("10.99.0.2/32")}})
	if err != nil {
		t.Fatal(err)
	}
	pe.table.Store(set)
	ln, err := pe.attach(t, "pod-a", "server").Listen("tcp", ":7003")
	if err != nil {
		t.Fatal(err)
	}
	remotes := echotest.Serve(ln)
	// The kernel completes the handshake before the engine decides: the
	// reset reaches the client as its connect returns or on its first read.
	c, err := netnstest.Dial(tp.B.Path(), "tcp", "10.99.0.1:7003")
	if err == nil {
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		_, err = c.Read(make([]byte, 1))
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("outside client: %v, want ECONNRESET", err)
	}
	select {
	case r := <-remotes:
		t.Fatalf("the app accepted a denied session from %s", r)
	default:
	}
	if got := pe.tr.Stats().AcceptRefused; got != 1 {
		t.Errorf("AcceptRefused = %d, want 1", got)
	}
}

// TestUDP: a datagram socket in the pod's namespace exchanges datagrams with
// a kernel UDP socket outside, IPv4 and IPv6; a SessionRule drops datagrams
// to a denied destination.
func TestUDP(t *testing.T) {
	tp := newTopo(t)
	pe := newPodEnv(t, pod{"pod-a", tp.A.Path(), []string{"10.99.0.1", "fd99::1"}})
	app := pe.attach(t, "pod-a", "dns")
	pc, err := app.ListenPacket("udp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	port := pc.LocalAddr().(*net.UDPAddr).Port
	peer := netnstest.ListenPacket(t, tp.B.Path(), "udp", ":0")
	peerPort := peer.LocalAddr().(*net.UDPAddr).Port
	_ = pc.SetDeadline(time.Now().Add(20 * time.Second))
	_ = peer.SetDeadline(time.Now().Add(20 * time.Second))
	for i, fam := range []struct{ app, peer string }{{"10.99.0.1", "10.99.0.2"}, {"fd99::1", "fd99::2"}} {
		q := []byte(fmt.Sprintf("query %d", i))
		if _, err := peer.WriteTo(q, &net.UDPAddr{IP: net.ParseIP(fam.app), Port: port}); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 2048)
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			t.Fatalf("app read: %v", err)
		}
		if string(buf[:n]) != string(q) || from.(*net.UDPAddr).IP.String() != fam.peer || from.(*net.UDPAddr).Port != peerPort {
			t.Fatalf("app got %q from %v", buf[:n], from)
		}
		a := append([]byte("answer to "), q...)
		if _, err := pc.WriteTo(a, from); err != nil {
			t.Fatalf("app write: %v", err)
		}
		n, from, err = peer.ReadFrom(buf)
		if err != nil {
			t.Fatalf("peer read: %v", err)
		}
		if string(buf[:n]) != string(a) || from.(*net.UDPAddr).Port != port {
			t.Fatalf("peer got %q from %v", buf[:n], from)
		}
	}
	// too big for the fifo: EMSGSIZE, nothing sent
	if _, err := pc.WriteTo(make([]byte, 70000), peer.LocalAddr()); !errors.Is(err, syscall.EMSGSIZE) {
		t.Fatalf("oversized datagram: %v, want EMSGSIZE", err)
	}
	// a deny rule drops datagrams to the peer
	set, _, err := rules.Compile([]rules.Rule{{Namespace: "team/web", Scope: rules.Global, Proto: rules.UDP, Action: rules.Deny,
		Name: "team/no-udp-to-b", Local: netip.MustParsePrefix("0.0.0.0/0"), Remote: netip.MustParsePrefix("10.99.0.2/32")}})
	if err != nil {
		t.Fatal(err)
	}
	pe.table.Store(set)
	before := pe.tr.Stats().DgramDropped
	if _, err := pc.WriteTo([]byte("denied"), &net.UDPAddr{IP: net.ParseIP("10.99.0.2"), Port: peerPort}); err != nil {
		t.Fatal(err)
	}
	gomega.NewWithT(t).Eventually(func() uint64 { return pe.tr.Stats().DgramDropped }, 10*time.Second, time.Millisecond).
		Should(gomega.BeNumerically(">", before))
	// and the peer got nothing: the next datagram it reads is the allowed v6 one
	if _, err := pc.WriteTo([]byte("allowed"), &net.UDPAddr{IP: net.ParseIP("fd99::2"), Port: peerPort}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, _, err := peer.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "allowed" {
		t.Fatalf("peer read %q, %v; want only the allowed datagram", buf[:n], err)
	}
	// closing the socket closes the pod's UDP socket: the port is free again
	if err := pc.Close(); err != nil {
		t.Fatal(err)
	}
	gomega.NewWithT(t).Eventually(func() error {
		c, err := app.ListenPacket("udp", fmt.Sprintf(":%d", port))
		if err == nil {
			c.Close()
		}
		return err
	}, 10*time.Second, 10*time.Millisecond).Should(gomega.Succeed())
}
