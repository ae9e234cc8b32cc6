package kube

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/onsi/gomega"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// TestAgentLeaseLiveness: the agent renews its node Lease; killed with
// SIGKILL (no chance to say goodbye; its SessionNode still says Running),
// the manager stops counting the node for its AppNamespace within the
// Lease duration. The SessionNode carries an owner reference to its Node
// that holds, and goes when the Node goes.
func TestAgentLeaseLiveness(t *testing.T) {
	needAPIServer(t)
	g := gomega.NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	runs++
	nodeName, ns := fmt.Sprintf("live-node-%d", runs), fmt.Sprintf("live-team-%d", runs)
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName}}
	g.Expect(k8s.Create(ctx, node)).To(gomega.Succeed())
	g.Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(gomega.Succeed())
	t.Cleanup(func() { _ = k8s.DeleteAllOf(context.Background(), &hsv1.AppNamespace{}, client.InNamespace(ns)) })
	createYAML(t, ctx, `apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: web, namespace: `+ns+`}
spec:
  podSelector: {matchLabels: {app: web}}
`)
	anKey := client.ObjectKey{Namespace: ns, Name: "web"}

	// Before any agent: nothing serves it, and Ready says so.
	an := &hsv1.AppNamespace{}
	g.Eventually(func(g gomega.Gomega) {
		g.Expect(k8s.Get(ctx, anKey, an)).To(gomega.Succeed())
		c := meta.FindStatusCondition(an.Status.Conditions, hsv1.ConditionReady)
		g.Expect(c).NotTo(gomega.BeNil())
		g.Expect(c.Status).To(gomega.Equal(metav1.ConditionFalse))
		g.Expect(c.Reason).To(gomega.Equal(hsv1.ReasonNoNodesSelected))
	}).WithTimeout(20 * time.Second).WithPolling(50 * time.Millisecond).Should(gomega.Succeed())

	const leaseDuration = 4 * time.Second
	ap := startAgent(t, nodeName, "--lease-duration", leaseDuration.String(), "--agent-namespace", DefaultAgentNamespace)
	g.Eventually(func(g gomega.Gomega) {
		g.Expect(k8s.Get(ctx, anKey, an)).To(gomega.Succeed())
		g.Expect(an.Status.ReadyNodes).To(gomega.BeEquivalentTo(1))
		c := meta.FindStatusCondition(an.Status.Conditions, hsv1.ConditionReady)
		g.Expect(c).NotTo(gomega.BeNil())
		g.Expect(c.Status).To(gomega.Equal(metav1.ConditionTrue), c.Message)
	}).WithTimeout(30*time.Second).WithPolling(50*time.Millisecond).Should(gomega.Succeed(), "agent output:\n%s", ap.logs)

	var lease coordinationv1.Lease
	g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: DefaultAgentNamespace, Name: nodeName}, &lease)).To(gomega.Succeed())
	g.Expect(*lease.Spec.LeaseDurationSeconds).To(gomega.BeEquivalentTo(4))
	g.Expect(*lease.Spec.HolderIdentity).To(gomega.Equal(nodeName))

	var sn hsv1.SessionNode
	g.Expect(k8s.Get(ctx, client.ObjectKey{Name: nodeName}, &sn)).To(gomega.Succeed())
	g.Expect(sn.OwnerReferences).To(gomega.ConsistOf(gomega.And(
		gomega.HaveField("APIVersion", "v1"), gomega.HaveField("Kind", "Node"),
		gomega.HaveField("Name", nodeName), gomega.HaveField("UID", node.UID))))

	// SIGKILL: the agent writes nothing more, its SessionNode keeps
	// saying Running.
	g.Expect(ap.cmd.Process.Signal(syscall.SIGKILL)).To(gomega.Succeed())
	killed := time.Now()
	g.Expect(ap.wait(ctx)).To(gomega.HaveOccurred())
	var gone time.Duration
	g.Eventually(func(g gomega.Gomega) {
		g.Expect(k8s.Get(ctx, anKey, an)).To(gomega.Succeed())
		g.Expect(an.Status.ReadyNodes).To(gomega.BeZero())
		g.Expect(an.Status.SelectedNodes).To(gomega.BeZero())
		c := meta.FindStatusCondition(an.Status.Conditions, hsv1.ConditionReady)
		g.Expect(c.Status).To(gomega.Equal(metav1.ConditionFalse))
		g.Expect(c.Reason).To(gomega.Equal(hsv1.ReasonNoNodesSelected))
		g.Expect(c.Message).To(gomega.ContainSubstring(nodeName + ": " + hsv1.ReasonLeaseExpired))
		gone = time.Since(killed)
	}).WithTimeout(3 * leaseDuration).WithPolling(50 * time.Millisecond).Should(gomega.Succeed())
	t.Logf("the AppNamespace stopped counting the killed node after %s (Lease duration %s)", gone.Round(time.Millisecond), leaseDuration)
	// Within the Lease duration, give or take the watch latency.
	g.Expect(gone).To(gomega.BeNumerically("<", leaseDuration+500*time.Millisecond))

	g.Expect(k8s.Get(ctx, client.ObjectKey{Name: nodeName}, &sn)).To(gomega.Succeed())
	g.Expect(sn.Status.Engine.State).To(gomega.Equal(hsv1.EngineRunning), "the dead agent's last word")
	serving := meta.FindStatusCondition(sn.Status.Conditions, hsv1.ConditionServing)
	g.Expect(serving).NotTo(gomega.BeNil())
	g.Expect(serving.Status).To(gomega.Equal(metav1.ConditionFalse))
	g.Expect(serving.Reason).To(gomega.Equal(hsv1.ReasonLeaseExpired))

	// The Node is deleted: its SessionNode goes with it.
	g.Expect(k8s.Delete(ctx, node)).To(gomega.Succeed())
	g.Eventually(func() bool {
		return apierrors.IsNotFound(k8s.Get(ctx, client.ObjectKey{Name: nodeName}, &hsv1.SessionNode{}))
	}).WithTimeout(20 * time.Second).WithPolling(50 * time.Millisecond).Should(gomega.BeTrue())
}
