/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"fmt"
	"strconv"
	"sync"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/recorder"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// ReasonNotInjected is the Event reason on a pod an AppNamespace selects
// that was created without the attach volume.
const ReasonNotInjected = "NotInjected"

// WebhookNamespaceLabel set to WebhookNamespaceEnabled opts a namespace
// in to the pod webhook: the API server calls it only for pods of such
// namespaces, so pods nothing can select never wait on the manager.
const (
	WebhookNamespaceLabel   = "hoststack.dev/webhook"
	WebhookNamespaceEnabled = "enabled"
)

// podMetaList lists pods as metadata only: the manager caches pods'
// metadata (labels, annotations), never their specs.
func podMetaList() *metav1.PartialObjectMetadataList {
	l := &metav1.PartialObjectMetadataList{}
	l.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("PodList"))
	return l
}

// notInjected returns the pods of pods that belong to AppNamespace an —
// the webhook would choose it for them among ans, the AppNamespaces of
// their namespace — but carry no injection: no InjectedAnnotation, and
// not opted out with InjectAnnotation=false. Pods being deleted are left
// out.
func notInjected(an *hsv1.AppNamespace, ans []hsv1.AppNamespace, pods []metav1.PartialObjectMetadata) []*metav1.PartialObjectMetadata {
	var out []*metav1.PartialObjectMetadata
	for i := range pods {
		p := &pods[i]
		if p.Namespace != an.Namespace || p.DeletionTimestamp != nil {
			continue
		}
		if _, done := p.Annotations[InjectedAnnotation]; done {
			continue
		}
		if v, ok := p.Annotations[InjectAnnotation]; ok {
			if on, err := strconv.ParseBool(v); err == nil && !on {
				continue
			}
		}
		if chosen, _ := hsv1.SelectAppNamespace(p.Labels, ans); chosen != nil && chosen.Name == an.Name {
			out = append(out, p)
		}
	}
	return out
}

// notInjectedReporter tells each pod, once per manager process, that it
// was not injected; it forgets the pods that are gone.
type notInjectedReporter struct {
	mu   sync.Mutex
	told map[types.NamespacedName]map[types.UID]bool // by AppNamespace
}

// report records an Event on each pod of pods not told before, and
// forgets the pods of an AppNamespace no longer in pods.
func (r *notInjectedReporter) report(events recorder.EventRecorder, an *hsv1.AppNamespace, pods []*metav1.PartialObjectMetadata) {
	key := types.NamespacedName{Namespace: an.Namespace, Name: an.Name}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.told == nil {
		r.told = map[types.NamespacedName]map[types.UID]bool{}
	}
	prev := r.told[key]
	now := make(map[types.UID]bool, len(pods))
	for _, p := range pods {
		now[p.UID] = true
		if prev[p.UID] || events == nil {
			continue
		}
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, UID: p.UID}}
		events.Eventf(pod, an, corev1.EventTypeWarning, ReasonNotInjected, "Inject",
			"AppNamespace %s selects this pod but it was created without the hoststack attach volume: label namespace %s %s=%s to opt it in to the pod webhook (or the webhook was unavailable); recreate the pod",
			an.Name, an.Namespace, WebhookNamespaceLabel, WebhookNamespaceEnabled)
	}
	if len(now) == 0 {
		delete(r.told, key)
		return
	}
	r.told[key] = now
}

// forget drops what was told for a deleted AppNamespace.
func (r *notInjectedReporter) forget(key types.NamespacedName) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.told, key)
}

// countNotInjected lists the pods of an's namespace (metadata, from the
// cache), reports those not injected and returns how many there are.
func (r *AppNamespaceReconciler) countNotInjected(ctx context.Context, an *hsv1.AppNamespace) (int32, error) {
	var ans hsv1.AppNamespaceList
	if err := r.List(ctx, &ans, client.InNamespace(an.Namespace)); err != nil {
		return 0, fmt.Errorf("list AppNamespaces of %s: %w", an.Namespace, err)
	}
	pods := podMetaList()
	if err := r.List(ctx, pods, client.InNamespace(an.Namespace)); err != nil {
		return 0, fmt.Errorf("list pods of %s: %w", an.Namespace, err)
	}
	missing := notInjected(an, ans.Items, pods.Items)
	r.reporter.report(r.Events, an, missing)
	return int32(len(missing)), nil
}

// appNamespacesOfPodNamespace maps a pod to every AppNamespace of its
// namespace (which one the pod belongs to depends on all of them).
func (r *AppNamespaceReconciler) appNamespacesOfPodNamespace(ctx context.Context, o client.Object) []reconcile.Request {
	var ans hsv1.AppNamespaceList
	if err := r.List(ctx, &ans, client.InNamespace(o.GetNamespace())); err != nil {
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(ans.Items))
	for _, an := range ans.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&an)})
	}
	return reqs
}
