/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"fmt"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// NewScheme returns a scheme with the built-in kinds and hoststack.dev.
func NewScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, fmt.Errorf("add client-go kinds: %w", err)
	}
	if err := hsv1.AddToScheme(s); err != nil {
		return nil, fmt.Errorf("add %s kinds: %w", hsv1.GroupVersion, err)
	}
	return s, nil
}

// CacheOptions narrows what the manager caches: of Secrets only the copies
// it publishes in agentNamespace (the Secrets hoststack objects name are
// watched one by one, NamedSecrets; caching every Secret of the cluster
// would cost memory and widen what a compromised manager holds), and of
// Leases only the agents' in agentNamespace. defaultNamespaces, when not
// empty, limits the rest of the cache (and so the manager) to those
// namespaces.
func CacheOptions(agentNamespace string, defaultNamespaces ...string) cache.Options {
	if agentNamespace == "" {
		agentNamespace = DefaultAgentNamespace
	}
	opts := cache.Options{
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Secret{}: {
				Namespaces: map[string]cache.Config{agentNamespace: {}},
				Label:      labels.SelectorFromSet(labels.Set{hsv1.LabelPublished: "true"}),
			},
			&coordinationv1.Lease{}: {Namespaces: map[string]cache.Config{agentNamespace: {}}},
		},
	}
	if len(defaultNamespaces) > 0 {
		opts.DefaultNamespaces = map[string]cache.Config{}
		for _, ns := range defaultNamespaces {
			opts.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	return opts
}

// Options tune the reconcilers.
type Options struct {
	// MaxConcurrentReconciles per controller; 0 means controller-runtime's
	// default of 1.
	MaxConcurrentReconciles int
	// PodWebhook, when set, is the server the pod injector
	// (PodWebhookPath) is served by; Setup runs it (WebhookServing), not
	// the manager: the manager's own webhook server must stay unused.
	PodWebhook webhook.Server
	// WebhookCerts, when set, makes and renews PodWebhook's serving
	// certificate; nil when it is provided (cert-manager).
	WebhookCerts *WebhookCerts
	// Namespaces the manager watches (its cache's DefaultNamespaces);
	// empty means all. The pod webhook injects only pods of these.
	Namespaces []string
	// AgentNamespace is where the agents renew their Leases; empty means
	// DefaultAgentNamespace. It must match CacheOptions'.
	AgentNamespace string
}

// Events: the webhook's certificate failures, pods not injected.
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Setup registers the field indexes, every reconciler and, when asked,
// the pod webhook with mgr.
func Setup(ctx context.Context, mgr manager.Manager, opts Options) error {
	if err := setupIndexes(ctx, mgr); err != nil {
		return err
	}
	ctrlOpts := controller.Options{MaxConcurrentReconciles: opts.MaxConcurrentReconciles}
	c := mgr.GetClient()
	agentNS := opts.AgentNamespace
	if agentNS == "" {
		agentNS = DefaultAgentNamespace
	}
	cs, err := kubernetes.NewForConfigAndClient(mgr.GetConfig(), mgr.GetHTTPClient())
	if err != nil {
		return fmt.Errorf("clientset: %w", err)
	}
	secrets := NewNamedSecrets(cs)
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		<-ctx.Done()
		secrets.Stop()
		return nil
	})); err != nil {
		return err
	}
	pub := &publisher{c: c, namespace: agentNS}
	if err := (&CertKeyPairReconciler{Client: c, Secrets: secrets, publish: pub}).SetupWithManager(mgr, ctrlOpts); err != nil {
		return fmt.Errorf("set up CertKeyPair controller: %w", err)
	}
	if err := (&SessionRuleReconciler{Client: c}).SetupWithManager(mgr, ctrlOpts); err != nil {
		return fmt.Errorf("set up SessionRule controller: %w", err)
	}
	if err := (&AppNamespaceReconciler{Client: c, Secrets: secrets, publish: pub, Events: mgr.GetEventRecorder("hoststack-manager")}).SetupWithManager(mgr, ctrlOpts); err != nil {
		return fmt.Errorf("set up AppNamespace controller: %w", err)
	}
	if err := (&SessionNodeLivenessReconciler{Client: c, AgentNamespace: agentNS}).SetupWithManager(mgr, ctrlOpts); err != nil {
		return fmt.Errorf("set up SessionNode liveness controller: %w", err)
	}
	if opts.PodWebhook != nil {
		opts.PodWebhook.Register(PodWebhookPath, &webhook.Admission{Handler: &PodInjector{
			Client:     mgr.GetClient(),
			Decoder:    admission.NewDecoder(mgr.GetScheme()),
			Namespaces: opts.Namespaces,
		}})
		ws := &WebhookServing{Server: opts.PodWebhook, Certs: opts.WebhookCerts,
			Events: mgr.GetEventRecorder("hoststack-manager")}
		if err := mgr.Add(ws); err != nil {
			return fmt.Errorf("add pod webhook: %w", err)
		}
		// Its own readiness check: a webhook without a certificate says
		// why there, and nothing else waits for it.
		if err := mgr.AddReadyzCheck("webhook", ws.ReadyCheck); err != nil {
			return fmt.Errorf("add webhook readyz check: %w", err)
		}
	}
	return nil
}
