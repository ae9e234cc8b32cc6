/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1alpha1_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// admissionCase is one object sent to the API server, as YAML (so fields
// can be missing or mistyped the way a hand-written manifest has them).
type admissionCase struct {
	name string
	yaml string
	// want lists substrings the refusal must contain, typically the field
	// path and the message; nil means the object must be accepted.
	want []string
	// check inspects an accepted object as the server stored it.
	check func(t *testing.T, stored *unstructured.Unstructured)
}

func runAdmissionCases(t *testing.T, kind string, cases []admissionCase) {
	t.Helper()
	needAPIServer(t)
	ns := testNamespace(t)
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			obj := &unstructured.Unstructured{}
			doc := fmt.Sprintf("apiVersion: hoststack.dev/v1alpha1\nkind: %s\nmetadata:\n  name: case-%d\n%s", kind, i, tc.yaml)
			if err := yaml.Unmarshal([]byte(doc), &obj.Object); err != nil {
				t.Fatalf("bad test YAML: %v", err)
			}
			if kind != "SessionNode" {
				obj.SetNamespace(ns)
			}
			err := k8s.Create(context.Background(), obj)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("refused, want accepted: %v", err)
				}
				if tc.check != nil {
					tc.check(t, obj)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted, want refused with %q", tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("refusal does not contain %q:\n%v", w, err)
				}
			}
			t.Logf("refused: %v", err)
		})
	}
}

// field returns a nested field of a stored object, or fails.
func field(t *testing.T, u *unstructured.Unstructured, path ...string) any {
	t.Helper()
	v, ok, err := unstructured.NestedFieldNoCopy(u.Object, path...)
	if err != nil || !ok {
		t.Fatalf("field %s missing (err %v) in %v", strings.Join(path, "."), err, u.Object)
	}
	return v
}

func wantField(t *testing.T, u *unstructured.Unstructured, want any, path ...string) {
	t.Helper()
	if got := field(t, u, path...); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s = %v, want %v", strings.Join(path, "."), got, want)
	}
}

func TestAppNamespaceAdmission(t *testing.T) {
	const ifaceMsg = "spec.network.interface is required when spec.network.mode is Interface, and forbidden otherwise"
	const fitMsg = "spec.segments.rxFIFOSize + spec.segments.txFIFOSize must fit in spec.segments.segmentSize"
	manyLabels := "spec:\n  podSelector: {}\n  nodeSelector:\n"
	for i := 0; i < 33; i++ {
		manyLabels += fmt.Sprintf("    l%d: v\n", i)
	}
	runAdmissionCases(t, "AppNamespace", []admissionCase{
		{name: "minimal object gets working defaults", yaml: "spec:\n  podSelector: {}\n", check: func(t *testing.T, u *unstructured.Unstructured) {
			wantField(t, u, "PodNetwork", "spec", "network", "mode")
			wantField(t, u, "1Gi", "spec", "segments", "segmentSize")
			wantField(t, u, "4Mi", "spec", "segments", "rxFIFOSize")
			wantField(t, u, "4Mi", "spec", "segments", "txFIFOSize")
			wantField(t, u, 32, "spec", "segments", "maxSegmentsPerApp")
			wantField(t, u, 64, "spec", "quotas", "maxApps")
			wantField(t, u, 512, "spec", "quotas", "maxSessionsPerApp")
			wantField(t, u, 16, "spec", "quotas", "maxWorkersPerApp")
			wantField(t, u, 64, "spec", "quotas", "maxListenersPerApp")
		}},
		{name: "empty network and partial segments are defaulted field by field",
			yaml: "spec:\n  podSelector: {}\n  network: {}\n  segments:\n    rxFIFOSize: 2Mi\n  quotas:\n    maxApps: 3\n",
			check: func(t *testing.T, u *unstructured.Unstructured) {
				wantField(t, u, "PodNetwork", "spec", "network", "mode")
				wantField(t, u, "1Gi", "spec", "segments", "segmentSize")
				wantField(t, u, "2Mi", "spec", "segments", "rxFIFOSize")
				wantField(t, u, 512, "spec", "quotas", "maxSessionsPerApp")
				wantField(t, u, 16, "spec", "quotas", "maxWorkersPerApp")
			}},
		{name: "full Interface mode", yaml: `spec:
  podSelector:
    matchLabels: {app: web}
    matchExpressions:
    - {key: tier, operator: In, values: [a, b]}
    - {key: canary, operator: DoesNotExist}
  nodeSelector: {kubernetes.io/os: linux}
  network:
    mode: Interface
    interface: {name: eth1, vrf: 10, addresses: [192.0.2.10/24, "2001:db8::10/64"], ipv4Gateway: 192.0.2.1, ipv6Gateway: "2001:db8::1", driver: AFPacket}
  segments: {segmentSize: 1048576, rxFIFOSize: 4096, txFIFOSize: 4Ki, maxSegmentsPerApp: 1}
  quotas: {maxApps: 1, maxSessionsPerApp: 1, maxWorkersPerApp: 1, maxListenersPerApp: 1}
  secretRef: {name: attach-secret}
`},
		{name: "missing podSelector", yaml: "spec: {}\n", want: []string{"spec.podSelector: Required value"}},
		{name: "missing spec", yaml: "", want: []string{"spec: Required value"}},
		{name: "Interface mode without interface", yaml: "spec:\n  podSelector: {}\n  network: {mode: Interface}\n",
			want: []string{"spec.network.interface", ifaceMsg}},
		{name: "PodNetwork mode with interface", yaml: "spec:\n  podSelector: {}\n  network: {mode: PodNetwork, interface: {name: eth1, vrf: 0, addresses: [10.0.0.1/24]}}\n",
			want: []string{"spec.network.interface", ifaceMsg}},
		{name: "interface without vrf", yaml: "spec:\n  podSelector: {}\n  network: {mode: Interface, interface: {name: eth1, addresses: [10.0.0.1/24]}}\n",
			want: []string{"spec.network.interface.vrf: Required value"}},
		{name: "interface without addresses", yaml: "spec:\n  podSelector: {}\n  network: {mode: Interface, interface: {name: eth1, vrf: 0}}\n",
			want: []string{"spec.network.interface.addresses: Required value"}},
		{name: "interface address not a CIDR", yaml: "spec:\n  podSelector: {}\n  network: {mode: Interface, interface: {name: eth1, vrf: 0, addresses: [10.0.0.1]}}\n",
			want: []string{"spec.network.interface.addresses[0]", "must be CIDRs such as"}},
		{name: "gateway of a family without an address", yaml: "spec:\n  podSelector: {}\n  network: {mode: Interface, interface: {name: eth1, vrf: 0, addresses: [10.0.0.1/24], ipv6Gateway: 'fd00::1'}}\n",
			want: []string{"spec.network.interface.ipv6Gateway", "needs an IPv6 address"}},
		{name: "IPv4 gateway that is IPv6", yaml: "spec:\n  podSelector: {}\n  network: {mode: Interface, interface: {name: eth1, vrf: 0, addresses: [10.0.0.1/24], ipv4Gateway: 'fd00::1'}}\n",
			want: []string{"spec.network.interface.ipv4Gateway", "must be an IPv4 address"}},
		{name: "unknown driver", yaml: "spec:\n  podSelector: {}\n  network: {mode: Interface, interface: {name: eth1, vrf: 0, addresses: [10.0.0.1/24], driver: RDMA}}\n",
			want: []string{"spec.network.interface.driver", `Unsupported value: "RDMA"`}},
		{name: "interface name with a slash", yaml: "spec:\n  podSelector: {}\n  network: {mode: Interface, interface: {name: eth0/1, vrf: 0, addresses: [10.0.0.1/24]}}\n",
			want: []string{"spec.network.interface.name", "should match"}},
		{name: "interface name too long", yaml: "spec:\n  podSelector: {}\n  network: {mode: Interface, interface: {name: a-very-long-interface, vrf: 0, addresses: [10.0.0.1/24]}}\n",
			want: []string{"spec.network.interface.name", "Too long"}},
		{name: "vrf out of range", yaml: "spec:\n  podSelector: {}\n  network: {mode: Interface, interface: {name: eth1, vrf: 4294967296, addresses: [10.0.0.1/24]}}\n",
			want: []string{"spec.network.interface.vrf", "less than or equal to 4294967295"}},
		{name: "unknown mode", yaml: "spec:\n  podSelector: {}\n  network: {mode: HostNetwork}\n",
			want: []string{"spec.network.mode", `Unsupported value: "HostNetwork"`}},
		{name: "segment too small", yaml: "spec:\n  podSelector: {}\n  segments: {segmentSize: 512Ki, rxFIFOSize: 4Ki, txFIFOSize: 4Ki}\n",
			want: []string{"spec.segments.segmentSize", "spec.segments.segmentSize must be a whole number of bytes from 1Mi to 4Gi"}},
		{name: "segment too large", yaml: "spec:\n  podSelector: {}\n  segments: {segmentSize: 5Gi}\n",
			want: []string{"spec.segments.segmentSize must be a whole number of bytes from 1Mi to 4Gi"}},
		{name: "fifo too small", yaml: "spec:\n  podSelector: {}\n  segments: {rxFIFOSize: 2Ki}\n",
			want: []string{"spec.segments.rxFIFOSize", "spec.segments.rxFIFOSize must be a whole number of bytes from 4Ki to 1Gi"}},
		{name: "fractional fifo", yaml: "spec:\n  podSelector: {}\n  segments: {txFIFOSize: 100000m}\n",
			want: []string{"spec.segments.txFIFOSize must be a whole number of bytes from 4Ki to 1Gi"}},
		{name: "fifos do not fit in a segment", yaml: "spec:\n  podSelector: {}\n  segments: {segmentSize: 64Mi, rxFIFOSize: 48Mi, txFIFOSize: 32Mi}\n",
			want: []string{"spec.segments.segmentSize", fitMsg}},
		{name: "not a quantity", yaml: "spec:\n  podSelector: {}\n  segments: {segmentSize: lots}\n",
			want: []string{"spec.segments.segmentSize"}},
		{name: "zero segments per app", yaml: "spec:\n  podSelector: {}\n  segments: {maxSegmentsPerApp: 0}\n",
			want: []string{"spec.segments.maxSegmentsPerApp", "greater than or equal to 1"}},
		{name: "too many apps", yaml: "spec:\n  podSelector: {}\n  quotas: {maxApps: 70000}\n",
			want: []string{"spec.quotas.maxApps", "less than or equal to 65535"}},
		{name: "zero workers per app", yaml: "spec:\n  podSelector: {}\n  quotas: {maxWorkersPerApp: 0}\n",
			want: []string{"spec.quotas.maxWorkersPerApp", "greater than or equal to 1"}},
		{name: "too many workers per app", yaml: "spec:\n  podSelector: {}\n  quotas: {maxWorkersPerApp: 257}\n",
			want: []string{"spec.quotas.maxWorkersPerApp", "less than or equal to 256"}},
		{name: "too many listeners per app", yaml: "spec:\n  podSelector: {}\n  quotas: {maxListenersPerApp: 5000}\n",
			want: []string{"spec.quotas.maxListenersPerApp", "less than or equal to 4096"}},
		{name: "bad selector operator", yaml: "spec:\n  podSelector:\n    matchExpressions: [{key: a, operator: Equals, values: [b]}]\n",
			want: []string{"spec.podSelector", "spec.podSelector.matchExpressions[].operator must be one of In, NotIn, Exists, DoesNotExist"}},
		{name: "In without values", yaml: "spec:\n  podSelector:\n    matchExpressions: [{key: a, operator: In}]\n",
			want: []string{"spec.podSelector.matchExpressions[].values must be non-empty when operator is In or NotIn"}},
		{name: "Exists with values", yaml: "spec:\n  podSelector:\n    matchExpressions: [{key: a, operator: Exists, values: [b]}]\n",
			want: []string{"spec.podSelector.matchExpressions[].values must be empty when operator is Exists or DoesNotExist"}},
		{name: "bad secret name", yaml: "spec:\n  podSelector: {}\n  secretRef: {name: Not_A_Name}\n",
			want: []string{"spec.secretRef.name", "spec.secretRef.name must be a valid Secret name"}},
		{name: "too many node labels", yaml: manyLabels, want: []string{"spec.nodeSelector", "Too many"}},
	})
}

func TestSessionRuleAdmission(t *testing.T) {
	rule := func(local, remote, action string) string {
		return fmt.Sprintf("spec:\n  appNamespaceRef: {name: demo}\n  scope: Global\n  transport: TCP\n  local: %s\n  remote: %s\n  action: %s\n", local, remote, action)
	}
	const any4, allow = "{cidr: 0.0.0.0/0}", "{type: Allow}"
	runAdmissionCases(t, "SessionRule", []admissionCase{
		{name: "IPv4 rule, ports default to any", yaml: rule("{cidr: 10.0.0.0/8}", "{cidr: 192.168.1.0/24, port: 443}", allow),
			check: func(t *testing.T, u *unstructured.Unstructured) { wantField(t, u, 0, "spec", "local", "port") }},
		{name: "IPv6 rule", yaml: rule("{cidr: '::/0'}", "{cidr: 'fd00:1::/64', port: 65535}", "{type: Deny}")},
		{name: "redirect to an app", yaml: rule(any4, any4, "{type: Redirect, redirect: {app: proxy-1}}") + "  tag: to-proxy\n"},
		{name: "mixed families", yaml: rule("{cidr: 10.0.0.0/8}", "{cidr: 'fd00::/64'}", allow),
			want: []string{"spec.remote.cidr", "spec.local.cidr and spec.remote.cidr must be of the same IP family"}},
		{name: "not a CIDR", yaml: rule("{cidr: 10.0.0.0/33}", any4, allow),
			want: []string{"spec.local.cidr", "cidr must be a valid IPv4 or IPv6 CIDR"}},
		{name: "address without prefix length", yaml: rule(any4, "{cidr: 10.1.2.3}", allow),
			want: []string{"spec.remote.cidr", "cidr must be a valid IPv4 or IPv6 CIDR"}},
		{name: "host bits set", yaml: rule("{cidr: 10.1.2.3/16}", any4, allow),
			want: []string{"spec.local.cidr", "cidr must be in canonical form"}},
		{name: "port too large", yaml: rule(any4, "{cidr: 0.0.0.0/0, port: 65536}", allow),
			want: []string{"spec.remote.port", "less than or equal to 65535"}},
		{name: "negative port", yaml: rule("{cidr: 0.0.0.0/0, port: -1}", any4, allow),
			want: []string{"spec.local.port", "greater than or equal to 0"}},
		{name: "redirect without app", yaml: rule(any4, any4, "{type: Redirect}"),
			want: []string{"spec.action.redirect", "spec.action.redirect is required when spec.action.type is Redirect, and forbidden otherwise"}},
		{name: "allow with redirect", yaml: rule(any4, any4, "{type: Allow, redirect: {app: x}}"),
			want: []string{"spec.action.redirect", "spec.action.redirect is required when spec.action.type is Redirect"}},
		{name: "bad app name", yaml: rule(any4, any4, "{type: Redirect, redirect: {app: '-x'}}"),
			want: []string{"spec.action.redirect.app", "should match"}},
		{name: "unknown action", yaml: rule(any4, any4, "{type: Drop}"),
			want: []string{"spec.action.type", `Unsupported value: "Drop"`}},
		{name: "unknown scope", yaml: strings.Replace(rule(any4, any4, allow), "Global", "Both", 1),
			want: []string{"spec.scope", `Unsupported value: "Both"`}},
		{name: "unknown transport", yaml: strings.Replace(rule(any4, any4, allow), "TCP", "SCTP", 1),
			want: []string{"spec.transport", `Unsupported value: "SCTP"`}},
		{name: "tag too long", yaml: rule(any4, any4, allow) + "  tag: " + strings.Repeat("t", 65) + "\n",
			want: []string{"spec.tag", "Too long"}},
		{name: "missing reference and match", yaml: "spec:\n  scope: Local\n  transport: UDP\n  action: {type: Allow}\n",
			want: []string{"spec.appNamespaceRef: Required value", "spec.local: Required value", "spec.remote: Required value"}},
		{name: "bad reference", yaml: strings.Replace(rule(any4, any4, allow), "{name: demo}", "{name: 'a b'}", 1),
			want: []string{"spec.appNamespaceRef.name", "must be a valid object name"}},
	})
}

func TestCertKeyPairAdmission(t *testing.T) {
	runAdmissionCases(t, "CertKeyPair", []admissionCase{
		{name: "valid", yaml: "spec:\n  secretRef: {name: web-tls}\n"},
		{name: "missing secretRef", yaml: "spec: {}\n", want: []string{"spec.secretRef: Required value"}},
		{name: "empty secret name", yaml: "spec:\n  secretRef: {name: ''}\n", want: []string{"spec.secretRef.name"}},
		{name: "bad secret name", yaml: "spec:\n  secretRef: {name: WEB_TLS}\n",
			want: []string{"spec.secretRef.name", "spec.secretRef.name must be a valid Secret name"}},
	})
}

func TestSessionNodeStatusAdmission(t *testing.T) {
	needAPIServer(t)
	ctx := context.Background()
	node := &hsv1.SessionNode{ObjectMeta: metav1.ObjectMeta{Name: "node-admission"}}
	if err := k8s.Create(ctx, node); err != nil {
		t.Fatalf("create SessionNode: %v", err)
	}
	t.Cleanup(func() { _ = k8s.Delete(ctx, node) })

	good := hsv1.SessionNodeStatus{
		Engine:    hsv1.EngineStatus{State: hsv1.EngineRunning, Version: "v0.1.0"},
		Transport: hsv1.TransportStatus{Type: hsv1.TransportAFXDP, Interface: "eth1", State: hsv1.TransportUp},
		AppNamespaces: []hsv1.AppNamespaceNodeStatus{
			{Namespace: "team-a", Name: "demo", ObservedGeneration: 1, State: hsv1.AppNamespaceReady, Rules: 3},
			{Namespace: "team-b", Name: "demo", State: hsv1.AppNamespacePending},
		},
		RulesGeneration: 9,
		Errors:          []hsv1.NodeError{{Reason: "InterfaceDown", Message: "eth2 is down", Object: "AppNamespace/team-c/x"}},
		Conditions: []metav1.Condition{
			{Type: hsv1.ConditionReady, Status: metav1.ConditionTrue, Reason: "Running", Message: "runs", LastTransitionTime: metav1.Now()},
			{Type: hsv1.ConditionEngineLimitReached, Status: metav1.ConditionTrue, Reason: hsv1.ReasonNodeMaxThreads,
				Message: "the session engine is at its node-wide caps nodeMaxThreads", LastTransitionTime: metav1.Now()},
		},
	}
	tests := []struct {
		name   string
		mutate func(*hsv1.SessionNodeStatus)
		want   []string
	}{
		{"agent report", func(*hsv1.SessionNodeStatus) {}, nil},
		{"same AppNamespace twice", func(s *hsv1.SessionNodeStatus) {
			s.AppNamespaces = append(s.AppNamespaces, s.AppNamespaces[0])
		}, []string{"status.appNamespaces[2]", "Duplicate value"}},
		{"unknown engine state", func(s *hsv1.SessionNodeStatus) { s.Engine.State = "Sleeping" },
			[]string{"status.engine.state", `Unsupported value: "Sleeping"`}},
		{"entry without state", func(s *hsv1.SessionNodeStatus) { s.AppNamespaces[1].State = "" },
			[]string{"status.appNamespaces[1].state"}},
		{"negative rules", func(s *hsv1.SessionNodeStatus) { s.AppNamespaces[0].Rules = -1 },
			[]string{"status.appNamespaces[0].rules", "greater than or equal to 0"}},
		{"error reason not CamelCase", func(s *hsv1.SessionNodeStatus) { s.Errors[0].Reason = "interface down" },
			[]string{"status.errors[0].reason", "should match"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			latest := &hsv1.SessionNode{}
			if err := k8s.Get(ctx, client.ObjectKeyFromObject(node), latest); err != nil {
				t.Fatal(err)
			}
			latest.Status = *good.DeepCopy()
			tt.mutate(&latest.Status)
			err := k8s.Status().Update(ctx, latest)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("refused, want accepted: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted, want refused with %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("refusal does not contain %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestInvalidSamplesRefused applies every file of config/samples/invalid
// with kubectl, as `make demo` does, and expects each to be refused with a
// message naming a spec field.
func TestInvalidSamplesRefused(t *testing.T) {
	needAPIServer(t)
	ns := testNamespace(t)
	files, err := filepath.Glob(filepath.Join("..", "..", "config", "samples", "invalid", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no invalid samples found: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			out, err := kubectl(t, "apply", "-n", ns, "-f", f)
			if err == nil {
				t.Fatalf("kubectl apply accepted %s:\n%s", f, out)
			}
			if !strings.Contains(out, "is invalid") || !strings.Contains(out, "spec.") {
				t.Fatalf("refusal does not name a spec field:\n%s", out)
			}
			t.Logf("kubectl: %s", strings.TrimSpace(out))
		})
	}
	if _, err := os.Stat(filepath.Join("..", "..", "config", "samples", "invalid")); err != nil {
		t.Fatal(err)
	}
}
