package afpacket_test

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

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/hoststack/hoststack/engine/netns"
	"github.com/hoststack/hoststack/engine/transport/netstack/link/afpacket"
	"github.com/hoststack/hoststack/internal/netnstest"
	"github.com/hoststack/hoststack/internal/stacktest"
	"github.com/hoststack/hoststack/internal/testreq"
)

// The userspace stack's addresses on A's veth; the kernel on A has
// 10.99.0.1 and fd99::1 (or nothing), B's kernel has 10.99.0.2 and fd99::2.
var (
	stack4 = netip.MustParsePrefix("10.99.0.11/24")
	stack6 = netip.MustParsePrefix("fd99::11/64")
)

type env struct {
	p  *netnstest.Pair
	ep *afpacket.Endpoint
	s  *stack.Stack
}

// kernelAddrs says what A's kernel keeps on the veth the stack uses.
type kernelAddrs bool

const (
	keepKernelAddrs  kernelAddrs = true  // the kernel has other addresses on the stack's subnets
	flushKernelAddrs kernelAddrs = false // the kernel has no address at all on the interface
)

// newEnv puts a gVisor stack with stack4 and stack6 on an afpacket
// endpoint on A's veth of a fresh pair.
func newEnv(t testing.TB, k kernelAddrs) *env {
	t.Helper()
	p := netnstest.NewPair(t)
	if k == flushKernelAddrs {
		netnstest.Cmd(t, "-n", p.A.NS, "addr", "flush", "dev", p.A.Dev)
	}
	ep, err := afpacket.New(afpacket.Options{Interface: p.A.Dev, Netns: p.A.Path(), Addrs: []netip.Prefix{stack4, stack6}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	// Registered before the stack's cleanup, so it runs after it: the
	// stack closes the endpoint first and this second Close is a no-op.
	t.Cleanup(ep.Close)
	s := stacktest.New(t, ep, stack4, stack6)
	tuneTCP(t, s)
	return &env{p: p, ep: ep, s: s}
}

// tuneTCP gives the stack's TCP buffers that can keep a fast veth busy
// (gVisor's defaults are sized for a sandbox, not a 20 Gbit/s link), with
// receive-buffer auto-tuning.
func tuneTCP(t testing.TB, s *stack.Stack) {
	t.Helper()
	rcv := tcpip.TCPReceiveBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 8 << 20}
	snd := tcpip.TCPSendBufferSizeRangeOption{Min: 4 << 10, Default: 1 << 20, Max: 8 << 20}
	mod := tcpip.TCPModerateReceiveBufferOption(true)
	for _, o := range []tcpip.SettableTransportProtocolOption{&rcv, &snd, &mod} {
		if err := s.SetTransportProtocolOption(tcp.ProtocolNumber, o); err != nil {
			t.Fatalf("tcp option %T: %v", o, err)
		}
	}
}

// inNS runs a command inside a namespace (ethtool, tc), failing the test
// when it fails. Tests that need one of these tools require it like root.
func inNS(t testing.TB, ns string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath(args[0]); err != nil {
		testreq.Missing(t, "test needs "+args[0])
	}
	return netnstest.Run(t, "ip", append([]string{"netns", "exec", ns}, args...)...)
}

// lossyLink makes the link from one end of the pair to the other lose
// pct% of its frames, as `tc qdisc add dev <sender's veth> root netem loss
// <pct>%` does, which it uses when the kernel has netem. Kernels without
// it (CONFIG_NET_SCH_NETEM unset, as on the machines this was written on)
// get the same from an XDP program in generic mode on the receiver's veth
// that drops a random pct% (written with cilium/ebpf's assembler, no C).
// Both drop where the sender cannot tell: netem reports success, and XDP
// runs on receive. (Dropping in an nftables egress hook or a tc egress
// filter would not do: the sending kernel's TCP sees NET_XMIT_DROP and
// just sends the segment again, without any loss recovery.) Generic XDP
// runs before AF_PACKET taps, so on A it hides frames from the endpoint
// like a lossy wire. Removed on cleanup.
func lossyLink(t testing.TB, from, to netnstest.End, pct int) {
	t.Helper()
	if netem(t, from.NS, from.Dev, "loss", fmt.Sprintf("%d%%", pct)) {
		return
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    "hstest_loss",
		Type:    ebpf.XDP,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.FnGetPrandomU32.Call(),
			asm.Mod.Imm(asm.R0, 100),
			asm.JGE.Imm(asm.R0, int32(pct), "pass"),
			asm.Mov.Imm(asm.R0, 1), // XDP_DROP
			asm.Return(),
			asm.Mov.Imm(asm.R0, 2).WithSymbol("pass"), // XDP_PASS
			asm.Return(),
		},
	})
	if err != nil {
		testreq.Missing(t, fmt.Sprintf("no netem, and loading an XDP program failed: %v", err))
	}
	t.Cleanup(func() { prog.Close() })
	var l link.Link
	if err := netns.Do(to.Path(), func() error {
		ifc, err := net.InterfaceByName(to.Dev)
		if err != nil {
			return err
		}
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: ifc.Index, Flags: link.XDPGenericMode})
		return err
	}); err != nil {
		t.Fatalf("attach XDP loss program to %s: %v", to.Dev, err)
	}
	// The link stays referenced until cleanup: a collected link detaches.
	t.Cleanup(func() { l.Close() })
}

// refuseOnEgress makes dev in ns refuse pct% of the frames sent on it,
// with an nftables rule on its netdev egress hook: the sender gets
// NET_XMIT_DROP back (the endpoint sees ENOBUFS from sendmmsg, counts a
// TX drop and lets TCP recover). Removed on cleanup.
func refuseOnEgress(t testing.TB, ns, dev string, pct int) {
	t.Helper()
	nftEgress(t, ns, dev, fmt.Sprintf("numgen random mod 100 < %d drop", pct))
}

// corruptOnEgress damages pct% of the TCP frames leaving dev in ns:
// netem's corrupt if the kernel has it (netem completes a checksum-partial
// frame's checksum, then flips a bit), otherwise an nftables rule flipping
// a bit of the TCP checksum field. The egress hook runs before the kernel
// completes a checksum-partial frame's checksum, which sums the field's
// current value too, so damaging the payload there would just yield a
// valid checksum over damaged data; damaging the field itself yields a
// wrong checksum. The frame must then also leave with its checksum
// computed (ethtool -K <dev> tx off) rather than partial (a veth would
// pass it on as checksum-partial, which every receiver trusts); it
// reports whether the caller must do that.
func corruptOnEgress(t testing.TB, ns, dev string, pct int) (needTxCsumOff bool) {
	t.Helper()
	if netem(t, ns, dev, "corrupt", fmt.Sprintf("%d%%", pct)) {
		return false
	}
	nftEgress(t, ns, dev, fmt.Sprintf("meta l4proto tcp numgen random mod 100 < %d @th,128,16 set @th,128,16 ^ 0x0100", pct))
	return true
}

// netem adds a netem root qdisc on dev in ns; false when the kernel has no
// netem.
func netem(t testing.TB, ns, dev string, params ...string) bool {
	t.Helper()
	if _, err := exec.LookPath("tc"); err != nil {
		return false
	}
	args := append([]string{"netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "netem"}, params...)
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "unknown") {
			return false
		}
		t.Fatalf("tc %s: %v: %s", strings.Join(args[3:], " "), err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root").Run() })
	return true
}

// nftEgress installs one rule on dev's netdev egress hook in ns.
func nftEgress(t testing.TB, ns, dev, rule string) {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		testreq.Missing(t, "test needs netem (tc) or nft to inject loss")
	}
	table := "hstest_" + strings.ReplaceAll(dev, "-", "_")
	script := fmt.Sprintf("table netdev %s {\n chain egress {\n  type filter hook egress device %q priority 0;\n  %s\n }\n}\n", table, dev, rule)
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v: %s\n%s", err, out, script)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "exec", ns, "nft", "delete", "table", "netdev", table).Run() })
}

// ethtoolOff turns offloads off on dev in ns (e.g. "tx", "tso").
func ethtoolOff(t testing.TB, ns, dev string, features ...string) {
	t.Helper()
	args := []string{"ethtool", "-K", dev}
	for _, f := range features {
		args = append(args, f, "off")
	}
	inNS(t, ns, args...)
}

func stackAddr(pfx netip.Prefix, port uint16) netip.AddrPort {
	return netip.AddrPortFrom(pfx.Addr(), port)
}

// kernelAddr is B's address of the same family as pfx.
func (e *env) kernelAddr(pfx netip.Prefix) netip.Addr {
	if pfx.Addr().Is4() {
		return netip.MustParseAddr(e.p.B.Addr4)
	}
	return netip.MustParseAddr(e.p.B.Addr6)
}

// conn is one TCP connection: the stack's end and the kernel's end.
type conn struct{ stack, kernel net.Conn }

func (c conn) close() {
	c.stack.Close()
	c.kernel.Close()
}

const setupTimeout = 10 * time.Second

// stackDials connects from the stack (address family of pfx) to a kernel
// listener in B.
func (e *env) stackDials(t testing.TB, pfx netip.Prefix) conn {
	t.Helper()
	l := netnstest.Listen(t, e.p.B.Path(), "tcp", netip.AddrPortFrom(e.kernelAddr(pfx), 0).String())
	l.(*net.TCPListener).SetDeadline(time.Now().Add(setupTimeout))
	dst := l.Addr().(*net.TCPAddr).AddrPort()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	sc, err := gonet.DialContextTCP(ctx, e.s, stacktest.FullAddress(dst), stacktest.Proto(pfx.Addr()))
	if err != nil {
		t.Fatalf("stack dial %s: %v", dst, err)
	}
	kc, err := l.Accept()
	if err != nil {
		sc.Close()
		t.Fatalf("kernel accept: %v", err)
	}
	c := conn{stack: sc, kernel: kc}
	t.Cleanup(c.close)
	return c
}

// stackListener listens on the stack's address of pfx's family.
func (e *env) stackListener(t testing.TB, pfx netip.Prefix, port uint16) *gonet.TCPListener {
	t.Helper()
	l, err := gonet.ListenTCP(e.s, stacktest.FullAddress(stackAddr(pfx, port)), stacktest.Proto(pfx.Addr()))
	if err != nil {
		t.Fatalf("stack listen: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// kernelDials connects from B's kernel to a stack listener l.
func (e *env) kernelDials(t testing.TB, l *gonet.TCPListener, dst netip.AddrPort) conn {
	t.Helper()
	type res struct {
		c   net.Conn
		err error
	}
	acc := make(chan res, 1)
	go func() {
		c, err := l.Accept()
		acc <- res{c, err}
	}()
	kc, err := netnstest.Dial(e.p.B.Path(), "tcp", dst.String())
	if err != nil {
		t.Fatalf("kernel dial %s: %v", dst, err)
	}
	select {
	case r := <-acc:
		if r.err != nil {
			kc.Close()
			t.Fatalf("stack accept: %v", r.err)
		}
		c := conn{stack: r.c, kernel: kc}
		t.Cleanup(c.close)
		return c
	case <-time.After(setupTimeout):
		kc.Close()
		t.Fatalf("stack accept: nothing within %v although the kernel connected", setupTimeout)
		return conn{}
	}
}

// errStall marks a transfer that missed its deadline.
var errStall = errors.New("stalled: deadline exceeded")

// transfer sends n pseudo-random bytes (seeded by seed) from w to r, two
// ends of one TCP connection, and checks count and SHA-256. The deadline
// is a stall detector: generous, and a failure when hit.
func transfer(w, r net.Conn, n int64, seed uint64, within time.Duration) error {
	deadline := time.Now().Add(within)
	w.SetDeadline(deadline)
	r.SetDeadline(deadline)
	src := stacktest.NewSource(n, seed)
	dst := stacktest.NewSink()
	werr := make(chan error, 1)
	go func() {
		// Plain Writer/Reader wrappers: net.TCPConn's ReadFrom
		// would copy through a 32 KiB buffer.
		_, err := io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{src}, make([]byte, 256<<10))
		if err == nil {
			err = w.(interface{ CloseWrite() error }).CloseWrite()
		}
		werr <- err
	}()
	_, rerr := io.CopyBuffer(dst, struct{ io.Reader }{r}, make([]byte, 256<<10))
	err := <-werr
	if isTimeout(rerr) || isTimeout(err) {
		return fmt.Errorf("%w after %v: sent up to %d, received %d of %d bytes", errStall, within, n, dst.N, n)
	}
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	if rerr != nil {
		return fmt.Errorf("receive: %w", rerr)
	}
	return stacktest.Check(src, dst, n)
}

func isTimeout(err error) bool {
	var ne net.Error
	return err != nil && (errors.As(err, &ne) && ne.Timeout() || strings.Contains(err.Error(), "timeout"))
}

// family names a prefix for subtests.
func family(p netip.Prefix) string {
	if p.Addr().Is4() {
		return "v4"
	}
	return "v6"
}
