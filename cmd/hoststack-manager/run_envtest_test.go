/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
	"github.com/hoststack/hoststack/controllers"
	"github.com/hoststack/hoststack/internal/testreq"
)

// TestMakeRunWithOnlyCRDs runs the manager binary as `make run` does
// (--leader-elect=false, every other flag at its default but the listen
// addresses, no POD_NAMESPACE) against a real API server that has only
// the CRDs: no hoststack-system namespace, no webhook configuration. The
// webhook cannot get its certificate, and that must be reported — an
// Event, the metrics, the "webhook" readiness check — while every object
// gets its status; once the namespace exists the webhook recovers by
// itself.
func TestMakeRunWithOnlyCRDs(t *testing.T) {
	assets := testreq.Assets(t)
	g := gomega.NewWithT(t)
	g.SetDefaultEventuallyTimeout(90 * time.Second)
	g.SetDefaultEventuallyPollingInterval(100 * time.Millisecond)
	ctx := context.Background()

	env := &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: assets,
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("start envtest: %v", err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	scheme, err := controllers.NewScheme()
	g.Expect(err).NotTo(gomega.HaveOccurred())
	k8s, err := client.New(cfg, client.Options{Scheme: scheme})
	g.Expect(err).NotTo(gomega.HaveOccurred())

	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	g.Expect(os.WriteFile(kubeconfig, env.KubeConfig, 0o600)).To(gomega.Succeed())
	bin := filepath.Join(dir, "hoststack-manager")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	probes, metrics, webhookPort := freePort(t), freePort(t), freePort(t)
	cmd := exec.Command(bin, "--leader-elect=false",
		"--health-probe-bind-address=127.0.0.1:"+strconv.Itoa(probes),
		"--metrics-bind-address=127.0.0.1:"+strconv.Itoa(metrics), "--metrics-secure=false",
		"--webhook-port="+strconv.Itoa(webhookPort), "--webhook-cert-dir="+filepath.Join(dir, "certs"))
	cmd.Env = append(envWithout("POD_NAMESPACE", "KUBECONFIG"), "KUBECONFIG="+kubeconfig)
	var logs lockedBuffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	g.Expect(cmd.Start()).To(gomega.Succeed())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("manager output:\n%s", logs.String())
		}
	})

	// The objects of config/samples, applied by the user after make run.
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "makerun-"}}
	g.Expect(k8s.Create(ctx, ns)).To(gomega.Succeed())
	kubectl := filepath.Join(assets, "kubectl")
	if out, err := exec.Command(kubectl, "--kubeconfig", kubeconfig, "apply", "-n", ns.Name,
		"-f", filepath.Join("..", "..", "config", "samples")).CombinedOutput(); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	key := func(name string) client.ObjectKey { return client.ObjectKey{Namespace: ns.Name, Name: name} }
	hasStatus := func(obj client.Object, conds func() ([]metav1.Condition, int64)) {
		g.Eventually(func(g gomega.Gomega) {
			select {
			case err := <-exited:
				exited <- err
				g.Expect(err).NotTo(gomega.HaveOccurred(), "the manager exited")
			default:
			}
			g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(obj), obj)).To(gomega.Succeed())
			cs, observed := conds()
			g.Expect(meta.FindStatusCondition(cs, hsv1.ConditionReady)).NotTo(gomega.BeNil(), "%T has no Ready condition", obj)
			g.Expect(observed).To(gomega.Equal(obj.GetGeneration()))
		}).Should(gomega.Succeed(), "%T %s gets its status", obj, obj.GetName())
	}
	pair := &hsv1.CertKeyPair{}
	pair.Namespace, pair.Name = key("demo-tls").Namespace, "demo-tls"
	hasStatus(pair, func() ([]metav1.Condition, int64) { return pair.Status.Conditions, pair.Status.ObservedGeneration })
	rule := &hsv1.SessionRule{}
	rule.Namespace, rule.Name = ns.Name, "demo-deny-metadata"
	hasStatus(rule, func() ([]metav1.Condition, int64) { return rule.Status.Conditions, rule.Status.ObservedGeneration })
	an := &hsv1.AppNamespace{}
	an.Namespace, an.Name = ns.Name, "demo"
	hasStatus(an, func() ([]metav1.Condition, int64) { return an.Status.Conditions, an.Status.ObservedGeneration })

	// The webhook says why it does not serve, and only it.
	g.Eventually(func(g gomega.Gomega) {
		var evs eventsv1.EventList
		g.Expect(k8s.List(ctx, &evs, client.InNamespace(metav1.NamespaceDefault))).To(gomega.Succeed())
		var found bool
		for _, e := range evs.Items {
			if e.Reason == controllers.ReasonWebhookCertFailed && e.Regarding.Kind == "MutatingWebhookConfiguration" &&
				e.Regarding.Name == "hoststack-pod-injector" && strings.Contains(e.Note, "hoststack-system") {
				found = true
			}
		}
		g.Expect(found).To(gomega.BeTrue(), "a %s Event on the webhook configuration", controllers.ReasonWebhookCertFailed)
	}).Should(gomega.Succeed())
	base := "http://127.0.0.1:" + strconv.Itoa(probes)
	code, body := get(t, base+"/readyz/webhook")
	g.Expect(code).To(gomega.Equal(http.StatusInternalServerError), body)
	code, body = get(t, base+"/readyz/readyz")
	g.Expect(code).To(gomega.Equal(http.StatusOK), "the controllers' own readiness: %s", body)
	code, body = get(t, "http://127.0.0.1:"+strconv.Itoa(metrics)+"/metrics")
	g.Expect(code).To(gomega.Equal(http.StatusOK))
	g.Expect(body).To(gomega.ContainSubstring("hoststack_webhook_certificate_ready 0"))
	g.Expect(body).To(gomega.MatchRegexp(`hoststack_webhook_certificate_failures_total [1-9]`))

	// A change still reconciles while the webhook is down.
	g.Expect(k8s.Get(ctx, key("demo-deny-metadata"), rule)).To(gomega.Succeed())
	rule.Spec.Tag = "changed"
	g.Expect(k8s.Update(ctx, rule)).To(gomega.Succeed())
	hasStatus(rule, func() ([]metav1.Condition, int64) { return rule.Status.Conditions, rule.Status.ObservedGeneration })

	// The namespace appears (the chart is installed): the webhook recovers.
	g.Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "hoststack-system"}})).To(gomega.Succeed())
	g.Eventually(func() int {
		code, _ := get(t, base+"/readyz/webhook")
		return code
	}).Should(gomega.Equal(http.StatusOK))
	var sec corev1.Secret
	g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: "hoststack-system", Name: "hoststack-webhook-cert"}, &sec)).To(gomega.Succeed())
	_, body = get(t, "http://127.0.0.1:"+strconv.Itoa(metrics)+"/metrics")
	g.Expect(body).To(gomega.ContainSubstring("hoststack_webhook_certificate_ready 1"))
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// envWithout is the test's environment without the named variables.
func envWithout(names ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		drop := false
		for _, n := range names {
			drop = drop || name == n
		}
		if !drop {
			out = append(out, kv)
		}
	}
	return out
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
