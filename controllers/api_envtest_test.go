/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/onsi/gomega"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"
)

// TestAPIConventions checks, against the real API server, the API's
// Kubernetes conventions: acronyms keep their case in JSON (rxFIFOSize;
// the old rxFifoSize is an unknown field under strict validation), and
// CertKeyPair's Not After column is a date-time that kubectl prints as the
// date (type date would print a future time as "<invalid>").
func TestAPIConventions(t *testing.T) {
	needAPIServer(t)
	g := newG(t)
	ctx := context.Background()
	ns := testNamespace(t, "apiconv")

	an := func(segments string) *unstructured.Unstructured {
		u := &unstructured.Unstructured{}
		g.Expect(yaml.Unmarshal([]byte(`apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: fifos, namespace: `+ns+`}
spec:
  podSelector: {}
  segments: {`+segments+`}
`), &u.Object)).To(gomega.Succeed())
		return u
	}
	strict := client.WithFieldValidation(k8s, "Strict")
	g.Expect(strict.Create(ctx, an("segmentSize: 8Mi, rxFifoSize: 2Mi"))).To(gomega.MatchError(gomega.ContainSubstring(`unknown field "spec.segments.rxFifoSize"`)))
	g.Expect(strict.Create(ctx, an("segmentSize: 8Mi, rxFIFOSize: 2Mi, txFIFOSize: 1Mi"))).To(gomega.Succeed())
	got := &unstructured.Unstructured{}
	got.SetAPIVersion("hoststack.dev/v1alpha1")
	got.SetKind("AppNamespace")
	g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "fifos"}, got)).To(gomega.Succeed())
	v, _, _ := unstructured.NestedString(got.Object, "spec", "segments", "rxFIFOSize")
	g.Expect(v).To(gomega.Equal("2Mi"))

	out, err := kubectl(t, "apply", "-n", ns, "-f", filepath.Join("..", "config", "samples", "hoststack_v1alpha1_certkeypair.yaml"))
	g.Expect(err).NotTo(gomega.HaveOccurred(), out)
	g.Eventually(func(g gomega.Gomega) {
		out, err := kubectl(t, "get", "-n", ns, "certkeypair", "demo-tls")
		g.Expect(err).NotTo(gomega.HaveOccurred(), out)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		g.Expect(lines).To(gomega.HaveLen(2), out)
		g.Expect(lines[0]).To(gomega.ContainSubstring("NOT AFTER"))
		g.Expect(lines[1]).To(gomega.MatchRegexp(regexp.QuoteMeta("2036-11-26T02:00:00Z")))
	}).Should(gomega.Succeed())
	crd := &unstructured.Unstructured{}
	crd.SetAPIVersion("apiextensions.k8s.io/v1")
	crd.SetKind("CustomResourceDefinition")
	g.Expect(k8s.Get(ctx, client.ObjectKey{Name: "certkeypairs.hoststack.dev"}, crd)).To(gomega.Succeed())
	versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
	g.Expect(versions).NotTo(gomega.BeEmpty())
	cols, _, _ := unstructured.NestedSlice(versions[0].(map[string]any), "additionalPrinterColumns")
	g.Expect(cols).To(gomega.ContainElement(gomega.And(
		gomega.HaveKeyWithValue("name", "Not After"), gomega.HaveKeyWithValue("type", "string"),
		gomega.HaveKeyWithValue("format", "date-time"))))
}
