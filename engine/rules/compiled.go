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
// prefix and the ports. The entries of a remote node follow its header
// entry (see header) and are sorted by local length (longest first), local
// address, port class, remote port, local port, so that the first entry
// matching a tuple is the best of the node.
type entry struct {
	lhi, llo     uint64
	rule         int32 // index into fam.rules; in a header: the entry count
	lport, rport uint16
	llen         uint8
	class        uint8
}

// A remote node is stored in fam.entries as a header entry followed by its
// entries, so that the trie's answer leads straight to the rules (one
// memory access, usually one cache line, for a small node). In a header:
//
//	rule             number of entries that follow
//	lhi low 32 bits  header of the parent node (nearest shorter remote
//	                 prefix containing this one), -1 if none
//	lhi high 32 bits -1 for a small node; for a big node (more than
//	                 smallNode entries), where its distinct local lengths
//	                 start in fam.lens
//	llo low 32 bits  number of those lengths
//
// A big node also has one key in fam.local per distinct local prefix,
// tagged with the node's header index, pointing at its group.
func header(n, parent, lensAt, nlens int32) entry {
	return entry{
		rule: n,
		lhi:  uint64(uint32(parent)) | uint64(uint32(lensAt))<<32,
		llo:  uint64(uint32(nlens)),
	}
}

// A group is the entries of one (big node, local prefix), sorted by port
// class, then remote port, then local port. Its fam.local key carries the
// index of its first entry as value and, in aux, its size and the set of
// port classes present (bit c: some entry has class c): groupAux. A group
// of more than smallGroup entries also has one key per entry, (remote
// port, local port) tagged with portTag(first entry), so that finding its
// best entry is at most four probes.
func groupAux(n int, classes uint8) uint32 { return uint32(n) | uint32(classes)<<24 }

// portTag is the fam.local tag of the port keys of the group starting at
// entry first; its low byte (255) is never that of a local-prefix key
// (prefix length + 1 ≤ 129).
func portTag(first int32) uint32 { return uint32(first)<<8 | 0xff }

const (
	smallNode  = 8 // linear scan up to this many entries per node
	smallGroup = 8 // linear scan up to this many entries per local group
)

// fam is the compiled table of one (namespace, scope, transport, family).
type fam struct {
	rules   []Rule  // Dump order; entry.rule indexes it
	remote  trie    // remote address → header of its longest remote prefix
	entries []entry // headers and entries of every remote node
	lens    []uint8
	local   hashIndex // (header, masked local, len) → group; (group, ports) → entry
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

	// Headers and entries.
	hdr := make([]int32, len(members))
	f.entries = make([]entry, 0, len(rs)+len(members))
	var nbig int
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
		if len(f.entries)%2 == 1 && len(m) == 1 {
			// Keep a one-rule node in one 64-byte line.
			f.entries = append(f.entries, entry{})
		}
		hdr[ni] = int32(len(f.entries))
		f.entries = append(f.entries, entry{}) // filled below
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

	// Parents: the longest shorter remote prefix present that contains the
	// node's prefix, else the zero-length one if present. A build-time hash
	// of the remote prefixes answers "is this masked prefix present".
	var byLen hashIndex
	byLen.init(len(members))
	var rlens []uint8 // distinct non-zero remote lengths, longest first
	root := int32(-1)
	seenLen := [129]bool{}
	tps := make([]tprefix, len(remotes))
	for ni, p := range remotes {
		hi, lo, n := prefixWords(p)
		tps[ni] = tprefix{hi: hi, lo: lo, bits: n, node: hdr[ni]}
		if n == 0 {
			root = hdr[ni]
		} else {
			byLen.put(hi, lo, uint32(n)+1, hdr[ni], 0)
			if !seenLen[n] {
				seenLen[n] = true
				rlens = append(rlens, n)
			}
		}
	}
	slices.SortFunc(rlens, func(a, b uint8) int { return cmp.Compare(b, a) })
	parent := make([]int32, len(members))
	for ni, p := range remotes {
		parent[ni] = -1
		hi, lo, n := prefixWords(p)
		if n == 0 {
			continue
		}
		parent[ni] = root
		for _, l := range rlens {
			if l >= n {
				continue
			}
			mh, ml := maskWords(hi, lo, l)
			if v := byLen.get(mh, ml, uint32(l)+1); v >= 0 {
				parent[ni] = v
				break
			}
		}
	}

	// Big nodes: distinct local lengths and groups.
	f.local.init(2 * nbig)
	for ni, m := range members {
		h := hdr[ni]
		if len(m) <= smallNode {
			f.entries[h] = header(int32(len(m)), parent[ni], -1, 0)
			continue
		}
		lensAt := int32(len(f.lens))
		es := f.entries[h+1 : h+1+int32(len(m))]
		for i := 0; i < len(es); {
			j := i + 1
			for j < len(es) && es[j].llen == es[i].llen && es[j].lhi == es[i].lhi && es[j].llo == es[i].llo {
				j++
			}
			if len(f.lens) == int(lensAt) || f.lens[len(f.lens)-1] != es[i].llen {
				f.lens = append(f.lens, es[i].llen)
			}
			first := h + 1 + int32(i)
			var classes uint8
			for k := i; k < j; k++ {
				classes |= 1 << es[k].class
				if j-i > smallGroup {
					f.local.put(uint64(es[k].rport)<<16|uint64(es[k].lport), 0, portTag(first), first+int32(k-i), 0)
				}
			}
			f.local.put(es[i].lhi, es[i].llo, uint32(h)<<8|uint32(es[i].llen)+1, first, groupAux(j-i, classes))
			i = j
		}
		f.entries[h] = header(int32(len(m)), parent[ni], lensAt, int32(len(f.lens))-lensAt)
	}

	maxDepth := uint8(16)
	if rs[0].Remote.Addr().Is4() {
		maxDepth = 4
	}
	f.remote = buildTrie(tps, maxDepth)
	return f
}

// lookup returns the index in f.rules of the best rule for the tuple, -1
// if none matches: the node of the longest remote prefix first, then its
// ancestors, the first match winning.
func (f *fam) lookup(lhi, llo, rhi, rlo uint64, lport, rport uint16) int32 {
	h := f.remote.lookup(rhi, rlo)
	for h >= 0 {
		hd := &f.entries[h]
		if lensAt := int32(hd.lhi >> 32); lensAt < 0 {
			es := f.entries[h+1 : h+1+hd.rule]
			for i := range es {
				e := &es[i]
				if (e.lport == 0 || e.lport == lport) && (e.rport == 0 || e.rport == rport) {
					if mh, ml := maskWords(lhi, llo, e.llen); mh == e.lhi && ml == e.llo {
						return e.rule
					}
				}
			}
		} else {
			for _, l := range f.lens[lensAt : lensAt+int32(uint32(hd.llo))] {
				mh, ml := maskWords(lhi, llo, l)
				first, aux := f.local.get2(mh, ml, uint32(h)<<8|uint32(l)+1)
				if first < 0 {
					continue
				}
				if r := f.matchGroup(first, aux, lport, rport); r >= 0 {
					return r
				}
			}
		}
		h = int32(uint32(hd.lhi))
	}
	return -1
}

func (f *fam) matchGroup(first int32, aux uint32, lport, rport uint16) int32 {
	n, classes := int32(aux&(1<<24-1)), uint8(aux>>24)
	if n <= smallGroup {
		es := f.entries[first : first+n]
		for i := range es {
			e := &es[i]
			if (e.lport == 0 || e.lport == lport) && (e.rport == 0 || e.rport == rport) {
				return e.rule
			}
		}
		return -1
	}
	// One probe per port class present, most specific first.
	for c := uint8(0); c < 4; c++ {
		if classes&(1<<c) == 0 {
			continue
		}
		var rp, lp uint16
		if c <= 1 {
			rp = rport
		}
		if c == 0 || c == 2 {
			lp = lport
		}
		if ei := f.local.get(uint64(rp)<<16|uint64(lp), 0, portTag(first)); ei >= 0 {
			return f.entries[ei].rule
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
	aux    uint32
	_      uint32
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

func (h *hashIndex) put(hi, lo uint64, tag uint32, val int32, aux uint32) {
	i := hashKey(hi, lo, tag) >> h.shift
	for {
		s := &h.slots[i]
		if s.tag == 0 {
			*s = slot{hi: hi, lo: lo, tag: tag, val: val, aux: aux}
			return
		}
		i = (i + 1) & h.mask
	}
}

func (h *hashIndex) get(hi, lo uint64, tag uint32) int32 {
	v, _ := h.get2(hi, lo, tag)
	return v
}

// get2 returns the value and aux of the key, -1 and 0 if absent.
func (h *hashIndex) get2(hi, lo uint64, tag uint32) (int32, uint32) {
	if len(h.slots) == 0 {
		return -1, 0
	}
	i := hashKey(hi, lo, tag) >> h.shift
	for {
		s := &h.slots[i&h.mask]
		if s.tag == tag && s.hi == hi && s.lo == lo {
			return s.val, s.aux
		}
		if s.tag == 0 {
			return -1, 0
		}
		i++
	}
}
