/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1alpha1_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
	"github.com/hoststack/hoststack/internal/testreq"
)

// The suite runs a real etcd and kube-apiserver with the generated CRDs
// installed, and checks what the API server itself accepts and refuses:
// no controller runs here.
var (
	env        *envtest.Environment
	k8s        client.Client
	notRunning string // why the API server is not running, if it is not
)

func TestMain(m *testing.M) { os.Exit(runSuite(m)) }

func runSuite(m *testing.M) int {
	dir, missing, err := testreq.AssetsForMain()
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	if missing != "" {
		notRunning = missing
		return m.Run()
	}
	env = &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: dir,
	}
	cfg, err := env.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: start envtest (the CRDs must install, CEL cost included):", err)
		return 1
	}
	defer func() {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop envtest:", err)
		}
	}()
	scheme, err := newScheme()
	if err == nil {
		k8s, err = client.New(cfg, client.Options{Scheme: scheme})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: client:", err)
		return 1
	}
	return m.Run()
}

func newScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := corev1.AddToScheme(s); err != nil {
		return nil, err
	}
	return s, hsv1.AddToScheme(s)
}

// needAPIServer skips (or fails, in CI) a test that needs the API server.
func needAPIServer(t *testing.T) {
	t.Helper()
	if notRunning != "" {
		testreq.Missing(t, notRunning)
	}
}

// testNamespace creates a namespace for one test and deletes it after.
func testNamespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "api-"}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), ns) })
	return ns.Name
}

// kubectl runs the kubectl next to the API server (or one on PATH),
// configured for the test API server, and returns its combined output.
func kubectl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	k := env.ControlPlane.KubeCtl()
	path := env.ControlPlane.KubectlPath
	if _, err := os.Stat(path); path == "" || err != nil {
		if path, err = exec.LookPath("kubectl"); err != nil {
			testreq.Missing(t, "kubectl is neither in KUBEBUILDER_ASSETS nor on PATH")
		}
	}
	cmd := exec.Command(path, append(append([]string{}, k.Opts...), args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}
