package afpacket_test

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/hoststack/hoststack/internal/testreq"
)

// TestKernelForwarding: on a host with IP forwarding on (a Kubernetes node,
// a router), the kernel routes every packet for the stack's addresses
// back out of the interface it came in on, since they are on-link and not
// its own (and sends ICMP redirects): wasted work, and the copies go out
// on the wire. The stack still works. An nftables rule on the interface's
// netdev ingress hook that drops the stack's addresses hides them from the
// kernel but not from the endpoint: AF_PACKET taps see a frame before the
// ingress hook.
func TestKernelForwarding(t *testing.T) {
	for _, filter := range []bool{false, true} {
		name := "no-filter"
		if filter {
			name = "ingress-filter"
		}
		t.Run(name, func(t *testing.T) {
			e := newEnv(t, keepKernelAddrs)
			inNS(t, e.p.A.NS, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
			if filter {
				nftIngress(t, e.p.A.NS, e.p.A.Dev, fmt.Sprintf("ip daddr %s drop", stack4.Addr()), fmt.Sprintf("ip6 daddr %s drop", stack6.Addr()))
			}
			for i, pfx := range []netip.Prefix{stack4, stack6} {
				c := e.stackDials(t, pfx)
				if err := transfer(c.stack, c.kernel, size(8<<20, 1<<20), uint64(i), quick); err != nil {
					t.Fatalf("%s stack-to-kernel: %v", family(pfx), err)
				}
				port := 7600 + uint16(i)
				c = e.kernelDials(t, e.stackListener(t, pfx, port), stackAddr(pfx, port))
				if err := transfer(c.kernel, c.stack, size(8<<20, 1<<20), uint64(10+i), quick); err != nil {
					t.Fatalf("%s kernel-to-stack: %v", family(pfx), err)
				}
			}
			fwd4 := snmp(t, e.p.A.NS, "/proc/net/snmp", "Ip:", "ForwDatagrams")
			fwd6 := snmp(t, e.p.A.NS, "/proc/net/snmp6", "", "Ip6OutForwDatagrams")
			t.Logf("A's kernel forwarded %d IPv4 and %d IPv6 packets", fwd4, fwd6)
			if filter && fwd4+fwd6 != 0 {
				t.Errorf("the kernel forwarded %d+%d packets despite the ingress filter", fwd4, fwd6)
			}
			if !filter && (fwd4 == 0 || fwd6 == 0) {
				t.Errorf("expected the kernel to forward the stack's packets (forwarded %d+%d): did the kernel change?", fwd4, fwd6)
			}
		})
	}
}

// nftIngress installs rules on dev's netdev ingress hook in ns, removed on
// cleanup.
func nftIngress(t testing.TB, ns, dev string, rules ...string) {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		testreq.Missing(t, "test needs nft")
	}
	table := "hsin_" + strings.ReplaceAll(dev, "-", "_")
	script := fmt.Sprintf("table netdev %s {\n chain ingress {\n  type filter hook ingress device %q priority 0;\n  %s\n }\n}\n", table, dev, strings.Join(rules, "\n  "))
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft -f: %v: %s\n%s", err, out, script)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "exec", ns, "nft", "delete", "table", "netdev", table).Run() })
}

// snmp reads one counter of ns from /proc/net/snmp (two-line tables: a
// header line and a value line starting with prefix) or /proc/net/snmp6
// (name value lines; prefix "").
func snmp(t testing.TB, ns, file, prefix, name string) uint64 {
	t.Helper()
	var names []string
	for _, line := range strings.Split(inNS(t, ns, "cat", file), "\n") {
		f := strings.Fields(line)
		switch {
		case prefix == "" && len(f) == 2 && f[0] == name:
			return parseCounter(t, name, f[1])
		case prefix != "" && len(f) > 0 && f[0] == prefix:
			if names == nil {
				names = f
				continue
			}
			for i, n := range names {
				if n == name && i < len(f) {
					return parseCounter(t, name, f[i])
				}
			}
		}
	}
	t.Fatalf("no %s in %s", name, file)
	return 0
}

func parseCounter(t testing.TB, name, v string) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		t.Fatalf("%s %q: %v", name, v, err)
	}
	return n
}
