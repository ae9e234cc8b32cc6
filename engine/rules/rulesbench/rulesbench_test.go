package rulesbench

import (
	"os"
	"testing"
	"time"
)

// TestRun runs every case briefly (RULESBENCH_DURATION per case, default
// 10ms) and logs the figures; skipped with -short (it builds a 1,000,000-rule
// set).
func TestRun(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("builds a 1,000,000-rule set (skipped with -short and -race)")
	}
	d := 10 * time.Millisecond
	if s := os.Getenv("RULESBENCH_DURATION"); s != "" {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			t.Fatal(err)
		}
	}
	rs, err := Run(d)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"lookup-10", "lookup-1000", "lookup-100000", "lookup-1000000",
		"lookup-uniform-10", "lookup-uniform-1000", "lookup-uniform-100000", "lookup-uniform-1000000",
		"compile-100000", "bytes-per-rule"}
	if len(rs) != len(want) {
		t.Fatalf("got %d results, want %d", len(rs), len(want))
	}
	for i, r := range rs {
		if r.Case != want[i] || !(r.Value > 0) {
			t.Errorf("result %d = %+v, want case %s with a positive value", i, r, want[i])
		}
		t.Logf("%-16s %10.1f %s", r.Case, r.Value, r.Unit)
	}
}
