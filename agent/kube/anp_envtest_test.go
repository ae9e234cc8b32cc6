package kube

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	anpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha1"

	hsclient "github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/internal/echotest"
	"github.com/hoststack/hoststack/internal/netnstest"
)

// installANPCRDs creates the AdminNetworkPolicy and
// BaselineAdminNetworkPolicy CRDs of the network-policy-api module the
// agent is built with, and waits until they serve.
func installANPCRDs(t *testing.T, ctx context.Context) {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/network-policy-api").Output()
	if err != nil {
		t.Fatalf("finding the network-policy-api module: %v", err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "config", "crd")
	for _, f := range []string{"policy.networking.k8s.io_adminnetworkpolicies.yaml", "policy.networking.k8s.io_baselineadminnetworkpolicies.yaml"} {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		createYAML(t, ctx, string(data), true)
	}
	gomega.NewWithT(t).Eventually(func() error {
		if err := k8s.List(ctx, &anpv1.AdminNetworkPolicyList{}); err != nil {
			return err
		}
		return k8s.List(ctx, &anpv1.BaselineAdminNetworkPolicyList{})
	}).WithTimeout(20 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.Succeed())
}

// TestAgentEnforcesAdminNetworkPolicy: with --admin-network-policy, an
// AdminNetworkPolicy Deny wins over a NetworkPolicy that allows, a Pass of
// higher priority hands the session back to the NetworkPolicy, and the
// BaselineAdminNetworkPolicy denies what no NetworkPolicy isolates, until
// one does.
func TestAgentEnforcesAdminNetworkPolicy(t *testing.T) {
	needAPIServer(t)
	p := netnstest.NewPair(t)
	g := gomega.NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	installANPCRDs(t, ctx)
	nodeName, ns := testNode(ctx, t, g, "anp")
	createYAML(t, ctx, `apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: shop, namespace: `+ns+`}
spec:
  podSelector: {matchLabels: {hoststack: "yes"}}
`)
	ap := startAgent(t, nodeName, "--connect-timeout", "200ms", "--admin-network-policy")
	g.Eventually(func() bool { return isSocket(ap.path("cni.sock")) }).WithTimeout(30 * time.Second).WithPolling(50 * time.Millisecond).Should(gomega.BeTrue())
	ips := map[string]string{"web": "10.78.0.1", "db": "10.78.0.2"}
	apps := map[string]*hsclient.App{}
	for name, netns := range map[string]string{"web": p.A.Path(), "db": p.B.Path()} {
		netnstest.Cmd(t, "-n", strings.TrimPrefix(netns, "/var/run/netns/"), "addr", "add", ips[name]+"/32", "dev", "lo")
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": name, "hoststack": "yes"}},
			Spec: corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "app", Image: "app"}}}}
		g.Expect(k8s.Create(ctx, pod)).To(gomega.Succeed())
		cniAdd(t, ap, pod, netns, ips[name]+"/32")
		sock := ap.path("hp", ns, name, "session.sock")
		g.Eventually(func() bool { return isSocket(sock) }).WithTimeout(20 * time.Second).WithPolling(50 * time.Millisecond).Should(gomega.BeTrue())
		app, err := hsclient.Attach(ctx, hsclient.Options{Socket: sock, Name: name})
		g.Expect(err).NotTo(gomega.HaveOccurred())
		t.Cleanup(func() { app.Close() })
		apps[name] = app
	}
	ln, err := apps["db"].Listen("tcp", ":5432")
	g.Expect(err).NotTo(gomega.HaveOccurred())
	echotest.Serve(ln)
	dial := func() error {
		dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
		defer dcancel()
		c, err := apps["web"].Dial(dctx, "tcp", ips["db"]+":5432")
		if err != nil {
			return err
		}
		defer c.Close()
		return echotest.RoundTrip(c, []byte("hello"), 5*time.Second)
	}
	allowed := func() {
		t.Helper()
		g.Eventually(dial).WithTimeout(time.Second).WithPolling(20 * time.Millisecond).Should(gomega.Succeed())
	}
	dropped := func(by string) {
		t.Helper()
		g.Eventually(dial).WithTimeout(time.Second).WithPolling(20 * time.Millisecond).Should(gomega.SatisfyAll(
			gomega.WithTransform(func(err error) bool { return errors.Is(err, syscall.ETIMEDOUT) }, gomega.BeTrue()),
			gomega.MatchError(gomega.ContainSubstring(by))))
	}
	nsSel := `{matchLabels: {kubernetes.io/metadata.name: ` + ns + `}}`

	allowed()
	createYAML(t, ctx, `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-open, namespace: `+ns+`}
spec: {podSelector: {matchLabels: {app: db}}, ingress: [{}]}`)
	createYAML(t, ctx, `apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: `+ns+`-deny-web}
spec:
  priority: 20
  subject: {pods: {namespaceSelector: `+nsSel+`, podSelector: {matchLabels: {app: db}}}}
  ingress:
  - {name: no-web, action: Deny, from: [{pods: {namespaces: {namespaceSelector: `+nsSel+`}, podSelector: {matchLabels: {app: web}}}}]}`)
	t.Cleanup(func() {
		_ = k8s.Delete(context.Background(), &anpv1.AdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: ns + "-deny-web"}})
	})
	dropped("AdminNetworkPolicy " + ns + "-deny-web rule no-web")
	g.Eventually(func() (string, error) {
		_, body, err := scrape(t, ap.metricsAddr, metricsToken(t))
		return body, err
	}).WithTimeout(5 * time.Second).Should(gomega.ContainSubstring(`policy="AdminNetworkPolicy/` + ns + `-deny-web"`))

	createYAML(t, ctx, `apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: `+ns+`-pass}
spec:
  priority: 10
  subject: {namespaces: `+nsSel+`}
  ingress:
  - {action: Pass, from: [{namespaces: {namespaceSelector: {}}}], ports: [{portNumber: {protocol: TCP, port: 5432}}]}`)
	t.Cleanup(func() {
		_ = k8s.Delete(context.Background(), &anpv1.AdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: ns + "-pass"}})
	})
	allowed() // passed to db-open, which allows

	// The baseline denies what no NetworkPolicy isolates.
	g.Expect(k8s.Delete(ctx, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "db-open"}})).To(gomega.Succeed())
	createYAML(t, ctx, `apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: default}
spec:
  subject: {namespaces: `+nsSel+`}
  ingress:
  - {name: closed, action: Deny, from: [{namespaces: {namespaceSelector: {}}}]}`)
	t.Cleanup(func() {
		_ = k8s.Delete(context.Background(), &anpv1.BaselineAdminNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "default"}})
	})
	dropped("BaselineAdminNetworkPolicy default rule closed")
	createYAML(t, ctx, `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: `+ns+`}
spec: {podSelector: {matchLabels: {app: db}}, ingress: [{from: [{podSelector: {matchLabels: {app: web}}}]}]}`)
	allowed()
}
