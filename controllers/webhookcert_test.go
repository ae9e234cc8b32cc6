/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"crypto/x509"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/onsi/gomega"
	admissionregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// neverCalledWebhook creates a MutatingWebhookConfiguration like ours
// whose namespaceSelector matches no namespace, so it never intercepts
// the other tests' pods.
func neverCalledWebhook(t *testing.T, name, serviceNS string) {
	t.Helper()
	none := admissionregv1.SideEffectClassNone
	cfg := &admissionregv1.MutatingWebhookConfiguration{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Webhooks: []admissionregv1.MutatingWebhook{{
			Name:                    "never.hoststack.dev",
			AdmissionReviewVersions: []string{"v1"},
			SideEffects:             &none,
			FailurePolicy:           ptr.To(admissionregv1.Ignore),
			NamespaceSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"hoststack.dev/test": "never"}},
			ClientConfig: admissionregv1.WebhookClientConfig{Service: &admissionregv1.ServiceReference{
				Name: "hoststack-webhook", Namespace: serviceNS, Path: ptr.To(PodWebhookPath)}},
			Rules: []admissionregv1.RuleWithOperations{{
				Operations: []admissionregv1.OperationType{admissionregv1.Create},
				Rule:       admissionregv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
			}},
		}},
	}
	if err := k8s.Create(context.Background(), cfg); err != nil {
		t.Fatalf("create MutatingWebhookConfiguration: %v", err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), cfg) })
}

func TestWebhookCerts(t *testing.T) {
	needAPIServer(t)
	ctx := context.Background()
	ns := testNamespace(t, "whcert")
	cfgName := ns + "-injector"
	neverCalledWebhook(t, cfgName, ns)
	now := time.Now()
	newCerts := func(dir string) *WebhookCerts {
		return &WebhookCerts{
			Client: k8s, SecretName: "hoststack-webhook-cert", SecretNamespace: ns,
			ServiceName: "hoststack-webhook", ServiceNamespace: ns,
			WebhookConfigName: cfgName, CertDir: dir,
			Now: func() time.Time { return now },
		}
	}
	w := newCerts(filepath.Join(t.TempDir(), "certs"))

	type state struct {
		secret, config            string // resourceVersions
		ca, cert, bundle          []byte
		fileCert, fileKey, fileCA []byte
		modCert, modKey           time.Time
	}
	read := func(g gomega.Gomega, w *WebhookCerts) state {
		var s state
		sec := &corev1.Secret{}
		g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: w.SecretName}, sec)).To(gomega.Succeed())
		cfg := &admissionregv1.MutatingWebhookConfiguration{}
		g.Expect(k8s.Get(ctx, client.ObjectKey{Name: cfgName}, cfg)).To(gomega.Succeed())
		s.secret, s.config = sec.ResourceVersion, cfg.ResourceVersion
		s.ca, s.cert, s.bundle = sec.Data[keyCACert], sec.Data[keyCert], cfg.Webhooks[0].ClientConfig.CABundle
		var err error
		for _, f := range []struct {
			name string
			data *[]byte
			mod  *time.Time
		}{{keyCert, &s.fileCert, &s.modCert}, {keyKey, &s.fileKey, &s.modKey}, {keyCACert, &s.fileCA, nil}} {
			p := filepath.Join(w.CertDir, f.name)
			*f.data, err = os.ReadFile(p)
			g.Expect(err).NotTo(gomega.HaveOccurred())
			if f.mod != nil {
				fi, err := os.Stat(p)
				g.Expect(err).NotTo(gomega.HaveOccurred())
				*f.mod = fi.ModTime()
			}
		}
		g.Expect(s.fileCert).To(gomega.Equal(s.cert), "tls.crt file and Secret")
		g.Expect(s.fileKey).To(gomega.Equal(sec.Data[keyKey]), "tls.key file and Secret")
		g.Expect(s.fileCA).To(gomega.Equal(s.ca), "ca.crt file and Secret")
		g.Expect(s.bundle).To(gomega.Equal(s.ca), "caBundle and Secret")
		return s
	}

	var first state
	t.Run("first run creates the Secret, files and caBundle", func(t *testing.T) {
		g := newG(t)
		g.Expect(w.Ensure(ctx)).To(gomega.Succeed())
		first = read(g, w)
		leaf, _, err := parseKeyPair(first.fileCert, first.fileKey)
		g.Expect(err).NotTo(gomega.HaveOccurred())
		roots := x509.NewCertPool()
		g.Expect(roots.AppendCertsFromPEM(first.bundle)).To(gomega.BeTrue())
		_, err = leaf.Verify(x509.VerifyOptions{DNSName: "hoststack-webhook." + ns + ".svc", Roots: roots})
		g.Expect(err).NotTo(gomega.HaveOccurred())
	})

	t.Run("rerun with valid certificates changes nothing", func(t *testing.T) {
		g := newG(t)
		g.Expect(w.Ensure(ctx)).To(gomega.Succeed())
		g.Expect(read(g, w)).To(gomega.Equal(first))
	})

	t.Run("another replica adopts the stored certificates", func(t *testing.T) {
		g := newG(t)
		other := newCerts(t.TempDir())
		g.Expect(other.Ensure(ctx)).To(gomega.Succeed())
		s := read(g, other)
		g.Expect(s.secret).To(gomega.Equal(first.secret))
		g.Expect(s.fileCert).To(gomega.Equal(first.fileCert))
	})

	t.Run("caBundle reset by a re-apply is patched back", func(t *testing.T) {
		g := newG(t)
		cfg := &admissionregv1.MutatingWebhookConfiguration{}
		g.Expect(k8s.Get(ctx, client.ObjectKey{Name: cfgName}, cfg)).To(gomega.Succeed())
		cfg.Webhooks[0].ClientConfig.CABundle = nil
		g.Expect(k8s.Update(ctx, cfg)).To(gomega.Succeed())
		g.Expect(w.Ensure(ctx)).To(gomega.Succeed())
		s := read(g, w)
		g.Expect(s.secret).To(gomega.Equal(first.secret))
		first.config = s.config
	})

	t.Run("near the end of the serving certificate only it is renewed", func(t *testing.T) {
		g := newG(t)
		now = now.Add(webhookServingLifetime - 10*24*time.Hour)
		g.Expect(w.Ensure(ctx)).To(gomega.Succeed())
		s := read(g, w)
		g.Expect(s.secret).NotTo(gomega.Equal(first.secret))
		g.Expect(s.cert).NotTo(gomega.Equal(first.cert))
		g.Expect(s.ca).To(gomega.Equal(first.ca))
		g.Expect(s.config).To(gomega.Equal(first.config), "caBundle untouched")
	})

	t.Run("replicas racing on a missing Secret agree", func(t *testing.T) {
		g := newG(t)
		a, b := newCerts(t.TempDir()), newCerts(t.TempDir())
		a.SecretName, b.SecretName = "raced", "raced"
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, c := range []*WebhookCerts{a, b} {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = c.Ensure(ctx) }()
		}
		wg.Wait()
		g.Expect(errs).To(gomega.HaveEach(gomega.Succeed()))
		sa, sb := read(g, a), read(g, b)
		g.Expect(sa.fileCert).To(gomega.Equal(sb.fileCert))
		g.Expect(sa.fileKey).To(gomega.Equal(sb.fileKey))
	})
}
