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

// TestLoss drops 1% of the frames leaving B (the kernel's transmissions
// to the stack), leaving A (the stack's transmissions: the endpoint does
// not bypass the device's transmit path) and both (see dropOnEgress: netem
// or nftables), and expects intact transfers both ways. Loss applies to
// whole GSO frames, so each loss event takes up to 45 MSS-sized segments
// at once.
func TestLoss(t *testing.T) {
	n := int64(32 << 20)
	for _, where := range []string{"B", "A", "both"} {
		t.Run("on-"+where, func(t *testing.T) {
			e := newEnv(t, keepKernelAddrs)
			if where != "A" {
				dropOnEgress(t, e.p.B.NS, e.p.B.Dev, 1)
			}
			if where != "B" {
				dropOnEgress(t, e.p.A.NS, e.p.A.Dev, 1)
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
			st := e.ep.Stats()
			t.Logf("stats: %+v", st)
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
