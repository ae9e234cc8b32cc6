/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestControlPlaneDoesNotImportTheEngine: the manager shares contracts
// with the data plane through api/ (attach, keypair, rulematch), never by
// importing engine/; and those shared packages import only the standard
// library, so neither side drags in the other's dependencies.
func TestControlPlaneDoesNotImportTheEngine(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".", "../../controllers").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, "github.com/hoststack/hoststack/engine") || strings.HasPrefix(p, "github.com/hoststack/hoststack/agent") {
			t.Errorf("the manager imports %s", p)
		}
	}
	for _, shared := range []string{"../../api/attach", "../../api/keypair", "../../api/rulematch"} {
		out, err := exec.Command("go", "list", "-deps", shared).CombinedOutput()
		if err != nil {
			t.Fatalf("go list %s: %v\n%s", shared, err, out)
		}
		for _, p := range strings.Fields(string(out)) {
			if first, _, _ := strings.Cut(p, "/"); strings.Contains(first, ".") && !strings.HasPrefix(p, "github.com/hoststack/hoststack/api/") {
				t.Errorf("%s depends on %s", shared, p)
			}
		}
	}
}
