/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
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

// CertKeyPairReconciler checks the kubernetes.io/tls Secret a CertKeyPair
// references and reports the certificate's facts and usability.
type CertKeyPairReconciler struct {
	client.Client
	// Now is the clock; tests replace it.
	Now func() time.Time
}

// +kubebuilder:rbac:groups=hoststack.dev,resources=certkeypairs,verbs=get;list;watch
// +kubebuilder:rbac:groups=hoststack.dev,resources=certkeypairs/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch

// Reconcile evaluates one CertKeyPair and patches its status once.
func (r *CertKeyPairReconciler) Reconcile(ctx context.Context, req ctrl.Request) (_ ctrl.Result, retErr error) {
	pair := &hsv1.CertKeyPair{}
	if err := r.Get(ctx, req.NamespacedName, pair); err != nil {
		if apierrors.IsNotFound(err) {
			certNotAfter.DeleteLabelValues(req.Namespace, req.Name)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	before := pair.DeepCopy()
	defer func() {
		if err := patchStatusIfChanged(ctx, r.Client, before, pair, before.Status, pair.Status); err != nil {
			retErr = kerrors.NewAggregate([]error{retErr, err})
		}
	}()

	v, err := r.evaluate(ctx, pair)
	if err != nil {
		return ctrl.Result{}, err
	}
	setKeyPairStatus(pair, v)
	if v.Leaf != nil {
		certNotAfter.WithLabelValues(pair.Namespace, pair.Name).Set(float64(v.NotAfter.Unix()))
	} else {
		certNotAfter.DeleteLabelValues(pair.Namespace, pair.Name)
	}
	return ctrl.Result{RequeueAfter: nextValidityChange(v, r.now())}, nil
}

// evaluate loads the Secret and judges it.
func (r *CertKeyPairReconciler) evaluate(ctx context.Context, pair *hsv1.CertKeyPair) (keyPairVerdict, error) {
	secret := &corev1.Secret{}
	key := types.NamespacedName{Namespace: pair.Namespace, Name: pair.Spec.SecretRef.Name}
	if err := r.Get(ctx, key, secret); err != nil {
		if apierrors.IsNotFound(err) {
			// The manager caches only kubernetes.io/tls Secrets, so a
			// Secret of another type is "not found" here too.
			return keyPairVerdict{Reason: hsv1.ReasonSecretNotFound,
				Message: fmt.Sprintf("no Secret %q of type %s in namespace %q", key.Name, corev1.SecretTypeTLS, key.Namespace)}, nil
		}
		return keyPairVerdict{}, fmt.Errorf("get Secret %s: %w", key, err)
	}
	if secret.Type != corev1.SecretTypeTLS {
		return keyPairVerdict{Reason: hsv1.ReasonInvalidSecretType,
			Message: fmt.Sprintf("Secret %q has type %q, want %s", key.Name, secret.Type, corev1.SecretTypeTLS)}, nil
	}
	return evaluateKeyPair(secret.Data[corev1.TLSCertKey], secret.Data[corev1.TLSPrivateKeyKey], r.now()), nil
}

func (r *CertKeyPairReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// nextValidityChange is when the verdict changes by itself, with nothing
// else changing: at notBefore or just after notAfter. This is a deadline,
// not polling: zero (no requeue) when time cannot change the verdict.
func nextValidityChange(v keyPairVerdict, now time.Time) time.Duration {
	switch v.Reason {
	case hsv1.ReasonNotYetValid:
		return v.NotBefore.Sub(now) + time.Second
	case hsv1.ReasonValid:
		return v.NotAfter.Sub(now) + time.Second
	default:
		return 0
	}
}

// SetupWithManager watches CertKeyPairs and the Secrets they reference.
func (r *CertKeyPairReconciler) SetupWithManager(mgr ctrl.Manager, opts controller.Options) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("certkeypair").
		For(&hsv1.CertKeyPair{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(r.pairsForSecret)).
		WithOptions(opts).
		Complete(r)
}

// pairsForSecret maps a Secret to the CertKeyPairs that reference it, so
// creating, rotating or deleting the Secret re-evaluates them.
func (r *CertKeyPairReconciler) pairsForSecret(ctx context.Context, o client.Object) []reconcile.Request {
	var pairs hsv1.CertKeyPairList
	if err := r.List(ctx, &pairs, client.InNamespace(o.GetNamespace()),
		client.MatchingFields{indexSecretRef: o.GetName()}); err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "list CertKeyPairs for Secret", "secret", client.ObjectKeyFromObject(o))
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(pairs.Items))
	for i := range pairs.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&pairs.Items[i])})
	}
	return reqs
}

// patchStatusIfChanged sends one status merge patch from before to obj,
// and none when the status did not change.
func patchStatusIfChanged(ctx context.Context, c client.Client, before, obj client.Object, oldStatus, newStatus any) error {
	if equality.Semantic.DeepEqual(oldStatus, newStatus) {
		return nil
	}
	if err := c.Status().Patch(ctx, obj, client.MergeFrom(before)); err != nil {
		if apierrors.IsNotFound(err) {
			return nil // deleted meanwhile: nothing left to report on
		}
		return fmt.Errorf("patch %T %s status: %w", obj, client.ObjectKeyFromObject(obj), err)
	}
	return nil
}
