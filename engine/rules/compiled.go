package rules

import (
	"cmp"
	"encoding/binary"
	"math/bits"
	"net/netip"
	"slices"
)

// Addresses are handled as two 64-bit words, most significant first. An
// IPv4 address a.b.c.d sits in the top 32 bits of hi (lo = 0), so an IPv4
// prefix of length n masks the top n bits exactly like an IPv6 one: one
// code path serves both families (each family has its own fam).

func addrWords(a netip.Addr) (hi, lo uint64) {
	if a.Is4() {
		b := a.As4()
		return uint64(binary.BigEndian.Uint32(b[:])) << 32, 0
	}
	b := a.As16()
	return binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
}

// maskWords keeps the top n bits of (hi, lo); n in [0, 128].
func maskWords(hi, lo uint64, n uint8) (uint64, uint64) {
	if n <= 64 {
		// A shift by 64 yields 0 in Go, so n == 0 clears hi.
		return hi & ^(^uint64(0) >> n), 0
	}
	return hi, lo & ^(^uint64(0) >> (n - 64))
}

func prefixWords(p netip.Prefix) (hi, lo uint64, n uint8) {
	hi, lo = addrWords(p.Addr())
	return hi, lo, uint8(p.Bits())
}

// portClass orders the four port shapes: both ports specific (0), remote
// only (1), local only (2), both wildcards (3). Lower is more specific.
func portClass(lport, rport uint16) uint8 {
	c := uint8(0)
	if lport == 0 {
		c++
	}
	if rport == 0 {
		c += 2
	}
	return c
}

// precedence compares two rules of one table and family: negative when a
// is more specific (takes precedence) than b. It is the documented order,
// extended by addresses and ports into a total order for Dump.
func precedence(a, b *Rule) int {
	return cmp.Or(
		cmp.Compare(b.Remote.Bits(), a.Remote.Bits()),
		cmp.Compare(b.Local.Bits(), a.Local.Bits()),
		cmp.Compare(portClass(a.LocalPort, a.RemotePort), portClass(b.LocalPort, b.RemotePort)),
		a.Remote.Addr().Compare(b.Remote.Addr()),
		a.Local.Addr().Compare(b.Local.Addr()),
		cmp.Compare(a.RemotePort, b.RemotePort),
		cmp.Compare(a.LocalPort, b.LocalPort),
	)
}

// entry is one rule in the local side of a remote node: the masked local
// prefix and the ports, in the order they are tried.
type entry struct {
	lhi, llo     uint64
	rule         int32 // index into fam.rules
	lport, rport uint16
	llen         uint8
	class        uint8
}

// node holds the rules of one distinct remote prefix. entries[first:first+n]
// are sorted by local length (longest first), local address, port class,
// remote port, local port, so the first entry that matches a tuple is the
// best of the node. Nodes with more than smallNode entries also get their
// distinct local lengths (lens[lensAt:lensAt+nlens], longest first) and one
// local-hash key per distinct local prefix pointing at its group.
type node struct {
	parent int32 // nearest shorter remote prefix containing this one, -1 if none
	first  int32
	n      int32
	lensAt int32 // -1 for small nodes
	nlens  int32
}

// group is the entries of one (node, local prefix), sorted by port class,
// then remote port, then local port.
type group struct {
	first, n int32
}

const (
	smallNode  = 8 // linear scan up to this many entries per node
	smallGroup = 8 // linear scan up to this many entries per local group
)

// fam is the compiled table of one (namespace, scope, transport, family).
type fam struct {
	rules   []Rule // Dump order; entry.rule indexes it
	remote  trie   // remote address → node of its longest remote prefix
	nodes   []node
	entries []entry
	lens    []uint8
	local   hashIndex // (node, masked local, len) → group
	groups  []group
}

func buildFam(rs []Rule) *fam {
	if len(rs) == 0 {
		return nil
	}
	perm := make([]int32, len(rs))
	for i := range perm {
		perm[i] = int32(i)
	}
	slices.SortFunc(perm, func(a, b int32) int { return precedence(&rs[a], &rs[b]) })
	sorted := make([]Rule, len(rs))
	for i, p := range perm {
		sorted[i] = rs[p]
	}
	rs = sorted
	f := &fam{rules: rs}

	// Group rule indexes by remote prefix.
	byRemote := make(map[netip.Prefix]int32, len(rs))
	var members [][]int32
	var remotes []netip.Prefix
	for i := range rs {
		p := rs[i].Remote
		ni, ok := byRemote[p]
		if !ok {
			ni = int32(len(members))
			byRemote[p] = ni
			members = append(members, nil)
			remotes = append(remotes, p)
		}
		members[ni] = append(members[ni], int32(i))
	}
	f.nodes = make([]node, len(members))
	f.entries = make([]entry, 0, len(rs))
	// Build-time index of the remote prefixes, for the parent links.
	var byLen hashIndex
	byLen.init(len(members))
	var rlens []uint8 // distinct non-zero remote lengths, longest first
	root := int32(-1)
	seenLen := [129]bool{}
	tps := make([]tprefix, len(remotes))
	for ni, p := range remotes {
		hi, lo, n := prefixWords(p)
		tps[ni] = tprefix{hi: hi, lo: lo, bits: n, node: int32(ni)}
		if n == 0 {
			root = int32(ni)
		} else {
			byLen.put(hi, lo, uint32(n)+1, int32(ni))
			if !seenLen[n] {
				seenLen[n] = true
				rlens = append(rlens, n)
			}
		}
	}
	slices.SortFunc(rlens, func(a, b uint8) int { return cmp.Compare(b, a) })
	maxDepth := uint8(16)
	if rs[0].Remote.Addr().Is4() {
		maxDepth = 4
	}
	f.remote = buildTrie(tps, maxDepth)

	var nbig, ngroups int
	for ni, m := range members {
		slices.SortFunc(m, func(a, b int32) int {
			ra, rb := &rs[a], &rs[b]
			return cmp.Or(
				cmp.Compare(rb.Local.Bits(), ra.Local.Bits()),
				ra.Local.Addr().Compare(rb.Local.Addr()),
				cmp.Compare(portClass(ra.LocalPort, ra.RemotePort), portClass(rb.LocalPort, rb.RemotePort)),
				cmp.Compare(ra.RemotePort, rb.RemotePort),
				cmp.Compare(ra.LocalPort, rb.LocalPort),
			)
		})
		nd := &f.nodes[ni]
		nd.first = int32(len(f.entries))
		nd.n = int32(len(m))
		nd.lensAt = -1
		for _, ri := range m {
			r := &rs[ri]
			hi, lo, n := prefixWords(r.Local)
			f.entries = append(f.entries, entry{
				lhi: hi, llo: lo, llen: n,
				lport: r.LocalPort, rport: r.RemotePort,
				class: portClass(r.LocalPort, r.RemotePort),
				rule:  ri,
			})
		}
		if len(m) > smallNode {
			nbig += len(m)
		}
	}
	f.local.init(nbig)
	for ni := range f.nodes {
		nd := &f.nodes[ni]
		if nd.n <= smallNode {
			continue
		}
		nd.lensAt = int32(len(f.lens))
		es := f.entries[nd.first : nd.first+nd.n]
		for i := 0; i < len(es); {
			j := i + 1
			for j < len(es) && es[j].llen == es[i].llen && es[j].lhi == es[i].lhi && es[j].llo == es[i].llo {
				j++
			}
			if len(f.lens) == int(nd.lensAt) || f.lens[len(f.lens)-1] != es[i].llen {
				f.lens = append(f.lens, es[i].llen)
			}
			f.local.put(es[i].lhi, es[i].llo, uint32(ni)<<8|uint32(es[i].llen)+1, int32(len(f.groups)))
			f.groups = append(f.groups, group{first: nd.first + int32(i), n: int32(j - i)})
			ngroups++
			i = j
		}
		nd.nlens = int32(len(f.lens)) - nd.lensAt
	}

	// Parents: the longest shorter remote prefix present that contains the
	// node's prefix; the root for everything else.
	for ni, p := range remotes {
		nd := &f.nodes[ni]
		nd.parent = -1
		hi, lo, n := prefixWords(p)
		if n == 0 {
			continue
		}
		nd.parent = root
		for _, l := range rlens {
			if l >= n {
				continue
			}
			mh, ml := maskWords(hi, lo, l)
			if v := byLen.get(mh, ml, uint32(l)+1); v >= 0 {
				nd.parent = v
				break
			}
		}
	}
	return f
}

// lookup returns the index in f.rules of the best rule for the tuple, -1
// if none matches.
func (f *fam) lookup(lhi, llo, rhi, rlo uint64, lport, rport uint16) int32 {
	ni := f.remote.lookup(rhi, rlo)
	for ni >= 0 {
		nd := &f.nodes[ni]
		if nd.lensAt < 0 {
			es := f.entries[nd.first : nd.first+nd.n]
			for i := range es {
				e := &es[i]
				if (e.lport == 0 || e.lport == lport) && (e.rport == 0 || e.rport == rport) {
					if mh, ml := maskWords(lhi, llo, e.llen); mh == e.lhi && ml == e.llo {
						return e.rule
					}
				}
			}
		} else {
			for _, l := range f.lens[nd.lensAt : nd.lensAt+nd.nlens] {
				mh, ml := maskWords(lhi, llo, l)
				gi := f.local.get(mh, ml, uint32(ni)<<8|uint32(l)+1)
				if gi < 0 {
					continue
				}
				if r := f.matchGroup(f.groups[gi], lport, rport); r >= 0 {
					return r
				}
			}
		}
		ni = nd.parent
	}
	return -1
}

func (f *fam) matchGroup(g group, lport, rport uint16) int32 {
	es := f.entries[g.first : g.first+g.n]
	if len(es) <= smallGroup {
		for i := range es {
			e := &es[i]
			if (e.lport == 0 || e.lport == lport) && (e.rport == 0 || e.rport == rport) {
				return e.rule
			}
		}
		return -1
	}
	// Sorted by (class, rport, lport): binary search the one candidate of
	// each class, most specific class first.
	for c := uint8(0); c < 4; c++ {
		var rp, lp uint16
		if c <= 1 {
			rp = rport
		}
		if c == 0 || c == 2 {
			lp = lport
		}
		i, found := slices.BinarySearchFunc(es, c, func(e entry, c uint8) int {
			return cmp.Or(cmp.Compare(e.class, c), cmp.Compare(e.rport, rp), cmp.Compare(e.lport, lp))
		})
		if found {
			return es[i].rule
		}
	}
	return -1
}

// hashIndex is an open-addressing hash (linear probing, load ≤ 1/2) from a
// masked address plus a 32-bit tag (prefix length + 1, and for local keys
// the node index) to an int32. A zero tag marks an empty slot.
type hashIndex struct {
	slots []slot
	shift uint8
	mask  uint64
}

type slot struct {
	hi, lo uint64
	tag    uint32
	val    int32
}

func (h *hashIndex) init(n int) {
	size := 1
	for size < 2*n {
		size <<= 1
	}
	h.slots = make([]slot, size)
	h.shift = uint8(64 - bits.TrailingZeros(uint(size)))
	h.mask = uint64(size - 1)
}

func hashKey(hi, lo uint64, tag uint32) uint64 {
	x := hi ^ bits.RotateLeft64(lo, 29) ^ uint64(tag)*0xD6E8FEB86659FD93
	return x * 0x9E3779B97F4A7C15
}

func (h *hashIndex) put(hi, lo uint64, tag uint32, val int32) {
	i := hashKey(hi, lo, tag) >> h.shift
	for {
		s := &h.slots[i]
		if s.tag == 0 {
			*s = slot{hi: hi, lo: lo, tag: tag, val: val}
			return
		}
		i = (i + 1) & h.mask
	}
}

func (h *hashIndex) get(hi, lo uint64, tag uint32) int32 {
	if len(h.slots) == 0 {
		return -1
	}
	i := hashKey(hi, lo, tag) >> h.shift
	for {
		s := &h.slots[i&h.mask]
		if s.tag == tag && s.hi == hi && s.lo == lo {
			return s.val
		}
		if s.tag == 0 {
			return -1
		}
		i++
	}
}
