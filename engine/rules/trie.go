package rules

import (
	"math/bits"
	"slices"
)

// trie finds the longest remote prefix of a family containing an address:
// a multibit trie with 8-bit strides (four levels for IPv4, sixteen for
// IPv6 at most) whose nodes are compressed with bitmaps and popcounts, whose
// leaves are pushed (each slot holds the best prefix for it, inherited from
// above when none is stored at that level) and run-length encoded, and
// whose single-child chains that store nothing are skipped (path
// compression, checked against the node's key on arrival). A lookup is one
// node per branching level and one leaf read; it never backtracks.
type trie struct {
	nodes  []tnode
	leaves []int32 // remote node indexes (fam.nodes), -1 for none
}

// tnode indexes byte depth of the address. The fields a lookup reads first
// share the first cache line.
//
// A node is 128 bytes: the first cache line has what every visit reads,
// the second the leaf runs, inline when there are at most four (the common
// case at the deepest levels) so that the answer needs no further access.
type tnode struct {
	khi, klo uint64    // address bytes [0, depth) every address reaching this node must have
	child    [4]uint64 // bit s: slot s has a child
	childAt  int32     // index in trie.nodes of the child of the lowest child slot
	inherit  int32     // answer for an address that fails the key check
	depth    uint8     // byte of the address this node indexes
	nruns    uint8     // number of leaf runs if ≤ len(lv), else 0
	leafAt   int32     // index in trie.leaves of the first leaf run when nruns == 0
	leaf     [4]uint64 // bit s: a leaf run starts at slot s (bit 0 always set)
	lv       [4]int32  // the leaf runs when nruns > 0
	_        [16]byte
}

type tprefix struct {
	hi, lo uint64
	bits   uint8
	node   int32
}

// byteAt is byte d (0 = most significant) of (hi, lo).
func byteAt(hi, lo uint64, d uint8) uint8 {
	if d < 8 {
		return uint8(hi >> (56 - 8*d))
	}
	return uint8(lo >> (56 - 8*(d-8)))
}

// rank is the number of set bits of b below position s (s in [0, 256]).
func rank(b *[4]uint64, s uint) int32 {
	n := 0
	w := s / 64
	for i := uint(0); i < w; i++ {
		n += bits.OnesCount64(b[i])
	}
	if w < 4 {
		n += bits.OnesCount64(b[w] & (1<<(s%64) - 1))
	}
	return int32(n)
}

// level is the trie depth that stores a prefix of n bits.
func level(n uint8) uint8 {
	if n == 0 {
		return 0
	}
	return (n - 1) / 8
}

// buildTrie indexes ps (maxDepth: 4 or 16 bytes).
func buildTrie(ps []tprefix, maxDepth uint8) trie {
	slices.SortFunc(ps, func(a, b tprefix) int {
		switch {
		case a.hi != b.hi:
			return cmpU64(a.hi, b.hi)
		case a.lo != b.lo:
			return cmpU64(a.lo, b.lo)
		}
		return int(a.bits) - int(b.bits)
	})
	t := trie{nodes: make([]tnode, 1)}
	t.nodes[0] = t.build(0, ps, -1, maxDepth)
	return t
}

func cmpU64(a, b uint64) int {
	if a < b {
		return -1
	}
	return 1
}

// build makes the node for ps (all sharing their first d bytes, all longer
// than 8d bits unless d == 0) with inherited answer inh, appending its
// descendants to t.nodes.
func (t *trie) build(d uint8, ps []tprefix, inh int32, maxDepth uint8) tnode {
	// Path compression: skip levels that store nothing and do not branch.
	for d+1 < maxDepth && len(ps) > 0 {
		b := byteAt(ps[0].hi, ps[0].lo, d)
		skip := true
		for i := range ps {
			if level(ps[i].bits) == d || byteAt(ps[i].hi, ps[i].lo, d) != b {
				skip = false
				break
			}
		}
		if !skip {
			break
		}
		d++
	}
	n := tnode{depth: d, inherit: inh}
	if len(ps) > 0 {
		n.khi, n.klo = maskWords(ps[0].hi, ps[0].lo, 8*d)
	}
	var best [256]int32
	for i := range best {
		best[i] = inh
	}
	// Prefixes stored here, shortest first so longer ones overwrite.
	var here []tprefix
	for i := range ps {
		if level(ps[i].bits) == d {
			here = append(here, ps[i])
		}
	}
	slices.SortStableFunc(here, func(a, b tprefix) int { return int(a.bits) - int(b.bits) })
	for _, p := range here {
		span := 1 << (8*(d+1) - p.bits) // slots covered
		if p.bits == 0 {
			span = 256
		}
		first := int(byteAt(p.hi, p.lo, d)) &^ (span - 1)
		for s := first; s < first+span; s++ {
			best[s] = p.node
		}
	}
	// Children: the deeper prefixes grouped by byte d (ps is sorted).
	type grp struct {
		slot uint8
		ps   []tprefix
	}
	var groups []grp
	for i := 0; i < len(ps); {
		if level(ps[i].bits) == d {
			i++
			continue
		}
		b := byteAt(ps[i].hi, ps[i].lo, d)
		j := i
		var g []tprefix
		for ; j < len(ps) && byteAt(ps[j].hi, ps[j].lo, d) == b; j++ {
			if level(ps[j].bits) != d {
				g = append(g, ps[j])
			}
		}
		groups = append(groups, grp{b, g})
		i = j
	}
	n.childAt = int32(len(t.nodes))
	for _, g := range groups {
		n.child[g.slot/64] |= 1 << (g.slot % 64)
	}
	t.nodes = append(t.nodes, make([]tnode, len(groups))...)
	for k, g := range groups {
		c := t.build(d+1, g.ps, best[g.slot], maxDepth)
		t.nodes[int(n.childAt)+k] = c
	}
	// Leaf runs; slots with a child repeat the previous run (never read).
	var runs []int32
	prev := int32(0)
	for s := range 256 {
		v := best[s]
		if s > 0 && n.child[s/64]&(1<<(s%64)) != 0 {
			v = prev
		}
		if s == 0 || v != prev {
			n.leaf[s/64] |= 1 << (s % 64)
			runs = append(runs, v)
		}
		prev = v
	}
	if len(runs) <= len(n.lv) {
		n.nruns = uint8(len(runs))
		copy(n.lv[:], runs)
	} else {
		n.leafAt = int32(len(t.leaves))
		t.leaves = append(t.leaves, runs...)
	}
	return n
}

// lookup returns the remote node of the longest prefix containing (hi, lo),
// -1 if none.
func (t *trie) lookup(hi, lo uint64) int32 {
	n := &t.nodes[0]
	for {
		if mh, ml := maskWords(hi, lo, 8*n.depth); mh != n.khi || ml != n.klo {
			return n.inherit
		}
		s := uint(byteAt(hi, lo, n.depth))
		if n.child[s/64]&(1<<(s%64)) != 0 {
			n = &t.nodes[n.childAt+rank(&n.child, s)]
			continue
		}
		r := rank(&n.leaf, s+1) - 1
		if n.nruns != 0 {
			return n.lv[r&3]
		}
		return t.leaves[n.leafAt+r]
	}
}
