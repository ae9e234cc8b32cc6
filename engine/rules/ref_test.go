package rules

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"
)

// refLookup is the brute-force reference: a linear scan over the raw input
// (conflict losers included) keeping the best match by the documented
// order, ties (same match) going to the older rule.
func refLookup(rs []Rule, ns string, scope Scope, proto Proto, local, remote netip.AddrPort) (*Rule, bool) {
	la, ra := local.Addr().Unmap(), remote.Addr().Unmap()
	if !la.IsValid() || !ra.IsValid() || la.Is4() != ra.Is4() {
		return nil, false
	}
	la, ra = la.WithZone(""), ra.WithZone("")
	var best *Rule
	better := func(a, b *Rule) bool { // a beats b
		if a.Remote.Bits() != b.Remote.Bits() {
			return a.Remote.Bits() > b.Remote.Bits()
		}
		if a.Local.Bits() != b.Local.Bits() {
			return a.Local.Bits() > b.Local.Bits()
		}
		if (a.RemotePort != 0) != (b.RemotePort != 0) {
			return a.RemotePort != 0
		}
		if (a.LocalPort != 0) != (b.LocalPort != 0) {
			return a.LocalPort != 0
		}
		return olderThan(a, b)
	}
	for i := range rs {
		r := &rs[i]
		if r.Namespace != ns || r.Scope != scope || r.Proto != proto {
			continue
		}
		if !r.Local.Contains(la) || !r.Remote.Contains(ra) {
			continue
		}
		if r.LocalPort != 0 && r.LocalPort != local.Port() {
			continue
		}
		if r.RemotePort != 0 && r.RemotePort != remote.Port() {
			continue
		}
		if best == nil || better(r, best) {
			best = r
		}
	}
	return best, best != nil
}

// gen makes random rules and tuples that overlap a lot: addresses come from
// a few small pools so prefixes nest and tuples hit them.
type gen struct {
	r    *rand.Rand
	v6   bool // allow IPv6
	nss  []string
	base time.Time
	n    int
}

func newGen(seed uint64) *gen {
	return &gen{r: rand.New(rand.NewPCG(seed, seed^0x5eed)), v6: true,
		nss: []string{"a/x", "a/y"}, base: time.Unix(1_700_000_000, 0)}
}

func (g *gen) addr(v4 bool) netip.Addr {
	if v4 {
		b := [4]byte{10, byte(g.r.IntN(3)), byte(g.r.IntN(4)), byte(g.r.IntN(8))}
		if g.r.IntN(8) == 0 {
			b[0] = byte(g.r.IntN(256))
			b[3] = byte(g.r.IntN(256))
		}
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	b[0], b[1] = 0xfd, 0
	b[7] = byte(g.r.IntN(3))
	b[8] = byte(g.r.IntN(3))
	b[15] = byte(g.r.IntN(8))
	if g.r.IntN(8) == 0 {
		b[3] = byte(g.r.IntN(256))
		b[15] = byte(g.r.IntN(256))
	}
	return netip.AddrFrom16(b)
}

func (g *gen) bits(v4 bool) int {
	max := 128
	if v4 {
		max = 32
	}
	switch g.r.IntN(6) {
	case 0:
		return 0
	case 1:
		return max
	case 2:
		return max - 8
	default:
		return g.r.IntN(max + 1)
	}
}

func (g *gen) port() uint16 {
	if g.r.IntN(2) == 0 {
		return 0
	}
	return uint16(1 + g.r.IntN(3))
}

func (g *gen) rule() Rule {
	v4 := !g.v6 || g.r.IntN(3) > 0
	g.n++
	r := Rule{
		Namespace:  g.nss[g.r.IntN(len(g.nss))],
		Scope:      Scope(1 + g.r.IntN(2)),
		Proto:      Proto(1 + g.r.IntN(2)),
		Local:      netip.PrefixFrom(g.addr(v4), g.bits(v4)).Masked(),
		Remote:     netip.PrefixFrom(g.addr(v4), g.bits(v4)).Masked(),
		LocalPort:  g.port(),
		RemotePort: g.port(),
		Action:     Action(1 + g.r.IntN(3)),
		Name:       fmt.Sprintf("a/r%d", g.n),
		Created:    g.base.Add(time.Duration(g.r.IntN(4)) * time.Second),
	}
	if r.Action == Redirect {
		r.RedirectApp = "app"
	}
	return r
}

func (g *gen) rules(n int) []Rule {
	out := make([]Rule, n)
	for i := range out {
		out[i] = g.rule()
	}
	return out
}

func (g *gen) tuple() (local, remote netip.AddrPort) {
	v4 := !g.v6 || g.r.IntN(3) > 0
	la, ra := g.addr(v4), g.addr(v4)
	if v4 && g.r.IntN(10) == 0 {
		la = netip.AddrFrom16(la.As16()) // IPv4-mapped
	}
	return netip.AddrPortFrom(la, g.port()), netip.AddrPortFrom(ra, g.port())
}
