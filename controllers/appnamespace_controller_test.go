/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"testing"
	"time"

	"github.com/onsi/gomega"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// report writes a SessionNode's status as an agent would, creating the
// node first if needed, and renews the node's Lease as the agent would (a
// Lease of an hour: the test controls when it lapses, with expireLease).
func report(t *testing.T, name string, engine hsv1.EngineState, entries ...hsv1.AppNamespaceNodeStatus) *hsv1.SessionNode {
	t.Helper()
	ctx := context.Background()
	renewLease(t, name, time.Now(), 3600)
	n := &hsv1.SessionNode{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(n), n); err != nil {
		if err := k8s.Create(ctx, n); err != nil {
			t.Fatalf("create SessionNode %s: %v", name, err)
		}
	}
	// Server-side apply with the agent's field manager, as the agent
	// does: the manager's Serving condition stays.
	st := hsv1.SessionNodeStatus{
		Engine:        hsv1.EngineStatus{State: engine},
		Transport:     hsv1.TransportStatus{Type: hsv1.TransportKernel, State: hsv1.TransportUp},
		AppNamespaces: entries,
	}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&hsv1.SessionNode{Status: st})
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{Object: map[string]any{"status": m["status"]}}
	u.SetGroupVersionKind(hsv1.GroupVersion.WithKind("SessionNode"))
	u.SetName(name)
	if err := k8s.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner("hoststack-agent"), client.ForceOwnership); err != nil {
		t.Fatalf("report SessionNode %s: %v", name, err)
	}
	return n
}

// renewLease writes the node's agent Lease with renewTime and duration.
func renewLease(t *testing.T, name string, renew time.Time, seconds int32) {
	t.Helper()
	ctx := context.Background()
	l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: DefaultAgentNamespace, Name: name}}
	_, err := controllerutil.CreateOrUpdate(ctx, k8s, l, func() error {
		l.Spec.HolderIdentity = ptr.To(name)
		l.Spec.LeaseDurationSeconds = ptr.To(seconds)
		l.Spec.RenewTime = &metav1.MicroTime{Time: renew}
		return nil
	})
	if err != nil {
		t.Fatalf("renew Lease %s: %v", name, err)
	}
}

// expireLease makes the node's Lease one that lapsed a minute ago.
func expireLease(t *testing.T, name string) {
	t.Helper()
	renewLease(t, name, time.Now().Add(-time.Minute), 10)
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
		// Nothing can attach yet: Ready must not say otherwise.
		wantCondition(g, an, hsv1.ConditionReady, metav1.ConditionFalse, hsv1.ReasonNoNodesSelected)
		wantCondition(g, an, hsv1.ConditionNodesReady, metav1.ConditionFalse, hsv1.ReasonNoNodesSelected)
		wantCondition(g, an, hsv1.ConditionValid, metav1.ConditionTrue, hsv1.ReasonValid)
		g.Expect(an.Status.SelectedNodes).To(gomega.BeZero())
	})

	t.Run("a node reports it pending", func(t *testing.T) {
		g := newG(t)
		report(t, n1, hsv1.EngineRunning, entry(ns, "agg", 1, hsv1.AppNamespacePending))
		c := wantCondition(g, an, hsv1.ConditionReady, metav1.ConditionFalse, hsv1.ReasonNodesNotReady)
		g.Expect(c.Message).To(gomega.ContainSubstring("0/1 nodes ready; " + n1 + ": Pending"))
		g.Expect(an.Status.SelectedNodes).To(gomega.BeEquivalentTo(1))
		g.Expect(an.Status.ReadyNodes).To(gomega.BeZero())
	})

	t.Run("two nodes ready", func(t *testing.T) {
		g := newG(t)
		report(t, n1, hsv1.EngineRunning, entry(ns, "agg", 1, hsv1.AppNamespaceReady))
		report(t, n2, hsv1.EngineRunning,
			entry(ns, "agg", 1, hsv1.AppNamespaceReady),
			entry(ns, "unrelated", 1, hsv1.AppNamespaceReady))
		g.Eventually(func(g gomega.Gomega) {
			g.Expect(k8s.Get(ctx, key, an)).To(gomega.Succeed())
			g.Expect(an.Status).To(gomega.And(
				gomega.HaveField("SelectedNodes", gomega.BeEquivalentTo(2)),
				gomega.HaveField("ReadyNodes", gomega.BeEquivalentTo(2))))
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
		report(t, n1, hsv1.EngineRunning, entry(ns, "agg", 2, hsv1.AppNamespaceReady))
		report(t, n2, hsv1.EngineRunning, entry(ns, "agg", 2, hsv1.AppNamespaceReady))
		wantCondition(g, an, hsv1.ConditionReady, metav1.ConditionTrue, hsv1.ReasonNodesReady)
	})

	t.Run("a node whose Lease expired is not counted", func(t *testing.T) {
		g := newG(t)
		expireLease(t, n2)
		var sn hsv1.SessionNode
		g.Eventually(func(g gomega.Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKey{Name: n2}, &sn)).To(gomega.Succeed())
			c := meta.FindStatusCondition(sn.Status.Conditions, hsv1.ConditionServing)
			g.Expect(c).NotTo(gomega.BeNil())
			g.Expect(c.Status).To(gomega.Equal(metav1.ConditionFalse))
			g.Expect(c.Reason).To(gomega.Equal(hsv1.ReasonLeaseExpired))
		}).Should(gomega.Succeed())
		g.Eventually(func(g gomega.Gomega) {
			g.Expect(k8s.Get(ctx, key, an)).To(gomega.Succeed())
			g.Expect(an.Status.SelectedNodes).To(gomega.BeEquivalentTo(1))
			g.Expect(an.Status.ReadyNodes).To(gomega.BeEquivalentTo(1))
		}).Should(gomega.Succeed())
		g.Eventually(func(g gomega.Gomega) {
			g.Expect(k8s.Get(ctx, key, an)).To(gomega.Succeed())
			c := meta.FindStatusCondition(an.Status.Conditions, hsv1.ConditionReady)
			g.Expect(c).NotTo(gomega.BeNil())
			g.Expect(c.Status).To(gomega.Equal(metav1.ConditionTrue))
			g.Expect(c.Message).To(gomega.ContainSubstring("not serving (not counted): " + n2 + ": LeaseExpired"))
		}).Should(gomega.Succeed())
		renewLease(t, n2, time.Now(), 3600)
		g.Eventually(func(g gomega.Gomega) {
			g.Expect(k8s.Get(ctx, key, an)).To(gomega.Succeed())
			g.Expect(an.Status.SelectedNodes).To(gomega.BeEquivalentTo(2))
		}).Should(gomega.Succeed())
	})

	t.Run("a node stops serving it", func(t *testing.T) {
		g := newG(t)
		report(t, n2, hsv1.EngineRunning) // entry removed
		g.Eventually(func(g gomega.Gomega) {
			g.Expect(k8s.Get(ctx, key, an)).To(gomega.Succeed())
			g.Expect(an.Status.SelectedNodes).To(gomega.BeEquivalentTo(1))
		}).Should(gomega.Succeed())
	})

	t.Run("a node's engine stops", func(t *testing.T) {
		g := newG(t)
		report(t, n1, hsv1.EngineStopped, entry(ns, "agg", 2, hsv1.AppNamespaceReady))
		c := wantCondition(g, an, hsv1.ConditionReady, metav1.ConditionFalse, hsv1.ReasonNodesNotReady)
		g.Expect(c.Message).To(gomega.ContainSubstring(n1 + ": engine Stopped"))
	})

	t.Run("its SessionNode is deleted", func(t *testing.T) {
		g := newG(t)
		g.Expect(k8s.Delete(ctx, &hsv1.SessionNode{ObjectMeta: metav1.ObjectMeta{Name: n1}})).To(gomega.Succeed())
		wantCondition(g, an, hsv1.ConditionReady, metav1.ConditionFalse, hsv1.ReasonNoNodesSelected)
		g.Expect(k8s.Delete(ctx, &hsv1.SessionNode{ObjectMeta: metav1.ObjectMeta{Name: n2}})).To(gomega.Succeed())
	})

	t.Run("attach secret published for the agents", func(t *testing.T) {
		g := newG(t)
		locked := newAppNamespace(ns, "locked")
		locked.Spec.SecretRef = &hsv1.SecretReference{Name: "attach"}
		g.Expect(k8s.Create(ctx, locked)).To(gomega.Succeed())
		pk := publishedKey("AppNamespace", ns, "locked")
		g.Consistently(func() bool { return apierrors.IsNotFound(k8s.Get(ctx, pk, &corev1.Secret{})) }).
			WithTimeout(500*time.Millisecond).Should(gomega.BeTrue(), "no Secret, no copy")
		g.Expect(k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "attach"},
			Data: map[string][]byte{AttachSecretKey: []byte("s3cret"), "other": []byte("not copied")}})).To(gomega.Succeed())
		g.Eventually(func(g gomega.Gomega) {
			var s corev1.Secret
			g.Expect(k8s.Get(ctx, pk, &s)).To(gomega.Succeed())
			g.Expect(s.Data).To(gomega.Equal(map[string][]byte{AttachSecretKey: []byte("s3cret")}))
		}).Should(gomega.Succeed())
		// A copy edited by someone else is put right.
		var s corev1.Secret
		g.Expect(k8s.Get(ctx, pk, &s)).To(gomega.Succeed())
		s.Data[AttachSecretKey] = []byte("tampered")
		g.Expect(k8s.Update(ctx, &s)).To(gomega.Succeed())
		g.Eventually(func(g gomega.Gomega) {
			g.Expect(k8s.Get(ctx, pk, &s)).To(gomega.Succeed())
			g.Expect(string(s.Data[AttachSecretKey])).To(gomega.Equal("s3cret"))
		}).Should(gomega.Succeed())
		g.Expect(k8s.Delete(ctx, locked)).To(gomega.Succeed())
		g.Eventually(func() bool { return apierrors.IsNotFound(k8s.Get(ctx, pk, &corev1.Secret{})) }).Should(gomega.BeTrue())
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
		wantCondition(g, bad, hsv1.ConditionReady, metav1.ConditionFalse, hsv1.ReasonNoNodesSelected)
	})
}
