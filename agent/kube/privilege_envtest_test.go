package kube

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/onsi/gomega"
	authorizationv1 "k8s.io/api/authorization/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
	"github.com/hoststack/hoststack/internal/serviceaccount"
)

// access asks the API server's authorizer whether sa may verb the
// resource (group "" for core) in namespace, optionally named.
func access(t *testing.T, ctx context.Context, sa, verb, group, resource, namespace, name string) bool {
	t.Helper()
	sar := &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User:   sa,
		Groups: serviceaccount.Groups(sa),
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Verb: verb, Group: group, Resource: resource, Namespace: namespace, Name: name},
	}}
	if err := k8s.Create(ctx, sar); err != nil {
		t.Fatalf("SubjectAccessReview: %v", err)
	}
	return sar.Status.Allowed
}

// TestLeastPrivilege runs the agent and the manager as their service
// accounts under the RBAC and admission policy of config/, and checks each
// denial twice: the authorizer's answer (SubjectAccessReview) and a real
// request that fails.
func TestLeastPrivilege(t *testing.T) {
	needAPIServer(t)
	g := gomega.NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	runs++
	nodeA, nodeB := fmt.Sprintf("priv-a-%d", runs), fmt.Sprintf("priv-b-%d", runs)
	teamA, teamB := fmt.Sprintf("priv-team-a-%d", runs), fmt.Sprintf("priv-team-b-%d", runs)
	for _, ns := range []string{teamA, teamB} {
		g.Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(gomega.Succeed())
	}
	t.Cleanup(func() {
		_ = k8s.DeleteAllOf(context.Background(), &hsv1.CertKeyPair{}, client.InNamespace(teamA))
	})
	for _, n := range []string{nodeA, nodeB} {
		g.Expect(k8s.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}})).To(gomega.Succeed())
	}
	// Team A: a TLS Secret a CertKeyPair names, and one nothing names.
	// Team B: a TLS Secret of another namespace.
	tls := func(ns, name string) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Type: corev1.SecretTypeTLS,
			Data: map[string][]byte{corev1.TLSCertKey: []byte("cert"), corev1.TLSPrivateKeyKey: []byte("key")}}
	}
	for _, s := range []*corev1.Secret{tls(teamA, "named"), tls(teamA, "unreferenced"), tls(teamB, "other-team")} {
		g.Expect(k8s.Create(ctx, s)).To(gomega.Succeed())
	}
	createYAML(t, ctx, `apiVersion: hoststack.dev/v1alpha1
kind: CertKeyPair
metadata: {name: web, namespace: `+teamA+`}
spec: {secretRef: {name: named}}
`)

	agentA, err := client.New(asServiceAccount(testEnv.Config, agentSA, nodeA), client.Options{Scheme: k8s.Scheme()})
	g.Expect(err).NotTo(gomega.HaveOccurred())
	manager, err := client.New(asServiceAccount(testEnv.Config, managerSA, ""), client.Options{Scheme: k8s.Scheme()})
	g.Expect(err).NotTo(gomega.HaveOccurred())

	t.Run("agents read no team Secret", func(t *testing.T) {
		g := gomega.NewWithT(t)
		for _, c := range []struct{ verb, ns, name string }{
			{"get", teamA, "named"},        // named by a CertKeyPair: the agent gets the published copy instead
			{"get", teamA, "unreferenced"}, // named by nothing
			{"get", teamB, "other-team"},   // a TLS Secret of another namespace
			{"list", "", ""},               // all Secrets
			{"watch", teamA, ""},
		} {
			g.Expect(access(t, ctx, agentSA, c.verb, "", "secrets", c.ns, c.name)).To(gomega.BeFalse(), "agent may %s Secret %s/%s", c.verb, c.ns, c.name)
		}
		for _, key := range []client.ObjectKey{{Namespace: teamA, Name: "named"}, {Namespace: teamA, Name: "unreferenced"}, {Namespace: teamB, Name: "other-team"}} {
			err := agentA.Get(ctx, key, &corev1.Secret{})
			g.Expect(apierrors.IsForbidden(err)).To(gomega.BeTrue(), "agent GET Secret %s: %v", key, err)
		}
		g.Expect(apierrors.IsForbidden(agentA.List(ctx, &corev1.SecretList{}))).To(gomega.BeTrue())

		// What it reads instead: the copy the manager published, with
		// only the keys the agent uses; nothing for an unreferenced Secret.
		g.Expect(access(t, ctx, agentSA, "list", "", "secrets", DefaultAgentNamespace, "")).To(gomega.BeTrue())
		g.Eventually(func(g gomega.Gomega) {
			var list corev1.SecretList
			g.Expect(agentA.List(ctx, &list, client.InNamespace(DefaultAgentNamespace))).To(gomega.Succeed())
			var from []string
			for _, s := range list.Items {
				from = append(from, s.Annotations[hsv1.AnnotationPublishedFrom])
			}
			g.Expect(from).To(gomega.ContainElement(teamA + "/named"))
			g.Expect(from).NotTo(gomega.ContainElement(teamA + "/unreferenced"))
			g.Expect(from).NotTo(gomega.ContainElement(teamB + "/other-team"))
		}).WithTimeout(20 * time.Second).WithPolling(50 * time.Millisecond).Should(gomega.Succeed())
	})

	t.Run("an agent writes only its own node's SessionNode and Lease", func(t *testing.T) {
		g := gomega.NewWithT(t)
		apply := func(c client.Client, name string, status bool) error {
			u := &unstructured.Unstructured{}
			u.SetGroupVersionKind(hsv1.GroupVersion.WithKind("SessionNode"))
			u.SetName(name)
			if status {
				u.Object["status"] = map[string]any{"engine": map[string]any{"state": "Running"}}
				return c.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner("test"), client.ForceOwnership)
			}
			return c.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner("test"), client.ForceOwnership)
		}
		// RBAC lets every agent write SessionNodes (it cannot name "its
		// own"); the admission policy is what refuses another node's.
		g.Expect(access(t, ctx, agentSA, "patch", hsv1.GroupVersion.Group, "sessionnodes", "", nodeB)).To(gomega.BeTrue())
		g.Expect(apply(agentA, nodeA, false)).To(gomega.Succeed())
		g.Expect(apply(agentA, nodeA, true)).To(gomega.Succeed())
		err := apply(agentA, nodeB, false)
		g.Expect(apierrors.IsForbidden(err)).To(gomega.BeTrue(), "create another node's SessionNode: %v", err)
		g.Expect(err.Error()).To(gomega.ContainSubstring("the hoststack agent of node " + nodeA + " may not write sessionnodes " + nodeB))
		// The other node's SessionNode exists (its own agent made it):
		// its status cannot be written either.
		g.Expect(apply(asAgentOf(t, nodeB), nodeB, false)).To(gomega.Succeed())
		err = apply(agentA, nodeB, true)
		g.Expect(apierrors.IsForbidden(err)).To(gomega.BeTrue(), "write another node's SessionNode status: %v", err)
		// A token bound to no node writes nothing.
		err = apply(agentUser(t, ctx), nodeA, true)
		g.Expect(apierrors.IsForbidden(err)).To(gomega.BeTrue(), "unbound token: %v", err)
		g.Expect(err.Error()).To(gomega.ContainSubstring("bound to a node"))

		lease := func(name string) *coordinationv1.Lease {
			return &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: DefaultAgentNamespace, Name: name},
				Spec: coordinationv1.LeaseSpec{HolderIdentity: ptr.To(name), LeaseDurationSeconds: ptr.To[int32](40), RenewTime: ptr.To(metav1.NowMicro())}}
		}
		err = agentA.Create(ctx, lease(nodeB))
		g.Expect(apierrors.IsForbidden(err)).To(gomega.BeTrue(), "create another node's Lease: %v", err)
		g.Expect(agentA.Create(ctx, lease(nodeA))).To(gomega.Succeed())
		// Nor may an agent write the Leases of other namespaces (the
		// manager's leader election).
		g.Expect(access(t, ctx, agentSA, "update", "coordination.k8s.io", "leases", "hoststack-system", "")).To(gomega.BeFalse())
		// Nor delete any SessionNode.
		g.Expect(access(t, ctx, agentSA, "delete", hsv1.GroupVersion.Group, "sessionnodes", "", nodeA)).To(gomega.BeFalse())
	})

	t.Run("the manager writes Secrets only in the agent namespace", func(t *testing.T) {
		g := gomega.NewWithT(t)
		// It reads the Secrets hoststack objects name (as cert-manager
		// reads the Secrets its objects name); it writes none of them.
		g.Expect(access(t, ctx, managerSA, "get", "", "secrets", teamA, "named")).To(gomega.BeTrue())
		for _, verb := range []string{"create", "update", "patch", "delete"} {
			g.Expect(access(t, ctx, managerSA, verb, "", "secrets", teamA, "unreferenced")).To(gomega.BeFalse(), "manager may %s a team Secret", verb)
			g.Expect(access(t, ctx, managerSA, verb, "", "secrets", teamB, "other-team")).To(gomega.BeFalse(), "manager may %s a team Secret", verb)
		}
		g.Expect(access(t, ctx, managerSA, "create", "", "secrets", DefaultAgentNamespace, "")).To(gomega.BeTrue())
		s := tls(teamB, "planted")
		err := manager.Create(ctx, s)
		g.Expect(apierrors.IsForbidden(err)).To(gomega.BeTrue(), "manager creates a Secret in a team namespace: %v", err)
		var other corev1.Secret
		g.Expect(manager.Get(ctx, client.ObjectKey{Namespace: teamB, Name: "other-team"}, &other)).To(gomega.Succeed())
		other.Data["tls.key"] = []byte("replaced")
		err = manager.Update(ctx, &other)
		g.Expect(apierrors.IsForbidden(err)).To(gomega.BeTrue(), "manager updates a team Secret: %v", err)
		// And it writes no workload, RBAC or admission object.
		for _, r := range []struct{ group, resource string }{{"", "pods"}, {"rbac.authorization.k8s.io", "clusterrolebindings"}, {"admissionregistration.k8s.io", "validatingadmissionpolicies"}} {
			g.Expect(access(t, ctx, managerSA, "create", r.group, r.resource, teamA, "")).To(gomega.BeFalse(), "manager may create %s", r.resource)
		}
	})
}

// asAgentOf returns a client acting as the agent of node.
func asAgentOf(t *testing.T, node string) client.Client {
	t.Helper()
	c, err := client.New(asServiceAccount(testEnv.Config, agentSA, node), client.Options{Scheme: k8s.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}
