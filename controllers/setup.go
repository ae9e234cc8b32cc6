/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/manager"

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

// CacheOptions narrows what the manager caches: of all Secrets, only those
// of type kubernetes.io/tls, the only ones a CertKeyPair may reference.
// Caching every Secret of the cluster would cost memory and widen what a
// compromised manager holds. defaultNamespaces, when not empty, limits
// the whole cache (and so the manager) to those namespaces.
func CacheOptions(defaultNamespaces ...string) cache.Options {
	opts := cache.Options{
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Secret{}: {Field: fields.OneTermEqualSelector("type", string(corev1.SecretTypeTLS))},
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
	// PodWebhook registers the pod injector (PodWebhookPath) with the
	// manager's webhook server.
	PodWebhook bool
	// Namespaces the manager watches (its cache's DefaultNamespaces);
	// empty means all. The pod webhook injects only pods of these.
	Namespaces []string
}

// Setup registers the field indexes, every reconciler and, when asked,
// the pod webhook with mgr.
func Setup(ctx context.Context, mgr manager.Manager, opts Options) error {
	if err := setupIndexes(ctx, mgr); err != nil {
		return err
	}
	ctrlOpts := controller.Options{MaxConcurrentReconciles: opts.MaxConcurrentReconciles}
	c := mgr.GetClient()
	if err := (&CertKeyPairReconciler{Client: c}).SetupWithManager(mgr, ctrlOpts); err != nil {
		return fmt.Errorf("set up CertKeyPair controller: %w", err)
	}
	if err := (&SessionRuleReconciler{Client: c}).SetupWithManager(mgr, ctrlOpts); err != nil {
		return fmt.Errorf("set up SessionRule controller: %w", err)
	}
	if err := (&AppNamespaceReconciler{Client: c}).SetupWithManager(mgr, ctrlOpts); err != nil {
		return fmt.Errorf("set up AppNamespace controller: %w", err)
	}
	if opts.PodWebhook {
		setupPodWebhook(mgr, opts.Namespaces)
	}
	return nil
}
