package rules_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/hoststack/hoststack/engine/rules"
	"github.com/hoststack/hoststack/engine/rules/rulesbench"
)

type benchSet struct {
	rs      []rules.Rule
	set     *rules.Set
	zipf    rulesbench.Workload
	uniform rulesbench.Workload
}

var (
	benchMu   sync.Mutex
	benchSets = map[int]*benchSet{}
)

func getBenchSet(b *testing.B, n int) *benchSet {
	benchMu.Lock()
	defer benchMu.Unlock()
	if bs := benchSets[n]; bs != nil {
		return bs
	}
	rs := rulesbench.Rules(n, 1)
	s, _, err := rules.Compile(rs)
	if err != nil {
		b.Fatal(err)
	}
	bs := &benchSet{rs: rs, set: s, zipf: rulesbench.ZipfWorkload(rs, 2)}
	if testing.Short() {
		bs.uniform = bs.zipf
	} else {
		bs.uniform = rulesbench.UniformWorkload(rs, 3)
	}
	benchSets[n] = bs
	return bs
}

// BenchmarkLookup: ns per lookup at each set size, for the Zipf and the
// uniform (cold) workloads (see package rulesbench for the rule and tuple
// mix). Wall time: on a shared machine prefer rulesbench.Run's CPU time.
func BenchmarkLookup(b *testing.B) {
	for _, wl := range []string{"zipf", "uniform"} {
		for _, n := range rulesbench.Sizes {
			b.Run(fmt.Sprintf("%s/%d", wl, n), func(b *testing.B) {
				bs := getBenchSet(b, n)
				w := bs.zipf
				if wl == "uniform" {
					w = bs.uniform
				}
				b.ReportAllocs()
				rulesbench.LookupLoop(b, bs.set, w)
			})
		}
	}
}

// BenchmarkCompile100k: compile a 100,000-rule set and swap it in.
func BenchmarkCompile100k(b *testing.B) {
	bs := getBenchSet(b, 100_000)
	var tab rules.Table
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s, _, err := rules.Compile(bs.rs)
		if err != nil {
			b.Fatal(err)
		}
		tab.Store(s)
	}
	b.StopTimer()
	bpr, _, err := rulesbench.MemPerRule(bs.rs)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(bpr, "bytes/rule")
}
