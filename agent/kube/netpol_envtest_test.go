package kube

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hsclient "github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/internal/echotest"
	"github.com/hoststack/hoststack/internal/netnstest"
)

// TestAgentEnforcesNetworkPolicy: three pods of one AppNamespace, each a
// real network namespace announced by the real CNI plugin, talk
// cut-through; NetworkPolicies created through the API server change what
// new sessions may do within a second: default-deny, allow-by-label with a
// named port, a port range (endPort), a namespace selector (following the
// namespace's labels), an egress-only policy, an ipBlock that excludes the
// peer. A dropped connect times out (ETIMEDOUT, naming the policy), the
// drop metric names the isolating policy, a session open before a policy
// keeps working, and a session through the kernel transport is left to
// the kernel: it leaves from the pod's own network namespace, whatever the
// policies say.
func TestAgentEnforcesNetworkPolicy(t *testing.T) {
	needAPIServer(t)
	p1, p2 := netnstest.NewPair(t), netnstest.NewPair(t)
	g := gomega.NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	nodeName, ns := testNode(ctx, t, g, "netpol")
	createYAML(t, ctx, `apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: shop, namespace: `+ns+`}
spec:
  podSelector: {matchLabels: {hoststack: "yes"}}
`)
	// a kernel server outside the pods, in db's namespace on the veth
	outside := netnstest.Listen(t, p1.B.Path(), "tcp", "10.99.0.2:0")
	outsidePeers := echotest.Serve(outside)

	ap := startAgent(t, nodeName, "--connect-timeout", "300ms")
	g.Eventually(func() bool { return isSocket(ap.path("cni.sock")) }).WithTimeout(30 * time.Second).WithPolling(50 * time.Millisecond).Should(gomega.BeTrue())

	type podNet struct {
		name, netns, ip string
		ports           []corev1.ContainerPort
	}
	pods := []podNet{
		{"web", p1.A.Path(), "10.77.0.1", nil},
		{"db", p1.B.Path(), "10.77.0.2", []corev1.ContainerPort{{Name: "pg", ContainerPort: 5432}}},
		{"api", p2.A.Path(), "10.77.0.3", []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}},
	}
	apps := map[string]*hsclient.App{}
	for _, p := range pods {
		// each pod's own address, on its namespace's loopback
		netnstest.Cmd(t, "-n", strings.TrimPrefix(p.netns, "/var/run/netns/"), "addr", "add", p.ip+"/32", "dev", "lo")
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: p.name, Labels: map[string]string{"app": p.name, "hoststack": "yes"}},
			Spec: corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "app", Image: "app", Ports: p.ports}}}}
		g.Expect(k8s.Create(ctx, pod)).To(gomega.Succeed())
		cniAdd(t, ap, pod, p.netns, p.ip+"/32")
		sock := ap.path("hp", ns, p.name, "session.sock")
		g.Eventually(func() bool { return isSocket(sock) }).WithTimeout(20 * time.Second).WithPolling(50 * time.Millisecond).Should(gomega.BeTrue())
		app, err := hsclient.Attach(ctx, hsclient.Options{Socket: sock, Name: p.name})
		g.Expect(err).NotTo(gomega.HaveOccurred())
		t.Cleanup(func() { app.Close() })
		apps[p.name] = app
	}
	for _, l := range []struct{ app, addr string }{{"db", ":5432"}, {"api", ":8080"}, {"api", ":8200"}} {
		ln, err := apps[l.app].Listen("tcp", l.addr)
		g.Expect(err).NotTo(gomega.HaveOccurred())
		echotest.Serve(ln)
	}
	ips := map[string]string{"web": "10.77.0.1", "db": "10.77.0.2", "api": "10.77.0.3"}
	dial := func(from, to string, port int) error {
		dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
		defer dcancel()
		c, err := apps[from].Dial(dctx, "tcp", fmt.Sprintf("%s:%d", ips[to], port))
		if err != nil {
			return err
		}
		defer c.Close()
		if want := ips[from]; c.LocalAddr().(*net.TCPAddr).IP.String() != want {
			return fmt.Errorf("cut-through session from %s has local address %s, want %s", from, c.LocalAddr(), want)
		}
		return echotest.RoundTrip(c, []byte("hello "+to), 5*time.Second)
	}
	allowed := func(from, to string, port int) {
		t.Helper()
		g.Eventually(func() error { return dial(from, to, port) }).WithTimeout(time.Second).WithPolling(20*time.Millisecond).
			Should(gomega.Succeed(), "%s -> %s:%d", from, to, port)
	}
	dropped := func(from, to string, port int, policy string) {
		t.Helper()
		g.Eventually(func() error { return dial(from, to, port) }).WithTimeout(time.Second).WithPolling(20*time.Millisecond).
			Should(gomega.SatisfyAll(
				gomega.WithTransform(func(err error) bool { return errors.Is(err, syscall.ETIMEDOUT) }, gomega.BeTrue()),
				gomega.MatchError(gomega.ContainSubstring(policy))), "%s -> %s:%d", from, to, port)
	}
	apply := func(doc string) { createYAML(t, ctx, "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n"+doc) }
	remove := func(name string) {
		g.Expect(k8s.Delete(ctx, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}})).To(gomega.Succeed())
	}

	// No policy: everything goes.
	allowed("web", "db", 5432)
	allowed("api", "db", 5432)
	before, err := apps["web"].Dial(ctx, "tcp", ips["db"]+":5432")
	g.Expect(err).NotTo(gomega.HaveOccurred())
	defer before.Close()

	// Default-deny ingress: new sessions are dropped, naming the policy;
	// the session opened before is kept.
	apply(`metadata: {name: default-deny, namespace: ` + ns + `}
spec: {podSelector: {}, policyTypes: [Ingress]}`)
	applied := time.Now()
	var lastStart time.Time
	g.Eventually(func() error {
		lastStart = time.Now()
		return dial("web", "db", 5432)
	}).WithTimeout(time.Second).WithPolling(time.Millisecond).Should(gomega.SatisfyAll(
		gomega.WithTransform(func(err error) bool { return errors.Is(err, syscall.ETIMEDOUT) }, gomega.BeTrue()),
		gomega.MatchError(gomega.ContainSubstring(ns+"/default-deny"))))
	// (a dial started this long after the create returned was dropped)
	t.Logf("the NetworkPolicy took effect within %v of its creation", lastStart.Sub(applied).Round(time.Millisecond))
	g.Expect(echotest.RoundTrip(before, []byte("kept"), 5*time.Second)).To(gomega.Succeed())
	g.Eventually(func() (string, error) {
		_, body, err := scrape(t, ap.metricsAddr, metricsToken(t))
		return body, err
	}).WithTimeout(5 * time.Second).Should(gomega.MatchRegexp(
		`hoststack_agent_netpol_drops_total\{app_namespace="` + ns + `/shop",direction="ingress",policy="` + ns + `/default-deny"\} [1-9]`))

	// Allow by label, on a named port of the destination.
	apply(`metadata: {name: db-from-web, namespace: ` + ns + `}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: pg}]}]`)
	allowed("web", "db", 5432)
	dropped("api", "db", 5432, ns+"/db-from-web")

	// A port range with endPort.
	apply(`metadata: {name: api-range, namespace: ` + ns + `}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{ports: [{port: 8000, endPort: 8100}]}]`)
	allowed("web", "api", 8080)
	dropped("web", "api", 8200, ns+"/api-range")

	// A namespace selector follows the namespace's labels.
	remove("db-from-web")
	apply(`metadata: {name: db-from-blue, namespace: ` + ns + `}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}]}]`)
	dropped("api", "db", 5432, ns+"/db-from-blue")
	var nso corev1.Namespace
	g.Expect(k8s.Get(ctx, client.ObjectKey{Name: ns}, &nso)).To(gomega.Succeed())
	nso.Labels["team"] = "blue"
	g.Expect(k8s.Update(ctx, &nso)).To(gomega.Succeed())
	allowed("api", "db", 5432)

	// Egress-only: web may reach api only; db's ingress would allow it.
	apply(`metadata: {name: web-out, namespace: ` + ns + `}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: api}}}]}]`)
	dropped("web", "db", 5432, ns+"/web-out")
	allowed("web", "api", 8080)

	// The kernel path is the kernel's: web's session to a server outside
	// leaves from web's own namespace (its veth address) though web-out
	// would refuse it; the CNI enforces that path.
	c, err := apps["web"].Dial(ctx, "tcp", outside.Addr().String())
	g.Expect(err).NotTo(gomega.HaveOccurred())
	g.Expect(echotest.RoundTrip(c, []byte("through the kernel"), 5*time.Second)).To(gomega.Succeed())
	c.Close()
	g.Expect((<-outsidePeers).String()).To(gomega.HavePrefix("10.99.0.1:"))

	// An ipBlock that excludes the peer.
	remove("web-out")
	remove("db-from-blue")
	apply(`metadata: {name: db-from-net, namespace: ` + ns + `}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress: [{from: [{ipBlock: {cidr: 10.77.0.0/24, except: [10.77.0.3/32]}}]}]`)
	allowed("web", "db", 5432)
	dropped("api", "db", 5432, ns+"/db-from-net")

	// `hoststack-agent rules` shows the compiled entries.
	bin, err := agentBinary()
	g.Expect(err).NotTo(gomega.HaveOccurred())
	out, err := exec.CommandContext(ctx, bin, "rules", "--run-dir", ap.path("run")).CombinedOutput()
	g.Expect(err).NotTo(gomega.HaveOccurred(), "%s", out)
	t.Logf("hoststack-agent rules:\n%s", out)
	g.Expect(string(out)).To(gomega.MatchRegexp(ns + `/db +ingress +` + ns + `/db-from-net +10\.77\.0\.0/24 except 10\.77\.0\.3/32 +\*`))
	g.Expect(string(out)).To(gomega.MatchRegexp(ns + `/api +ingress +` + ns + `/api-range +\* +TCP/8000-8100`))
	g.Expect(string(out)).To(gomega.MatchRegexp(ns + `/web +ingress +` + ns + `/default-deny +\(none\) +-`))

	// Policies deleted: everything goes again.
	for _, n := range []string{"default-deny", "api-range", "db-from-net"} {
		remove(n)
	}
	allowed("api", "db", 5432)
	allowed("web", "api", 8200)
}
