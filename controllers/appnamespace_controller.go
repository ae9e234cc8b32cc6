/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"fmt"

	kerrors "k8s.io/apimachinery/pkg/util/errors"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// AppNamespaceReconciler checks what the schema cannot about an
// AppNamespace and aggregates the SessionNode reports into its status.
type AppNamespaceReconciler struct {
	client.Client
}

// +kubebuilder:rbac:groups=hoststack.dev,resources=appnamespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=hoststack.dev,resources=appnamespaces/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=hoststack.dev,resources=sessionnodes,verbs=get;list;watch

// Reconcile evaluates one AppNamespace and patches its status once.
func (r *AppNamespaceReconciler) Reconcile(ctx context.Context, req ctrl.Request) (_ ctrl.Result, retErr error) {
	an := &hsv1.AppNamespace{}
	if err := r.Get(ctx, req.NamespacedName, an); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	before := an.DeepCopy()
	defer func() {
		if err := patchStatusIfChanged(ctx, r.Client, before, an, before.Status, an.Status); err != nil {
			retErr = kerrors.NewAggregate([]error{retErr, err})
		}
	}()

	var nodes hsv1.SessionNodeList
	if err := r.List(ctx, &nodes, client.MatchingFields{
		indexServedAppNamespaces: appNamespaceKey(an.Namespace, an.Name)}); err != nil {
		return ctrl.Result{}, fmt.Errorf("list SessionNodes serving %s: %w", req.NamespacedName, err)
	}
	setAppNamespaceStatus(an,
		validateAppNamespace(&an.Spec),
		aggregateNodes(an.Namespace, an.Name, an.Generation, nodes.Items))
	return ctrl.Result{}, nil
}

// SetupWithManager watches AppNamespaces and the SessionNodes that report
// them.
func (r *AppNamespaceReconciler) SetupWithManager(mgr ctrl.Manager, opts controller.Options) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("appnamespace").
		For(&hsv1.AppNamespace{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&hsv1.SessionNode{}, handler.EnqueueRequestsFromMapFunc(appNamespacesOfNode)).
		WithOptions(opts).
		Complete(r)
}

// appNamespacesOfNode maps a SessionNode to the AppNamespaces it reports.
// For an update the handler maps the old and the new object, so an entry
// that disappears still re-evaluates its AppNamespace.
func appNamespacesOfNode(_ context.Context, o client.Object) []reconcile.Request {
	entries := o.(*hsv1.SessionNode).Status.AppNamespaces
	reqs := make([]reconcile.Request, 0, len(entries))
	for _, e := range entries {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKey{Namespace: e.Namespace, Name: e.Name}})
	}
	return reqs
}
