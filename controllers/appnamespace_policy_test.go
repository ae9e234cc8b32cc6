/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

func TestValidateAppNamespace(t *testing.T) {
	tests := []struct {
		name       string
		spec       hsv1.AppNamespaceSpec
		wantReason string // "" for valid
		wantMsg    string
	}{
		{"empty selectors", hsv1.AppNamespaceSpec{}, "", ""},
		{"good selectors", hsv1.AppNamespaceSpec{
			PodSelector: metav1.LabelSelector{
				MatchLabels: map[string]string{"app.kubernetes.io/name": "web"},
				MatchExpressions: []metav1.LabelSelectorRequirement{
					{Key: "tier", Operator: metav1.LabelSelectorOpIn, Values: []string{"a", "b"}}},
			},
			NodeSelector: map[string]string{"kubernetes.io/os": "linux", "hoststack.dev/nic": ""},
		}, "", ""},
		{"bad pod label key", hsv1.AppNamespaceSpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"bad key!": "x"}},
		}, hsv1.ReasonInvalidPodSelector, "spec.podSelector"},
		{"bad pod label value", hsv1.AppNamespaceSpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "no spaces"}},
		}, hsv1.ReasonInvalidPodSelector, "spec.podSelector"},
		{"bad node selector key", hsv1.AppNamespaceSpec{
			NodeSelector: map[string]string{"ok": "x", "-bad": "y"},
		}, hsv1.ReasonInvalidNodeSelector, `spec.nodeSelector key "-bad"`},
		{"bad node selector value", hsv1.AppNamespaceSpec{
			NodeSelector: map[string]string{"zone": strings.Repeat("z", 64)},
		}, hsv1.ReasonInvalidNodeSelector, `spec.nodeSelector["zone"]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := validateAppNamespace(&tt.spec)
			switch {
			case tt.wantReason == "" && p != nil:
				t.Fatalf("problem %+v, want valid", p)
			case tt.wantReason != "" && (p == nil || p.Reason != tt.wantReason || !strings.Contains(p.Message, tt.wantMsg)):
				t.Fatalf("problem %+v, want %s containing %q", p, tt.wantReason, tt.wantMsg)
			}
		})
	}
}

// node builds a live SessionNode with an engine state and entries.
func node(name string, engine hsv1.EngineState, entries ...hsv1.AppNamespaceNodeStatus) hsv1.SessionNode {
	n := hsv1.SessionNode{}
	n.Name = name
	n.Status.Engine.State = engine
	n.Status.AppNamespaces = entries
	n.Status.Conditions = []metav1.Condition{{Type: hsv1.ConditionServing, Status: metav1.ConditionTrue, Reason: hsv1.ReasonLeaseRenewed}}
	return n
}

// dead is node with the manager's verdict that it is not serving (reason),
// or with no verdict yet (reason "").
func dead(name, reason string, entries ...hsv1.AppNamespaceNodeStatus) hsv1.SessionNode {
	n := node(name, hsv1.EngineRunning, entries...)
	n.Status.Conditions = nil
	if reason != "" {
		n.Status.Conditions = []metav1.Condition{{Type: hsv1.ConditionServing, Status: metav1.ConditionFalse, Reason: reason}}
	}
	return n
}

func entry(ns, name string, gen int64, state hsv1.AppNamespaceState) hsv1.AppNamespaceNodeStatus {
	return hsv1.AppNamespaceNodeStatus{Namespace: ns, Name: name, ObservedGeneration: gen, State: state}
}

func TestAggregateNodes(t *testing.T) {
	const gen = 4
	ready := func() hsv1.AppNamespaceNodeStatus {
		return entry("team", "demo", gen, hsv1.AppNamespaceReady)
	}
	tests := []struct {
		name  string
		nodes []hsv1.SessionNode
		want  nodeAggregate
	}{
		{"no nodes", nil, nodeAggregate{}},
		{"nodes that do not serve it", []hsv1.SessionNode{
			node("n1", hsv1.EngineRunning, entry("team", "other", gen, hsv1.AppNamespaceReady)),
			node("n2", hsv1.EngineRunning, entry("other-team", "demo", gen, hsv1.AppNamespaceReady)),
		}, nodeAggregate{}},
		{"two ready nodes sum", []hsv1.SessionNode{
			node("n1", hsv1.EngineRunning, ready()),
			node("n2", hsv1.EngineDegraded, ready(), entry("team", "other", gen, hsv1.AppNamespaceReady)),
		}, nodeAggregate{Selected: 2, Ready: 2}},
		{"not ready for every reason, sorted by node", []hsv1.SessionNode{
			node("n5", hsv1.EngineRunning, entry("team", "demo", gen-1, hsv1.AppNamespaceReady)),
			node("n4", hsv1.EngineRunning, entry("team", "demo", gen, hsv1.AppNamespaceFailed)),
			node("n3", hsv1.EngineRunning, entry("team", "demo", gen, hsv1.AppNamespacePending)),
			node("n2", "", ready()),
			node("n1", hsv1.EngineStopped, ready()),
			node("n0", hsv1.EngineRunning, ready()),
		}, nodeAggregate{Selected: 6, Ready: 1, NotReady: []string{
			"n1: engine Stopped",
			"n2: engine state not reported",
			"n3: Pending",
			"n4: Failed",
			"n5: applied generation 3, want 4",
		}}},
		{"nodes not serving are not counted", []hsv1.SessionNode{
			dead("n3", "", ready()),
			dead("n2", hsv1.ReasonNodeNotReady, ready()),
			dead("n1", hsv1.ReasonLeaseExpired, ready()),
			node("n0", hsv1.EngineRunning, ready()),
		}, nodeAggregate{Selected: 1, Ready: 1, NotServing: []string{
			"n1: LeaseExpired",
			"n2: NodeNotReady",
			"n3: liveness not yet known",
		}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := aggregateNodes("team", "demo", gen, tt.nodes)
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestSetAppNamespaceStatus(t *testing.T) {
	many := nodeAggregate{Selected: 9, Ready: 2}
	for i := 0; i < 7; i++ {
		many.NotReady = append(many.NotReady, fmt.Sprintf("n%d: Pending", i))
	}
	tests := []struct {
		name    string
		problem *specProblem
		agg     nodeAggregate
		ready   metav1.ConditionStatus
		reason  string
		msg     string
	}{
		{"no nodes yet", nil, nodeAggregate{}, "False", hsv1.ReasonNoNodesSelected, "no live node serves"},
		{"only dead nodes", nil, nodeAggregate{NotServing: []string{"n1: LeaseExpired"}}, "False", hsv1.ReasonNoNodesSelected, "not serving (not counted): n1: LeaseExpired"},
		{"all nodes ready", nil, nodeAggregate{Selected: 2, Ready: 2}, "True", hsv1.ReasonNodesReady, "2/2 nodes ready"},
		{"a node not ready", nil, nodeAggregate{Selected: 2, Ready: 1, NotReady: []string{"n2: Pending"}}, "False", hsv1.ReasonNodesNotReady, "1/2 nodes ready; n2: Pending"},
		{"long list is cut", nil, many, "False", hsv1.ReasonNodesNotReady, "n4: Pending; and 2 more"},
		{"invalid spec wins", &specProblem{Reason: hsv1.ReasonInvalidNodeSelector, Message: "bad"}, nodeAggregate{Selected: 1, Ready: 1}, "False", hsv1.ReasonInvalidNodeSelector, "bad"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			an := &hsv1.AppNamespace{}
			an.Generation = 5
			setAppNamespaceStatus(an, tt.problem, tt.agg)
			st := an.Status
			if st.ObservedGeneration != 5 || st.SelectedNodes != tt.agg.Selected || st.ReadyNodes != tt.agg.Ready {
				t.Errorf("counters = %+v, want from %+v", st, tt.agg)
			}
			c := findCondition(st.Conditions, hsv1.ConditionReady)
			if c == nil || c.Status != tt.ready || c.Reason != tt.reason || !strings.Contains(c.Message, tt.msg) {
				t.Fatalf("Ready = %+v, want %s/%s containing %q", c, tt.ready, tt.reason, tt.msg)
			}
			valid := findCondition(st.Conditions, hsv1.ConditionValid)
			if (tt.problem == nil) != (valid != nil && valid.Status == "True") {
				t.Errorf("Valid = %+v with problem %v", valid, tt.problem)
			}
		})
	}
}
