/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"testing"

	"github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

func newAppNamespace(ns, name string) *hsv1.AppNamespace {
	return &hsv1.AppNamespace{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
}

// newRule is a Global TCP rule 10.0.0.0/8 -> 0.0.0.0/0:port of AppNamespace demo.
func newRule(ns, name string, port int32, action hsv1.RuleActionType) *hsv1.SessionRule {
	r := rule(name, 0)
	r.Namespace = ns
	r.CreationTimestamp = metav1.Time{}
	r.Spec.Remote.Port = port
	r.Spec.Action = hsv1.RuleAction{Type: action}
	return &r
}

func TestSessionRuleController(t *testing.T) {
	needAPIServer(t)
	ctx := context.Background()
	ns := testNamespace(t, "rules")

	// Names sort in creation order, so "older" holds even when two rules
	// are created within the same second (the tie-break is the name).
	older := newRule(ns, "r1-older", 80, hsv1.RuleActionAllow)
	newer := newRule(ns, "r2-newer", 80, hsv1.RuleActionDeny) // same match, other action
	distinct := newRule(ns, "r3-distinct", 443, hsv1.RuleActionAllow)
	demo := newAppNamespace(ns, "demo")

	t.Run("AppNamespace missing", func(t *testing.T) {
		g := newG(t)
		g.Expect(k8s.Create(ctx, older)).To(gomega.Succeed())
		c := wantCondition(g, older, hsv1.ConditionReady, metav1.ConditionFalse, hsv1.ReasonAppNamespaceNotFound)
		g.Expect(c.Message).To(gomega.ContainSubstring(`AppNamespace "demo" not found`))
		wantCondition(g, older, hsv1.ConditionResolved, metav1.ConditionFalse, hsv1.ReasonAppNamespaceNotFound)
	})

	t.Run("AppNamespace created", func(t *testing.T) {
		g := newG(t)
		g.Expect(k8s.Create(ctx, demo)).To(gomega.Succeed())
		wantCondition(g, older, hsv1.ConditionAccepted, metav1.ConditionTrue, hsv1.ReasonAccepted)
		wantCondition(g, older, hsv1.ConditionResolved, metav1.ConditionTrue, hsv1.ReasonAppNamespaceFound)
		wantCondition(g, older, hsv1.ConditionConflict, metav1.ConditionFalse, hsv1.ReasonNoConflict)
		// Accepted is not enforced: no node serves demo yet.
		c := wantCondition(g, older, hsv1.ConditionReady, metav1.ConditionFalse, hsv1.ReasonNotEnforced)
		g.Expect(c.Message).To(gomega.ContainSubstring("no live node"))
		g.Expect(older.Status.EnforcingNodes).To(gomega.BeZero())
	})

	t.Run("enforced by the live nodes that applied it", func(t *testing.T) {
		g := newG(t)
		n1, n2 := ns+"-n1", ns+"-n2"
		withRules := func(rules int32) hsv1.AppNamespaceNodeStatus {
			e := entry(ns, "demo", 1, hsv1.AppNamespaceReady)
			e.Rules = rules
			return e
		}
		report(t, n1, hsv1.EngineRunning, withRules(1))
		report(t, n2, hsv1.EngineRunning, withRules(0)) // not caught up
		c := wantCondition(g, older, hsv1.ConditionReady, metav1.ConditionTrue, hsv1.ReasonEnforced)
		g.Expect(c.Message).To(gomega.ContainSubstring("enforced by 1 live node"))
		g.Expect(older.Status.EnforcingNodes).To(gomega.BeEquivalentTo(1))
		report(t, n2, hsv1.EngineRunning, withRules(1))
		g.Eventually(func(g gomega.Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(older), older)).To(gomega.Succeed())
			g.Expect(older.Status.EnforcingNodes).To(gomega.BeEquivalentTo(2))
		}).Should(gomega.Succeed())
		// A node whose agent stops renewing its Lease enforces nothing.
		expireLease(t, n1)
		expireLease(t, n2)
		wantCondition(g, older, hsv1.ConditionReady, metav1.ConditionFalse, hsv1.ReasonNotEnforced)
		g.Expect(older.Status.EnforcingNodes).To(gomega.BeZero())
		for _, n := range []string{n1, n2} {
			g.Expect(k8s.Delete(ctx, &hsv1.SessionNode{ObjectMeta: metav1.ObjectMeta{Name: n}})).To(gomega.Succeed())
		}
	})

	t.Run("newer rule with the same match conflicts", func(t *testing.T) {
		g := newG(t)
		g.Expect(k8s.Create(ctx, newer)).To(gomega.Succeed())
		g.Expect(k8s.Create(ctx, distinct)).To(gomega.Succeed())
		c := wantCondition(g, newer, hsv1.ConditionReady, metav1.ConditionFalse, hsv1.ReasonConflict)
		g.Expect(c.Message).To(gomega.ContainSubstring(`SessionRule "r1-older"`))
		wantCondition(g, newer, hsv1.ConditionConflict, metav1.ConditionTrue, hsv1.ReasonConflict)
		wantCondition(g, distinct, hsv1.ConditionAccepted, metav1.ConditionTrue, hsv1.ReasonAccepted)
		// The older rule keeps its place.
		wantCondition(g, older, hsv1.ConditionAccepted, metav1.ConditionTrue, hsv1.ReasonAccepted)
	})

	t.Run("deleting the older rule hands the match to the newer", func(t *testing.T) {
		g := newG(t)
		g.Expect(k8s.Delete(ctx, older)).To(gomega.Succeed())
		wantCondition(g, newer, hsv1.ConditionAccepted, metav1.ConditionTrue, hsv1.ReasonAccepted)
		wantCondition(g, newer, hsv1.ConditionConflict, metav1.ConditionFalse, hsv1.ReasonNoConflict)
	})

	t.Run("editing a rule into an existing match conflicts", func(t *testing.T) {
		g := newG(t)
		g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(distinct), distinct)).To(gomega.Succeed())
		distinct.Spec.Remote.Port = 80
		g.Expect(k8s.Update(ctx, distinct)).To(gomega.Succeed())
		c := wantCondition(g, distinct, hsv1.ConditionReady, metav1.ConditionFalse, hsv1.ReasonConflict)
		g.Expect(c.Message).To(gomega.ContainSubstring(`SessionRule "r2-newer"`))
		g.Expect(distinct.Status.ObservedGeneration).To(gomega.BeEquivalentTo(2))
	})

	t.Run("moving the winner to another AppNamespace frees the match", func(t *testing.T) {
		g := newG(t)
		g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(newer), newer)).To(gomega.Succeed())
		newer.Spec.AppNamespaceRef.Name = "elsewhere"
		g.Expect(k8s.Update(ctx, newer)).To(gomega.Succeed())
		wantCondition(g, newer, hsv1.ConditionReady, metav1.ConditionFalse, hsv1.ReasonAppNamespaceNotFound)
		wantCondition(g, distinct, hsv1.ConditionAccepted, metav1.ConditionTrue, hsv1.ReasonAccepted)
	})

	t.Run("deleting the AppNamespace unresolves its rules", func(t *testing.T) {
		g := newG(t)
		g.Expect(k8s.Delete(ctx, demo)).To(gomega.Succeed())
		wantCondition(g, distinct, hsv1.ConditionReady, metav1.ConditionFalse, hsv1.ReasonAppNamespaceNotFound)
		g.Expect(meta.FindStatusCondition(distinct.Status.Conditions, hsv1.ConditionConflict)).To(gomega.BeNil(),
			"no table, no conflict")
	})
}
