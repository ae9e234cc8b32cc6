/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"fmt"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// FieldOwner is the server-side apply field manager of the manager's
// writes to objects others own too (the SessionNode's Serving condition).
const FieldOwner = "hoststack-manager"

// DefaultAgentNamespace is where the agents run and renew their Leases.
const DefaultAgentNamespace = "hoststack-node"

// SessionNodeLivenessReconciler judges whether each node's agent is alive:
// the agent renews a Lease named after its node in the agent namespace
// (as kubelet does in kube-node-lease). It writes the SessionNode's
// Serving condition, with its own field manager so the agent's
// server-side applies never remove it, and only when it changes. A
// SessionNode whose owner Node is gone is deleted (what the garbage
// collector does in a full cluster; the manager does not wait for it).
type SessionNodeLivenessReconciler struct {
	client.Client
	// AgentNamespace holds the agents' Leases.
	AgentNamespace string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// +kubebuilder:rbac:groups=hoststack.dev,resources=sessionnodes,verbs=get;list;watch;delete
// +kubebuilder:rbac:groups=hoststack.dev,resources=sessionnodes/status,verbs=get;patch
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch
// Leases of the agent namespace only: config/rbac/agent_leases_role.yaml.

// Reconcile judges one SessionNode.
func (r *SessionNodeLivenessReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	sn := &hsv1.SessionNode{}
	if err := r.Get(ctx, req.NamespacedName, sn); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if sn.DeletionTimestamp != nil {
		return ctrl.Result{}, nil
	}
	var node *corev1.Node
	n := &corev1.Node{}
	switch err := r.Get(ctx, client.ObjectKey{Name: sn.Name}, n); {
	case err == nil:
		node = n
	case apierrors.IsNotFound(err):
		if ownerGone(sn, nil) {
			// Its Node is gone: so is the node's engine.
			err := r.Delete(ctx, sn, client.Preconditions{UID: &sn.UID})
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
				return ctrl.Result{}, fmt.Errorf("delete SessionNode %s of a deleted Node: %w", sn.Name, err)
			}
			return ctrl.Result{}, nil
		}
	default:
		return ctrl.Result{}, fmt.Errorf("get Node %s: %w", sn.Name, err)
	}
	if node != nil && ownerGone(sn, node) {
		// A Node of the same name, but not the one that owned it.
		err := r.Delete(ctx, sn, client.Preconditions{UID: &sn.UID})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return ctrl.Result{}, fmt.Errorf("delete SessionNode %s of a replaced Node: %w", sn.Name, err)
		}
		return ctrl.Result{}, nil
	}

	var lease *coordinationv1.Lease
	l := &coordinationv1.Lease{}
	switch err := r.Get(ctx, client.ObjectKey{Namespace: r.AgentNamespace, Name: sn.Name}, l); {
	case err == nil:
		lease = l
	case apierrors.IsNotFound(err):
	default:
		return ctrl.Result{}, fmt.Errorf("get Lease %s/%s: %w", r.AgentNamespace, sn.Name, err)
	}

	now := time.Now()
	if r.Now != nil {
		now = r.Now()
	}
	v := judgeLiveness(r.AgentNamespace, sn.Name, node, lease, now)
	if err := r.setServing(ctx, sn, v.cond); err != nil {
		return ctrl.Result{}, err
	}
	return ctrl.Result{RequeueAfter: v.recheck}, nil
}

// ownerGone reports whether sn names a Node owner that no longer exists:
// node is the Node of sn's name, nil when there is none.
func ownerGone(sn *hsv1.SessionNode, node *corev1.Node) bool {
	for _, o := range sn.OwnerReferences {
		if o.APIVersion == "v1" && o.Kind == "Node" && o.Name == sn.Name {
			return node == nil || node.UID != o.UID
		}
	}
	return false
}

// liveness is the verdict on one node.
type liveness struct {
	cond metav1.Condition
	// recheck is when the verdict changes by itself (the Lease expiring);
	// zero when only an event can change it.
	recheck time.Duration
}

// judgeLiveness is the pure part of the liveness decision. The Node
// reporting NotReady (or Unknown, which the node lifecycle controller sets
// when kubelet goes silent) overrides a fresh Lease: the agent may run
// while its node is cut off.
func judgeLiveness(agentNamespace, nodeName string, node *corev1.Node, lease *coordinationv1.Lease, now time.Time) liveness {
	cond := func(ok bool, reason, msg string) metav1.Condition {
		s := metav1.ConditionFalse
		if ok {
			s = metav1.ConditionTrue
		}
		return metav1.Condition{Type: hsv1.ConditionServing, Status: s, Reason: reason, Message: msg}
	}
	ref := agentNamespace + "/" + nodeName
	if node != nil {
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status != corev1.ConditionTrue {
				return liveness{cond: cond(false, hsv1.ReasonNodeNotReady,
					fmt.Sprintf("Node %s is Ready=%s (%s)", nodeName, c.Status, c.Reason))}
			}
		}
	}
	if lease == nil {
		return liveness{cond: cond(false, hsv1.ReasonLeaseMissing,
			fmt.Sprintf("the agent has not created its Lease %s", ref))}
	}
	if lease.Spec.RenewTime == nil || lease.Spec.LeaseDurationSeconds == nil || *lease.Spec.LeaseDurationSeconds <= 0 {
		return liveness{cond: cond(false, hsv1.ReasonLeaseExpired,
			fmt.Sprintf("Lease %s has no renewTime or leaseDurationSeconds", ref))}
	}
	d := time.Duration(*lease.Spec.LeaseDurationSeconds) * time.Second
	expires := lease.Spec.RenewTime.Add(d)
	if !now.Before(expires) {
		return liveness{cond: cond(false, hsv1.ReasonLeaseExpired,
			fmt.Sprintf("the agent last renewed Lease %s at %s; it expired after %s",
				ref, lease.Spec.RenewTime.UTC().Format(time.RFC3339), d))}
	}
	// The message must not carry the renew time: it would change, and
	// be written, at every renewal.
	return liveness{
		cond:    cond(true, hsv1.ReasonLeaseRenewed, fmt.Sprintf("the agent renews Lease %s (duration %s)", ref, d)),
		recheck: expires.Sub(now) + 100*time.Millisecond,
	}
}

// setServing applies the Serving condition when its status, reason or
// message differ from what the SessionNode carries.
func (r *SessionNodeLivenessReconciler) setServing(ctx context.Context, sn *hsv1.SessionNode, c metav1.Condition) error {
	if old := meta.FindStatusCondition(sn.Status.Conditions, hsv1.ConditionServing); old != nil {
		if old.Status == c.Status && old.Reason == c.Reason && old.Message == c.Message {
			return nil
		}
		c.LastTransitionTime = old.LastTransitionTime
		if old.Status != c.Status {
			c.LastTransitionTime = metav1.Now()
		}
	} else {
		c.LastTransitionTime = metav1.Now()
	}
	cm, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&c)
	if err != nil {
		return err
	}
	obj := &unstructured.Unstructured{Object: map[string]any{
		"status": map[string]any{"conditions": []any{cm}},
	}}
	obj.SetGroupVersionKind(hsv1.GroupVersion.WithKind("SessionNode"))
	obj.SetName(sn.Name)
	// No ForceOwnership: the condition of this type is the manager's.
	if err := r.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(obj), client.FieldOwner(FieldOwner)); err != nil {
		return fmt.Errorf("apply SessionNode %s condition %s: %w", sn.Name, hsv1.ConditionServing, err)
	}
	return nil
}

// SetupWithManager watches SessionNodes, the agents' Leases and Nodes;
// a Lease or Node maps to the SessionNode of its name.
func (r *SessionNodeLivenessReconciler) SetupWithManager(mgr ctrl.Manager, opts controller.Options) error {
	byName := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		return []reconcile.Request{{NamespacedName: client.ObjectKey{Name: o.GetName()}}}
	})
	return ctrl.NewControllerManagedBy(mgr).
		Named("sessionnode-liveness").
		For(&hsv1.SessionNode{}).
		Watches(&coordinationv1.Lease{}, byName).
		Watches(&corev1.Node{}, byName).
		WithOptions(opts).
		Complete(r)
}
