/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"testing"

	"github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// report writes a SessionNode's status as an agent would, creating the
// node first if needed.
func report(t *testing.T, name string, engine hsv1.EngineState, entries ...hsv1.AppNamespaceNodeStatus) *hsv1.SessionNode {
	t.Helper()
	ctx := context.Background()
	n := &hsv1.SessionNode{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(n), n); err != nil {
		if err := k8s.Create(ctx, n); err != nil {
			t.Fatalf("create SessionNode %s: %v", name, err)
		}
	}
	n.Status = hsv1.SessionNodeStatus{
		Engine:        hsv1.EngineStatus{State: engine},
		Transport:     hsv1.TransportStatus{Type: hsv1.TransportKernel, State: hsv1.TransportUp},
		AppNamespaces: entries,
	}
	if err := k8s.Status().Update(ctx, n); err != nil {
		t.Fatalf("report SessionNode %s: %v", name, err)
	}
	return n
}

func TestAppNamespaceController(t *testing.T) {
	needAPIServer(t)
	ctx := context.Background()
	ns := testNamespace(t, "appns")
	// SessionNodes are cluster-scoped: name them after the test namespace
	// so they never meet another test's.
	n1, n2 := ns+"-n1", ns+"-n2"
	an := newAppNamespace(ns, "agg")
	key := client.ObjectKeyFromObject(an)

	t.Run("no node yet", func(t *testing.T) {
		g := newG(t)
		g.Expect(k8s.Create(ctx, an)).To(gomega.Succeed())
		wantCondition(g, an, hsv1.ConditionReady, metav1.ConditionTrue, hsv1.ReasonNoNodesSelected)
		wantCondition(g, an, hsv1.ConditionValid, metav1.ConditionTrue, hsv1.ReasonValid)
		g.Expect(an.Status.SelectedNodes).To(gomega.BeZero())
	})

	t.Run("a node reports it pending", func(t *testing.T) {
		g := newG(t)
		report(t, n1, hsv1.EngineRunning, entry(ns, "agg", 1, hsv1.AppNamespacePending, 0, 0))
		c := wantCondition(g, an, hsv1.ConditionReady, metav1.ConditionFalse, hsv1.ReasonNodesNotReady)
		g.Expect(c.Message).To(gomega.ContainSubstring("0/1 nodes ready; " + n1 + ": Pending"))
		g.Expect(an.Status.SelectedNodes).To(gomega.BeEquivalentTo(1))
		g.Expect(an.Status.ReadyNodes).To(gomega.BeZero())
	})

	t.Run("two nodes ready, counters summed", func(t *testing.T) {
		g := newG(t)
		report(t, n1, hsv1.EngineRunning, entry(ns, "agg", 1, hsv1.AppNamespaceReady, 2, 5))
		report(t, n2, hsv1.EngineRunning,
			entry(ns, "agg", 1, hsv1.AppNamespaceReady, 1, 1),
			entry(ns, "unrelated", 1, hsv1.AppNamespaceReady, 50, 50))
		g.Eventually(func(g gomega.Gomega) {
			g.Expect(k8s.Get(ctx, key, an)).To(gomega.Succeed())
			g.Expect(an.Status).To(gomega.And(
				gomega.HaveField("SelectedNodes", gomega.BeEquivalentTo(2)),
				gomega.HaveField("ReadyNodes", gomega.BeEquivalentTo(2)),
				gomega.HaveField("Apps", gomega.BeEquivalentTo(3)),
				gomega.HaveField("Sessions", gomega.BeEquivalentTo(6))))
		}).Should(gomega.Succeed())
		wantCondition(g, an, hsv1.ConditionReady, metav1.ConditionTrue, hsv1.ReasonNodesReady)
	})

	t.Run("a spec change waits for the nodes to catch up", func(t *testing.T) {
		g := newG(t)
		g.Expect(k8s.Get(ctx, key, an)).To(gomega.Succeed())
		an.Spec.Quotas.MaxApps = ptr.To[int32](8)
		g.Expect(k8s.Update(ctx, an)).To(gomega.Succeed())
		c := wantCondition(g, an, hsv1.ConditionNodesReady, metav1.ConditionFalse, hsv1.ReasonNodesNotReady)
		g.Expect(c.Message).To(gomega.ContainSubstring("applied generation 1, want 2"))
		report(t, n1, hsv1.EngineRunning, entry(ns, "agg", 2, hsv1.AppNamespaceReady, 2, 5))
		report(t, n2, hsv1.EngineRunning, entry(ns, "agg", 2, hsv1.AppNamespaceReady, 1, 1))
		wantCondition(g, an, hsv1.ConditionReady, metav1.ConditionTrue, hsv1.ReasonNodesReady)
	})

	t.Run("a node stops serving it", func(t *testing.T) {
		g := newG(t)
		report(t, n2, hsv1.EngineRunning) // entry removed
		g.Eventually(func(g gomega.Gomega) {
			g.Expect(k8s.Get(ctx, key, an)).To(gomega.Succeed())
			g.Expect(an.Status.SelectedNodes).To(gomega.BeEquivalentTo(1))
			g.Expect(an.Status.Apps).To(gomega.BeEquivalentTo(2))
		}).Should(gomega.Succeed())
	})

	t.Run("a node's engine stops", func(t *testing.T) {
		g := newG(t)
		report(t, n1, hsv1.EngineStopped, entry(ns, "agg", 2, hsv1.AppNamespaceReady, 0, 0))
		c := wantCondition(g, an, hsv1.ConditionReady, metav1.ConditionFalse, hsv1.ReasonNodesNotReady)
		g.Expect(c.Message).To(gomega.ContainSubstring(n1 + ": engine Stopped"))
	})

	t.Run("its SessionNode is deleted", func(t *testing.T) {
		g := newG(t)
		g.Expect(k8s.Delete(ctx, &hsv1.SessionNode{ObjectMeta: metav1.ObjectMeta{Name: n1}})).To(gomega.Succeed())
		wantCondition(g, an, hsv1.ConditionReady, metav1.ConditionTrue, hsv1.ReasonNoNodesSelected)
		g.Expect(k8s.Delete(ctx, &hsv1.SessionNode{ObjectMeta: metav1.ObjectMeta{Name: n2}})).To(gomega.Succeed())
	})

	t.Run("node selector the schema lets through", func(t *testing.T) {
		g := newG(t)
		bad := newAppNamespace(ns, "bad-selector")
		bad.Spec.NodeSelector = map[string]string{"-not-a-label": "x"}
		g.Expect(k8s.Create(ctx, bad)).To(gomega.Succeed())
		c := wantCondition(g, bad, hsv1.ConditionReady, metav1.ConditionFalse, hsv1.ReasonInvalidNodeSelector)
		g.Expect(c.Message).To(gomega.ContainSubstring(`spec.nodeSelector key "-not-a-label"`))
		wantCondition(g, bad, hsv1.ConditionValid, metav1.ConditionFalse, hsv1.ReasonInvalidNodeSelector)

		g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(bad), bad)).To(gomega.Succeed())
		bad.Spec.NodeSelector = map[string]string{"hoststack.dev/nic": "fast"}
		g.Expect(k8s.Update(ctx, bad)).To(gomega.Succeed())
		wantCondition(g, bad, hsv1.ConditionReady, metav1.ConditionTrue, hsv1.ReasonNoNodesSelected)
	})
}
