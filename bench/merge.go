package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// mergeInto returns rep with the figures of old (the report a previous run
// wrote) of every group rep did not measure, so `-only scale` updates the
// scale rows of bench/results.json without dropping the full run's other
// groups. Fixed references (added again by addTargets) and targets (all
// recomputed over the merged figures) are not carried over; Measured says
// when each group's figures were taken.
func mergeInto(rep, old *Report, ran []string) {
	did := map[string]bool{}
	for _, g := range ran {
		did[g] = true
	}
	var kept []Result
	for _, x := range old.Results {
		if did[x.Group] || isAddedRef(x) {
			continue
		}
		kept = append(kept, x)
	}
	rep.Results = append(kept, rep.Results...)
	if rep.Measured == nil {
		rep.Measured = map[string]string{}
	}
	for g, t := range old.Measured {
		if !did[g] {
			rep.Measured[g] = t
		}
	}
	for _, x := range kept {
		if _, ok := rep.Measured[x.Group]; !ok {
			rep.Measured[x.Group] = old.Time.Format("2006-01-02T15:04:05Z")
		}
	}
	rep.Targets = nil
}

// isAddedRef is a fixed reference addTargets appends on every run.
func isAddedRef(x Result) bool {
	return x.Variant == "unit-1us" || (x.Group == "rules" && strings.HasPrefix(x.Case, "ref-"))
}

// readReport reads a report written before; a missing file is an empty one.
func readReport(path string) (*Report, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &Report{}, nil
	}
	if err != nil {
		return nil, err
	}
	var r Report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &r, nil
}
