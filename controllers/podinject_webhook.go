/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// PodWebhookPath is where the manager's webhook server serves the pod
// injector.
const PodWebhookPath = "/mutate-v1-pod"

// The generated MutatingWebhookConfiguration (config/webhook):
//
//   - failurePolicy Ignore: pods must start when the manager is down or
//     slow — a webhook outage must not stop every workload of the cluster.
//     A pod admitted without injection has no attach socket, so it cannot
//     attach by accident: the agent only serves the sockets of volumes it
//     publishes. The pod just has to be recreated once the manager is back.
//   - sideEffects None: the webhook only computes a patch, so dry runs
//     (kubectl diff, --dry-run=server) see the injection too.
//   - reinvocationPolicy IfNeeded: a webhook that adds a container after us
//     gets it mounted on the second call (injection is idempotent).
//   - namespaceSelector: opt-in, only namespaces labelled
//     hoststack.dev/webhook=enabled: pods that nothing could select never
//     call the manager (and never wait on it). A pod an AppNamespace
//     selects that was created without injection — namespace not opted
//     in, webhook down — is reported: an Event on the pod and
//     status.podsNotInjected of the AppNamespace.
//   - matchConditions: a pod annotated hoststack.dev/inject=false is not
//     sent at all.
//   - timeoutSeconds 5: the handler reads only the cache; a slow answer is
//     a sick manager, and pods should not wait for it.
//
// +kubebuilder:webhook:path=/mutate-v1-pod,mutating=true,failurePolicy=ignore,sideEffects=None,groups="",resources=pods,verbs=create,versions=v1,name=inject.pods.hoststack.dev,admissionReviewVersions=v1,reinvocationPolicy=IfNeeded,timeoutSeconds=5,serviceName=hoststack-webhook,serviceNamespace=hoststack-system,patch=`{"namespaceSelector":{"matchLabels":{"hoststack.dev/webhook":"enabled"}},"matchConditions":[{"name":"not-opted-out","expression":"!has(object.metadata.annotations) || !('hoststack.dev/inject' in object.metadata.annotations) || object.metadata.annotations['hoststack.dev/inject'] != 'false'"}]}`

// PodInjector is the mutating admission handler that attaches pods to the
// AppNamespace selecting them (see injectPod). It reads AppNamespaces from
// the manager's cache.
type PodInjector struct {
	Client  client.Reader
	Decoder admission.Decoder
	// Namespaces, when not empty, are the only namespaces whose pods are
	// injected: those the manager watches (--watch-namespaces); its cache
	// cannot list AppNamespaces elsewhere.
	Namespaces []string
}

var _ admission.Handler = &PodInjector{}

// Handle answers one admission request for a pod.
func (h *PodInjector) Handle(ctx context.Context, req admission.Request) admission.Response {
	if req.Operation != admissionv1.Create {
		return admission.Allowed("only pod creation is handled")
	}
	if len(h.Namespaces) > 0 && !slices.Contains(h.Namespaces, req.Namespace) {
		return admission.Allowed("namespace not watched by hoststack-manager")
	}
	pod := &corev1.Pod{}
	if err := h.Decoder.Decode(req, pod); err != nil {
		return admission.Errored(http.StatusBadRequest, fmt.Errorf("decode pod: %w", err))
	}
	var list hsv1.AppNamespaceList
	if err := h.Client.List(ctx, &list, client.InNamespace(req.Namespace)); err != nil {
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("list AppNamespaces of %s: %w", req.Namespace, err))
	}
	res := injectPod(pod, req.Namespace, list.Items)
	if !res.Changed {
		return admission.Allowed("").WithWarnings(res.Warnings...)
	}
	raw, err := json.Marshal(pod)
	if err != nil {
		return admission.Errored(http.StatusInternalServerError, fmt.Errorf("encode pod: %w", err))
	}
	logf.FromContext(ctx).V(1).Info("attaching pod", "namespace", req.Namespace,
		"pod", podName(pod), "appNamespace", res.AppNamespace)
	return admission.PatchResponseFromRaw(req.Object.Raw, raw).WithWarnings(res.Warnings...)
}

// podName names a pod being created, which may have only a generateName.
func podName(p *corev1.Pod) string {
	if p.Name != "" {
		return p.Name
	}
	return p.GenerateName + "*"
}
