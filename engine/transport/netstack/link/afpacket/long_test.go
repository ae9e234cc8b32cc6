//go:build !race

// The long transfers: too slow under the race detector, so they run in the
// plain pass of `make test` only.

package afpacket_test

import (
	"net/netip"
	"testing"
	"time"
)

// TestBulk1GiB moves 1 GiB each way over IPv4 and checks its SHA-256.
func TestBulk1GiB(t *testing.T) {
	const n = 1 << 30
	e := newEnv(t, keepKernelAddrs)
	t.Run("stack-to-kernel", func(t *testing.T) {
		c := e.stackDials(t, stack4)
		start := time.Now()
		if err := transfer(c.stack, c.kernel, n, 1000, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		t.Logf("1 GiB in %v", time.Since(start).Round(time.Millisecond))
	})
	t.Run("kernel-to-stack", func(t *testing.T) {
		l := e.stackListener(t, stack6, 8000)
		c := e.kernelDials(t, l, stackAddr(stack6, 8000))
		start := time.Now()
		if err := transfer(c.kernel, c.stack, n, 1001, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		t.Logf("1 GiB in %v", time.Since(start).Round(time.Millisecond))
	})
	t.Logf("stats: %+v", e.ep.Stats())
}

// TestNoStall runs 20 consecutive 64 MiB transfers, alternating direction
// and family, each on a new connection, each bounded by a deadline that is
// many times what it needs: a stalled flow fails the test instead of
// hanging it.
func TestNoStall(t *testing.T) {
	const runs, n = 20, 64 << 20
	e := newEnv(t, keepKernelAddrs)
	var worst time.Duration
	for i := range runs {
		pfx := []netip.Prefix{stack4, stack6}[i%2]
		start := time.Now()
		var err error
		if i%4 < 2 {
			c := e.stackDials(t, pfx)
			err = transfer(c.stack, c.kernel, n, uint64(2000+i), 30*time.Second)
			c.close()
		} else {
			port := 8100 + uint16(i)
			c := e.kernelDials(t, e.stackListener(t, pfx, port), stackAddr(pfx, port))
			err = transfer(c.kernel, c.stack, n, uint64(2000+i), 30*time.Second)
			c.close()
		}
		if err != nil {
			t.Fatalf("run %d (%s): %v", i, family(pfx), err)
		}
		worst = max(worst, time.Since(start))
	}
	t.Logf("slowest of %d runs of 64 MiB: %v; stats %+v", runs, worst.Round(time.Millisecond), e.ep.Stats())
}

// TestLoss loses 1% of the frames on the link into the stack (B to A),
// into the kernel (A to B), and both (see lossyLink: netem, or XDP), and
// has A's own device refuse 1% of the endpoint's frames (see
// refuseOnEgress); transfers both ways must arrive intact. Loss applies
// to whole GSO frames, so one loss event takes up to 45 MSS-sized
// segments at once. The kernel recovers from that in milliseconds;
// gVisor's TCP as the sender often falls into a run of retransmission
// timeouts instead (measured: 32 MiB in ~0.1 s, or in 3-48 s when that
// happens, in ~40% of runs; with 16 KiB GSO frames never), hence the
// modest sizes and the generous deadline.
func TestLoss(t *testing.T) {
	n := int64(8 << 20)
	for _, tc := range []struct {
		name                      string
		intoStack, intoKernel, tx bool
	}{
		{name: "into-stack", intoStack: true},
		{name: "into-kernel", intoKernel: true},
		{name: "both-ways", intoStack: true, intoKernel: true},
		{name: "device-refuses", tx: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, keepKernelAddrs)
			if tc.intoStack {
				lossyLink(t, e.p.B, e.p.A, 1)
			}
			if tc.intoKernel {
				lossyLink(t, e.p.A, e.p.B, 1)
			}
			if tc.tx {
				refuseOnEgress(t, e.p.A.NS, e.p.A.Dev, 1)
			}
			for i, pfx := range []netip.Prefix{stack4, stack6} {
				start := time.Now()
				c := e.stackDials(t, pfx)
				if err := transfer(c.stack, c.kernel, n, uint64(3000+i), 90*time.Second); err != nil {
					t.Fatalf("%s stack-to-kernel: %v", family(pfx), err)
				}
				t.Logf("%s stack-to-kernel: %v", family(pfx), time.Since(start).Round(time.Millisecond))
				start = time.Now()
				port := 8200 + uint16(i)
				c = e.kernelDials(t, e.stackListener(t, pfx, port), stackAddr(pfx, port))
				if err := transfer(c.kernel, c.stack, n, uint64(3100+i), 90*time.Second); err != nil {
					t.Fatalf("%s kernel-to-stack: %v", family(pfx), err)
				}
				t.Logf("%s kernel-to-stack: %v", family(pfx), time.Since(start).Round(time.Millisecond))
			}
			// The loss must have happened: the senders behind the
			// lossy links retransmitted. A run can be lucky (~130 data
			// frames each way per transfer at 1%), so transfer more
			// until it is not, a few times at most.
			kernelRetrans, stackRetrans := tcpRetrans(t, e.p.B.NS), e.s.Stats().TCP.Retransmits.Value()
			for extra := 0; extra < 4 && (tc.intoStack && kernelRetrans == 0 || (tc.intoKernel || tc.tx) && stackRetrans == 0); extra++ {
				port := 8210 + uint16(extra)
				c := e.kernelDials(t, e.stackListener(t, stack4, port), stackAddr(stack4, port))
				if err := transfer(c.kernel, c.stack, n, uint64(3200+extra), 90*time.Second); err != nil {
					t.Fatalf("extra kernel-to-stack: %v", err)
				}
				c = e.stackDials(t, stack4)
				if err := transfer(c.stack, c.kernel, n, uint64(3300+extra), 90*time.Second); err != nil {
					t.Fatalf("extra stack-to-kernel: %v", err)
				}
				kernelRetrans, stackRetrans = tcpRetrans(t, e.p.B.NS), e.s.Stats().TCP.Retransmits.Value()
			}
			st := e.ep.Stats()
			t.Logf("stats: %+v; retransmitted segments: B's kernel %d, stack %d", st, kernelRetrans, stackRetrans)
			if tc.intoStack && kernelRetrans == 0 {
				t.Error("B's kernel retransmitted nothing: no loss on the way into the stack")
			}
			if (tc.intoKernel || tc.tx) && stackRetrans == 0 {
				t.Error("the stack retransmitted nothing: no loss on the way into the kernel")
			}
			if tc.tx && st.TxDrops == 0 {
				t.Error("no TX drop counted although the device refused 1% of the frames")
			}
		})
	}
}

// TestCorruption damages 1% of B's TCP frames (see corruptOnEgress). The
// damaged frames arrive with full, wrong checksums and no virtio flags:
// the endpoint's software verification must drop them (counted in
// RxDrops), and TCP retransmits, so the data still arrives intact.
func TestCorruption(t *testing.T) {
	e := newEnv(t, keepKernelAddrs)
	if corruptOnEgress(t, e.p.B.NS, e.p.B.Dev, 1) {
		ethtoolOff(t, e.p.B.NS, e.p.B.Dev, "tx", "tso", "gso")
	}
	for i, pfx := range []netip.Prefix{stack4, stack6} {
		port := 8300 + uint16(i)
		c := e.kernelDials(t, e.stackListener(t, pfx, port), stackAddr(pfx, port))
		if err := transfer(c.kernel, c.stack, 32<<20, uint64(4000+i), 90*time.Second); err != nil {
			t.Fatalf("%s kernel-to-stack: %v", family(pfx), err)
		}
	}
	st := e.ep.Stats()
	t.Logf("stats: %+v", st)
	if st.RxDrops == 0 {
		t.Error("no frame was dropped for a bad checksum although netem corrupted 1%")
	}
}

// tcpRetrans is the TCP RetransSegs counter (IPv4 and IPv6) of the
// namespace ns.
func tcpRetrans(t testing.TB, ns string) uint64 {
	t.Helper()
	return snmp(t, ns, "/proc/net/snmp", "Tcp:", "RetransSegs")
}
