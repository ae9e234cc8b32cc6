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
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// TestNamedSecretsCachesOnlyNamedOnes: the manager holds the Secrets
// hoststack objects name and no other, sees them change through their
// watches, and stops watching one nobody names any more.
func TestNamedSecretsCachesOnlyNamedOnes(t *testing.T) {
	needAPIServer(t)
	g := newG(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns := testNamespace(t, "named")
	for _, name := range []string{"wanted", "unwanted"} {
		g.Expect(k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
			Data: map[string][]byte{"k": []byte(name)}})).To(gomega.Succeed())
	}
	cs, err := kubernetes.NewForConfig(testEnv.Config)
	g.Expect(err).NotTo(gomega.HaveOccurred())
	n := NewNamedSecrets(cs)
	defer n.Stop()
	events := n.Subscribe()
	wanted := client.ObjectKey{Namespace: ns, Name: "wanted"}
	g.Expect(n.Want(ctx, "CertKeyPair/"+ns+"/a", wanted)).To(gomega.Succeed())
	g.Expect(n.Want(ctx, "CertKeyPair/"+ns+"/b", wanted)).To(gomega.Succeed())
	g.Expect(n.watched()).To(gomega.ConsistOf(wanted))
	s, err := n.Get(wanted)
	g.Expect(err).NotTo(gomega.HaveOccurred())
	g.Expect(string(s.Data["k"])).To(gomega.Equal("wanted"))
	_, err = n.Get(client.ObjectKey{Namespace: ns, Name: "unwanted"})
	g.Expect(err).To(gomega.MatchError(gomega.ContainSubstring("not watched")))

	// A rotation reaches the cache and the subscribers.
	for len(events) > 0 {
		<-events
	}
	s.Data["k"] = []byte("rotated")
	g.Expect(k8s.Update(ctx, s)).To(gomega.Succeed())
	g.Eventually(events).Should(gomega.Receive(gomega.HaveField("Object.GetName()", "wanted")))
	g.Eventually(func() string {
		s, _ := n.Get(wanted)
		return string(s.Data["k"])
	}).Should(gomega.Equal("rotated"))

	// One referrer stops naming it: still watched; the last one: not.
	g.Expect(n.Want(ctx, "CertKeyPair/"+ns+"/a", client.ObjectKey{})).To(gomega.Succeed())
	g.Expect(n.watched()).To(gomega.ConsistOf(wanted))
	g.Expect(n.Want(ctx, "CertKeyPair/"+ns+"/b", client.ObjectKey{Namespace: ns, Name: "missing"})).To(gomega.Succeed())
	g.Expect(n.watched()).To(gomega.ConsistOf(client.ObjectKey{Namespace: ns, Name: "missing"}))
	missing, err := n.Get(client.ObjectKey{Namespace: ns, Name: "missing"})
	g.Expect(err).NotTo(gomega.HaveOccurred())
	g.Expect(missing).To(gomega.BeNil())
}
