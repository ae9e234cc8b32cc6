// Package rulesbench measures engine/rules on realistic rule sets: lookup
// time at 10, 1,000, 100,000 and 1,000,000 rules, the time to compile a
// 100,000-rule set and swap it in, and the memory a compiled rule costs.
// The package's Go benchmarks and the project's bench harness (Run) use the
// same generator, so their figures are comparable.
//
// # The rule sets
//
// All rules go into one table (one AppNamespace, Global, TCP): the hardest
// case, since a real node spreads its rules over many tables. 90% IPv4,
// 10% IPv6. Remote prefixes are drawn from a clustered address space (a few
// dozen /8s, a few hundred /16s under them, …) so they nest like real
// policies: IPv4 remote lengths 40% /32, 25% /24, 5% /28, 10% /16, 5% /20,
// 5% /8, 5% /0 and 5% any other length; IPv6 /128, /64, /48, /32, ::/0.
// Local prefixes are 70% the wildcard, 25% a pod address (/32 or /128 out
// of 512 pods) and 5% the pod subnet (/24, /64). Remote ports are 50% any,
// else a well-known or random port; local ports 70% any. Conflicting
// duplicates that the generator happens to draw are resolved by Compile as
// usual (the older wins), so a set of n rules compiles to slightly fewer.
//
// # The tuples
//
// 70% of the looked-up tuples are drawn inside a random rule's prefixes
// (and ports), 30% are random addresses of the same clustered space, so
// lookups end at every depth, including the default.
//
// Two workloads are measured at every size. The main one (lookup-N) looks
// up 65,536 distinct tuples drawn with a Zipf law (s = 1.1): a few flows
// very often, most rarely, as when peers connect to popular services; the
// rule state of the popular flows stays in cache. The cold one
// (lookup-uniform-N) looks up 1,048,576 distinct tuples in turn, so at
// large sizes nearly every lookup misses the caches and the figure is the
// machine's memory latency times the dependent misses of a lookup (about
// two to three beyond the top trie levels: the deepest trie node, the
// remote node's rules, and for big nodes a hash slot). Both run
// Set.Lookup, namespace map included, and time it in CPU time of the
// measuring thread.
//
// # Figures on the project machine
//
// 2-core AMD EPYC VM (1 MiB L2 per core, 32 MiB L3 shared), load average
// 4–11 from other work during the runs; three runs of Run(2s), CPU ns per
// lookup:
//
//	rules       Zipf           uniform (cold)
//	10          46, 46, 42     41, 51, 42
//	1,000       80, 84, 76     90, 94, 82
//	100,000     134, 155, 137  327, 301, 275
//	1,000,000   247, 199, 184  679, 495, 525
//
// compile-100000: 372, 250 and 266 ms; bytes-per-rule: 309 (of which about 160
// are the Rule values the set keeps for Lookup and Dump). A dependent
// random read on this VM, measured with a pointer chase in CPU time, costs
// 19 ns within 1 MiB, 99 ns at 4 MiB, 157 ns at 8 MiB, 210 ns at 16 MiB
// and 300 ns at 128 MiB (150–190 ns with transparent huge pages): beyond
// the L2 every miss costs about what the whole lookup target allows.
package rulesbench

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/hoststack/hoststack/engine/rules"
)

// Namespace, Scope and Proto select the table every generated rule is in.
const (
	Namespace = "bench/apps"
	Scope     = rules.Global
	Proto     = rules.TCP
)

// Tuple is one session to look up.
type Tuple struct {
	Local, Remote netip.AddrPort
}

type gen struct {
	r     *rand.Rand
	top8  []byte
	sub16 [][]byte
	pods4 []netip.Addr
	pods6 []netip.Addr
}

func newGen(seed uint64) *gen {
	g := &gen{r: rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))}
	for range 40 {
		g.top8 = append(g.top8, byte(1+g.r.IntN(223)))
	}
	g.sub16 = make([][]byte, len(g.top8))
	for i := range g.sub16 {
		for range 16 {
			g.sub16[i] = append(g.sub16[i], byte(g.r.IntN(256)))
		}
	}
	for i := range 512 {
		g.pods4 = append(g.pods4, netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)}))
		g.pods6 = append(g.pods6, netip.AddrFrom16([16]byte{0: 0xfd, 2: 0x02, 3: 0x44, 14: byte(i >> 8), 15: byte(i)}))
	}
	return g
}

var wellKnown = []uint16{80, 443, 53, 22, 8080, 8443, 3306, 5432, 6379, 9090, 27017, 11211}

func (g *gen) port(pAny int) uint16 {
	switch x := g.r.IntN(100); {
	case x < pAny:
		return 0
	case x < pAny+(100-pAny)/2:
		return wellKnown[g.r.IntN(len(wellKnown))]
	default:
		return uint16(1024 + g.r.IntN(64512))
	}
}

func (g *gen) remote4() netip.Addr {
	i := g.r.IntN(len(g.top8))
	return netip.AddrFrom4([4]byte{g.top8[i], g.sub16[i][g.r.IntN(16)], byte(g.r.IntN(256)), byte(g.r.IntN(256))})
}

func (g *gen) remote6() netip.Addr {
	var b [16]byte
	b[0], b[1] = 0x20, 0x01
	b[2], b[3] = 0x0d, byte(g.r.IntN(16))
	b[4], b[5] = 0, byte(g.r.IntN(64))
	b[7] = byte(g.r.IntN(256))
	for i := 8; i < 16; i++ {
		b[i] = byte(g.r.IntN(256))
	}
	return netip.AddrFrom16(b)
}

func pick(r *rand.Rand, lens []int, weights []int) int {
	x := r.IntN(100)
	for i, w := range weights {
		if x < w {
			return lens[i]
		}
		x -= w
	}
	return lens[len(lens)-1]
}

func (g *gen) rule(i int, created time.Time) rules.Rule {
	v4 := g.r.IntN(10) > 0
	var remote, local netip.Prefix
	if v4 {
		n := pick(g.r, []int{32, 24, 28, 16, 20, 8, 0, -1}, []int{40, 25, 5, 10, 5, 5, 5, 5})
		if n < 0 {
			n = 1 + g.r.IntN(31)
		}
		remote = netip.PrefixFrom(g.remote4(), n).Masked()
		switch x := g.r.IntN(100); {
		case x < 70:
			local = netip.MustParsePrefix("0.0.0.0/0")
		case x < 95:
			local = netip.PrefixFrom(g.pods4[g.r.IntN(len(g.pods4))], 32)
		default:
			local = netip.PrefixFrom(g.pods4[g.r.IntN(len(g.pods4))], 24).Masked()
		}
	} else {
		n := pick(g.r, []int{128, 64, 48, 32, 0}, []int{40, 30, 15, 10, 5})
		remote = netip.PrefixFrom(g.remote6(), n).Masked()
		switch x := g.r.IntN(100); {
		case x < 70:
			local = netip.MustParsePrefix("::/0")
		case x < 95:
			local = netip.PrefixFrom(g.pods6[g.r.IntN(len(g.pods6))], 128)
		default:
			local = netip.PrefixFrom(g.pods6[g.r.IntN(len(g.pods6))], 64).Masked()
		}
	}
	r := rules.Rule{
		Namespace: Namespace, Scope: Scope, Proto: Proto,
		Local: local, Remote: remote,
		LocalPort: g.port(70), RemotePort: g.port(50),
		Name:    fmt.Sprintf("bench/rule-%d", i),
		Created: created.Add(time.Duration(i) * time.Millisecond),
	}
	switch x := g.r.IntN(10); {
	case x < 6:
		r.Action = rules.Allow
	case x < 9:
		r.Action = rules.Deny
	default:
		r.Action, r.RedirectApp = rules.Redirect, "proxy"
	}
	return r
}

// Rules generates n rules (see the package documentation); the same seed
// gives the same rules.
func Rules(n int, seed uint64) []rules.Rule {
	g := newGen(seed)
	created := time.Unix(1_700_000_000, 0)
	out := make([]rules.Rule, n)
	for i := range out {
		out[i] = g.rule(i, created)
	}
	return out
}

// inside returns a random address of p.
func inside(r *rand.Rand, p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		if r.IntN(2) == 1 {
			b[i/8] |= 0x80 >> (i % 8)
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// Tuples draws n tuples for rs (see the package documentation).
func Tuples(rs []rules.Rule, n int, seed uint64) []Tuple {
	g := newGen(seed)
	r := rand.New(rand.NewPCG(seed^0xabcdef, 7))
	out := make([]Tuple, n)
	for i := range out {
		if r.IntN(10) < 7 && len(rs) > 0 {
			x := &rs[r.IntN(len(rs))]
			lp, rp := x.LocalPort, x.RemotePort
			if lp == 0 {
				lp = g.port(0)
			}
			if rp == 0 {
				rp = g.port(0)
			}
			out[i] = Tuple{netip.AddrPortFrom(inside(r, x.Local), lp), netip.AddrPortFrom(inside(r, x.Remote), rp)}
			continue
		}
		if r.IntN(10) > 0 {
			out[i] = Tuple{netip.AddrPortFrom(g.pods4[r.IntN(len(g.pods4))], g.port(0)), netip.AddrPortFrom(g.remote4(), g.port(0))}
		} else {
			out[i] = Tuple{netip.AddrPortFrom(g.pods6[r.IntN(len(g.pods6))], g.port(0)), netip.AddrPortFrom(g.remote6(), g.port(0))}
		}
	}
	return out
}

// Workload is a sequence of lookups, materialised so that the loop reads
// it sequentially (len a power of two; loops wrap around): only the rule
// state a lookup touches decides what is in cache.
type Workload []Tuple

const (
	// ZipfTuples distinct tuples, picked with a Zipf(s = ZipfS) law over
	// SeqLen draws: a few flows are looked up very often, most rarely, as
	// when peers connect to popular services. This is the main figure.
	ZipfTuples = 1 << 16
	ZipfS      = 1.1
	// UniformTuples distinct tuples looked up in turn, each once per pass:
	// every lookup is cold (the rule state it needs is rarely in cache), so
	// at large sizes this measures the memory latency of the machine times
	// the dependent misses of a lookup.
	UniformTuples = 1 << 20
	SeqLen        = 1 << 20
)

// ZipfWorkload draws the main workload for rs.
func ZipfWorkload(rs []rules.Rule, seed uint64) Workload {
	pool := Tuples(rs, ZipfTuples, seed)
	z := rand.NewZipf(rand.New(rand.NewPCG(seed, 99)), ZipfS, 1, ZipfTuples-1)
	w := make(Workload, SeqLen)
	for i := range w {
		w[i] = pool[z.Uint64()]
	}
	return w
}

// UniformWorkload draws the cold workload for rs.
func UniformWorkload(rs []rules.Rule, seed uint64) Workload {
	return Workload(Tuples(rs, UniformTuples, seed))
}

// LookupLoop runs b.N lookups of w against s.
func LookupLoop(b *testing.B, s *rules.Set, w Workload) {
	mask := len(w) - 1
	var hits int
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t := &w[i&mask]
		if _, ok := s.Lookup(Namespace, Scope, Proto, t.Local, t.Remote); ok {
			hits++
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(hits)/float64(b.N), "hit-ratio")
}

// MemPerRule compiles rs and returns the heap bytes the compiled Set holds
// per input rule (input slice excluded), and the Set.
func MemPerRule(rs []rules.Rule) (float64, *rules.Set, error) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	s, _, err := rules.Compile(rs)
	if err != nil {
		return 0, nil, err
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(s)
	return float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)) / float64(len(rs)), s, nil
}

// Result is one figure.
type Result struct {
	Case  string
	Value float64
	Unit  string
}

// Sizes are the rule counts of the lookup cases.
var Sizes = []int{10, 1_000, 100_000, 1_000_000}

// Run measures every case, spending about d of CPU time on each lookup
// case and at least d (and one compile) on compile-100000. Cases:
// lookup-10, lookup-1000, lookup-100000, lookup-1000000 (ns/op, the Zipf
// workload), lookup-uniform-10 … lookup-uniform-1000000 (ns/op, the cold
// workload), compile-100000 (ms: compile and atomic swap of a
// 100,000-rule set), bytes-per-rule (bytes, heap held by the compiled
// 100,000-rule set per rule). Lookup times are CPU time of the measuring
// thread.
func Run(d time.Duration) ([]Result, error) {
	var out, uniform []Result
	for _, n := range Sizes {
		rs := Rules(n, 1)
		s, _, err := rules.Compile(rs)
		if err != nil {
			return nil, err
		}
		out = append(out, Result{fmt.Sprintf("lookup-%d", n), timeLookups(s, ZipfWorkload(rs, 2), d), "ns/op"})
		uniform = append(uniform, Result{fmt.Sprintf("lookup-uniform-%d", n), timeLookups(s, UniformWorkload(rs, 3), d), "ns/op"})
	}
	out = append(out, uniform...)
	rs := Rules(100_000, 1)
	var tab rules.Table
	var total time.Duration
	runs := 0
	for deadline := time.Now().Add(d); runs == 0 || time.Now().Before(deadline); runs++ {
		start := time.Now()
		s, _, err := rules.Compile(rs)
		if err != nil {
			return nil, err
		}
		tab.Store(s)
		total += time.Since(start)
	}
	out = append(out, Result{"compile-100000", float64(total.Microseconds()) / 1000 / float64(runs), "ms"})
	bpr, _, err := MemPerRule(rs)
	if err != nil {
		return nil, err
	}
	out = append(out, Result{"bytes-per-rule", bpr, "bytes"})
	return out, nil
}

// timeLookups runs w against s for about d of thread CPU time and returns
// CPU ns per lookup. CPU time of the locked OS thread (RUSAGE_THREAD), not
// wall time, so that time spent descheduled on a shared machine does not
// count; cache pollution by neighbours still does.
func timeLookups(s *rules.Set, w Workload, d time.Duration) float64 {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	mask := len(w) - 1
	hits := 0
	// Warm up: one pass over the sequence.
	for i := range w {
		if _, ok := s.Lookup(Namespace, Scope, Proto, w[i].Local, w[i].Remote); ok {
			hits++
		}
	}
	const batch = 1 << 16
	var n int
	start := ThreadCPU()
	for ThreadCPU()-start < d {
		for i := 0; i < batch; i++ {
			t := &w[(n+i)&mask]
			if _, ok := s.Lookup(Namespace, Scope, Proto, t.Local, t.Remote); ok {
				hits++
			}
		}
		n += batch
	}
	sinkHits = hits
	return float64((ThreadCPU() - start).Nanoseconds()) / float64(n)
}

// ThreadCPU is the CPU time used so far by the calling OS thread (lock it
// to one goroutine around measurements).
func ThreadCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(rusageThread, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

const rusageThread = 1 // RUSAGE_THREAD (Linux)

var sinkHits int
