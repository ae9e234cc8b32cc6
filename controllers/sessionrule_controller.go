/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"fmt"

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

// SessionRuleReconciler resolves a SessionRule's AppNamespace and reports
// whether an older rule with the same match already holds its place.
type SessionRuleReconciler struct {
	client.Client
}

// +kubebuilder:rbac:groups=hoststack.dev,resources=sessionrules,verbs=get;list;watch
// +kubebuilder:rbac:groups=hoststack.dev,resources=sessionrules/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=hoststack.dev,resources=appnamespaces,verbs=get;list;watch
// +kubebuilder:rbac:groups=hoststack.dev,resources=sessionnodes,verbs=get;list;watch

// Reconcile evaluates one SessionRule and patches its status once.
func (r *SessionRuleReconciler) Reconcile(ctx context.Context, req ctrl.Request) (_ ctrl.Result, retErr error) {
	rule := &hsv1.SessionRule{}
	if err := r.Get(ctx, req.NamespacedName, rule); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if rule.DeletionTimestamp != nil {
		return ctrl.Result{}, nil // going away; its peers are re-evaluated by the watch
	}
	before := rule.DeepCopy()
	defer func() {
		if err := patchStatusIfChanged(ctx, r.Client, before, rule, before.Status, rule.Status); err != nil {
			retErr = kerrors.NewAggregate([]error{retErr, err})
		}
	}()

	v, err := r.evaluate(ctx, rule)
	if err != nil {
		return ctrl.Result{}, err
	}
	setRuleStatus(rule, v)
	return ctrl.Result{}, nil
}

// evaluate resolves the reference, looks for an older rule with the
// same match among the rules of the same AppNamespace and, for an accepted
// rule, counts the live nodes that enforce it.
func (r *SessionRuleReconciler) evaluate(ctx context.Context, rule *hsv1.SessionRule) (ruleVerdict, error) {
	key := types.NamespacedName{Namespace: rule.Namespace, Name: rule.Spec.AppNamespaceRef.Name}
	an := &hsv1.AppNamespace{}
	if err := r.Get(ctx, key, an); err != nil {
		if apierrors.IsNotFound(err) {
			return ruleVerdict{}, nil
		}
		return ruleVerdict{}, fmt.Errorf("get AppNamespace %s: %w", key, err)
	}
	peers, err := r.rulesOf(ctx, rule.Namespace, rule.Spec.AppNamespaceRef.Name)
	if err != nil {
		return ruleVerdict{}, err
	}
	v := ruleVerdict{appNamespaceFound: true, conflictWith: findConflict(rule, peers)}
	if v.conflictWith != nil {
		return v, nil
	}
	accepted := 0
	for i := range peers {
		if peers[i].DeletionTimestamp == nil && findConflict(&peers[i], peers) == nil {
			accepted++
		}
	}
	var nodes hsv1.SessionNodeList
	if err := r.List(ctx, &nodes, client.MatchingFields{
		indexServedAppNamespaces: appNamespaceKey(an.Namespace, an.Name)}); err != nil {
		return ruleVerdict{}, fmt.Errorf("list SessionNodes serving %s: %w", key, err)
	}
	v.enforcing = enforcingNodes(an.Namespace, an.Name, an.Generation, accepted, nodes.Items)
	return v, nil
}

// rulesOf lists the rules that reference one AppNamespace.
func (r *SessionRuleReconciler) rulesOf(ctx context.Context, namespace, appNamespace string) ([]hsv1.SessionRule, error) {
	var rules hsv1.SessionRuleList
	if err := r.List(ctx, &rules, client.InNamespace(namespace),
		client.MatchingFields{indexAppNamespaceRef: appNamespace}); err != nil {
		return nil, fmt.Errorf("list SessionRules of AppNamespace %s/%s: %w", namespace, appNamespace, err)
	}
	return rules.Items, nil
}

// SetupWithManager watches SessionRules, their peers and AppNamespaces.
func (r *SessionRuleReconciler) SetupWithManager(mgr ctrl.Manager, opts controller.Options) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("sessionrule").
		For(&hsv1.SessionRule{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		// A rule created, changed or deleted can start or end a conflict
		// for the other rules of its AppNamespace (for an update, the map
		// runs on the old and the new object, so moving a rule to another
		// AppNamespace re-evaluates both).
		Watches(&hsv1.SessionRule{}, handler.EnqueueRequestsFromMapFunc(r.peersOfRule),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		// An AppNamespace appearing or disappearing resolves or breaks the
		// rules that reference it.
		Watches(&hsv1.AppNamespace{}, handler.EnqueueRequestsFromMapFunc(r.rulesOfAppNamespace),
			builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		// A node starting, stopping or catching up changes how many nodes
		// enforce the rules of the AppNamespaces it serves.
		Watches(&hsv1.SessionNode{}, handler.EnqueueRequestsFromMapFunc(r.rulesOfNode)).
		WithOptions(opts).
		Complete(r)
}

func (r *SessionRuleReconciler) peersOfRule(ctx context.Context, o client.Object) []reconcile.Request {
	rule := o.(*hsv1.SessionRule)
	reqs := r.requestsFor(ctx, rule.Namespace, rule.Spec.AppNamespaceRef.Name)
	out := reqs[:0]
	for _, q := range reqs {
		if q.Name != rule.Name {
			out = append(out, q)
		}
	}
	return out
}

func (r *SessionRuleReconciler) rulesOfAppNamespace(ctx context.Context, o client.Object) []reconcile.Request {
	return r.requestsFor(ctx, o.GetNamespace(), o.GetName())
}

func (r *SessionRuleReconciler) rulesOfNode(ctx context.Context, o client.Object) []reconcile.Request {
	var reqs []reconcile.Request
	for _, e := range o.(*hsv1.SessionNode).Status.AppNamespaces {
		reqs = append(reqs, r.requestsFor(ctx, e.Namespace, e.Name)...)
	}
	return reqs
}

func (r *SessionRuleReconciler) requestsFor(ctx context.Context, namespace, appNamespace string) []reconcile.Request {
	rules, err := r.rulesOf(ctx, namespace, appNamespace)
	if err != nil {
		ctrl.LoggerFrom(ctx).Error(err, "map event to SessionRules")
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(rules))
	for i := range rules {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&rules[i])})
	}
	return reqs
}
