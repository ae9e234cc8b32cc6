/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
	"github.com/hoststack/hoststack/internal/testreq"
)

// kubectl runs the kubectl next to the API server (or one on PATH) against
// the test API server and returns its combined output.
func kubectl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	path := testEnv.ControlPlane.KubectlPath
	if _, err := os.Stat(path); path == "" || err != nil {
		if path, err = exec.LookPath("kubectl"); err != nil {
			testreq.Missing(t, "kubectl is neither in KUBEBUILDER_ASSETS nor on PATH")
		}
	}
	opts := testEnv.ControlPlane.KubeCtl().Opts
	out, err := exec.Command(path, append(append([]string{}, opts...), args...)...).CombinedOutput()
	return string(out), err
}

// TestSamplesBecomeReady applies config/samples with kubectl, as a user
// would, and waits for every sample to become Ready.
func TestSamplesBecomeReady(t *testing.T) {
	needAPIServer(t)
	g := newG(t)
	ns := testNamespace(t, "samples")
	out, err := kubectl(t, "apply", "-n", ns, "-f", filepath.Join("..", "config", "samples"))
	if err != nil {
		t.Fatalf("kubectl apply -f config/samples: %v\n%s", err, out)
	}
	t.Logf("kubectl: %s", strings.TrimSpace(out))

	meta := func(name string) metav1.ObjectMeta { return metav1.ObjectMeta{Namespace: ns, Name: name} }
	wantCondition(g, &hsv1.AppNamespace{ObjectMeta: meta("demo")}, hsv1.ConditionReady, metav1.ConditionFalse, hsv1.ReasonNoNodesSelected)
	wantCondition(g, &hsv1.SessionRule{ObjectMeta: meta("demo-deny-metadata")}, hsv1.ConditionAccepted, metav1.ConditionTrue, hsv1.ReasonAccepted)
	pair := &hsv1.CertKeyPair{ObjectMeta: meta("demo-tls")}
	wantCondition(g, pair, hsv1.ConditionReady, metav1.ConditionTrue, hsv1.ReasonValid)
	g.Expect(pair.Status.DNSNames).To(gomega.ContainElement("demo.hoststack.example"))

	// Counters read 0, not blank, in `kubectl get`.
	out, err = kubectl(t, "get", "-n", ns, "appnamespace", "demo", "-o", "jsonpath={.status.selectedNodes}/{.status.readyNodes}")
	g.Expect(err).NotTo(gomega.HaveOccurred(), out)
	g.Expect(out).To(gomega.Equal("0/0"))
}
