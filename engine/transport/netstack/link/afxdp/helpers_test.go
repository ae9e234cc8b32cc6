package afxdp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/hoststack/hoststack/internal/netnstest"
	"github.com/hoststack/hoststack/internal/stacktest"
	"github.com/hoststack/hoststack/internal/testreq"
)

// The userspace stack's addresses on A's veth; the kernel in A has .1/::1.
var (
	stack4 = netip.MustParsePrefix("10.99.0.11/24")
	stack6 = netip.MustParsePrefix("fd99::11/64")
)

type env struct {
	p  *netnstest.Pair
	ep *Endpoint
	s  *stack.Stack
}

// newEnv builds the pair, opens the endpoint on A's veth and puts a stack on
// it. B's veth gets tx checksum offload off: its frames reach the socket as
// raw bytes, and an offloaded (partial) checksum would make the stack drop
// them.
func newEnv(t testing.TB, mode Mode) *env {
	t.Helper()
	p := netnstest.NewPair(t)
	txChecksumOff(t, p.B)
	ep, err := New(Options{Interface: p.A.Dev, Netns: p.A.Path(), Addrs: []netip.Prefix{stack4, stack6}, ZeroCopy: mode})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		ep.Close()
		t.Logf("endpoint stats: %+v", ep.Stats())
	})
	s := stacktest.New(t, ep, stack4, stack6)
	return &env{p: p, ep: ep, s: s}
}

// addr returns the stack's address of the family of b.
func stackAddr(v6 bool) netip.Addr {
	if v6 {
		return stack6.Addr()
	}
	return stack4.Addr()
}

func (e *env) bAddr(v6 bool) netip.Addr {
	if v6 {
		return netip.MustParseAddr(e.p.B.Addr6)
	}
	return netip.MustParseAddr(e.p.B.Addr4)
}

// dialFromStack connects the stack to a kernel listener in B.
func (e *env) dialFromStack(t testing.TB, v6 bool) (stackSide, kernelSide net.Conn) {
	t.Helper()
	network := "tcp4"
	if v6 {
		network = "tcp6"
	}
	l := netnstest.Listen(t, e.p.B.Path(), network, net.JoinHostPort(e.bAddr(v6).String(), "0"))
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	ap := l.Addr().(*net.TCPAddr).AddrPort()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := gonet.DialContextTCP(ctx, e.s, stacktest.FullAddress(netip.AddrPortFrom(e.bAddr(v6), ap.Port())), stacktest.Proto(ap.Addr()))
	if err != nil {
		t.Fatalf("stack dial %v: %v", ap, err)
	}
	k, ok := <-accepted
	if !ok {
		t.Fatal("kernel accept failed")
	}
	t.Cleanup(func() { c.Close(); k.Close() })
	return c, k
}

// dialToStack connects a kernel socket in B to a stack listener.
func (e *env) dialToStack(t testing.TB, v6 bool) (stackSide, kernelSide net.Conn) {
	t.Helper()
	a := stackAddr(v6)
	l, err := gonet.ListenTCP(e.s, stacktest.FullAddress(netip.AddrPortFrom(a, 0)), stacktest.Proto(a))
	if err != nil {
		t.Fatalf("stack listen: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	port := l.Addr().(*net.TCPAddr).Port
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	k, err := netnstest.Dial(e.p.B.Path(), "tcp", net.JoinHostPort(a.String(), fmt.Sprint(port)))
	if err != nil {
		t.Fatalf("kernel dial to stack: %v", err)
	}
	var c net.Conn
	select {
	case c = <-accepted:
	case <-time.After(20 * time.Second):
		t.Fatal("stack accept timed out")
	}
	if c == nil {
		t.Fatal("stack accept failed")
	}
	t.Cleanup(func() { c.Close(); k.Close() })
	return c, k
}

// transfer sends n bytes from src to dst, closes src's write side, and
// checks the sha256 at dst; it fails if the whole transfer takes longer
// than limit (a stall) and returns the elapsed time.
func transfer(t testing.TB, src, dst net.Conn, n int64, seed uint64, limit time.Duration) time.Duration {
	t.Helper()
	deadline := time.Now().Add(limit)
	src.SetDeadline(deadline)
	dst.SetDeadline(deadline)
	source := stacktest.NewSource(n, seed)
	sink := stacktest.NewSink()
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		_, err := io.CopyBuffer(src, source, make([]byte, 256<<10))
		if err == nil {
			err = closeWrite(src)
		}
		errc <- err
	}()
	_, rerr := io.CopyBuffer(sink, dst, make([]byte, 256<<10))
	werr := <-errc
	elapsed := time.Since(start)
	if err := errors.Join(werr, rerr); err != nil {
		if isTimeout(err) {
			t.Fatalf("STALL: %d of %d bytes after %v: %v", sink.N, n, limit, err)
		}
		t.Fatalf("transfer: %d of %d bytes: %v", sink.N, n, err)
	}
	if err := stacktest.Check(source, sink, n); err != nil {
		t.Fatal(err)
	}
	return elapsed
}

func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func gbits(n int64, d time.Duration) float64 { return float64(n) * 8 / d.Seconds() / 1e9 }

// xdpAttached reports whether ip(8) shows an XDP program on A's veth.
func xdpAttached(t testing.TB, p *netnstest.Pair) bool {
	t.Helper()
	out := netnstest.Cmd(t, "-n", p.A.NS, "-d", "link", "show", "dev", p.A.Dev)
	return strings.Contains(out, "xdp") || strings.Contains(out, "prog/xdp")
}

// txChecksumOff turns off TX checksum offload on end's veth, so the frames
// it sends carry complete checksums (see the package doc).
func txChecksumOff(t testing.TB, end netnstest.End) {
	t.Helper()
	if _, err := exec.LookPath("ethtool"); err != nil {
		testreq.Missing(t, "test needs ethtool(8) to turn off TX checksum offload on the veth peer")
	}
	netnstest.Run(t, "ip", "netns", "exec", end.NS, "ethtool", "-K", end.Dev, "tx", "off")
}

// inNS runs a command inside the namespace ns.
func inNS(ns string, name string, args ...string) ([]byte, error) {
	return exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...).CombinedOutput()
}
