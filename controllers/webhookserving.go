/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
)

// Event reasons of the webhook's certificate, recorded on the
// MutatingWebhookConfiguration.
const (
	ReasonWebhookCertFailed = "WebhookCertificateFailed"
	ReasonWebhookCertReady  = "WebhookCertificateReady"
)

// WebhookServing runs the pod webhook server without ever holding up the
// controllers: a manager runnable of its own (every replica, no leader
// election) that first gets the serving certificate in place (WebhookCerts,
// retried with backoff), then serves, and keeps the certificate renewed.
// Whatever fails — no namespace for the certificate's Secret, no RBAC, a
// server that cannot listen — is reported (an Event on the webhook
// configuration, the hoststack_webhook_certificate_* metrics, and the
// reason in the "webhook" readiness check, which alone fails) and retried,
// while the reconcilers run as if there were no webhook.
type WebhookServing struct {
	// Server is the webhook server; the pod injector is registered on it.
	// The manager must not also run it (never call GetWebhookServer).
	Server webhook.Server
	// Certs, when set, makes and renews the serving certificate; nil when
	// it is provided (cert-manager mounts it in Server's certificate
	// directory).
	Certs *WebhookCerts
	// Events records certificate failures; nil records none.
	Events recorder.EventRecorder
	// RetryMin and RetryMax bound the backoff between failed attempts;
	// zero means 2s and 5m.
	RetryMin, RetryMax time.Duration

	mu      sync.Mutex
	notYet  error // why the webhook does not serve (nil once serving)
	lastErr string
	started bool
}

// NeedLeaderElection is false: every replica serves webhooks.
func (w *WebhookServing) NeedLeaderElection() bool { return false }

// ReadyCheck is the "webhook" readiness check: it fails, with the reason,
// until the server serves with a certificate in place.
func (w *WebhookServing) ReadyCheck(req *http.Request) error {
	w.mu.Lock()
	err, started := w.notYet, w.started
	w.mu.Unlock()
	if err != nil {
		return err
	}
	if !started {
		return errors.New("webhook server not started yet")
	}
	return w.Server.StartedChecker()(req)
}

func (w *WebhookServing) setState(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.notYet = err
}

// Start gets the certificate in place, then serves until ctx ends. It
// returns nil at the end of ctx and never an error: a webhook problem must
// not stop the manager (and with it the controllers).
func (w *WebhookServing) Start(ctx context.Context) error {
	log := logf.FromContext(ctx).WithName("webhook")
	w.setState(errors.New("webhook certificate not in place yet"))
	backoff := wait.Backoff{Duration: w.retryMin(), Factor: 2, Jitter: 0.1, Cap: w.retryMax(), Steps: 1 << 30}
	if w.Certs != nil {
		for {
			err := w.Certs.Ensure(ctx)
			w.report(ctx, err)
			if err == nil {
				break
			}
			log.Error(err, "webhook certificate not in place; the pod webhook does not serve, the controllers run on")
			if !sleep(ctx, backoff.Step()) {
				return nil
			}
		}
		go w.renew(ctx)
	}
	backoff = wait.Backoff{Duration: w.retryMin(), Factor: 2, Jitter: 0.1, Cap: w.retryMax(), Steps: 1 << 30}
	for ctx.Err() == nil {
		w.mu.Lock()
		w.notYet, w.started = nil, true
		w.mu.Unlock()
		err := w.Server.Start(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			err = errors.New("webhook server stopped")
		}
		err = fmt.Errorf("webhook server: %w", err)
		log.Error(err, "the pod webhook does not serve; retrying")
		w.setState(err)
		webhookServeFailures.Inc()
		if !sleep(ctx, backoff.Step()) {
			return nil
		}
	}
	return nil
}

// renew re-checks the certificate every Certs.CheckInterval, reporting
// failures; the server keeps the certificate it has meanwhile.
func (w *WebhookServing) renew(ctx context.Context) {
	interval := w.Certs.CheckInterval
	if interval <= 0 {
		interval = 10 * time.Minute
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			err := w.Certs.Ensure(ctx)
			if ctx.Err() != nil {
				return
			}
			w.report(ctx, err)
			if err != nil {
				logf.FromContext(ctx).WithName("webhook").Error(err, "renewing the webhook certificate")
			}
		}
	}
}

// report publishes the outcome of one certificate check: the metrics
// always, an Event when the outcome (or the error) changed, so a failure
// retried every few seconds does not flood the API server.
func (w *WebhookServing) report(ctx context.Context, err error) {
	msg := ""
	if err != nil {
		webhookCertFailures.Inc()
		webhookCertReady.Set(0)
		msg = err.Error()
	} else {
		webhookCertReady.Set(1)
	}
	w.mu.Lock()
	changed := msg != w.lastErr
	w.lastErr = msg
	if err != nil && !w.started {
		w.notYet = fmt.Errorf("webhook certificate: %w", err)
	}
	w.mu.Unlock()
	if !changed || w.Events == nil || w.Certs == nil {
		return
	}
	cfg := w.Certs.configRef()
	if err != nil {
		w.Events.Eventf(cfg, nil, corev1.EventTypeWarning, ReasonWebhookCertFailed, "EnsureCertificate",
			"the pod webhook's serving certificate (Secret %s/%s) could not be written or renewed: %v; controllers are not affected",
			w.Certs.SecretNamespace, w.Certs.SecretName, err)
		return
	}
	w.Events.Eventf(cfg, nil, corev1.EventTypeNormal, ReasonWebhookCertReady, "EnsureCertificate",
		"the pod webhook's serving certificate (Secret %s/%s) is in place", w.Certs.SecretNamespace, w.Certs.SecretName)
}

// configRef is the object certificate Events are about: the webhook
// configuration, which need not exist (an Event may name a missing object).
func (w *WebhookCerts) configRef() *admissionregv1.MutatingWebhookConfiguration {
	return &admissionregv1.MutatingWebhookConfiguration{
		TypeMeta:   metav1.TypeMeta{APIVersion: admissionregv1.SchemeGroupVersion.String(), Kind: "MutatingWebhookConfiguration"},
		ObjectMeta: metav1.ObjectMeta{Name: w.WebhookConfigName},
	}
}

func (w *WebhookServing) retryMin() time.Duration {
	if w.RetryMin > 0 {
		return w.RetryMin
	}
	return 2 * time.Second
}

func (w *WebhookServing) retryMax() time.Duration {
	if w.RetryMax > 0 {
		return w.RetryMax
	}
	return 5 * time.Minute
}

// sleep waits d or until ctx ends; false when ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
