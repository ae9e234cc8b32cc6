//go:build !race

package afxdp

import (
	"fmt"
	"testing"
	"time"

	"github.com/hoststack/hoststack/internal/netnstest"
)

// These tests move gigabytes; under the race detector they would take many
// minutes, so they run only in the plain `go test` pass.

// TestBulk1GiB sends 1 GiB from the stack (the direction gVisor's own
// endpoint stalled in) and 256 MiB back over IPv6, checking the sha256 of
// each; the second half stays short to keep the plain test run brief.
func TestBulk1GiB(t *testing.T) {
	e := newEnv(t, ModeAuto)
	const n = 1 << 30
	c, k := e.dialFromStack(t, false)
	d := transfer(t, c, k, n, 11, 5*time.Minute)
	t.Logf("1 GiB stack->kernel in %v (%.2f Gbit/s)", d, gbits(n, d))
	const m = 256 << 20
	c2, k2 := e.dialToStack(t, true)
	d = transfer(t, k2, c2, m, 12, 5*time.Minute)
	t.Logf("256 MiB kernel->stack (IPv6) in %v (%.2f Gbit/s)", d, gbits(m, d))
}

// TestBulkLoss runs transfers through 1% random loss in both directions and
// checks they complete intact. The loss is netnstest.Loss on B (nftables
// numgen, prerouting and output), not `tc netem`: this CI's kernel is built
// without CONFIG_NET_SCH_NETEM, and a qdisc on A's veth would not see the
// stack's frames anyway (AF_XDP transmit hands them straight to the driver,
// bypassing A's qdiscs). B's prerouting drops the stack's data and ACKs, B's
// output the kernel's.
func TestBulkLoss(t *testing.T) {
	e := newEnv(t, ModeAuto)
	netnstest.Loss(t, e.p.B, 1)
	const n = 64 << 20
	c, k := e.dialFromStack(t, false)
	d := transfer(t, c, k, n, 21, 3*time.Minute)
	t.Logf("64 MiB stack->kernel with 1%% loss each way in %v (%.2f Gbit/s)", d, gbits(n, d))
	c2, k2 := e.dialToStack(t, true)
	d = transfer(t, k2, c2, n, 22, 3*time.Minute)
	t.Logf("64 MiB kernel->stack with 1%% loss each way in %v (%.2f Gbit/s)", d, gbits(n, d))

	st := e.s.Stats().TCP
	t.Logf("stack TCP: retransmits %d, fast retransmits %d, timeouts %d", st.Retransmits.Value(), st.FastRetransmit.Value(), st.Timeouts.Value())
	if st.Retransmits.Value() == 0 {
		t.Fatal("the stack retransmitted nothing: no loss was injected")
	}
	t.Logf("B's loss rules:\n%s", netnstest.Dropped(t, e.p.B))
}

// TestNoStall runs 20 consecutive 64 MiB transfers, alternating direction
// and address family, each bounded by a deadline far above its expected
// time: a stall fails the test (gVisor's own AF_XDP endpoint stalled in
// about one bulk run in ten).
func TestNoStall(t *testing.T) {
	e := newEnv(t, ModeAuto)
	const n = 64 << 20
	var total time.Duration
	for i := range 20 {
		v6 := i%4 >= 2
		name := fmt.Sprintf("run%02d", i)
		var d time.Duration
		if i%2 == 0 {
			c, k := e.dialFromStack(t, v6)
			d = transfer(t, c, k, n, uint64(1000+i), 60*time.Second)
			name += " stack->kernel"
		} else {
			c, k := e.dialToStack(t, v6)
			d = transfer(t, k, c, n, uint64(1000+i), 60*time.Second)
			name += " kernel->stack"
		}
		total += d
		t.Logf("%s v6=%v: %v (%.2f Gbit/s)", name, v6, d, gbits(n, d))
	}
	t.Logf("20 runs in %v; endpoint %+v", total, e.ep.Stats())
}
