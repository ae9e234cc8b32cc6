/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	kerrors "k8s.io/apimachinery/pkg/util/errors"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"
	"sigs.k8s.io/controller-runtime/pkg/source"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// AppNamespaceReconciler checks what the schema cannot about an
// AppNamespace and aggregates the SessionNode reports into its status.
type AppNamespaceReconciler struct {
	client.Client
	// Secrets watches the Secrets AppNamespace secretRefs name.
	Secrets *NamedSecrets
	publish *publisher
	// Events reports pods that were not injected; nil reports none.
	Events recorder.EventRecorder

	reporter notInjectedReporter
}

// +kubebuilder:rbac:groups=hoststack.dev,resources=appnamespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=hoststack.dev,resources=appnamespaces/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=hoststack.dev,resources=sessionnodes,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=pods,verbs=list;watch

// Reconcile evaluates one AppNamespace and patches its status once.
func (r *AppNamespaceReconciler) Reconcile(ctx context.Context, req ctrl.Request) (_ ctrl.Result, retErr error) {
	referrer := "AppNamespace/" + req.String()
	an := &hsv1.AppNamespace{}
	if err := r.Get(ctx, req.NamespacedName, an); err != nil {
		if !apierrors.IsNotFound(err) {
			return ctrl.Result{}, err
		}
		r.reporter.forget(req.NamespacedName)
		if err := r.Secrets.Want(ctx, referrer, client.ObjectKey{}); err != nil {
			return ctrl.Result{}, err
		}
		return ctrl.Result{}, r.publish.publish(ctx, "AppNamespace", req.Namespace, req.Name, client.ObjectKey{}, nil)
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
	n, err := r.countNotInjected(ctx, an)
	if err != nil {
		return ctrl.Result{}, err
	}
	an.Status.PodsNotInjected = n
	// Last, so that an agent namespace that does not exist (yet) costs
	// the status nothing; the error retries it.
	if err := r.publishSecret(ctx, referrer, an); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{}, nil
}

// publishSecret copies the key of the secretRef Secret the agents check
// attaches against into the agent namespace (and removes the copy when
// there is nothing to copy).
func (r *AppNamespaceReconciler) publishSecret(ctx context.Context, referrer string, an *hsv1.AppNamespace) error {
	var key client.ObjectKey
	if an.Spec.SecretRef != nil && an.DeletionTimestamp == nil {
		key = client.ObjectKey{Namespace: an.Namespace, Name: an.Spec.SecretRef.Name}
	}
	if err := r.Secrets.Want(ctx, referrer, key); err != nil {
		return err
	}
	var data map[string][]byte
	if key.Name != "" {
		s, err := r.Secrets.Get(key)
		if err != nil {
			return err
		}
		if s != nil {
			if v, ok := s.Data[AttachSecretKey]; ok {
				data = map[string][]byte{AttachSecretKey: v}
			}
		}
	}
	return r.publish.publish(ctx, "AppNamespace", an.Namespace, an.Name, key, data)
}

// AttachSecretKey is the key of an AppNamespace secretRef Secret that
// holds the attach secret (the agent's render.SecretKey).
const AttachSecretKey = "secret"

// SetupWithManager watches AppNamespaces and the SessionNodes that report
// them.
func (r *AppNamespaceReconciler) SetupWithManager(mgr ctrl.Manager, opts controller.Options) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("appnamespace").
		For(&hsv1.AppNamespace{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&hsv1.SessionNode{}, handler.EnqueueRequestsFromMapFunc(appNamespacesOfNode)).
		WatchesRawSource(source.Channel(r.Secrets.Subscribe(), handler.EnqueueRequestsFromMapFunc(r.forSecret))).
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(publishedFor("AppNamespace"))).
		// Pods, as metadata only: which were created without injection.
		Watches(&corev1.Pod{}, handler.EnqueueRequestsFromMapFunc(r.appNamespacesOfPodNamespace), builder.OnlyMetadata).
		WithOptions(opts).
		Complete(r)
}

// forSecret maps a Secret to the AppNamespaces whose secretRef names it.
func (r *AppNamespaceReconciler) forSecret(ctx context.Context, o client.Object) []reconcile.Request {
	var ans hsv1.AppNamespaceList
	if err := r.List(ctx, &ans, client.InNamespace(o.GetNamespace()),
		client.MatchingFields{indexAppNamespaceSecretRef: o.GetName()}); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "list AppNamespaces for Secret", "secret", client.ObjectKeyFromObject(o))
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(ans.Items))
	for i := range ans.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&ans.Items[i])})
	}
	return reqs
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
