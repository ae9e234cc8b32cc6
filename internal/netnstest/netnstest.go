// Package netnstest builds real network topologies for tests: network
// namespaces joined by veth pairs, created with ip(8) and removed when the
// test ends.
package netnstest

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/hoststack/hoststack/engine/netns"
	"github.com/hoststack/hoststack/internal/testreq"
)

var seq atomic.Int32

// End is one side of a Pair.
type End struct {
	NS    string // name under /var/run/netns
	Dev   string // the veth device in NS
	Addr4 string // IPv4 address without prefix, e.g. 10.99.0.1
	Addr6 string // IPv6 address without prefix, e.g. fd99::1
	MAC   string // the device's hardware address
}

// Path is the namespace's file, for netns.Do or a transport's resolver.
func (e End) Path() string { return "/var/run/netns/" + e.NS }

// Pair is two network namespaces joined by one veth pair: A holds
// 10.99.0.1/24 and fd99::1/64, B holds 10.99.0.2/24 and fd99::2/64, both up
// with loopback up and IPv6 DAD off.
type Pair struct {
	A, B End

	made []string // namespaces Create added, for Delete
}

// Cmd runs ip(8) with args and fails the test when it fails.
func Cmd(t testing.TB, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Run runs any command and fails the test when it fails.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// NewPair creates a Pair (skipping, or failing in CI, without root and ip).
// Names are unique per process and call; everything is deleted on cleanup.
func NewPair(t testing.TB) *Pair {
	t.Helper()
	testreq.NetNS(t)
	p, err := Create()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Delete)
	return p
}

// Create is NewPair outside tests (a benchmark command, say): it needs root
// and ip(8), and returns why it could not build the pair. Names are unique
// per process and call; the caller must call Delete, which Create has done
// itself when it fails.
func Create() (p *Pair, err error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("network namespaces need ip(8) from iproute2: %w", err)
	}
	collectStale()
	n := seq.Add(1)
	pid := os.Getpid()
	// Namespace names carry the whole pid (collectStale reads it back);
	// interface names hold 15 bytes, so theirs is cut.
	p = &Pair{
		A: End{NS: fmt.Sprintf("hs-a-%d-%d", pid, n), Dev: fmt.Sprintf("hsa%dx%d", pid%100000, n), Addr4: "10.99.0.1", Addr6: "fd99::1"},
		B: End{NS: fmt.Sprintf("hs-b-%d-%d", pid, n), Dev: fmt.Sprintf("hsb%dx%d", pid%100000, n), Addr4: "10.99.0.2", Addr6: "fd99::2"},
	}
	defer func() {
		if err != nil {
			p.Delete()
		}
	}()
	ip := func(args ...string) error {
		out, err := exec.Command("ip", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	for _, e := range []End{p.A, p.B} {
		if err := ip("netns", "add", e.NS); err != nil {
			return p, err
		}
		p.made = append(p.made, e.NS)
	}
	if err := ip("link", "add", p.A.Dev, "netns", p.A.NS, "type", "veth", "peer", "name", p.B.Dev, "netns", p.B.NS); err != nil {
		return p, err
	}
	for _, e := range []*End{&p.A, &p.B} {
		for _, args := range [][]string{
			{"-n", e.NS, "addr", "add", e.Addr4 + "/24", "dev", e.Dev},
			{"-n", e.NS, "addr", "add", e.Addr6 + "/64", "dev", e.Dev, "nodad"},
			{"-n", e.NS, "link", "set", e.Dev, "up"},
			{"-n", e.NS, "link", "set", "lo", "up"},
		} {
			if err := ip(args...); err != nil {
				return p, err
			}
		}
		if err := netns.Do(e.Path(), func() error {
			ifc, err := net.InterfaceByName(e.Dev)
			if err != nil {
				return err
			}
			e.MAC = ifc.HardwareAddr.String()
			return nil
		}); err != nil {
			return p, fmt.Errorf("reading %s's address: %w", e.Dev, err)
		}
	}
	return p, nil
}

// collectStale deletes the namespaces of earlier pairs whose process is
// gone: a test binary killed by a timeout never runs its cleanups.
func collectStale() {
	entries, err := os.ReadDir("/var/run/netns")
	if err != nil {
		return
	}
	for _, e := range entries {
		var side byte
		var pid, n int
		if c, _ := fmt.Sscanf(e.Name(), "hs-%c-%d-%d", &side, &pid, &n); c != 3 || (side != 'a' && side != 'b') || pid <= 0 {
			continue
		}
		if fmt.Sprintf("hs-%c-%d-%d", side, pid, n) != e.Name() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = exec.Command("ip", "netns", "del", e.Name()).Run()
		}
	}
}

// Delete removes the namespaces Create made (and with them the veth pair).
// It may be called more than once.
func (p *Pair) Delete() {
	for _, ns := range p.made {
		_ = exec.Command("ip", "netns", "del", ns).Run()
	}
	p.made = nil
}

// Listen listens on network/addr inside the namespace at path; the listener
// is closed on cleanup.
func Listen(t testing.TB, path, network, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	if err := netns.Do(path, func() (err error) {
		l, err = net.Listen(network, addr)
		return err
	}); err != nil {
		t.Fatalf("listen %s %s in %s: %v", network, addr, path, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// ListenPacket is Listen for datagram sockets.
func ListenPacket(t testing.TB, path, network, addr string) net.PacketConn {
	t.Helper()
	var c net.PacketConn
	if err := netns.Do(path, func() (err error) {
		c, err = net.ListenPacket(network, addr)
		return err
	}); err != nil {
		t.Fatalf("listen %s %s in %s: %v", network, addr, path, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Dial dials network/addr from inside the namespace at path.
func Dial(path, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := netns.Do(path, func() (err error) {
		c, err = net.Dial(network, addr)
		return err
	})
	return c, err
}

// Loss drops pct percent of the packets the kernel of end's namespace
// receives and sends, with nftables (numgen random) in both directions.
// (tc netem would do for the sending side, but kernels built without
// CONFIG_NET_SCH_NETEM — this CI's — lack it, and nftables also reaches
// what arrives.) A userspace stack in that namespace sends and receives
// below netfilter: put the loss on its kernel peer's side.
func Loss(t testing.TB, end End, pct int) {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		testreq.Missing(t, "test needs nft(8) from nftables to inject packet loss")
	}
	rules := fmt.Sprintf(`table inet hsloss {
  chain in { type filter hook prerouting priority -300; policy accept; numgen random mod 100 < %d counter drop; }
  chain out { type filter hook output priority -300; policy accept; numgen random mod 100 < %d counter drop; }
}
`, pct, pct)
	cmd := exec.Command("ip", "netns", "exec", end.NS, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft: %v: %s", err, out)
	}
	t.Cleanup(func() {
		_ = exec.Command("ip", "netns", "exec", end.NS, "nft", "delete", "table", "inet", "hsloss").Run()
	})
}

// Dropped reports how many packets Loss dropped in end's namespace.
func Dropped(t testing.TB, end End) string {
	t.Helper()
	return Run(t, "ip", "netns", "exec", end.NS, "nft", "list", "table", "inet", "hsloss")
}
