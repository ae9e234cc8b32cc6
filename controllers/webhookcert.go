/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
)

// WebhookCerts manages the webhook server's serving certificate: its own
// CA and a serving certificate for the webhook Service, kept in a Secret
// (the source of truth, shared by every replica), written to the server's
// certificate directory (controller-runtime's certificate watcher reloads
// them) and published as the caBundle of the MutatingWebhookConfiguration.
// WebhookServing calls Ensure until it succeeds before it starts the
// webhook server (which needs the files), then every CheckInterval on
// every replica, not only the leader, since each serves webhooks.
// Replicas race on the Secret through optimistic concurrency: the loser
// re-reads and adopts the winner's certificates.
type WebhookCerts struct {
	// Client must read from the API server, not a cache: the manager
	// caches only the Secrets CertKeyPairs may name.
	Client client.Client
	// SecretName and SecretNamespace name the Secret holding the
	// certificates (the manager's namespace).
	SecretName, SecretNamespace string
	// ServiceName and ServiceNamespace name the webhook Service; the
	// serving certificate covers its DNS names.
	ServiceName, ServiceNamespace string
	// ExtraNames are more DNS names or IP addresses the serving
	// certificate covers (a webhook called by url, e.g. 127.0.0.1).
	ExtraNames []string
	// WebhookConfigName is the MutatingWebhookConfiguration whose
	// webhooks get the CA bundle.
	WebhookConfigName string
	// CertDir is the webhook server's certificate directory.
	CertDir string
	// CheckInterval between checks once the webhook serves; 0 means 10
	// minutes.
	CheckInterval time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// +kubebuilder:rbac:groups="",resources=secrets,verbs=create,namespace=hoststack-system
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;update,resourceNames=hoststack-webhook-cert,namespace=hoststack-system
// +kubebuilder:rbac:groups=admissionregistration.k8s.io,resources=mutatingwebhookconfigurations,verbs=get;patch,resourceNames=hoststack-pod-injector

// Ensure makes the Secret hold a valid CA and serving certificate
// (regenerating what is missing, invalid or near its end), writes them to
// CertDir and sets the caBundle of the webhook configuration. With
// everything in place it writes nothing.
func (w *WebhookCerts) Ensure(ctx context.Context) error {
	var p webhookPEM
	var err error
	for attempt := 0; ; attempt++ {
		var retry bool
		p, retry, err = w.ensureSecret(ctx)
		if err == nil || !retry || attempt == 4 {
			break
		}
	}
	if err != nil {
		return err
	}
	if err := w.writeFiles(p); err != nil {
		return err
	}
	return w.patchCABundle(ctx, p.CACert)
}

func (w *WebhookCerts) now() time.Time {
	if w.Now != nil {
		return w.Now()
	}
	return time.Now()
}

// ensureSecret returns valid certificates from the Secret, renewing them
// there first if needed. retry says another replica wrote the Secret
// between our read and write.
func (w *WebhookCerts) ensureSecret(ctx context.Context) (webhookPEM, bool, error) {
	log := logf.FromContext(ctx).WithName("webhook-certs")
	key := client.ObjectKey{Namespace: w.SecretNamespace, Name: w.SecretName}
	sec := &corev1.Secret{}
	if err := w.Client.Get(ctx, key, sec); err != nil {
		if !apierrors.IsNotFound(err) {
			return webhookPEM{}, false, fmt.Errorf("get Secret %s: %w", key, err)
		}
		sec = nil
	}
	var have webhookPEM
	if sec != nil {
		have = webhookPEMFrom(sec.Data)
	}
	now := w.now()
	dnsNames := webhookDNSNames(w.ServiceName, w.ServiceNamespace, w.ExtraNames...)
	renew, why := decideCertRenewal(have, dnsNames, now)
	if renew == renewNothing {
		return have, false, nil
	}
	p, err := renewWebhookPEM(have, renew, dnsNames, now)
	if err != nil {
		return webhookPEM{}, false, err
	}
	log.Info("renewing webhook certificates", "secret", key, "renew", renew.String(), "reason", why)
	if sec == nil {
		sec = &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: w.SecretName, Namespace: w.SecretNamespace,
				Labels: map[string]string{"app.kubernetes.io/name": "hoststack", "app.kubernetes.io/managed-by": "hoststack-manager"}},
			Type: corev1.SecretTypeOpaque,
			Data: p.data(),
		}
		err = w.Client.Create(ctx, sec)
	} else {
		sec.Data = p.data()
		err = w.Client.Update(ctx, sec) // resourceVersion: fails if another replica wrote first
	}
	if apierrors.IsAlreadyExists(err) || apierrors.IsConflict(err) {
		return webhookPEM{}, true, fmt.Errorf("write Secret %s: %w", key, err)
	}
	if err != nil {
		return webhookPEM{}, false, fmt.Errorf("write Secret %s: %w", key, err)
	}
	return p, false, nil
}

// writeFiles puts the serving certificate and key (and the CA bundle) into
// CertDir, each by rename so the certificate watcher never reads half a
// file; files already up to date are not touched.
func (w *WebhookCerts) writeFiles(p webhookPEM) error {
	if err := os.MkdirAll(w.CertDir, 0o700); err != nil {
		return fmt.Errorf("webhook certificate directory: %w", err)
	}
	// Key, then certificate: a reload between the two renames finds a
	// mismatched pair, fails and keeps serving the previous one; the
	// second rename triggers the reload of the matching pair.
	for _, f := range []struct {
		name string
		data []byte
	}{{keyKey, p.Key}, {keyCert, p.Cert}, {keyCACert, p.CACert}} {
		path := filepath.Join(w.CertDir, f.name)
		if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, f.data) {
			continue
		} else if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("read %s: %w", path, err)
		}
		tmp, err := os.CreateTemp(w.CertDir, "."+f.name+"-*")
		if err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		_, werr := tmp.Write(f.data)
		cerr := tmp.Close()
		if err := errors.Join(werr, cerr); err != nil {
			_ = os.Remove(tmp.Name())
			return fmt.Errorf("write %s: %w", path, err)
		}
		if err := os.Rename(tmp.Name(), path); err != nil {
			_ = os.Remove(tmp.Name())
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	return nil
}

// patchCABundle sets caBundle on every webhook of the configuration. A
// missing configuration is not an error (it may be installed after the
// manager); the next check patches it.
func (w *WebhookCerts) patchCABundle(ctx context.Context, caBundle []byte) error {
	// Another replica may patch at the same time (the same bundle, since
	// both read it from the Secret): on a conflict, read again.
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cfg := &admissionregv1.MutatingWebhookConfiguration{}
		if err := w.Client.Get(ctx, client.ObjectKey{Name: w.WebhookConfigName}, cfg); err != nil {
			if apierrors.IsNotFound(err) {
				logf.FromContext(ctx).WithName("webhook-certs").Info(
					"MutatingWebhookConfiguration not found; caBundle not set", "name", w.WebhookConfigName)
				return nil
			}
			return fmt.Errorf("get MutatingWebhookConfiguration %s: %w", w.WebhookConfigName, err)
		}
		orig := cfg.DeepCopy()
		changed := false
		for i := range cfg.Webhooks {
			if !bytes.Equal(cfg.Webhooks[i].ClientConfig.CABundle, caBundle) {
				cfg.Webhooks[i].ClientConfig.CABundle = caBundle
				changed = true
			}
		}
		if !changed {
			return nil
		}
		// webhooks is replaced as a whole by a merge patch; the optimistic
		// lock keeps a concurrent edit from being overwritten.
		err := w.Client.Patch(ctx, cfg, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{}))
		if err != nil && !apierrors.IsConflict(err) {
			err = fmt.Errorf("patch caBundle of MutatingWebhookConfiguration %s: %w", w.WebhookConfigName, err)
		}
		return err
	})
}
