/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

var t0 = time.Date(2026, 11, 26, 0, 0, 0, 0, time.UTC)

// rule builds a SessionRule in namespace "team" of AppNamespace "demo",
// created at t0+age, matching TCP Global 10.0.0.0/8:0 -> 0.0.0.0/0:80
// unless mutate changes it.
func rule(name string, age time.Duration, mutate ...func(*hsv1.SessionRule)) hsv1.SessionRule {
	r := hsv1.SessionRule{
		ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: name, CreationTimestamp: metav1.NewTime(t0.Add(age))},
		Spec: hsv1.SessionRuleSpec{
			AppNamespaceRef: hsv1.AppNamespaceReference{Name: "demo"},
			Scope:           hsv1.RuleScopeGlobal,
			Transport:       hsv1.TransportTCP,
			Local:           hsv1.RuleEndpoint{CIDR: "10.0.0.0/8"},
			Remote:          hsv1.RuleEndpoint{CIDR: "0.0.0.0/0", Port: 80},
			Action:          hsv1.RuleAction{Type: hsv1.RuleActionAllow},
		},
	}
	for _, m := range mutate {
		m(&r)
	}
	return r
}

func TestFindConflict(t *testing.T) {
	deleting := func(r *hsv1.SessionRule) { now := metav1.NewTime(t0); r.DeletionTimestamp = &now }
	tests := []struct {
		name  string
		rule  hsv1.SessionRule
		peers []hsv1.SessionRule
		want  string // name of the winner, "" for none
	}{
		{"alone", rule("a", 0), nil, ""},
		{"only itself in peers", rule("a", 0), []hsv1.SessionRule{rule("a", 0)}, ""},
		{"newer duplicate loses to older", rule("new", time.Minute), []hsv1.SessionRule{rule("old", 0)}, "old"},
		{"older rule is not in conflict", rule("old", 0), []hsv1.SessionRule{rule("new", time.Minute)}, ""},
		{"oldest of three wins", rule("c", 2*time.Minute),
			[]hsv1.SessionRule{rule("b", time.Minute), rule("a", 0)}, "a"},
		{"same second: name decides", rule("b", 0), []hsv1.SessionRule{rule("a", 0)}, "a"},
		{"same second: name decides (other way)", rule("a", 0), []hsv1.SessionRule{rule("b", 0)}, ""},
		{"action and tag are not part of the match", rule("new", time.Minute),
			[]hsv1.SessionRule{rule("old", 0, func(r *hsv1.SessionRule) {
				r.Spec.Action = hsv1.RuleAction{Type: hsv1.RuleActionDeny}
				r.Spec.Tag = "x"
			})}, "old"},
		{"non-canonical prefix is the same match", rule("new", time.Minute),
			[]hsv1.SessionRule{rule("old", 0, func(r *hsv1.SessionRule) { r.Spec.Local.CIDR = "10.1.2.3/8" })}, "old"},
		{"different scope", rule("new", time.Minute),
			[]hsv1.SessionRule{rule("old", 0, func(r *hsv1.SessionRule) { r.Spec.Scope = hsv1.RuleScopeLocal })}, ""},
		{"different transport", rule("new", time.Minute),
			[]hsv1.SessionRule{rule("old", 0, func(r *hsv1.SessionRule) { r.Spec.Transport = hsv1.TransportUDP })}, ""},
		{"different local prefix", rule("new", time.Minute),
			[]hsv1.SessionRule{rule("old", 0, func(r *hsv1.SessionRule) { r.Spec.Local.CIDR = "10.0.0.0/16" })}, ""},
		{"different local port", rule("new", time.Minute),
			[]hsv1.SessionRule{rule("old", 0, func(r *hsv1.SessionRule) { r.Spec.Local.Port = 1 })}, ""},
		{"different remote port", rule("new", time.Minute),
			[]hsv1.SessionRule{rule("old", 0, func(r *hsv1.SessionRule) { r.Spec.Remote.Port = 443 })}, ""},
		{"different AppNamespace", rule("new", time.Minute),
			[]hsv1.SessionRule{rule("old", 0, func(r *hsv1.SessionRule) { r.Spec.AppNamespaceRef.Name = "other" })}, ""},
		{"different Kubernetes namespace", rule("new", time.Minute),
			[]hsv1.SessionRule{rule("old", 0, func(r *hsv1.SessionRule) { r.Namespace = "elsewhere" })}, ""},
		{"older rule being deleted hands over", rule("new", time.Minute),
			[]hsv1.SessionRule{rule("old", 0, deleting)}, ""},
		{"deleted winner: next oldest wins", rule("c", 2*time.Minute),
			[]hsv1.SessionRule{rule("a", 0, deleting), rule("b", time.Minute)}, "b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := findConflict(&tt.rule, tt.peers)
			switch {
			case tt.want == "" && got != nil:
				t.Fatalf("conflict with %q, want none", got.Name)
			case tt.want != "" && (got == nil || got.Name != tt.want):
				t.Fatalf("conflict = %v, want %q", got, tt.want)
			}
		})
	}
}

func TestSetRuleStatus(t *testing.T) {
	old := rule("old", 0)
	tests := []struct {
		name        string
		v           ruleVerdict
		ready       metav1.ConditionStatus
		reason      string
		msg         string
		conflict    metav1.ConditionStatus // "" when the condition must be absent
		resolvedWhy string
	}{
		{"unresolved", ruleVerdict{}, "False", hsv1.ReasonAppNamespaceNotFound, `AppNamespace "demo" not found`, "", hsv1.ReasonAppNamespaceNotFound},
		{"conflict", ruleVerdict{appNamespaceFound: true, conflictWith: &old}, "False", hsv1.ReasonConflict, `SessionRule "old"`, "True", hsv1.ReasonAppNamespaceFound},
		{"accepted, enforced nowhere", ruleVerdict{appNamespaceFound: true}, "False", hsv1.ReasonNotEnforced, "no live node", "False", hsv1.ReasonAppNamespaceFound},
		{"accepted and enforced", ruleVerdict{appNamespaceFound: true, enforcing: 3}, "True", hsv1.ReasonEnforced, "enforced by 3 live node(s)", "False", hsv1.ReasonAppNamespaceFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := rule("new", time.Minute)
			r.Generation = 2
			// Start from a conflicting status to check conditions are
			// replaced, not accumulated.
			setRuleStatus(&r, ruleVerdict{appNamespaceFound: true, conflictWith: &old})
			setRuleStatus(&r, tt.v)
			ready := findCondition(r.Status.Conditions, hsv1.ConditionReady)
			if ready == nil || ready.Status != tt.ready || ready.Reason != tt.reason || !strings.Contains(ready.Message, tt.msg) {
				t.Fatalf("Ready = %+v, want %s/%s containing %q", ready, tt.ready, tt.reason, tt.msg)
			}
			if ready.ObservedGeneration != 2 || r.Status.ObservedGeneration != 2 {
				t.Errorf("observedGeneration not set: %+v", r.Status)
			}
			c := findCondition(r.Status.Conditions, hsv1.ConditionConflict)
			switch {
			case tt.conflict == "" && c != nil:
				t.Errorf("Conflict = %+v, want absent", c)
			case tt.conflict != "" && (c == nil || c.Status != tt.conflict):
				t.Errorf("Conflict = %+v, want %s", c, tt.conflict)
			}
			acc := findCondition(r.Status.Conditions, hsv1.ConditionAccepted)
			if wantAcc := tt.resolvedWhy == hsv1.ReasonAppNamespaceFound && tt.conflict == "False"; acc == nil || (acc.Status == "True") != wantAcc {
				t.Errorf("Accepted = %+v, want True: %v", acc, wantAcc)
			}
			if r.Status.EnforcingNodes != tt.v.enforcing && acc != nil && acc.Status == "True" {
				t.Errorf("enforcingNodes = %d, want %d", r.Status.EnforcingNodes, tt.v.enforcing)
			}
			if res := findCondition(r.Status.Conditions, hsv1.ConditionResolved); res == nil || res.Reason != tt.resolvedWhy {
				t.Errorf("Resolved = %+v, want reason %s", res, tt.resolvedWhy)
			}
		})
	}
}
