/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/onsi/gomega"
	admissionregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// TestManagedWebhookCerts runs the whole managed-certificate path: a
// webhook server loading the certificate WebhookCerts writes, a webhook
// configuration (by url, with failurePolicy Fail so a TLS failure shows)
// whose caBundle WebhookCerts sets, and the API server calling it; then a
// renewal, which the server picks up without a restart.
func TestManagedWebhookCerts(t *testing.T) {
	needAPIServer(t)
	g := newG(t)
	ctx := context.Background()
	// The generated configuration of the suite skips this namespace, so
	// only the webhook of this test can inject its pods.
	nsObj := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "whe2e-",
		Labels: map[string]string{"hoststack.dev/webhook": "disabled"}}}
	g.Expect(k8s.Create(ctx, nsObj)).To(gomega.Succeed())
	ns := nsObj.Name
	g.Expect(k8s.Create(ctx, &hsv1.AppNamespace{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "all"},
		Spec:       hsv1.AppNamespaceSpec{PodSelector: metav1.LabelSelector{}},
	})).To(gomega.Succeed())

	l, err := net.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(gomega.HaveOccurred())
	port := l.Addr().(*net.TCPAddr).Port
	g.Expect(l.Close()).To(gomega.Succeed())

	certs := &WebhookCerts{
		Client: k8s, SecretName: "hoststack-webhook-cert", SecretNamespace: ns,
		ServiceName: "hoststack-webhook", ServiceNamespace: ns, ExtraNames: []string{"127.0.0.1"},
		WebhookConfigName: ns + "-e2e", CertDir: filepath.Join(t.TempDir(), "certs"),
	}
	g.Expect(certs.Ensure(ctx)).To(gomega.Succeed()) // before the server: it loads the files at start

	srv := webhook.NewServer(webhook.Options{Host: "127.0.0.1", Port: port, CertDir: certs.CertDir})
	srv.Register(PodWebhookPath, &webhook.Admission{Handler: &PodInjector{
		Client: k8s, Decoder: admission.NewDecoder(k8s.Scheme())}})
	srvCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Start(srvCtx) }()
	t.Cleanup(func() { stop(); <-done })

	none := admissionregv1.SideEffectClassNone
	cfg := &admissionregv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: certs.WebhookConfigName},
		Webhooks: []admissionregv1.MutatingWebhook{{
			Name:                    "e2e.hoststack.dev",
			AdmissionReviewVersions: []string{"v1"},
			SideEffects:             &none,
			FailurePolicy:           ptr.To(admissionregv1.Fail),
			TimeoutSeconds:          ptr.To[int32](5),
			NamespaceSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}},
			ClientConfig: admissionregv1.WebhookClientConfig{
				URL: ptr.To(fmt.Sprintf("https://127.0.0.1:%d%s", port, PodWebhookPath))},
			Rules: []admissionregv1.RuleWithOperations{{
				Operations: []admissionregv1.OperationType{admissionregv1.Create},
				Rule:       admissionregv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
			}},
		}},
	}
	g.Expect(k8s.Create(ctx, cfg)).To(gomega.Succeed())
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), cfg) })
	// The configuration appeared after the first Ensure: the next one
	// (the periodic check in the manager) sets its caBundle.
	g.Expect(certs.Ensure(ctx)).To(gomega.Succeed())

	// servedCert is the certificate the webhook server presents.
	servedCert := func(g gomega.Gomega) []byte {
		conn, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // only reads the certificate
		g.Expect(err).NotTo(gomega.HaveOccurred())
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].Raw
	}
	fileLeaf := func(g gomega.Gomega) []byte {
		sec := &corev1.Secret{}
		g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: certs.SecretName}, sec)).To(gomega.Succeed())
		leaf, _, err := parseKeyPair(sec.Data[keyCert], sec.Data[keyKey])
		g.Expect(err).NotTo(gomega.HaveOccurred())
		return leaf.Raw
	}
	injected := func(g gomega.Gomega) {
		p := testPod(ns, "p", nil, nil)
		g.Expect(k8s.Create(ctx, p, client.DryRunAll)).To(gomega.Succeed())
		g.Expect(p.Annotations).To(gomega.HaveKeyWithValue(InjectedAnnotation, ns+"/all"))
	}

	g.Eventually(injected).Should(gomega.Succeed(), "the API server calls the webhook, trusting the managed CA")
	first := fileLeaf(g)

	// A renewal (here: one more name to cover, since the API server
	// checks validity on the real clock) is served without a restart, and
	// the API server still trusts it (same CA).
	certs.ExtraNames = append(certs.ExtraNames, "localhost")
	g.Expect(certs.Ensure(ctx)).To(gomega.Succeed())
	renewed := fileLeaf(g)
	g.Expect(renewed).NotTo(gomega.Equal(first))
	g.Eventually(func(g gomega.Gomega) {
		g.Expect(bytes.Equal(servedCert(g), renewed)).To(gomega.BeTrue(), "serving the renewed certificate")
	}).Should(gomega.Succeed())
	g.Eventually(injected).Should(gomega.Succeed())
}
