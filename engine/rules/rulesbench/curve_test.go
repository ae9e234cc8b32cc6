package rulesbench

import (
	"testing"
	"time"

	"github.com/hoststack/hoststack/engine/rules"
)

func TestCurve(t *testing.T) {
	for _, n := range []int{10, 100000} {
		rs := Rules(n, 1)
		s, _, _ := rules.Compile(rs)
		for _, pool := range []int{256, 1024, 4096, 16384, 65536, 1 << 20} {
			ts := Tuples(rs, pool, 2)
			t.Logf("n=%d pool=%d %.1f ns", n, pool, timeLookups(s, ts, 300*time.Millisecond))
		}
	}
}
