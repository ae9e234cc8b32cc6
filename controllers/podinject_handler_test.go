/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/client/interceptor"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

func TestPodInjectorHandle(t *testing.T) {
	scheme, err := NewScheme()
	if err != nil {
		t.Fatal(err)
	}
	an := &hsv1.AppNamespace{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
		Spec:       hsv1.AppNamespaceSpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}},
	}
	cl := fake.NewClientBuilder().WithScheme(scheme).WithObjects(an).Build()
	failing := fake.NewClientBuilder().WithScheme(scheme).WithInterceptorFuncs(interceptor.Funcs{
		List: func(context.Context, client.WithWatch, client.ObjectList, ...client.ListOption) error {
			return errors.New("cache down")
		}}).Build()
	raw := func(labels map[string]string) []byte {
		b, err := json.Marshal(testPod("shop", "p", labels, nil))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	req := func(op admissionv1.Operation, ns string, obj []byte) admission.Request {
		return admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
			Operation: op, Namespace: ns, Object: runtime.RawExtension{Raw: obj},
			Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		}}
	}
	web := map[string]string{"app": "web"}

	tests := []struct {
		name        string
		client      client.Reader
		namespaces  []string
		req         admission.Request
		wantAllowed bool
		wantCode    int32 // for errors
		wantPatches bool
	}{
		{"selected pod patched", cl, nil, req(admissionv1.Create, "shop", raw(web)), true, 0, true},
		{"unselected pod allowed as is", cl, nil, req(admissionv1.Create, "shop", raw(map[string]string{"app": "db"})), true, 0, false},
		{"other namespace allowed as is", cl, nil, req(admissionv1.Create, "other", raw(web)), true, 0, false},
		{"update ignored", cl, nil, req(admissionv1.Update, "shop", raw(web)), true, 0, false},
		{"namespace not watched", cl, []string{"other"}, req(admissionv1.Create, "shop", raw(web)), true, 0, false},
		{"namespace watched", cl, []string{"other", "shop"}, req(admissionv1.Create, "shop", raw(web)), true, 0, true},
		{"undecodable pod", cl, nil, req(admissionv1.Create, "shop", []byte("{")), false, http.StatusBadRequest, false},
		{"list fails", failing, nil, req(admissionv1.Create, "shop", raw(web)), false, http.StatusInternalServerError, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &PodInjector{Client: tt.client, Decoder: admission.NewDecoder(scheme), Namespaces: tt.namespaces}
			resp := h.Handle(context.Background(), tt.req)
			if resp.Allowed != tt.wantAllowed {
				t.Fatalf("allowed = %v (%+v)", resp.Allowed, resp.Result)
			}
			if tt.wantCode != 0 && (resp.Result == nil || resp.Result.Code != tt.wantCode) {
				t.Fatalf("result %+v, want code %d", resp.Result, tt.wantCode)
			}
			if (len(resp.Patches) > 0) != tt.wantPatches {
				t.Fatalf("patches %v, want some: %v", resp.Patches, tt.wantPatches)
			}
			if tt.wantPatches {
				paths := make([]string, 0, len(resp.Patches))
				for _, p := range resp.Patches {
					paths = append(paths, p.Path)
				}
				joined := strings.Join(paths, " ")
				for _, want := range []string{"/spec/volumes", "/metadata/annotations", "/spec/containers/0/env", "/spec/initContainers/0/volumeMounts"} {
					if !strings.Contains(joined, want) {
						t.Errorf("no patch at %s: %s", want, joined)
					}
				}
			}
		})
	}
}
