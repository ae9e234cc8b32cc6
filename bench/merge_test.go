package main

import (
	"testing"
	"time"
)

func TestMergeInto(t *testing.T) {
	old := &Report{Time: time.Date(2026, 12, 7, 13, 50, 0, 0, time.UTC),
		Results: []Result{
			{"stream", "64KiB", "hoststack", 9, "GB/s"},
			{"scale", "apps", "hoststack", 500, "apps"},
			{"rr", "p50", "unit-1us", 1, "us"},
			{"rules", "ref-1s", "hoststack", 1000, "ms"},
			{"transport", "ref-stall-runs", "kernel", 20, "runs"},
		},
		Targets: []Target{{Name: "old"}}}
	rep := &Report{Results: []Result{{"scale", "apps", "hoststack", 1000, "apps"}},
		Measured: map[string]string{"scale": "2026-12-07T17:00:00Z"}}
	mergeInto(rep, old, []string{"scale"})

	var got []string
	for _, x := range rep.Results {
		got = append(got, x.Group+"/"+x.Case+"/"+x.Variant)
	}
	want := []string{"stream/64KiB/hoststack", "transport/ref-stall-runs/kernel", "scale/apps/hoststack"}
	if len(got) != len(want) {
		t.Fatalf("results %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("results %v, want %v", got, want)
		}
	}
	if v, _ := rep.get("scale", "apps", "hoststack"); v != 1000 {
		t.Fatalf("scale/apps = %v, want the new run's 1000", v)
	}
	if rep.Targets != nil {
		t.Fatal("the old targets were kept; they must be recomputed")
	}
	if rep.Measured["stream"] != "2026-12-07T13:50:00Z" || rep.Measured["scale"] != "2026-12-07T17:00:00Z" {
		t.Fatalf("measured %v", rep.Measured)
	}
}
