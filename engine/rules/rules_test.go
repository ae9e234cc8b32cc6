package rules

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

var t0 = time.Unix(1_700_000_000, 0)

// mk builds a rule of table ("t/ns", Global, TCP) from "local:port remote:port".
func mk(name, local string, lport uint16, remote string, rport uint16) Rule {
	return Rule{
		Namespace: "t/ns", Scope: Global, Proto: TCP,
		Local: netip.MustParsePrefix(local), LocalPort: lport,
		Remote: netip.MustParsePrefix(remote), RemotePort: rport,
		Action: Deny, Name: "t/" + name, Created: t0,
	}
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func mustCompile(t testing.TB, rs []Rule) *Set {
	t.Helper()
	s, _, err := Compile(rs)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestPrecedence checks each step of the documented order: remote length,
// then local length, then remote port, then local port, and that the
// defaults apply when nothing matches.
func TestPrecedence(t *testing.T) {
	all := []Rule{
		mk("any", "0.0.0.0/0", 0, "0.0.0.0/0", 0),
		mk("r8", "0.0.0.0/0", 0, "10.0.0.0/8", 0),
		mk("r24", "0.0.0.0/0", 0, "10.1.2.0/24", 0),
		mk("r24-l32", "192.168.0.1/32", 0, "10.1.2.0/24", 0),
		mk("r8-l32-ports", "192.168.0.1/32", 80, "10.0.0.0/8", 443),
		mk("r32", "0.0.0.0/0", 0, "10.1.2.3/32", 0),
		mk("r32-l16", "192.168.0.0/16", 0, "10.1.2.3/32", 0),
		mk("r32-l16-lport", "192.168.0.0/16", 80, "10.1.2.3/32", 0),
		mk("r32-l16-rport", "192.168.0.0/16", 0, "10.1.2.3/32", 443),
		mk("r32-l16-both", "192.168.0.0/16", 80, "10.1.2.3/32", 443),
		mk("v6-any", "::/0", 0, "::/0", 0),
		mk("v6-r64", "::/0", 0, "fd00:1::/64", 0),
		mk("v6-r64-l128", "fd00:2::1/128", 0, "fd00:1::/64", 0),
	}
	s := mustCompile(t, all)
	tests := []struct {
		local, remote string
		want          string // "" = no match
	}{
		// remote length dominates local length and ports
		{"192.168.0.1:80", "10.1.2.3:443", "r32-l16-both"},
		{"192.168.0.1:80", "10.1.2.3:444", "r32-l16-lport"},         // local port only
		{"192.168.0.1:81", "10.1.2.3:443", "r32-l16-rport"},         // remote port only
		{"192.168.0.1:81", "10.1.2.3:444", "r32-l16"},               // wildcards
		{"172.16.0.1:80", "10.1.2.3:443", "r32"},                    // local /16 misses → local /0
		{"192.168.0.1:80", "10.1.2.4:443", "r24-l32"},               // remote /24 beats the /8 with both ports
		{"192.168.0.2:80", "10.1.2.4:443", "r24"},                   // local /32 misses
		{"192.168.0.1:80", "10.9.9.9:443", "r8-l32-ports"},          // /8: ports + local /32
		{"192.168.0.1:80", "10.9.9.9:444", "r8"},                    // rport misses
		{"192.168.0.1:80", "11.0.0.1:443", "any"},                   // only the wildcard
		{"[::ffff:192.168.0.1]:80", "10.1.2.3:443", "r32-l16-both"}, // unmapped
		{"[fd00:2::1]:1", "[fd00:1::5]:2", "v6-r64-l128"},
		{"[fd00:2::2]:1", "[fd00:1::5]:2", "v6-r64"},
		{"[fd00:2::1]:1", "[fd00:3::5]:2", "v6-any"},
		{"192.168.0.1:80", "[fd00:1::5]:2", ""}, // mixed families
	}
	for _, tt := range tests {
		r, ok := s.Lookup("t/ns", Global, TCP, ap(tt.local), ap(tt.remote))
		got := ""
		if ok {
			got = strings.TrimPrefix(r.Name, "t/")
		}
		if got != tt.want {
			t.Errorf("%s -> %s: got %q, want %q", tt.local, tt.remote, got, tt.want)
		}
		if ref, _ := refLookup(all, "t/ns", Global, TCP, ap(tt.local), ap(tt.remote)); (ref == nil) != !ok || (ok && ref.Name != r.Name) {
			t.Errorf("%s -> %s: reference disagrees: %v", tt.local, tt.remote, ref)
		}
	}
	// Other tables are separate; nothing matches → default allow.
	for _, q := range []struct {
		ns    string
		scope Scope
		proto Proto
	}{{"t/other", Global, TCP}, {"t/ns", Local, TCP}, {"t/ns", Global, UDP}, {"t/ns", 0, TCP}, {"t/ns", Global, 9}} {
		if r, ok := s.Lookup(q.ns, q.scope, q.proto, ap("1.2.3.4:1"), ap("10.1.2.3:443")); ok {
			t.Errorf("%v: matched %v", q, r)
		}
		if a, r := s.Decide(q.ns, q.scope, q.proto, ap("1.2.3.4:1"), ap("10.1.2.3:443")); a != Allow || r != nil {
			t.Errorf("%v: Decide = %v %v", q, a, r)
		}
	}
	var nilSet *Set
	if _, ok := nilSet.Lookup("t/ns", Global, TCP, ap("1.2.3.4:1"), ap("10.1.2.3:443")); ok {
		t.Error("nil set matched")
	}
	var tab Table
	if _, ok := tab.Lookup("t/ns", Global, TCP, ap("1.2.3.4:1"), ap("10.1.2.3:443")); ok {
		t.Error("empty table matched")
	}
}

// TestPortOrder checks the four port shapes in every combination of
// presence, with equal prefixes.
func TestPortOrder(t *testing.T) {
	shapes := []Rule{
		mk("both", "0.0.0.0/0", 80, "0.0.0.0/0", 443),
		mk("remote", "0.0.0.0/0", 0, "0.0.0.0/0", 443),
		mk("local", "0.0.0.0/0", 80, "0.0.0.0/0", 0),
		mk("none", "0.0.0.0/0", 0, "0.0.0.0/0", 0),
	}
	for mask := 1; mask < 16; mask++ {
		var rs []Rule
		for i := range shapes {
			if mask&(1<<i) != 0 {
				rs = append(rs, shapes[i])
			}
		}
		s := mustCompile(t, rs)
		for _, lp := range []uint16{80, 81} {
			for _, rp := range []uint16{443, 444} {
				l, r := netip.AddrPortFrom(netip.MustParseAddr("1.1.1.1"), lp), netip.AddrPortFrom(netip.MustParseAddr("2.2.2.2"), rp)
				got, ok := s.Lookup("t/ns", Global, TCP, l, r)
				want, wok := refLookup(rs, "t/ns", Global, TCP, l, r)
				if ok != wok || (ok && got.Name != want.Name) {
					t.Errorf("mask %b %v %v: got %v, want %v", mask, l, r, got, want)
				}
			}
		}
	}
}

// TestRandomAgainstReference compares Lookup with the brute-force scan over
// many random rule sets, from tiny to a few thousand rules, IPv4 and IPv6.
func TestRandomAgainstReference(t *testing.T) {
	sizes := []int{1, 2, 5, 10, 30, 100, 300, 1000, 3000}
	lookups := 0
	for seed := range uint64(60) {
		g := newGen(seed)
		n := sizes[int(seed)%len(sizes)]
		rs := g.rules(n)
		s := mustCompile(t, rs)
		for range 2000 {
			l, r := g.tuple()
			ns := g.nss[g.r.IntN(len(g.nss))]
			sc, pr := Scope(1+g.r.IntN(2)), Proto(1+g.r.IntN(2))
			got, ok := s.Lookup(ns, sc, pr, l, r)
			want, wok := refLookup(rs, ns, sc, pr, l, r)
			lookups++
			if ok != wok || (ok && got.Name != want.Name) {
				t.Fatalf("seed %d n %d: %s %s/%s %v -> %v: got %v, want %v", seed, n, ns, sc, pr, l, r, got, want)
			}
		}
	}
	t.Logf("%d lookups compared", lookups)
}

// TestConflicts: the same match in the same table keeps the older rule
// (creation time, then name) and reports the others naming it; the same
// match in another table or with another port is no conflict.
func TestConflicts(t *testing.T) {
	older := mk("b-older", "0.0.0.0/0", 0, "10.0.0.0/8", 0)
	older.Created = t0.Add(-time.Hour)
	sameTimeA := mk("a-same", "0.0.0.0/0", 0, "10.0.0.0/8", 0)
	sameTimeC := mk("c-same", "0.0.0.0/0", 0, "10.0.0.0/8", 0)
	otherTable := mk("other", "0.0.0.0/0", 0, "10.0.0.0/8", 0)
	otherTable.Proto = UDP
	otherPort := mk("port", "0.0.0.0/0", 0, "10.0.0.0/8", 1)
	older.Action, sameTimeA.Action = Allow, Deny

	s, cs, err := Compile([]Rule{sameTimeC, otherPort, sameTimeA, otherTable, older})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range cs {
		got = append(got, c.Loser.Name+"<"+c.Winner.Name)
	}
	if want := []string{"t/a-same<t/b-older", "t/c-same<t/b-older"}; !slices.Equal(got, want) {
		t.Errorf("conflicts %v, want %v", got, want)
	}
	if !strings.Contains(cs[0].String(), `"t/b-older"`) {
		t.Errorf("conflict message %q does not name the winner", cs[0])
	}
	if r, _ := s.Lookup("t/ns", Global, TCP, ap("1.1.1.1:1"), ap("10.0.0.1:2")); r.Name != "t/b-older" {
		t.Errorf("winner %v", r)
	}
	if s.Len() != 3 || len(s.Dump()) != 3 || len(s.Conflicts()) != 2 {
		t.Errorf("Len %d Dump %d Conflicts %d", s.Len(), len(s.Dump()), len(s.Conflicts()))
	}
	// Without the oldest, the tie on time goes to the smaller name.
	_, cs, _ = Compile([]Rule{sameTimeC, sameTimeA})
	if len(cs) != 1 || cs[0].Loser.Name != "t/c-same" || cs[0].Winner.Name != "t/a-same" {
		t.Errorf("tie break: %v", cs)
	}
}

func TestValidate(t *testing.T) {
	ok := mk("ok", "10.0.0.0/8", 0, "0.0.0.0/0", 0)
	tests := []struct {
		mut  func(*Rule)
		want string
	}{
		{func(r *Rule) { r.Name = "" }, "empty name"},
		{func(r *Rule) { r.Namespace = "" }, "empty namespace"},
		{func(r *Rule) { r.Scope = 0 }, "invalid scope"},
		{func(r *Rule) { r.Proto = 3 }, "invalid transport"},
		{func(r *Rule) { r.Action = 0 }, "invalid action"},
		{func(r *Rule) { r.Action = Redirect }, "needs a redirect app"},
		{func(r *Rule) { r.RedirectApp = "x" }, "redirect app"},
		{func(r *Rule) { r.Local = netip.Prefix{} }, "local prefix is not set"},
		{func(r *Rule) { r.Remote = netip.MustParsePrefix("10.1.2.3/8") }, "not canonical"},
		{func(r *Rule) { r.Remote = netip.MustParsePrefix("::/0") }, "different address families"},
		{func(r *Rule) { r.Local = netip.MustParsePrefix("::ffff:10.0.0.0/104") }, "IPv4-mapped"},
	}
	for _, tt := range tests {
		r := ok
		tt.mut(&r)
		_, _, err := Compile([]Rule{ok2(), r})
		if err == nil || !strings.Contains(err.Error(), tt.want) || (r.Name != "" && !strings.Contains(err.Error(), r.Name)) {
			t.Errorf("%s: err = %v", tt.want, err)
		}
	}
	r := ok
	r.Action, r.RedirectApp = Redirect, "app"
	if _, _, err := Compile([]Rule{r}); err != nil {
		t.Errorf("redirect: %v", err)
	}
	if _, _, err := Compile([]Rule{ok, ok}); err == nil || !strings.Contains(err.Error(), "duplicate") {
		t.Errorf("duplicate name: %v", err)
	}
}

func ok2() Rule { return mk("fine", "0.0.0.0/0", 0, "0.0.0.0/0", 0) }

// TestDump: stable documented order, losers excluded, and compiling the
// dump again gives the same set.
func TestDump(t *testing.T) {
	g := newGen(7)
	g.nss = []string{"b/z", "a/y", "a/x"}
	rs := g.rules(2000)
	s := mustCompile(t, rs)
	d := s.Dump()
	if len(d) != s.Len() {
		t.Fatalf("Dump %d rules, Len %d", len(d), s.Len())
	}
	for i := 1; i < len(d); i++ {
		a, b := &d[i-1], &d[i]
		c := strings.Compare(a.Namespace, b.Namespace)
		if c == 0 {
			c = int(a.Scope) - int(b.Scope)
		}
		if c == 0 {
			c = int(a.Proto) - int(b.Proto)
		}
		if c == 0 {
			c = a.Family() - b.Family()
		}
		if c == 0 {
			c = precedence(a, b)
		}
		if c >= 0 {
			t.Fatalf("Dump order broken at %d:\n%v\n%v", i, a, b)
		}
	}
	s2, cs, err := Compile(d)
	if err != nil || len(cs) != 0 {
		t.Fatalf("recompile: %v, %d conflicts", err, len(cs))
	}
	if d2 := s2.Dump(); !slices.EqualFunc(d, d2, func(a, b Rule) bool { return a == b }) {
		t.Fatal("Dump of recompiled dump differs")
	}
	for range 2000 {
		l, r := g.tuple()
		a, _ := s.Lookup("a/x", Global, TCP, l, r)
		b, _ := s2.Lookup("a/x", Global, TCP, l, r)
		if (a == nil) != (b == nil) || (a != nil && a.Name != b.Name) {
			t.Fatalf("recompiled set decides differently for %v %v", l, r)
		}
	}
}

func TestWriteTable(t *testing.T) {
	r1 := mk("one", "10.0.0.0/8", 0, "0.0.0.0/0", 443)
	r1.Tag = "web"
	r2 := mk("two", "::/0", 80, "fd00::/8", 0)
	r2.Action, r2.RedirectApp = Redirect, "proxy"
	var b bytes.Buffer
	if err := WriteTable(&b, []Rule{r1, r2}); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("got %d lines:\n%s", len(lines), b.String())
	}
	for i, want := range [][]string{
		{"NAMESPACE", "SCOPE", "PROTO", "LOCAL", "LPORT", "REMOTE", "RPORT", "ACTION", "TARGET", "RULE", "TAG"},
		{"t/ns", "Global", "TCP", "10.0.0.0/8", "*", "0.0.0.0/0", "443", "Deny", "-", "t/one", "web"},
		{"t/ns", "Global", "TCP", "::/0", "80", "fd00::/8", "*", "Redirect", "proxy", "t/two", "-"},
	} {
		if got := strings.Fields(lines[i]); !slices.Equal(got, want) {
			t.Errorf("line %d: %q, want %q", i, got, want)
		}
	}
	// Columns are aligned: every line has RULE's column at the same offset.
	col := strings.Index(lines[0], "RULE")
	for _, l := range lines[1:] {
		if !strings.HasPrefix(l[col:], "t/") {
			t.Errorf("misaligned: %q", l)
		}
	}
}

func TestEnums(t *testing.T) {
	for _, s := range []string{"Local", "global"} {
		if v, err := ParseScope(s); err != nil || !strings.EqualFold(v.String(), s) {
			t.Errorf("ParseScope(%q) = %v, %v", s, v, err)
		}
	}
	if v, err := ParseProto("udp"); err != nil || v != UDP {
		t.Errorf("ParseProto: %v %v", v, err)
	}
	if v, err := ParseAction("Redirect"); err != nil || v != Redirect {
		t.Errorf("ParseAction: %v %v", v, err)
	}
	if _, err := ParseAction("drop"); err == nil {
		t.Error("ParseAction(drop) succeeded")
	}
	if Action(0).String() != "invalid(0)" || Scope(7).String() != "invalid(7)" {
		t.Error("invalid enum strings")
	}
}

// TestLookupAllocs: Lookup does not allocate, on hits and misses, small
// and big nodes, both families.
func TestLookupAllocs(t *testing.T) {
	g := newGen(3)
	rs := g.rules(3000)
	s := mustCompile(t, rs)
	type q struct{ l, r netip.AddrPort }
	var qs []q
	for range 256 {
		l, r := g.tuple()
		qs = append(qs, q{l, r})
	}
	i := 0
	var sink *Rule
	allocs := testing.AllocsPerRun(2000, func() {
		x := qs[i%len(qs)]
		i++
		sink, _ = s.Lookup("a/x", Global, TCP, x.l, x.r)
	})
	_ = sink
	if allocs != 0 {
		t.Errorf("Lookup allocates %.1f per call", allocs)
	}
}

// TestConcurrentSwap: readers look up continuously while a writer compiles
// and stores new generations. Every generation has one rule for the probe
// tuple tagged with the generation number, so each reader must see tags
// that never go backwards and always one of the generations stored. Run
// with -race.
func TestConcurrentSwap(t *testing.T) {
	const gens = 200
	g := newGen(11)
	base := g.rules(500)
	var tab Table
	var done atomic.Bool
	var wg sync.WaitGroup
	l, r := ap("10.200.0.1:5"), ap("10.201.0.1:6")
	probe := mk("probe", "10.200.0.1/32", 5, "10.201.0.1/32", 6)
	probe.Namespace = "a/x"
	var bad atomic.Int64
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := -1
			for n := 0; !done.Load() || n < 100; n++ {
				rule, ok := tab.Lookup("a/x", Global, TCP, l, r)
				// Also use the rest of the set the reader holds.
				if s := tab.Load(); s != nil {
					lt, rt := g.fixedTuple(n)
					s.Lookup("a/y", Local, UDP, lt, rt)
				}
				if !ok {
					if last >= 0 {
						bad.Add(1)
					}
					continue
				}
				var gen int
				fmt.Sscanf(rule.Tag, "gen%d", &gen)
				if gen < last || gen >= gens {
					bad.Add(1)
				}
				last = gen
			}
		}()
	}
	for i := range gens {
		rs := slices.Clone(base[:100+i])
		p := probe
		p.Tag = fmt.Sprintf("gen%d", i)
		rs = append(rs, p)
		s, _, err := Compile(rs)
		if err != nil {
			t.Error(err)
			break
		}
		tab.Store(s)
	}
	done.Store(true)
	wg.Wait()
	if bad.Load() != 0 {
		t.Errorf("%d inconsistent lookups", bad.Load())
	}
}

// fixedTuple is a deterministic tuple that does not touch the generator's
// random state (which is not safe for concurrent use).
func (g *gen) fixedTuple(n int) (netip.AddrPort, netip.AddrPort) {
	a := netip.AddrFrom4([4]byte{10, byte(n % 3), byte(n % 4), byte(n % 8)})
	b := netip.AddrFrom4([4]byte{10, byte(n % 2), byte(n % 4), byte(n % 7)})
	return netip.AddrPortFrom(a, uint16(n%3)), netip.AddrPortFrom(b, uint16(n%4))
}

// TestLayout pins the sizes the lookup's cache behaviour relies on.
func TestLayout(t *testing.T) {
	if s := unsafe.Sizeof(tnode{}); s != 64 {
		t.Errorf("tnode is %d bytes, want 64 (one cache line)", s)
	}
	if s := unsafe.Sizeof(entry{}); s != 32 {
		t.Errorf("entry is %d bytes, want 32", s)
	}
	if s := unsafe.Sizeof(slot{}); s != 32 {
		t.Errorf("slot is %d bytes, want 32", s)
	}
}
