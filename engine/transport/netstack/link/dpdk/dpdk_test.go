//go:build dpdk

package dpdk

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/hoststack/hoststack/internal/netnstest"
	"github.com/hoststack/hoststack/internal/stacktest"
	"github.com/hoststack/hoststack/internal/testreq"
)

// The stack's addresses on A's veth: ones the kernel does not have, so the
// stack answers ARP and neighbour solicitations itself.
var (
	stack4 = netip.MustParsePrefix("10.99.0.11/24")
	stack6 = netip.MustParsePrefix("fd99::11/64")
)

// testDeadline bounds every transfer: a stall fails the test with a
// message instead of hanging until the go test timeout.
// HOSTSTACK_DPDK_DEADLINE (a duration) overrides it.
var testDeadline = func() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("HOSTSTACK_DPDK_DEADLINE")); err == nil {
		return d
	}
	return 3 * time.Minute
}()

// env is a veth pair with a DPDK endpoint and a gVisor stack on A's side.
type env struct {
	p  *netnstest.Pair
	ep *Endpoint
	s  *stack.Stack
}

// inNS runs a command inside a namespace and fails the test when it fails.
func inNS(t testing.TB, ns string, args ...string) {
	t.Helper()
	netnstest.Run(t, "ip", append([]string{"netns", "exec", ns}, args...)...)
}

// newEnv builds the pair, the endpoint and the stack. The peer's TX
// checksum offload is turned off (it would send partially checksummed
// frames, which a packet socket or XDP hands over as they are, and which
// gVisor rightly drops), and GRO on A's veth, so that frames reach the PMD
// as the wire carries them.
func newEnv(t testing.TB, driver string) *env {
	t.Helper()
	p := netnstest.NewPair(t)
	inNS(t, p.B.NS, "ethtool", "-K", p.B.Dev, "tx", "off")
	inNS(t, p.A.NS, "ethtool", "-K", p.A.Dev, "gro", "off")
	ep, err := New(Options{
		Interface: p.A.Dev,
		Netns:     p.A.Path(),
		Addrs:     []netip.Prefix{stack4, stack6},
		Driver:    driver,
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	// Registered before the stack's cleanup, so it runs after it: the
	// stack closes the endpoint itself when it removes the NIC, and a
	// second Close is a no-op.
	t.Cleanup(func() {
		if err := ep.Shutdown(); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		t.Logf("stats: %+v", ep.Stats())
	})
	s := stacktest.New(t, ep, stack4, stack6)
	t.Cleanup(func() {
		t.Logf("port: %s", ep.debugString())
		if t.Failed() {
			for _, ns := range []string{p.A.NS, p.B.NS} {
				out, _ := exec.Command("ip", "-n", ns, "-s", "-s", "link").CombinedOutput()
				t.Logf("ip -n %s -s -s link:\n%s", ns, out)
			}
		}
	})
	return &env{p: p, ep: ep, s: s}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	t.Cleanup(cancel)
	return ctx
}

// deadline makes a conn fail rather than hang when a transfer stalls.
func deadline(c net.Conn) { _ = c.SetDeadline(time.Now().Add(testDeadline)) }

// dialStack dials from the userspace stack.
func (e *env) dialStack(t testing.TB, to netip.AddrPort) net.Conn {
	t.Helper()
	c, err := gonet.DialContextTCP(ctxT(t), e.s, stacktest.FullAddress(to), stacktest.Proto(to.Addr()))
	if err != nil {
		t.Fatalf("stack dial %s: %v", to, err)
	}
	deadline(c)
	return c
}

// listenStack listens on the userspace stack.
func (e *env) listenStack(t testing.TB, at netip.AddrPort) *gonet.TCPListener {
	t.Helper()
	l, err := gonet.ListenTCP(e.s, stacktest.FullAddress(at), stacktest.Proto(at.Addr()))
	if err != nil {
		t.Fatalf("stack listen %s: %v", at, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// send writes n bytes from a seeded source to c and closes it; it returns
// the source (for its hash).
func send(c net.Conn, n int64, seed uint64) (*stacktest.Source, error) {
	defer c.Close()
	src := stacktest.NewSource(n, seed)
	buf := make([]byte, 256<<10)
	if _, err := io.CopyBuffer(c, src, buf); err != nil {
		return src, fmt.Errorf("send: %w", err)
	}
	return src, nil
}

// recv reads c to EOF into a sink.
func recv(c net.Conn) (*stacktest.Sink, error) {
	defer c.Close()
	dst := stacktest.NewSink()
	buf := make([]byte, 256<<10)
	if _, err := io.CopyBuffer(dst, c, buf); err != nil {
		return dst, fmt.Errorf("recv after %d bytes: %w", dst.N, err)
	}
	return dst, nil
}

// stackToKernel sends n bytes from the stack to a kernel listener in B and
// checks them; kernelToStack the other way.
func stackToKernel(t testing.TB, e *env, to netip.AddrPort, n int64, seed uint64) {
	t.Helper()
	l := netnstest.Listen(t, e.p.B.Path(), "tcp", to.String())
	type res struct {
		dst *stacktest.Sink
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			ch <- res{nil, err}
			return
		}
		deadline(c)
		dst, err := recv(c)
		ch <- res{dst, err}
	}()
	src, err := send(e.dialStack(t, to), n, seed)
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	if err := stacktest.Check(src, r.dst, n); err != nil {
		t.Fatal(err)
	}
}

func kernelToStack(t testing.TB, e *env, at netip.AddrPort, n int64, seed uint64) {
	t.Helper()
	l := e.listenStack(t, at)
	type res struct {
		src *stacktest.Source
		err error
	}
	ch := make(chan res, 1)
	go func() {
		c, err := netnstest.Dial(e.p.B.Path(), "tcp", at.String())
		if err != nil {
			ch <- res{nil, err}
			return
		}
		deadline(c)
		src, err := send(c, n, seed)
		ch <- res{src, err}
	}()
	c, err := l.Accept()
	if err != nil {
		t.Fatalf("stack accept: %v", err)
	}
	deadline(c)
	dst, err := recv(c)
	if err != nil {
		t.Fatal(err)
	}
	r := <-ch
	if r.err != nil {
		t.Fatal(r.err)
	}
	if err := stacktest.Check(r.src, dst, n); err != nil {
		t.Fatal(err)
	}
}

func ap(addr string, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(netip.MustParseAddr(addr), port)
}

func TestTCPStackToKernel(t *testing.T) {
	e := newEnv(t, DriverAFPacket)
	stackToKernel(t, e, ap(e.p.B.Addr4, 5001), 32<<20, 1)
}

func TestTCPKernelToStack(t *testing.T) {
	e := newEnv(t, DriverAFPacket)
	kernelToStack(t, e, ap(stack4.Addr().String(), 5002), 32<<20, 2)
}

func TestTCPIPv6(t *testing.T) {
	e := newEnv(t, DriverAFPacket)
	stackToKernel(t, e, ap(e.p.B.Addr6, 5003), 16<<20, 3)
	kernelToStack(t, e, ap(stack6.Addr().String(), 5004), 16<<20, 4)
}

func TestUDPEcho(t *testing.T) {
	e := newEnv(t, DriverAFPacket)
	for _, peer := range []string{e.p.B.Addr4, e.p.B.Addr6} {
		to := ap(peer, 5005)
		srv := netnstest.ListenPacket(t, e.p.B.Path(), "udp", to.String())
		go func() {
			buf := make([]byte, 65536)
			for {
				n, from, err := srv.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = srv.WriteTo(buf[:n], from)
			}
		}()
		local := stack4.Addr()
		if to.Addr().Is6() {
			local = stack6.Addr()
		}
		laddr := stacktest.FullAddress(netip.AddrPortFrom(local, 0))
		raddr := stacktest.FullAddress(to)
		c, err := gonet.DialUDP(e.s, &laddr, &raddr, stacktest.Proto(local))
		if err != nil {
			t.Fatalf("udp dial %s: %v", to, err)
		}
		// Sizes from tiny to a full MTU's worth. UDP may lose a datagram
		// (the first waits for ARP/NDP, and the IPv6 address for DAD), so
		// each is resent on a read deadline, and stale echoes of earlier
		// resends are skipped: every message starts with its index.
		sizes := []int{8, 64, 512, 1000, 1400, 1472 - 20*boolInt(to.Addr().Is6())}
		for i, size := range sizes {
			msg := []byte(fmt.Sprintf("%04d", i) + strings.Repeat("x", size-4))
			var got []byte
			for try := 0; try < 10 && got == nil; try++ {
				if _, err := c.Write(msg); err != nil {
					t.Fatalf("udp write: %v", err)
				}
				_ = c.SetReadDeadline(time.Now().Add(time.Second))
				buf := make([]byte, 2048)
				for got == nil {
					n, err := c.Read(buf)
					if ne, ok := err.(net.Error); ok && ne.Timeout() {
						break
					}
					if err != nil {
						t.Fatalf("udp read: %v", err)
					}
					if n >= 4 && string(buf[:4]) == string(msg[:4]) {
						got = buf[:n]
					}
				}
			}
			if string(got) != string(msg) {
				t.Fatalf("udp echo of %d bytes via %s: got %d bytes back", size, to, len(got))
			}
		}
		c.Close()
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestParallelFlows runs eight flows at once, four each way, IPv4 and IPv6.
func TestParallelFlows(t *testing.T) {
	e := newEnv(t, DriverAFPacket)
	const n = 8 << 20
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t.Run(fmt.Sprint("flow", i), func(t *testing.T) {
				port := uint16(6000 + i)
				peer, mine := e.p.B.Addr4, stack4.Addr().String()
				if i%4 >= 2 {
					peer, mine = e.p.B.Addr6, stack6.Addr().String()
				}
				if i%2 == 0 {
					stackToKernel(t, e, ap(peer, port), n, uint64(i))
				} else {
					kernelToStack(t, e, ap(mine, port), n, uint64(i))
				}
			})
		}()
	}
	wg.Wait()
}

// largeSize is the size of TestLargeTransfer; HOSTSTACK_DPDK_LARGE
// overrides it (bytes).
func largeSize(t testing.TB) int64 {
	if s := os.Getenv("HOSTSTACK_DPDK_LARGE"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("HOSTSTACK_DPDK_LARGE: %v", err)
		}
		return n
	}
	return 1 << 30
}

func TestLargeTransfer(t *testing.T) {
	e := newEnv(t, DriverAFPacket)
	n := largeSize(t)
	start := time.Now()
	stackToKernel(t, e, ap(e.p.B.Addr4, 5006), n, 6)
	t.Logf("stack->kernel %d MiB in %v (%.2f Gbit/s)", n>>20, time.Since(start), gbps(n, time.Since(start)))
	start = time.Now()
	kernelToStack(t, e, ap(stack4.Addr().String(), 5007), n, 7)
	t.Logf("kernel->stack %d MiB in %v (%.2f Gbit/s)", n>>20, time.Since(start), gbps(n, time.Since(start)))
}

func gbps(n int64, d time.Duration) float64 { return float64(n) * 8 / d.Seconds() / 1e9 }

// lossy makes dev in ns drop 1% of the frames it sends: with netem when the
// kernel has it, else with an nftables netdev egress rule (numgen random),
// which sits at the same place on the transmit path (in __dev_queue_xmit,
// before the qdisc). The kernel these tests were written on has no
// sch_netem.
func lossy(t testing.TB, ns, dev string) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "netem", "loss", "1%").CombinedOutput()
	if err == nil {
		t.Logf("%s: netem loss 1%%", dev)
		return
	}
	if !strings.Contains(string(out), "qdisc kind is unknown") {
		t.Fatalf("tc qdisc add dev %s root netem loss 1%%: %v: %s", dev, err, out)
	}
	if _, err := exec.LookPath("nft"); err != nil {
		testreq.Missing(t, "the kernel has no sch_netem and nft(8) is not installed (apt-get install nftables) for the fallback")
	}
	inNS(t, ns, "nft", "add table netdev loss; add chain netdev loss egress { type filter hook egress device "+dev+
		" priority 0; }; add rule netdev loss egress numgen random mod 100 < 1 counter drop")
	t.Logf("%s: no sch_netem in this kernel; nftables egress drop of 1%%", dev)
	t.Cleanup(func() {
		out, _ := exec.Command("ip", "netns", "exec", ns, "nft", "list", "table", "netdev", "loss").CombinedOutput()
		t.Logf("%s", out)
	})
}

// TestNetemLoss drops 1% of frames both ways (on A's veth that includes the
// PMD's own transmissions, since the port is opened with qdisc_bypass=0),
// and every transfer must still arrive intact.
func TestNetemLoss(t *testing.T) {
	e := newEnv(t, DriverAFPacket)
	lossy(t, e.p.A.NS, e.p.A.Dev)
	lossy(t, e.p.B.NS, e.p.B.Dev)
	stackToKernel(t, e, ap(e.p.B.Addr4, 5008), 64<<20, 8)
	kernelToStack(t, e, ap(stack4.Addr().String(), 5009), 64<<20, 9)
	stackToKernel(t, e, ap(e.p.B.Addr6, 5010), 16<<20, 10)
	st := e.ep.Stats()
	if st.TxPackets == 0 || st.RxPackets == 0 {
		t.Fatalf("stats show no traffic: %+v", st)
	}
}

// TestAFXDP runs transfers each way, IPv4 and IPv6, over the af_xdp PMD
// (XDP copy mode on the veth). It is the test that caught the mbuf pool
// layout the PMD needs (see hs_pool_create): with rte_pktmbuf_pool_create's
// layout the kernel rejected ~40% of TX descriptors as invalid and TCP
// stalled.
func TestAFXDP(t *testing.T) {
	e := newEnv(t, DriverAFXDP)
	stackToKernel(t, e, ap(e.p.B.Addr4, 5011), 32<<20, 11)
	kernelToStack(t, e, ap(stack4.Addr().String(), 5012), 32<<20, 12)
	stackToKernel(t, e, ap(e.p.B.Addr6, 5013), 16<<20, 13)
	kernelToStack(t, e, ap(stack6.Addr().String(), 5014), 16<<20, 14)
	if e.ep.blocking() {
		t.Errorf("af_xdp endpoint claims a packet socket to block on")
	}
}

// TestReopen adds and removes ports on the one EAL, twice on the same
// interface: hotplug remove must release everything (the socket, the
// pool's name) for the next New to succeed.
func TestReopen(t *testing.T) {
	p := netnstest.NewPair(t)
	inNS(t, p.B.NS, "ethtool", "-K", p.B.Dev, "tx", "off")
	for i := 0; i < 3; i++ {
		ep, err := New(Options{Interface: p.A.Dev, Netns: p.A.Path()})
		if err != nil {
			t.Fatalf("New #%d: %v", i, err)
		}
		if got := ep.LinkAddress().String(); got != p.A.MAC {
			t.Errorf("LinkAddress = %s, want the interface's %s", got, p.A.MAC)
		}
		if !ep.blocking() {
			t.Errorf("the af_packet PMD's RX socket was not found: the RX thread sleeps instead of blocking in poll(2)")
		}
		if ep.MTU() != 1500 {
			t.Errorf("MTU = %d, want the interface's 1500", ep.MTU())
		}
		if err := ep.Shutdown(); err != nil {
			t.Fatalf("Shutdown #%d: %v", i, err)
		}
		ep.Close()
	}
}

// TestCloseWhileAttached closes the endpoint, not the stack, while traffic
// flows: the stack's close action removes the NIC, which closes the
// endpoint again from inside Close; that must neither deadlock nor leave
// the NIC behind, and the connection must fail rather than hang.
func TestCloseWhileAttached(t *testing.T) {
	e := newEnv(t, DriverAFPacket)
	to := ap(e.p.B.Addr4, 5301)
	l := netnstest.Listen(t, e.p.B.Path(), "tcp", to.String())
	go func() {
		c, err := l.Accept()
		if err == nil {
			deadline(c)
			_, _ = io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	c := e.dialStack(t, to)
	if _, err := c.Write(make([]byte, 1<<20)); err != nil {
		t.Fatalf("write before Close: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- e.ep.Shutdown() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Shutdown while attached did not return in 30 s (deadlock?)")
	}
	if e.s.HasNIC(stacktest.NIC) {
		t.Error("the NIC is still in the stack after the endpoint closed")
	}
	if e.ep.IsAttached() {
		t.Error("the endpoint still reports a dispatcher")
	}
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	for {
		if _, err := c.Write(make([]byte, 64<<10)); err != nil {
			break // any error: the point is not hanging
		}
	}
	c.Close()
}

// TestNamespaceAndOptions checks the errors a caller sees: an interface
// that exists only in another namespace, an MTU above the interface's, and
// an unknown driver.
func TestNamespaceAndOptions(t *testing.T) {
	p := netnstest.NewPair(t)
	_, err := New(Options{Interface: p.A.Dev})
	if err == nil || !strings.Contains(err.Error(), p.A.Dev) {
		t.Errorf("New outside the interface's netns: err = %v, want one naming %s", err, p.A.Dev)
	}
	_, err = New(Options{Interface: p.A.Dev, Netns: p.A.Path(), MTU: 9000})
	if err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Errorf("New with MTU 9000 on a 1500 veth: err = %v", err)
	}
	_, err = New(Options{Interface: p.A.Dev, Netns: p.A.Path(), Driver: "vfio"})
	if err == nil || !strings.Contains(err.Error(), "unknown Driver") {
		t.Errorf("New with Driver vfio: err = %v", err)
	}
	ep, err := New(Options{Interface: p.A.Dev, Netns: p.A.Path(), MTU: 1280})
	if err != nil {
		t.Fatalf("New with MTU 1280: %v", err)
	}
	if ep.MTU() != 1280 {
		t.Errorf("MTU = %d, want 1280", ep.MTU())
	}
	ep.Close()
	if _, tcpErr := ep.WritePackets(stack.PacketBufferList{}); !errors.Is(asErr(tcpErr), errClosed) {
		t.Errorf("WritePackets after Close = %v, want ErrClosedForSend", tcpErr)
	}
}

var errClosed = errors.New("closed for send")

func asErr(e tcpip.Error) error {
	if _, ok := e.(*tcpip.ErrClosedForSend); ok {
		return errClosed
	}
	return nil
}

// TestTwoPorts opens two ports at once (concurrent New), on veths in
// different namespaces, on the one EAL, and moves data through both at the
// same time.
func TestTwoPorts(t *testing.T) {
	pairs := []*netnstest.Pair{netnstest.NewPair(t), netnstest.NewPair(t)}
	eps := make([]*Endpoint, len(pairs))
	errs := make([]error, len(pairs))
	var wg sync.WaitGroup
	for i, p := range pairs {
		inNS(t, p.B.NS, "ethtool", "-K", p.B.Dev, "tx", "off")
		inNS(t, p.A.NS, "ethtool", "-K", p.A.Dev, "gro", "off")
		wg.Add(1)
		go func() {
			defer wg.Done()
			eps[i], errs[i] = New(Options{Interface: p.A.Dev, Netns: p.A.Path()})
		}()
	}
	wg.Wait()
	envs := make([]*env, len(pairs))
	for i, p := range pairs {
		if errs[i] != nil {
			t.Fatalf("New on %s: %v", p.A.Dev, errs[i])
		}
		ep := eps[i]
		t.Cleanup(func() {
			if err := ep.Shutdown(); err != nil {
				t.Errorf("Shutdown: %v", err)
			}
		})
		envs[i] = &env{p: p, ep: ep, s: stacktest.New(t, ep, stack4, stack6)}
	}
	if eps[0].devName == eps[1].devName {
		t.Fatalf("both ports are %s", eps[0].devName)
	}
	for i, e := range envs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t.Run(fmt.Sprint("flow", i), func(t *testing.T) {
				stackToKernel(t, e, ap(e.p.B.Addr4, 5201), 16<<20, uint64(20+i))
			})
		}()
	}
	wg.Wait()
}
