//go:build !race

package afxdp

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/hoststack/hoststack/internal/netnstest"
)

// These tests move gigabytes; under the race detector they would take many
// minutes, so they run only in the plain `go test` pass.

// TestBulk1GiB sends 1 GiB each way and checks its sha256.
func TestBulk1GiB(t *testing.T) {
	e := newEnv(t, ModeAuto)
	const n = 1 << 30
	c, k := e.dialFromStack(t, false)
	d := transfer(t, c, k, n, 11, 5*time.Minute)
	t.Logf("1 GiB stack->kernel in %v (%.2f Gbit/s)", d, gbits(n, d))
	c2, k2 := e.dialToStack(t, true)
	d = transfer(t, k2, c2, n, 12, 5*time.Minute)
	t.Logf("1 GiB kernel->stack (IPv6) in %v (%.2f Gbit/s)", d, gbits(n, d))
}

// TestBulkLoss runs transfers through 1% random loss in both directions and
// checks they complete intact. Loss is injected in B:
//   - B's egress (the kernel's data and ACKs towards the stack): `tc qdisc
//     add dev <veth> root netem loss 1%`, or, on kernels built without netem
//     (CONFIG_NET_SCH_NETEM, e.g. this CI's), an nftables output rule
//     dropping 1% (numgen random);
//   - B's ingress (the stack's data and ACKs): an nftables prerouting rule
//     dropping 1%. A qdisc on A's veth would not do: AF_XDP transmit hands
//     frames straight to the driver, bypassing A's qdiscs.
func TestBulkLoss(t *testing.T) {
	e := newEnv(t, ModeAuto)
	b := e.p.B
	rules := "table inet hsloss {\n" +
		"  chain pre { type filter hook prerouting priority -300; policy accept; numgen random mod 100 < 1 counter drop; }\n"
	netem := true
	if out, err := inNS(b.NS, "tc", "qdisc", "add", "dev", b.Dev, "root", "netem", "loss", "1%"); err != nil {
		if !strings.Contains(string(out), "unknown") {
			t.Fatalf("tc netem: %v: %s", err, out)
		}
		t.Logf("kernel has no netem (%s); dropping B's egress with nftables instead", strings.TrimSpace(string(out)))
		netem = false
		rules += "  chain out { type filter hook output priority -300; policy accept; numgen random mod 100 < 1 counter drop; }\n"
	} else {
		t.Cleanup(func() { inNS(b.NS, "tc", "qdisc", "del", "dev", b.Dev, "root") })
	}
	rules += "}\n"
	cmd := exec.Command("ip", "netns", "exec", b.NS, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	t.Cleanup(func() { inNS(b.NS, "nft", "delete", "table", "inet", "hsloss") })

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
	ruleset := netnstest.Run(t, "ip", "netns", "exec", b.NS, "nft", "list", "table", "inet", "hsloss")
	t.Logf("B's loss rules:\n%s", ruleset)
	if netem {
		t.Logf("B's netem:\n%s", netnstest.Run(t, "ip", "netns", "exec", b.NS, "tc", "-s", "qdisc", "show", "dev", b.Dev))
	}
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
