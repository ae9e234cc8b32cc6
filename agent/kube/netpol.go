package kube

import (
	"context"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	anpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha1"

	"github.com/hoststack/hoststack/agent/netpol"
	"github.com/hoststack/hoststack/engine/session"
)

// MetricNetpolDrops counts cut-through connects a NetworkPolicy dropped,
// per AppNamespace, isolating policy and direction.
const MetricNetpolDrops = "hoststack_agent_netpol_drops_total"

// setupNetpol adds the NetworkPolicy loop: a controller of its own (one
// key, like the main one) that renders the node's pods, the namespaces'
// labels and the NetworkPolicies into the engine's peer policy whenever
// any of them changes. Its informers deliver a `kubectl apply` within
// milliseconds, so new sessions follow it well within a second; sessions
// already open are kept, as most CNIs keep established connections.
func (a *Agent) setupNetpol(mgr manager.Manager) error {
	one := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{theKey}
	})
	b := ctrl.NewControllerManagedBy(mgr).Named("hoststack-netpol").
		Watches(&networkingv1.NetworkPolicy{}, one).
		Watches(&corev1.Namespace{}, one).
		Watches(&corev1.Pod{}, one) // the node's pods only (CacheOptions)
	if a.o.AdminNetworkPolicy {
		b = b.Watches(&anpv1.AdminNetworkPolicy{}, one).
			Watches(&anpv1.BaselineAdminNetworkPolicy{}, one)
	}
	err := b.Complete(reconcile.Func(a.reconcileNetpol))
	if err != nil {
		return fmt.Errorf("creating NetworkPolicy controller: %w", err)
	}
	return nil
}

func (a *Agent) reconcileNetpol(ctx context.Context, _ reconcile.Request) (reconcile.Result, error) {
	var pods corev1.PodList
	if err := a.c.List(ctx, &pods); err != nil {
		return reconcile.Result{}, err
	}
	var nss corev1.NamespaceList
	if err := a.c.List(ctx, &nss); err != nil {
		return reconcile.Result{}, err
	}
	// Only the policies of namespaces with pods on this node can select
	// a cut-through session's ends.
	need := map[string]bool{}
	for i := range pods.Items {
		need[pods.Items[i].Namespace] = true
	}
	var policies []networkingv1.NetworkPolicy
	for ns := range need {
		var l networkingv1.NetworkPolicyList
		if err := a.c.List(ctx, &l, client.InNamespace(ns)); err != nil {
			return reconcile.Result{}, err
		}
		policies = append(policies, l.Items...)
	}
	var admin netpol.Admin
	if a.o.AdminNetworkPolicy {
		var anps anpv1.AdminNetworkPolicyList
		if err := a.c.List(ctx, &anps); err != nil {
			return reconcile.Result{}, err
		}
		var banps anpv1.BaselineAdminNetworkPolicyList
		if err := a.c.List(ctx, &banps); err != nil {
			return reconcile.Result{}, err
		}
		admin = netpol.Admin{AdminNetworkPolicies: anps.Items, BaselineAdminNetworkPolicies: banps.Items}
	}
	t, problems := netpol.RenderAll(pods.Items, nss.Items, policies, admin)
	a.netpol.Store(t)
	for _, p := range problems {
		a.log.Warn("NetworkPolicy partly ignored", "policy", p.Policy, "problem", p.Message)
	}
	np, isolated, entries := t.Counts()
	a.log.Debug("network policies applied", "policies", np, "isolatedPods", isolated, "entries", entries)
	return reconcile.Result{}, nil
}

// netpolCollector exports the drop counters of the app namespaces the
// engine serves.
type netpolCollector struct {
	stats func() []session.NamespaceStats
	enf   *netpol.Enforcer
	drops *prometheus.Desc
}

func newNetpolCollector(stats func() []session.NamespaceStats, enf *netpol.Enforcer) *netpolCollector {
	return &netpolCollector{stats: stats, enf: enf,
		drops: prometheus.NewDesc(MetricNetpolDrops,
			"Cut-through connects of the AppNamespace's apps dropped because a NetworkPolicy isolated a pod and none allowed the session, by isolating policy and direction.",
			[]string{LabelAppNamespace, "policy", "direction"}, nil)}
}

func (c *netpolCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.drops }

func (c *netpolCollector) Collect(ch chan<- prometheus.Metric) {
	served := map[string]bool{}
	for _, s := range c.stats() {
		served[s.Namespace] = true
	}
	c.enf.Retain(served)
	for k, v := range c.enf.Drops() {
		ch <- prometheus.MustNewConstMetric(c.drops, prometheus.CounterValue, float64(v), k.AppNamespace, k.Policy, k.Direction.String())
	}
}
