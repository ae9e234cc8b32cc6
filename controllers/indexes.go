/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"fmt"

	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// Cache field indexes: they turn "which objects refer to this one?" into a
// cache lookup, so a watch on the referenced kind can enqueue exactly the
// referrers.
const (
	// indexSecretRef: CertKeyPair by spec.secretRef.name.
	indexSecretRef = "spec.secretRef.name"
	// indexAppNamespaceSecretRef: AppNamespace by spec.secretRef.name.
	indexAppNamespaceSecretRef = "appnamespace.spec.secretRef.name"
	// indexAppNamespaceRef: SessionRule by spec.appNamespaceRef.name.
	indexAppNamespaceRef = "spec.appNamespaceRef.name"
	// indexServedAppNamespaces: SessionNode by "namespace/name" of every
	// AppNamespace it reports.
	indexServedAppNamespaces = "status.appNamespaces"
)

// appNamespaceKey is the value indexServedAppNamespaces stores.
func appNamespaceKey(namespace, name string) string { return namespace + "/" + name }

// setupIndexes registers the field indexes the reconcilers use.
func setupIndexes(ctx context.Context, mgr manager.Manager) error {
	idx := mgr.GetFieldIndexer()
	if err := idx.IndexField(ctx, &hsv1.CertKeyPair{}, indexSecretRef, func(o client.Object) []string {
		return []string{o.(*hsv1.CertKeyPair).Spec.SecretRef.Name}
	}); err != nil {
		return fmt.Errorf("index CertKeyPair %s: %w", indexSecretRef, err)
	}
	if err := idx.IndexField(ctx, &hsv1.AppNamespace{}, indexAppNamespaceSecretRef, func(o client.Object) []string {
		if ref := o.(*hsv1.AppNamespace).Spec.SecretRef; ref != nil {
			return []string{ref.Name}
		}
		return nil
	}); err != nil {
		return fmt.Errorf("index AppNamespace %s: %w", indexAppNamespaceSecretRef, err)
	}
	if err := idx.IndexField(ctx, &hsv1.SessionRule{}, indexAppNamespaceRef, func(o client.Object) []string {
		return []string{o.(*hsv1.SessionRule).Spec.AppNamespaceRef.Name}
	}); err != nil {
		return fmt.Errorf("index SessionRule %s: %w", indexAppNamespaceRef, err)
	}
	if err := idx.IndexField(ctx, &hsv1.SessionNode{}, indexServedAppNamespaces, func(o client.Object) []string {
		entries := o.(*hsv1.SessionNode).Status.AppNamespaces
		keys := make([]string, 0, len(entries))
		for _, e := range entries {
			keys = append(keys, appNamespaceKey(e.Namespace, e.Name))
		}
		return keys
	}); err != nil {
		return fmt.Errorf("index SessionNode %s: %w", indexServedAppNamespaces, err)
	}
	return nil
}
