/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
)

// NamedSecrets caches exactly the Secrets hoststack objects name, and no
// other: one watch per named Secret, field-selected by its name, started
// when the first object names it and stopped when the last one stops
// naming it. A cluster-wide Secret informer (even one filtered by type)
// would hold every Secret of the cluster in the manager's memory.
//
// Reconcilers call Want before Get; every change of a wanted Secret
// (created, rotated, deleted) is sent to every Subscribe channel as a
// Secret with only its namespace and name set.
type NamedSecrets struct {
	cs   kubernetes.Interface
	subs []chan event.GenericEvent

	mu      sync.Mutex
	watches map[client.ObjectKey]*namedWatch
}

type namedWatch struct {
	referrers map[string]bool
	informer  toolscache.SharedIndexInformer
	stop      chan struct{}
}

// NewNamedSecrets returns an empty NamedSecrets reading through cs.
func NewNamedSecrets(cs kubernetes.Interface) *NamedSecrets {
	return &NamedSecrets{cs: cs, watches: map[client.ObjectKey]*namedWatch{}}
}

// Subscribe returns a channel of the changes of wanted Secrets; call it
// before the first Want.
func (n *NamedSecrets) Subscribe() <-chan event.GenericEvent {
	n.mu.Lock()
	defer n.mu.Unlock()
	ch := make(chan event.GenericEvent, 64)
	n.subs = append(n.subs, ch)
	return ch
}

// Want records that referrer (a "Kind/namespace/name" of a hoststack
// object) names the Secret key, or, with key.Name "", that it names no
// Secret any more; the watches of Secrets nobody names are stopped.
// It waits until the Secret key is in the cache.
func (n *NamedSecrets) Want(ctx context.Context, referrer string, key client.ObjectKey) error {
	n.mu.Lock()
	for k, w := range n.watches {
		if k != key && w.referrers[referrer] {
			delete(w.referrers, referrer)
			if len(w.referrers) == 0 {
				close(w.stop)
				delete(n.watches, k)
			}
		}
	}
	if key.Name == "" {
		n.mu.Unlock()
		return nil
	}
	w, ok := n.watches[key]
	if !ok {
		w = n.start(key)
		n.watches[key] = w
	}
	w.referrers[referrer] = true
	n.mu.Unlock()
	// A watch that cannot list (RBAC, a Secret-less API server) must not
	// hold the reconcile forever.
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if !toolscache.WaitForCacheSync(ctx.Done(), w.informer.HasSynced) {
		return fmt.Errorf("watch of Secret %s did not sync: %w", key, ctx.Err())
	}
	return nil
}

// start begins watching one Secret (under mu).
func (n *NamedSecrets) start(key client.ObjectKey) *namedWatch {
	lw := toolscache.NewFilteredListWatchFromClient(n.cs.CoreV1().RESTClient(), "secrets", key.Namespace,
		func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", key.Name).String()
		})
	inf := toolscache.NewSharedIndexInformer(lw, &corev1.Secret{}, 0, toolscache.Indexers{})
	notify := func(any) {
		s := &corev1.Secret{}
		s.Namespace, s.Name = key.Namespace, key.Name
		for _, ch := range n.subs {
			ch <- event.GenericEvent{Object: s}
		}
	}
	_, _ = inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    notify,
		UpdateFunc: func(_, o any) { notify(o) },
		DeleteFunc: notify,
	})
	w := &namedWatch{referrers: map[string]bool{}, informer: inf, stop: make(chan struct{})}
	go inf.Run(w.stop)
	return w
}

// Get returns the cached Secret key, or nil when it does not exist. Want
// must have been called for it.
func (n *NamedSecrets) Get(key client.ObjectKey) (*corev1.Secret, error) {
	n.mu.Lock()
	w, ok := n.watches[key]
	n.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("secret %s is not watched", key)
	}
	o, exists, err := w.informer.GetStore().GetByKey(key.Namespace + "/" + key.Name)
	if err != nil || !exists {
		return nil, err
	}
	return o.(*corev1.Secret).DeepCopy(), nil
}

// Stop ends every watch.
func (n *NamedSecrets) Stop() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for k, w := range n.watches {
		close(w.stop)
		delete(n.watches, k)
	}
}

// watched reports how many Secrets are watched (for tests).
func (n *NamedSecrets) watched() []client.ObjectKey {
	n.mu.Lock()
	defer n.mu.Unlock()
	keys := make([]client.ObjectKey, 0, len(n.watches))
	for k := range n.watches {
		keys = append(keys, k)
	}
	return keys
}
