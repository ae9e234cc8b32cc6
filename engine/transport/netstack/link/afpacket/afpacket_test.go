package afpacket_test

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"

	"github.com/hoststack/hoststack/engine/transport/netstack/link/afpacket"
	"github.com/hoststack/hoststack/internal/netnstest"
	"github.com/hoststack/hoststack/internal/stacktest"
)

// Sizes shrink under the race detector, which slows gVisor ~10x.
func size(normal, race int64) int64 {
	if raceEnabled {
		return race
	}
	return normal
}

// The stall deadline of the quick transfers: far beyond what they need
// (well under a second each), short enough to fail a stalled test fast.
const quick = 60 * time.Second

func TestNewErrors(t *testing.T) {
	if _, err := afpacket.New(afpacket.Options{}); err == nil {
		t.Error("New without an interface succeeded")
	}
	p := netnstest.NewPair(t)
	if _, err := afpacket.New(afpacket.Options{Interface: "nosuchdev0", Netns: p.A.Path()}); err == nil {
		t.Error("New on a missing interface succeeded")
	}
	if _, err := afpacket.New(afpacket.Options{Interface: p.A.Dev, Netns: "/nonexistent/netns"}); err == nil {
		t.Error("New in a missing namespace succeeded")
	}
	if _, err := afpacket.New(afpacket.Options{Interface: "lo", Netns: p.A.Path()}); err == nil {
		t.Error("New on loopback (no Ethernet address) succeeded")
	}
}

func TestMTUAndAddress(t *testing.T) {
	p := netnstest.NewPair(t)
	netnstest.Cmd(t, "-n", p.A.NS, "link", "set", p.A.Dev, "mtu", "9000")
	ep, err := afpacket.New(afpacket.Options{Interface: p.A.Dev, Netns: p.A.Path()})
	if err != nil {
		t.Fatal(err)
	}
	defer ep.Close()
	if ep.MTU() != 9000 {
		t.Errorf("MTU = %d, want the interface's 9000", ep.MTU())
	}
	if got := net.HardwareAddr(ep.LinkAddress()).String(); got != p.A.MAC {
		t.Errorf("link address %s, want the interface's %s", got, p.A.MAC)
	}
	ep2, err := afpacket.New(afpacket.Options{Interface: p.A.Dev, Netns: p.A.Path(), MTU: 1400})
	if err != nil {
		t.Fatal(err)
	}
	defer ep2.Close()
	if ep2.MTU() != 1400 {
		t.Errorf("MTU = %d, want Options.MTU 1400", ep2.MTU())
	}
}

// TestTCP moves data both ways over both families, with A's kernel keeping
// its own addresses on the subnets (it sees every frame for the stack and
// must stay quiet) and with no kernel address at all.
func TestTCP(t *testing.T) {
	n := size(32<<20, 4<<20)
	for _, k := range []kernelAddrs{keepKernelAddrs, flushKernelAddrs} {
		name := "kernel-has-other-addrs"
		if k == flushKernelAddrs {
			name = "kernel-has-no-addrs"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, k)
			for i, pfx := range []netip.Prefix{stack4, stack6} {
				t.Run(family(pfx)+"/stack-to-kernel", func(t *testing.T) {
					c := e.stackDials(t, pfx)
					if err := transfer(c.stack, c.kernel, n, uint64(i), quick); err != nil {
						t.Fatal(err)
					}
				})
				t.Run(family(pfx)+"/kernel-to-stack", func(t *testing.T) {
					l := e.stackListener(t, pfx, 7000+uint16(i))
					c := e.kernelDials(t, l, stackAddr(pfx, 7000+uint16(i)))
					if err := transfer(c.kernel, c.stack, n, uint64(10+i), quick); err != nil {
						t.Fatal(err)
					}
				})
			}
			st := e.ep.Stats()
			t.Logf("stats: %+v", st)
			if st.RxPackets == 0 || st.TxPackets == 0 || st.RxBytes < uint64(2*n) || st.TxBytes < uint64(2*n) {
				t.Errorf("stats do not account for the transfers of %d bytes each way: %+v", 2*n, st)
			}
		})
	}
}

// TestKernelOffloads receives from a kernel sender in the three shapes a
// veth peer can produce: checksum-partial TSO frames of up to 64 KiB
// (defaults; virtio header NEEDS_CSUM + GSO type), MTU-sized frames with
// full checksums (TX checksum and TSO off: header flags 0, so gVisor
// verifies every checksum, and GRO merges them), and checksum-partial
// MTU-sized frames (TSO off only).
func TestKernelOffloads(t *testing.T) {
	n := size(32<<20, 4<<20)
	for _, tc := range []struct {
		name string
		off  []string
	}{
		{"defaults", nil},
		{"tso-off", []string{"tso", "gso"}},
		{"tx-csum-off", []string{"tx", "tso", "gso"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, flushKernelAddrs)
			if tc.off != nil {
				ethtoolOff(t, e.p.B.NS, e.p.B.Dev, tc.off...)
			}
			for i, pfx := range []netip.Prefix{stack4, stack6} {
				l := e.stackListener(t, pfx, 7100+uint16(i))
				c := e.kernelDials(t, l, stackAddr(pfx, 7100+uint16(i)))
				if err := transfer(c.kernel, c.stack, n, uint64(20+i), quick); err != nil {
					t.Fatalf("%s kernel-to-stack: %v", family(pfx), err)
				}
				c = e.stackDials(t, pfx)
				if err := transfer(c.stack, c.kernel, n, uint64(30+i), quick); err != nil {
					t.Fatalf("%s stack-to-kernel: %v", family(pfx), err)
				}
			}
			t.Logf("stats: %+v", e.ep.Stats())
		})
	}
}

// TestUDPEcho bounces datagrams both ways: a kernel echo server answering
// the stack, and a stack echo server answering the kernel.
func TestUDPEcho(t *testing.T) {
	e := newEnv(t, keepKernelAddrs)
	for i, pfx := range []netip.Prefix{stack4, stack6} {
		t.Run(family(pfx)+"/kernel-echoes", func(t *testing.T) {
			srv := netnstest.ListenPacket(t, e.p.B.Path(), "udp", netip.AddrPortFrom(e.kernelAddr(pfx), 0).String())
			go echo(srv)
			dst := srv.LocalAddr().(*net.UDPAddr).AddrPort()
			local := stacktest.FullAddress(stackAddr(pfx, 0))
			remote := stacktest.FullAddress(dst)
			c, err := gonet.DialUDP(e.s, &local, &remote, stacktest.Proto(pfx.Addr()))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			pingPong(t, c)
		})
		t.Run(family(pfx)+"/stack-echoes", func(t *testing.T) {
			local := stacktest.FullAddress(stackAddr(pfx, 7200+uint16(i)))
			srv, err := gonet.DialUDP(e.s, &local, nil, stacktest.Proto(pfx.Addr()))
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			go echo(srv)
			c, err := netnstest.Dial(e.p.B.Path(), "udp", stackAddr(pfx, 7200+uint16(i)).String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			pingPong(t, c)
		})
	}
}

// echo returns every datagram to its sender until c is closed.
func echo(c net.PacketConn) {
	buf := make([]byte, 65536)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		if _, err := c.WriteTo(buf[:n], from); err != nil {
			return
		}
	}
}

// pingPong sends datagrams of several sizes (up to a fragmented 8000
// bytes) on c and expects each back. A lost datagram is retried a few
// times: UDP makes no promise, but on an idle veth a loss is a bug, so
// the retries are few.
func pingPong(t *testing.T, c net.Conn) {
	t.Helper()
	buf := make([]byte, 65536)
	for i, n := range []int{1, 100, 1400, 1472, 3000, 8000} {
		msg := bytes.Repeat([]byte{byte(i + 1)}, n)
		ok := false
		for try := 0; try < 3 && !ok; try++ {
			if _, err := c.Write(msg); err != nil {
				t.Fatalf("write %d bytes: %v", n, err)
			}
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			got, err := c.Read(buf)
			if err != nil {
				t.Logf("datagram of %d bytes: %v (try %d)", n, err, try)
				continue
			}
			if !bytes.Equal(buf[:got], msg) {
				t.Fatalf("echo of %d bytes came back as %d different bytes", n, got)
			}
			ok = true
		}
		if !ok {
			t.Fatalf("no echo of a %d-byte datagram", n)
		}
	}
}

// TestParallelFlows runs 16 TCP flows at once, half each way, over both
// families.
func TestParallelFlows(t *testing.T) {
	const flows = 16
	n := size(8<<20, 1<<20)
	e := newEnv(t, keepKernelAddrs)
	conns := make([]conn, flows)
	toStack := make([]bool, flows)
	for i := range conns {
		pfx := []netip.Prefix{stack4, stack6}[i%2]
		if i%4 < 2 {
			conns[i] = e.stackDials(t, pfx)
		} else {
			port := 7300 + uint16(i)
			conns[i] = e.kernelDials(t, e.stackListener(t, pfx, port), stackAddr(pfx, port))
			toStack[i] = true
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, flows)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if toStack[i] {
				errs[i] = transfer(c.kernel, c.stack, n, uint64(100+i), 2*quick)
			} else {
				errs[i] = transfer(c.stack, c.kernel, n, uint64(100+i), 2*quick)
			}
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("flow %d: %v", i, err)
		}
	}
}

// TestCloseAndReattach: the owner's Close removes the NIC from the stack
// (gVisor's on-close action), runs twice harmlessly, and a stack cleanup
// after it is harmless too; a NIC can also be removed and the endpoint
// attached to a new one.
func TestCloseAndReattach(t *testing.T) {
	e := newEnv(t, flushKernelAddrs)
	c := e.stackDials(t, stack4)
	if err := transfer(c.stack, c.kernel, 1<<20, 1, quick); err != nil {
		t.Fatal(err)
	}
	if err := e.s.RemoveNIC(stacktest.NIC); err != nil {
		t.Fatalf("RemoveNIC: %v", err)
	}
	if e.ep.IsAttached() {
		t.Fatal("still attached after RemoveNIC")
	}

	// RemoveNIC closed that endpoint; a new one on the same device
	// works, and its owner closing it takes the NIC away.
	ep, err := afpacket.New(afpacket.Options{Interface: e.p.A.Dev, Netns: e.p.A.Path()})
	if err != nil {
		t.Fatal(err)
	}
	s := stacktest.New(t, ep, stack4)
	tuneTCP(t, s)
	e2 := &env{p: e.p, ep: ep, s: s}
	c = e2.stackDials(t, stack4)
	if err := transfer(c.stack, c.kernel, 1<<20, 2, quick); err != nil {
		t.Fatal(err)
	}
	ep.Close()
	ep.Close()
	if ep.IsAttached() {
		t.Error("attached after Close")
	}
	if _, ok := s.NICInfo()[stacktest.NIC]; ok {
		t.Error("the stack still has the NIC after the endpoint's Close")
	}
	if st := ep.Stats(); st.TxPackets == 0 {
		t.Errorf("stats after close: %+v", st)
	}
}

// TestCloseUnderLoad closes the endpoint (its owner's Close, which removes
// the NIC from the stack) while frames stream both ways, so the receive
// goroutine is busy delivering into the stack and never finds the ring
// empty. Close must return promptly: the stack detaches the endpoint while
// holding its own lock, which the receive goroutine may be waiting for.
func TestCloseUnderLoad(t *testing.T) {
	for i := range 3 {
		e := newEnv(t, flushKernelAddrs)
		in := e.kernelDials(t, e.stackListener(t, stack4, 7400), stackAddr(stack4, 7400))
		out := e.stackDials(t, stack6)
		flowing := make(chan struct{}, 2)
		for _, c := range []struct{ w, r net.Conn }{{in.kernel, in.stack}, {out.stack, out.kernel}} {
			c.w.SetDeadline(time.Now().Add(quick))
			c.r.SetDeadline(time.Now().Add(quick))
			go io.Copy(struct{ io.Writer }{c.w}, stacktest.NewSource(1<<40, uint64(i)))
			go io.Copy(&signalAfter{n: 4 << 20, ch: flowing}, struct{ io.Reader }{c.r})
		}
		<-flowing
		<-flowing
		closed := make(chan struct{})
		go func() {
			e.ep.Close()
			close(closed)
		}()
		select {
		case <-closed:
		case <-time.After(20 * time.Second):
			t.Fatalf("run %d: Close did not return within 20s while traffic was flowing", i)
		}
		if _, ok := e.s.NICInfo()[stacktest.NIC]; ok {
			t.Fatalf("run %d: the NIC survived the endpoint's Close", i)
		}
		in.close()
		out.close()
	}
}

// signalAfter discards what is written to it and closes ch once n bytes
// have arrived.
type signalAfter struct {
	n    int64
	ch   chan struct{}
	seen int64
}

func (s *signalAfter) Write(p []byte) (int, error) {
	before := s.seen
	s.seen += int64(len(p))
	if before < s.n && s.seen >= s.n {
		s.ch <- struct{}{}
	}
	return len(p), nil
}
