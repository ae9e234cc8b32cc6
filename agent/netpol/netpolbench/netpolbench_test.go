package netpolbench

import (
	"testing"
	"time"

	"github.com/hoststack/hoststack/agent/netpol"
)

func BenchmarkDecide10000(b *testing.B) {
	w := Generate(110, 10_000, 1)
	t, _ := netpol.Render(w.Pods, w.Namespaces, w.Policies)
	ss := Sessions(w, 1<<16, 2)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		t.Decide(ss[i&(1<<16-1)])
	}
}

func BenchmarkRender10000(b *testing.B) {
	w := Generate(110, 10_000, 1)
	for b.Loop() {
		netpol.Render(w.Pods, w.Namespaces, w.Policies)
	}
}

// TestRun keeps Run working (make bench uses it) and the workload
// meaningful: some sessions allowed, some dropped.
func TestRun(t *testing.T) {
	res, err := Run(100 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(res)
	for _, r := range res {
		if r.Case == "allowed-10000" && (r.Value <= 0 || r.Value >= 100) {
			t.Fatalf("degenerate workload: %v%% allowed", r.Value)
		}
	}
}
