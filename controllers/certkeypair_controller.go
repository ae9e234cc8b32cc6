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
	"sigs.k8s.io/controller-runtime/pkg/source"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// CertKeyPairReconciler checks the kubernetes.io/tls Secret a CertKeyPair
// references and reports the certificate's facts and usability.
type CertKeyPairReconciler struct {
	client.Client
	// Secrets watches the Secrets CertKeyPairs name (and only those).
	Secrets *NamedSecrets
	// publish copies the material to the agent namespace.
	publish *publisher
	// Now is the clock; tests replace it.
	Now func() time.Time
}

// +kubebuilder:rbac:groups=hoststack.dev,resources=certkeypairs,verbs=get;list;watch
// +kubebuilder:rbac:groups=hoststack.dev,resources=certkeypairs/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch

// Reconcile evaluates one CertKeyPair, publishes its material for the
// agents and patches its status once.
func (r *CertKeyPairReconciler) Reconcile(ctx context.Context, req ctrl.Request) (_ ctrl.Result, retErr error) {
	referrer := "CertKeyPair/" + req.String()
	pair := &hsv1.CertKeyPair{}
	if err := r.Get(ctx, req.NamespacedName, pair); err != nil {
		if !apierrors.IsNotFound(err) {
			return ctrl.Result{}, err
		}
		certNotAfter.DeleteLabelValues(req.String())
		if err := r.Secrets.Want(ctx, referrer, client.ObjectKey{}); err != nil {
			return ctrl.Result{}, err
		}
		return ctrl.Result{}, r.publish.publish(ctx, "CertKeyPair", req.Namespace, req.Name, client.ObjectKey{}, nil)
	}
	before := pair.DeepCopy()
	defer func() {
		if err := patchStatusIfChanged(ctx, r.Client, before, pair, before.Status, pair.Status); err != nil {
			retErr = kerrors.NewAggregate([]error{retErr, err})
		}
	}()

	key := types.NamespacedName{Namespace: pair.Namespace, Name: pair.Spec.SecretRef.Name}
	if err := r.Secrets.Want(ctx, referrer, key); err != nil {
		return ctrl.Result{}, err
	}
	secret, err := r.Secrets.Get(key)
	if err != nil {
		return ctrl.Result{}, err
	}
	v := r.evaluate(pair, secret)
	// The agents get the material whenever the Secret is a TLS Secret:
	// they judge it again and report what they refuse on their node.
	var data map[string][]byte
	if secret != nil && secret.Type == corev1.SecretTypeTLS {
		data = map[string][]byte{}
		for _, k := range []string{corev1.TLSCertKey, corev1.TLSPrivateKeyKey, "ca.crt"} {
			if b, ok := secret.Data[k]; ok {
				data[k] = b
			}
		}
	}
	setKeyPairStatus(pair, v)
	if v.Leaf != nil {
		certNotAfter.WithLabelValues(pair.Namespace + "/" + pair.Name).Set(float64(v.NotAfter.Unix()))
	} else {
		certNotAfter.DeleteLabelValues(pair.Namespace + "/" + pair.Name)
	}
	// After the status: an agent namespace that does not exist (yet)
	// costs the status nothing; the error retries it.
	if err := r.publish.publish(ctx, "CertKeyPair", pair.Namespace, pair.Name, key, data); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: nextValidityChange(v, r.now())}, nil
}

// evaluate judges the Secret (nil: it does not exist).
func (r *CertKeyPairReconciler) evaluate(pair *hsv1.CertKeyPair, secret *corev1.Secret) keyPairVerdict {
	name := pair.Spec.SecretRef.Name
	if secret == nil {
		return keyPairVerdict{Reason: hsv1.ReasonSecretNotFound,
			Message: fmt.Sprintf("no Secret %q of type %s in namespace %q", name, corev1.SecretTypeTLS, pair.Namespace)}
	}
	if secret.Type != corev1.SecretTypeTLS {
		return keyPairVerdict{Reason: hsv1.ReasonInvalidSecretType,
			Message: fmt.Sprintf("Secret %q has type %q, want %s", name, secret.Type, corev1.SecretTypeTLS)}
	}
	return evaluateKeyPair(secret.Data[corev1.TLSCertKey], secret.Data[corev1.TLSPrivateKeyKey], r.now())
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
		// The Secrets CertKeyPairs name, from their own watches.
		WatchesRawSource(source.Channel(r.Secrets.Subscribe(), handler.EnqueueRequestsFromMapFunc(r.pairsForSecret))).
		// The published copies (the only Secrets in the manager's cache).
		Watches(&corev1.Secret{}, handler.EnqueueRequestsFromMapFunc(publishedFor("CertKeyPair"))).
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
