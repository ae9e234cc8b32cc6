package schema

import (
	"context"
	"errors"
	"strings"
	"testing"
)

func TestDecodeDefaultsAndRefuses(t *testing.T) {
	v, err := New()
	if err != nil {
		t.Fatalf("compiling embedded CRDs: %v", err)
	}
	cases := []struct {
		name    string
		yaml    string
		wantErr []string // substrings that must all appear; empty = valid
	}{
		{
			name: "valid AppNamespace gets defaults and the default namespace",
			yaml: `apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: demo}
spec:
  podSelector: {matchLabels: {app: demo}}
`,
		},
		{
			name: "Interface mode without interface names the field",
			yaml: `apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: bad}
spec:
  podSelector: {}
  network: {mode: Interface}
`,
			wantErr: []string{"spec.network", "interface"},
		},
		{
			name: "unknown field is refused, as kubectl apply's strict validation does",
			yaml: `apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: bad}
spec:
  podSelector: {}
  colour: blue
`,
			wantErr: []string{"spec.colour", "unknown field"},
		},
		{
			name: "SessionRule with a bad CIDR names the field",
			yaml: `apiVersion: hoststack.dev/v1alpha1
kind: SessionRule
metadata: {name: bad, namespace: team-a}
spec:
  appNamespaceRef: {name: demo}
  scope: Local
  transport: TCP
  remote: {cidr: 10.0.0.300/8}
  action: {type: Deny}
`,
			wantErr: []string{"spec.remote.cidr"},
		},
		{
			name: "Redirect without redirect.app names the field",
			yaml: `apiVersion: hoststack.dev/v1alpha1
kind: SessionRule
metadata: {name: bad}
spec:
  appNamespaceRef: {name: demo}
  scope: Local
  transport: TCP
  action: {type: Redirect}
`,
			wantErr: []string{"spec.action", "redirect"},
		},
		{
			name:    "unknown kind",
			yaml:    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
			wantErr: []string{"kind", "ConfigMap"},
		},
		{
			name:    "bad object name",
			yaml:    "apiVersion: hoststack.dev/v1alpha1\nkind: AppNamespace\nmetadata: {name: Not_Valid}\nspec: {podSelector: {}}\n",
			wantErr: []string{"metadata.name"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			objs, err := v.Decode(context.Background(), "test.yaml", []byte(tc.yaml))
			if len(tc.wantErr) == 0 {
				if err != nil {
					t.Fatalf("want valid, got %v", err)
				}
				if len(objs) != 1 {
					t.Fatalf("want 1 object, got %d", len(objs))
				}
				return
			}
			var inv *InvalidError
			if !errors.As(err, &inv) {
				t.Fatalf("want *InvalidError, got %v", err)
			}
			if !strings.Contains(err.Error(), "test.yaml#1") {
				t.Errorf("error does not name the source: %v", err)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

func TestDecodeAppliesSchemaDefaults(t *testing.T) {
	v, err := New()
	if err != nil {
		t.Fatal(err)
	}
	objs, err := v.Decode(context.Background(), "d.yaml", []byte(`
# a comment-only document first
---
apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: demo}
spec: {podSelector: {}}
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 {
		t.Fatalf("want 1 object, got %d", len(objs))
	}
	o := objs[0]
	if o.GetNamespace() != "default" {
		t.Errorf("namespace = %q, want default", o.GetNamespace())
	}
	mode, _, _ := unstructuredString(o.Object, "spec", "network", "mode")
	if mode != "PodNetwork" {
		t.Errorf("spec.network.mode = %q, want the schema default PodNetwork", mode)
	}
	if o.Source != "d.yaml#2" {
		t.Errorf("source = %q", o.Source)
	}
}

func unstructuredString(m map[string]any, path ...string) (string, bool, error) {
	var cur any = m
	for _, p := range path {
		mm, ok := cur.(map[string]any)
		if !ok {
			return "", false, nil
		}
		cur = mm[p]
	}
	s, ok := cur.(string)
	return s, ok, nil
}
