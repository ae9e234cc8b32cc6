/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"bytes"
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// publisher keeps the copies of Secret material the agents need in the
// agent namespace (see hsv1.PublishedSecretName): one copy per object that
// needs one, holding only the keys the agent uses. Reads of the copies come
// from the manager's cache (Secrets of the agent namespace with the
// published label, nothing else); writes are server-side applies, sent
// only when the copy differs.
type publisher struct {
	c         client.Client
	namespace string
}

// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
// Writes to the agent namespace only: config/rbac/agent_namespace_role.yaml.

// publish makes the copy for kind/namespace/name hold data, copied from
// the Secret from; data nil removes the copy.
func (p *publisher) publish(ctx context.Context, kind, namespace, name string, from client.ObjectKey, data map[string][]byte) error {
	key := client.ObjectKey{Namespace: p.namespace, Name: hsv1.PublishedSecretName(kind, namespace, name)}
	cur := &corev1.Secret{}
	err := p.c.Get(ctx, key, cur)
	switch {
	case apierrors.IsNotFound(err):
		cur = nil
	case err != nil:
		return fmt.Errorf("get published Secret %s: %w", key, err)
	}
	if data == nil {
		if cur == nil {
			return nil
		}
		if err := p.c.Delete(ctx, cur); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete published Secret %s for %s %s/%s: %w", key, kind, namespace, name, err)
		}
		return nil
	}
	forRef, fromRef := kind+"/"+namespace+"/"+name, from.String()
	if cur != nil && sameData(cur.Data, data) && cur.Annotations[hsv1.AnnotationPublishedFor] == forRef &&
		cur.Annotations[hsv1.AnnotationPublishedFrom] == fromRef {
		return nil
	}
	s := &corev1.Secret{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: metav1.ObjectMeta{Namespace: key.Namespace, Name: key.Name,
			Labels:      map[string]string{hsv1.LabelPublished: "true", "app.kubernetes.io/managed-by": "hoststack-manager"},
			Annotations: map[string]string{hsv1.AnnotationPublishedFor: forRef, hsv1.AnnotationPublishedFrom: fromRef}},
		Type: corev1.SecretTypeOpaque,
		Data: data,
	}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(s)
	if err != nil {
		return err
	}
	u := &unstructured.Unstructured{Object: m}
	if err := p.c.Apply(ctx, client.ApplyConfigurationFromUnstructured(u), client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
		return fmt.Errorf("publish Secret %s for %s: %w", key, forRef, err)
	}
	return nil
}

func sameData(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || !bytes.Equal(v, w) {
			return false
		}
	}
	return true
}

// publishedFor maps a published copy to the object it serves, if it is of
// kind: an edited or deleted copy is made right again.
func publishedFor(kind string) func(context.Context, client.Object) []reconcile.Request {
	return func(_ context.Context, o client.Object) []reconcile.Request {
		k, rest, ok := strings.Cut(o.GetAnnotations()[hsv1.AnnotationPublishedFor], "/")
		if !ok || k != kind {
			return nil
		}
		ns, name, ok := strings.Cut(rest, "/")
		if !ok {
			return nil
		}
		return []reconcile.Request{{NamespacedName: client.ObjectKey{Namespace: ns, Name: name}}}
	}
}
