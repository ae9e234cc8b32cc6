/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/onsi/gomega"
	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
	"github.com/hoststack/hoststack/internal/serviceaccount"
	"github.com/hoststack/hoststack/internal/testreq"
)

// The suite runs a real etcd and kube-apiserver with the CRDs of
// config/crd/bases and the webhook configuration of config/webhook, and the
// reconcilers and the pod webhook in a real manager, configured as
// cmd/hoststack-manager configures them. Tests talk to the API server
// directly (not through the manager's cache) and wait for conditions with
// Eventually.
var (
	testEnv    *envtest.Environment
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
		notRunning = missing // pure tests still run; envtest tests skip
		return m.Run()
	}
	// Errors only: a failing test prints what the reconcilers complained about.
	ctrl.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel)))

	testEnv = &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: dir,
		// The generated webhook configuration, pointed by envtest at the
		// manager's webhook server below with certificates of its own.
		WebhookInstallOptions: envtest.WebhookInstallOptions{
			Paths: []string{filepath.Join("..", "config", "webhook")},
		},
	}
	cfg, err := testEnv.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: start envtest:", err)
		return 1
	}
	defer func() {
		if err := testEnv.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop envtest:", err)
		}
	}()

	scheme, err := NewScheme()
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		return 1
	}
	if k8s, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: client:", err)
		return 1
	}
	// The manager runs as its service account, under the RBAC of
	// config/rbac: a permission a reconciler needs and the role lacks
	// fails the tests.
	if err := serviceaccount.Install(context.Background(), k8s, []string{filepath.Join("..", "config", "rbac")}); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: install config/rbac:", err)
		return 1
	}
	mgr, err := ctrl.NewManager(serviceaccount.Impersonate(cfg, serviceaccount.Manager, ""), ctrl.Options{
		Scheme:                 scheme,
		Cache:                  CacheOptions(DefaultAgentNamespace),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: manager:", err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := Setup(ctx, mgr, Options{MaxConcurrentReconciles: 2,
		PodWebhook: webhook.NewServer(webhook.Options{
			Host:    testEnv.WebhookInstallOptions.LocalServingHost,
			Port:    testEnv.WebhookInstallOptions.LocalServingPort,
			CertDir: testEnv.WebhookInstallOptions.LocalServingCertDir,
		})}); err != nil {
		cancel()
		fmt.Fprintln(os.Stderr, "FAIL: setup:", err)
		return 1
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := mgr.Start(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "manager stopped with error:", err)
		}
	}()
	code := m.Run()
	cancel()
	wg.Wait() // the manager must be gone before its API server stops
	return code
}

// publishedKey is where the manager publishes the material of
// kind namespace/name for the agents.
func publishedKey(kind, namespace, name string) client.ObjectKey {
	return client.ObjectKey{Namespace: DefaultAgentNamespace, Name: hsv1.PublishedSecretName(kind, namespace, name)}
}

// needAPIServer skips (or fails, in CI) a test that needs the API server.
func needAPIServer(t *testing.T) {
	t.Helper()
	if notRunning != "" {
		testreq.Missing(t, notRunning)
	}
}

// newG returns Gomega for t with timeouts that suit a loaded CI machine:
// conditions normally settle in milliseconds.
func newG(t *testing.T) *gomega.WithT {
	g := gomega.NewWithT(t)
	g.SetDefaultEventuallyTimeout(20 * time.Second)
	g.SetDefaultEventuallyPollingInterval(25 * time.Millisecond)
	return g
}

// testNamespace creates a namespace for one test, opted in to the pod
// webhook. Nothing deletes its contents (envtest runs no namespace
// controller), so tests use their own namespace and never see each
// other's objects.
func testNamespace(t *testing.T, prefix string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-",
		Labels: map[string]string{WebhookNamespaceLabel: WebhookNamespaceEnabled}}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	return ns.Name
}

// statusOf returns the conditions and observedGeneration of a hoststack
// object.
func statusOf(obj client.Object) ([]metav1.Condition, int64) {
	switch o := obj.(type) {
	case *hsv1.CertKeyPair:
		return o.Status.Conditions, o.Status.ObservedGeneration
	case *hsv1.SessionRule:
		return o.Status.Conditions, o.Status.ObservedGeneration
	case *hsv1.AppNamespace:
		return o.Status.Conditions, o.Status.ObservedGeneration
	}
	panic(fmt.Sprintf("statusOf: unexpected %T", obj))
}

// wantCondition waits until obj's condition t has status and reason and
// status.observedGeneration has caught up with metadata.generation, then
// returns the condition. obj is refreshed in place.
func wantCondition(g *gomega.WithT, obj client.Object, condType string, status metav1.ConditionStatus, reason string) metav1.Condition {
	var got metav1.Condition
	key := client.ObjectKeyFromObject(obj)
	g.Eventually(func(g gomega.Gomega) {
		g.Expect(k8s.Get(context.Background(), key, obj)).To(gomega.Succeed())
		conds, observed := statusOf(obj)
		c := meta.FindStatusCondition(conds, condType)
		g.Expect(c).NotTo(gomega.BeNil(), "condition %s not set", condType)
		g.Expect(observed).To(gomega.Equal(obj.GetGeneration()), "observedGeneration")
		g.Expect(c.ObservedGeneration).To(gomega.Equal(obj.GetGeneration()), "condition observedGeneration")
		g.Expect(c.Status).To(gomega.Equal(status), "%s status (reason %s: %s)", condType, c.Reason, c.Message)
		g.Expect(c.Reason).To(gomega.Equal(reason), "%s reason (message %s)", condType, c.Message)
		got = *c
	}).Should(gomega.Succeed(), "%T %s", obj, key)
	return got
}
