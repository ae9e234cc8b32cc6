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
	ext    []tleaf // leaf runs of full nodes
	leaves []int32 // run values: headers in fam.entries, -1 for none
}

// tnode indexes byte depth of the address; it is one 64-byte cache line.
// A full node has a child bitmap and its leaf runs in ext; a list node
// (nlist > 0: no children, at most four slot ranges whose answer is not
// the inherited one, the usual shape at the deepest levels) has the ranges
// inline, so the answer needs no further memory access.
type tnode struct {
	khi, klo uint64 // address bytes [0, depth) every address reaching this node must have
	// full node: bit s set when slot s has a child; list node: nlist ranges,
	// each first slot | last slot<<8 | uint32(answer)<<32.
	bits    [4]uint64
	childAt int32 // full node: index in trie.nodes of the child of the lowest child slot
	inherit int32 // answer for an address that fails the key check (and a list node's default)
	leafAt  int32 // full node: index in trie.ext
	depth   uint8 // byte of the address this node indexes
	nlist   uint8
	_       [2]byte
}

// tleaf are a full node's leaf runs: bit s set when a run starts at slot s
// (bit 0 always set), values at trie.leaves[at:].
type tleaf struct {
	bits [4]uint64
	at   int32
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
		n.bits[g.slot/64] |= 1 << (g.slot % 64)
	}
	t.nodes = append(t.nodes, make([]tnode, len(groups))...)
	for k, g := range groups {
		c := t.build(d+1, g.ps, best[g.slot], maxDepth)
		t.nodes[int(n.childAt)+k] = c
	}
	if len(groups) == 0 {
		// List node if few enough ranges differ from the inherited answer.
		var ranges []uint64
		for i := 0; i < 256; {
			j := i + 1
			for j < 256 && best[j] == best[i] {
				j++
			}
			if best[i] != inh {
				ranges = append(ranges, uint64(i)|uint64(j-1)<<8|uint64(uint32(best[i]))<<32)
			}
			i = j
		}
		if len(ranges) > 0 && len(ranges) <= len(n.bits) {
			n.nlist = uint8(len(ranges))
			copy(n.bits[:], ranges)
			return n
		}
	}
	// Leaf runs; slots with a child repeat the previous run (never read).
	lf := tleaf{at: int32(len(t.leaves))}
	prev := int32(0)
	for s := range 256 {
		v := best[s]
		if s > 0 && n.bits[s/64]&(1<<(s%64)) != 0 {
			v = prev
		}
		if s == 0 || v != prev {
			lf.bits[s/64] |= 1 << (s % 64)
			t.leaves = append(t.leaves, v)
		}
		prev = v
	}
	n.leafAt = int32(len(t.ext))
	t.ext = append(t.ext, lf)
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
		if n.nlist != 0 {
			for _, r := range n.bits[:n.nlist] {
				if s >= uint(uint8(r)) && s <= uint(uint8(r>>8)) {
					return int32(uint32(r >> 32))
				}
			}
			return n.inherit
		}
		if n.bits[s/64]&(1<<(s%64)) != 0 {
			n = &t.nodes[n.childAt+rank(&n.bits, s)]
			continue
		}
		lf := &t.ext[n.leafAt]
		return t.leaves[lf.at+rank(&lf.bits, s+1)-1]
	}
}
