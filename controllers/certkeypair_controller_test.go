/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

func tlsSecret(ns, name string, cert, key []byte) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: cert, corev1.TLSPrivateKeyKey: key},
	}
}

// rotate replaces the Secret's data, as cert-manager does on renewal.
func rotate(t *testing.T, s *corev1.Secret, cert, key []byte) {
	t.Helper()
	s.Data = map[string][]byte{corev1.TLSCertKey: cert, corev1.TLSPrivateKeyKey: key}
	if err := k8s.Update(context.Background(), s); err != nil {
		t.Fatalf("update Secret: %v", err)
	}
}

// exportedNotAfter returns the expiry gauge of a CertKeyPair, if the
// series exists.
func exportedNotAfter(t *testing.T, ns, name string) (float64, bool) {
	t.Helper()
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatalf("gather metrics: %v", err)
	}
	for _, f := range families {
		if f.GetName() != "hoststack_certkeypair_not_after_timestamp_seconds" {
			continue
		}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["certkeypair"] == ns+"/"+name {
				return m.GetGauge().GetValue(), true
			}
		}
	}
	return 0, false
}

func TestCertKeyPairController(t *testing.T) {
	needAPIServer(t)
	g := newG(t)
	ctx := context.Background()
	ns := testNamespace(t, "ckp")

	pair := &hsv1.CertKeyPair{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"},
		Spec:       hsv1.CertKeyPairSpec{SecretRef: hsv1.SecretReference{Name: "web-tls"}},
	}
	g.Expect(k8s.Create(ctx, pair)).To(gomega.Succeed())

	t.Run("Secret missing", func(t *testing.T) {
		g := newG(t)
		c := wantCondition(g, pair, hsv1.ConditionReady, metav1.ConditionFalse, hsv1.ReasonSecretNotFound)
		g.Expect(c.Message).To(gomega.ContainSubstring(`no Secret "web-tls" of type kubernetes.io/tls`))
		wantCondition(g, pair, hsv1.ConditionSecretValid, metav1.ConditionFalse, hsv1.ReasonSecretNotFound)
	})

	first := newTestCert(t, certOpts{cn: "web.example", dnsNames: []string{"web.example", "www.web.example"}})
	secret := tlsSecret(ns, "web-tls", first.certPEM, first.keyPEM)
	t.Run("Secret created", func(t *testing.T) {
		g := newG(t)
		g.Expect(k8s.Create(ctx, secret)).To(gomega.Succeed())
		wantCondition(g, pair, hsv1.ConditionReady, metav1.ConditionTrue, hsv1.ReasonValid)
		wantCondition(g, pair, hsv1.ConditionSecretValid, metav1.ConditionTrue, hsv1.ReasonValid)
		g.Expect(pair.Status.Subject).To(gomega.ContainSubstring("CN=web.example"))
		g.Expect(pair.Status.DNSNames).To(gomega.Equal([]string{"web.example", "www.web.example"}))
		g.Expect(pair.Status.FingerprintSHA256).To(gomega.Equal(fingerprintSHA256(first.cert)))
		g.Expect(pair.Status.NotAfter.Time.Unix()).To(gomega.Equal(first.cert.NotAfter.Unix()))
		exported, ok := exportedNotAfter(t, ns, "web")
		g.Expect(ok).To(gomega.BeTrue(), "expiry gauge exported")
		g.Expect(exported).To(gomega.BeEquivalentTo(float64(first.cert.NotAfter.Unix())))
	})

	t.Run("Secret rotated", func(t *testing.T) {
		g := newG(t)
		second := newTestCert(t, certOpts{cn: "web.example", dnsNames: []string{"web.example"}, rsa: true})
		rotate(t, secret, second.certPEM, second.keyPEM)
		g.Eventually(func(g gomega.Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(pair), pair)).To(gomega.Succeed())
			g.Expect(pair.Status.FingerprintSHA256).To(gomega.Equal(fingerprintSHA256(second.cert)))
			g.Expect(pair.Status.DNSNames).To(gomega.Equal([]string{"web.example"}))
		}).Should(gomega.Succeed())
		wantCondition(g, pair, hsv1.ConditionReady, metav1.ConditionTrue, hsv1.ReasonValid)
	})

	other := newTestCert(t, certOpts{cn: "other"})
	expired := newTestCert(t, certOpts{cn: "old", notBefore: time.Now().Add(-48 * time.Hour), notAfter: time.Now().Add(-time.Hour)})
	for _, tt := range []struct {
		name      string
		cert, key []byte
		reason    string
		msg       string
	}{
		{"rotated to a key of another certificate", first.certPEM, other.keyPEM, hsv1.ReasonKeyMismatch, "not the private key"},
		{"rotated to an expired certificate", expired.certPEM, expired.keyPEM, hsv1.ReasonExpired, "expired at"},
		{"rotated to garbage", []byte("not a certificate"), first.keyPEM, hsv1.ReasonInvalidCertificate, "tls.crt"},
		{"rotated to a huge chain", bytes.Repeat([]byte("x"), MaxPEMBytes+1), first.keyPEM, hsv1.ReasonTooLarge, "tls.crt is 65537 bytes"},
		{"rotated back to a good pair", first.certPEM, first.keyPEM, hsv1.ReasonValid, "valid until"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g := newG(t)
			rotate(t, secret, tt.cert, tt.key)
			status := metav1.ConditionFalse
			if tt.reason == hsv1.ReasonValid {
				status = metav1.ConditionTrue
			}
			c := wantCondition(g, pair, hsv1.ConditionReady, status, tt.reason)
			g.Expect(c.Message).To(gomega.ContainSubstring(tt.msg))
		})
	}

	t.Run("Secret deleted", func(t *testing.T) {
		g := newG(t)
		g.Expect(k8s.Delete(ctx, secret)).To(gomega.Succeed())
		wantCondition(g, pair, hsv1.ConditionReady, metav1.ConditionFalse, hsv1.ReasonSecretNotFound)
		g.Expect(pair.Status.Subject).To(gomega.BeEmpty(), "facts of a deleted Secret must not linger")
		g.Expect(pair.Status.NotAfter).To(gomega.BeNil())
		g.Expect(pair.Status.FingerprintSHA256).To(gomega.BeEmpty())
		_, exported := exportedNotAfter(t, ns, "web")
		g.Expect(exported).To(gomega.BeFalse(), "expiry gauge must go with the certificate")
	})

	t.Run("Opaque Secret is not a TLS Secret", func(t *testing.T) {
		g := newG(t)
		opaque := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "opaque"},
			Type:       corev1.SecretTypeOpaque,
			Data:       map[string][]byte{corev1.TLSCertKey: first.certPEM, corev1.TLSPrivateKeyKey: first.keyPEM},
		}
		g.Expect(k8s.Create(ctx, opaque)).To(gomega.Succeed())
		ref := &hsv1.CertKeyPair{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "opaque-ref"},
			Spec:       hsv1.CertKeyPairSpec{SecretRef: hsv1.SecretReference{Name: "opaque"}},
		}
		g.Expect(k8s.Create(ctx, ref)).To(gomega.Succeed())
		// The manager watches the Secrets CertKeyPairs name, whatever
		// their type, so it can say what is wrong.
		c := wantCondition(g, ref, hsv1.ConditionReady, metav1.ConditionFalse, hsv1.ReasonInvalidSecretType)
		g.Expect(c.Message).To(gomega.ContainSubstring(`has type "Opaque", want kubernetes.io/tls`))
		// Nothing is published for the agents.
		g.Consistently(func() bool {
			return apierrors.IsNotFound(k8s.Get(ctx, publishedKey("CertKeyPair", ns, "opaque-ref"), &corev1.Secret{}))
		}).WithTimeout(time.Second).Should(gomega.BeTrue())
	})

	t.Run("secretRef changed", func(t *testing.T) {
		g := newG(t)
		g.Expect(k8s.Create(ctx, tlsSecret(ns, "web-tls-2", other.certPEM, other.keyPEM))).To(gomega.Succeed())
		g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(pair), pair)).To(gomega.Succeed())
		pair.Spec.SecretRef.Name = "web-tls-2"
		g.Expect(k8s.Update(ctx, pair)).To(gomega.Succeed())
		wantCondition(g, pair, hsv1.ConditionReady, metav1.ConditionTrue, hsv1.ReasonValid)
		g.Expect(pair.Status.ObservedGeneration).To(gomega.BeEquivalentTo(2))
		g.Expect(pair.Status.FingerprintSHA256).To(gomega.Equal(fingerprintSHA256(other.cert)))
	})

	t.Run("material published for the agents", func(t *testing.T) {
		g := newG(t)
		g.Eventually(func(g gomega.Gomega) {
			var s corev1.Secret
			g.Expect(k8s.Get(ctx, publishedKey("CertKeyPair", ns, "web"), &s)).To(gomega.Succeed())
			g.Expect(s.Labels).To(gomega.HaveKeyWithValue(hsv1.LabelPublished, "true"))
			g.Expect(s.Annotations).To(gomega.HaveKeyWithValue(hsv1.AnnotationPublishedFor, "CertKeyPair/"+ns+"/web"))
			g.Expect(s.Annotations).To(gomega.HaveKeyWithValue(hsv1.AnnotationPublishedFrom, ns+"/web-tls-2"))
			g.Expect(s.Data).To(gomega.HaveKeyWithValue(corev1.TLSCertKey, other.certPEM))
			g.Expect(s.Data).To(gomega.HaveKeyWithValue(corev1.TLSPrivateKeyKey, other.keyPEM))
		}).Should(gomega.Succeed())
	})

	t.Run("CertKeyPair deleted", func(t *testing.T) {
		g := newG(t)
		g.Expect(k8s.Delete(ctx, pair)).To(gomega.Succeed())
		g.Eventually(func() bool {
			return apierrors.IsNotFound(k8s.Get(ctx, publishedKey("CertKeyPair", ns, "web"), &corev1.Secret{}))
		}).Should(gomega.BeTrue(), "the published copy goes with the CertKeyPair")
		g.Eventually(func() bool { _, ok := exportedNotAfter(t, ns, "web"); return ok }).Should(gomega.BeFalse())
	})
}
