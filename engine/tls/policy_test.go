/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package enginetls

import (
	"go/ast"
	"go/parser"
	"go/printer"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// constExprs returns the source text of every constant's value in a Go
// file.
func constExprs(t *testing.T, path string) map[string]string {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		t.Skipf("%s not found (moved?): update this test: %v", path, err)
	}
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, spec := range g.Specs {
			vs := spec.(*ast.ValueSpec)
			for i, n := range vs.Names {
				if i < len(vs.Values) {
					var b strings.Builder
					printer.Fprint(&b, fset, vs.Values[i])
					out[n.Name] = b.String()
				}
			}
		}
	}
	return out
}

// TestPolicyMatchesController guards the values this package repeats
// instead of importing (the engine must not import the API types, which
// pull in Kubernetes): the reason strings. (The controller imports this
// package's parsing and size limit.) It reads their source, so it builds
// even while those packages are being edited.
func TestPolicyMatchesController(t *testing.T) {
	ours := constExprs(t, "material.go")
	api := constExprs(t, filepath.Join("..", "..", "api", "v1alpha1", "conditions.go"))
	for _, r := range []string{"ReasonInvalidCertificate", "ReasonInvalidKey", "ReasonKeyMismatch",
		"ReasonExpired", "ReasonNotYetValid", "ReasonTooLarge"} {
		if ours[r] == "" || ours[r] != api[r] {
			t.Errorf("%s = %s here, %s in api/v1alpha1", r, ours[r], api[r])
		}
	}
}
