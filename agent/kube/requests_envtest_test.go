package kube

import (
	"context"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/onsi/gomega"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
	hsclient "github.com/hoststack/hoststack/client"
)

// requestCounts reads the API server's own apiserver_request_total and
// sums it by "VERB resource[/subresource]".
func requestCounts(t *testing.T, ctx context.Context) map[string]float64 {
	t.Helper()
	cs, err := kubernetes.NewForConfig(testEnv.Config)
	if err != nil {
		t.Fatal(err)
	}
	body, err := cs.Discovery().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		t.Fatalf("API server /metrics: %v", err)
	}
	label := regexp.MustCompile(`(\w+)="([^"]*)"`)
	out := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, "apiserver_request_total{") {
			continue
		}
		end := strings.LastIndex(line, "}")
		v, err := strconv.ParseFloat(strings.TrimSpace(line[end+1:]), 64)
		if err != nil {
			t.Fatalf("parse %q: %v", line, err)
		}
		l := map[string]string{}
		for _, m := range label.FindAllStringSubmatch(line[:end], -1) {
			l[m[1]] = m[2]
		}
		res := l["resource"]
		if l["subresource"] != "" {
			res += "/" + l["subresource"]
		}
		out[l["verb"]+" "+res] += v
	}
	return out
}

// perMinute is the difference of two requestCounts over window, scaled
// to a minute, without the zeros.
func perMinute(before, after map[string]float64, window time.Duration) map[string]float64 {
	d := map[string]float64{}
	for k, v := range after {
		if n := v - before[k]; n > 0 {
			d[k] = n * float64(time.Minute) / float64(window)
		}
	}
	return d
}

func isWrite(key string) bool {
	verb, _, _ := strings.Cut(key, " ")
	switch verb {
	case "POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION":
		return true
	}
	return false
}

func format(rates map[string]float64) string {
	keys := make([]string, 0, len(rates))
	for k := range rates {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "\n  %-40s %6.1f/min", k, rates[k])
	}
	return b.String()
}

// TestAPIRequestsOfANode measures, with the API server's own request
// metrics, what one node (its agent, and the manager's reconciles of what
// it reports) costs the API server per minute: idle, and under traffic
// (apps opening and closing sessions all the time). Nothing changes in
// either window, so nothing may be written but the node Lease; Secrets
// come from watches, not GETs. The agent refreshes its status every
// second (--status-interval 1s), so a status written because counters
// moved would show at once.
func TestAPIRequestsOfANode(t *testing.T) {
	needAPIServer(t)
	g := gomega.NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	const window = 20 * time.Second

	// What earlier tests left (their agents are gone) must not move
	// during the windows: their Leases would expire in one, and the
	// manager would rightly write that down.
	g.Expect(k8s.DeleteAllOf(ctx, &hsv1.SessionNode{})).To(gomega.Succeed())
	g.Expect(k8s.DeleteAllOf(ctx, &coordinationv1.Lease{}, client.InNamespace(DefaultAgentNamespace))).To(gomega.Succeed())
	g.Eventually(func(g gomega.Gomega) {
		var sns hsv1.SessionNodeList
		g.Expect(k8s.List(ctx, &sns)).To(gomega.Succeed())
		g.Expect(sns.Items).To(gomega.BeEmpty())
	}).WithTimeout(10 * time.Second).WithPolling(50 * time.Millisecond).Should(gomega.Succeed())

	runs++
	nodeName, ns := fmt.Sprintf("req-node-%d", runs), fmt.Sprintf("req-%d", runs)
	t.Cleanup(func() {
		_ = k8s.DeleteAllOf(context.Background(), &hsv1.AppNamespace{}, client.InNamespace(ns))
		_ = k8s.DeleteAllOf(context.Background(), &hsv1.CertKeyPair{}, client.InNamespace(ns))
	})
	g.Expect(k8s.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName}})).To(gomega.Succeed())
	g.Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(gomega.Succeed())
	// An attach secret and a CertKeyPair: Secrets the old agent read with
	// a GET at every status interval.
	g.Expect(k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "attach"},
		StringData: map[string]string{"secret": "s3cret"}})).To(gomega.Succeed())
	g.Expect(k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "tls"}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{corev1.TLSCertKey: []byte("not a certificate"), corev1.TLSPrivateKeyKey: []byte("no key")}})).To(gomega.Succeed())
	createYAML(t, ctx, `apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: web, namespace: `+ns+`}
spec:
  podSelector: {matchLabels: {app: web}}
`)
	createYAML(t, ctx, `apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: locked, namespace: `+ns+`}
spec:
  podSelector: {matchLabels: {app: locked}}
  secretRef: {name: attach}
`)
	createYAML(t, ctx, `apiVersion: hoststack.dev/v1alpha1
kind: CertKeyPair
metadata: {name: tls, namespace: `+ns+`}
spec: {secretRef: {name: tls}}
`)
	createYAML(t, ctx, `apiVersion: hoststack.dev/v1alpha1
kind: SessionRule
metadata: {name: no-metadata, namespace: `+ns+`}
spec:
  appNamespaceRef: {name: web}
  scope: Local
  transport: TCP
  local: {cidr: 0.0.0.0/0, port: 0}
  remote: {cidr: 169.254.169.254/32, port: 80}
  action: {type: Deny}
`)
	// apiserver_request_total cannot tell callers apart: the API
	// server's own controllers (its identity Lease, endpoints, OpenAPI)
	// count too. A window before the node exists measures them, and the
	// node's figures are what comes on top.
	var baseline map[string]float64
	measure := func(name string) map[string]float64 {
		before := requestCounts(t, ctx)
		time.Sleep(window) // the measurement window, not a synchronisation
		rates := perMinute(before, requestCounts(t, ctx), window)
		if baseline == nil {
			t.Logf("no node yet, API requests per minute (the API server's own, and the manager's; apiserver_request_total over %s):%s", window, format(rates))
			return rates
		}
		net := map[string]float64{}
		for k, v := range rates {
			if d := v - baseline[k]; d > 0 {
				net[k] = d
			}
		}
		t.Logf("%s node, API requests per minute on top of the baseline (apiserver_request_total over %s):%s", name, window, format(net))
		return net
	}
	check := func(name string, rates map[string]float64) {
		for k, v := range rates {
			if !isWrite(k) {
				continue
			}
			// The Lease renewal (every quarter of 40s) is the only write.
			g.Expect(k).To(gomega.Equal("PUT leases"), "%s node writes %s (%.1f/min)", name, k, v)
			g.Expect(v).To(gomega.BeNumerically("<=", 9), "%s node renews its Lease %.1f times a minute", name, v)
		}
		g.Expect(rates).NotTo(gomega.HaveKey("GET secrets"), "%s node reads Secrets with GETs", name)
	}

	// The manager has done its work on these objects (statuses, the
	// published copies) before the baseline window opens.
	g.Eventually(func(g gomega.Gomega) {
		for _, o := range []client.Object{&hsv1.AppNamespace{}, &hsv1.CertKeyPair{}} {
			name := "locked"
			if _, ok := o.(*hsv1.CertKeyPair); ok {
				name = "tls"
			}
			g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, o)).To(gomega.Succeed())
		}
		var copies corev1.SecretList
		g.Expect(k8s.List(ctx, &copies, client.InNamespace(DefaultAgentNamespace), client.MatchingLabels{hsv1.LabelPublished: "true"})).To(gomega.Succeed())
		var from []string
		for _, c := range copies.Items {
			from = append(from, c.Annotations[hsv1.AnnotationPublishedFrom])
		}
		g.Expect(from).To(gomega.ContainElements(ns+"/attach", ns+"/tls"))
		for _, key := range []client.ObjectKey{{Namespace: ns, Name: "web"}, {Namespace: ns, Name: "locked"}} {
			an := &hsv1.AppNamespace{}
			g.Expect(k8s.Get(ctx, key, an)).To(gomega.Succeed())
			g.Expect(meta.FindStatusCondition(an.Status.Conditions, hsv1.ConditionReady)).NotTo(gomega.BeNil())
		}
		pair := &hsv1.CertKeyPair{}
		g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "tls"}, pair)).To(gomega.Succeed())
		g.Expect(meta.FindStatusCondition(pair.Status.Conditions, hsv1.ConditionReady)).NotTo(gomega.BeNil())
		rule := &hsv1.SessionRule{}
		g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "no-metadata"}, rule)).To(gomega.Succeed())
		g.Expect(meta.FindStatusCondition(rule.Status.Conditions, hsv1.ConditionReady)).NotTo(gomega.BeNil())
	}).WithTimeout(30 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.Succeed())
	baseline = measure("baseline")

	ap := startAgent(t, nodeName, "--transport", "none")
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web-0", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "app", Image: "app"}}}}
	g.Expect(k8s.Create(ctx, pod)).To(gomega.Succeed())
	sock := ap.path("hp", ns, "web-0", "session.sock")

	// Settled: both AppNamespaces Ready on the node, the rule enforced,
	// the pod's socket served.
	for _, name := range []string{"web", "locked"} {
		an := &hsv1.AppNamespace{}
		g.Eventually(func(g gomega.Gomega) {
			g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, an)).To(gomega.Succeed())
			c := meta.FindStatusCondition(an.Status.Conditions, hsv1.ConditionReady)
			g.Expect(c).NotTo(gomega.BeNil())
			g.Expect(c.Status).To(gomega.Equal(metav1.ConditionTrue), c.Message)
		}).WithTimeout(30*time.Second).WithPolling(100*time.Millisecond).Should(gomega.Succeed(), "AppNamespace %s", name)
	}
	g.Eventually(func(g gomega.Gomega) {
		r := &hsv1.SessionRule{}
		g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "no-metadata"}, r)).To(gomega.Succeed())
		g.Expect(r.Status.EnforcingNodes).To(gomega.BeEquivalentTo(1))
	}).WithTimeout(30 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.Succeed())
	g.Eventually(func() bool { return isSocket(sock) }).WithTimeout(30 * time.Second).WithPolling(50 * time.Millisecond).Should(gomega.BeTrue())
	srv, err := hsclient.Attach(ctx, hsclient.Options{Socket: sock, Name: "server"})
	g.Expect(err).NotTo(gomega.HaveOccurred())
	defer srv.Close()
	cli, err := hsclient.Attach(ctx, hsclient.Options{Socket: sock, Name: "client"})
	g.Expect(err).NotTo(gomega.HaveOccurred())
	defer cli.Close()
	// Two attaches change what the engine reports; give the status one
	// interval to say so, then measure.
	token := metricsToken(t)
	g.Eventually(func() string {
		_, body, _ := scrape(t, ap.metricsAddr, token)
		return body
	}).WithTimeout(10 * time.Second).WithPolling(100 * time.Millisecond).Should(
		gomega.ContainSubstring(`hoststack_agent_apps{app_namespace="` + ns + `/web"} 2`))

	idle := measure("idle")

	// Traffic: sessions open, carry data and close without pause.
	ln, err := srv.Listen("tcp", "127.0.0.1:0")
	g.Expect(err).NotTo(gomega.HaveOccurred())
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); c.Close() }()
		}
	}()
	var sessions atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for {
				select {
				case <-stop:
					return
				default:
				}
				c, err := cli.Dial(ctx, "tcp", ln.Addr().String())
				if err != nil {
					continue
				}
				if _, err := c.Write(buf); err == nil {
					_, _ = io.ReadFull(c, buf)
				}
				c.Close()
				sessions.Add(1)
			}
		}()
	}
	busy := measure("busy")
	close(stop)
	wg.Wait()
	t.Logf("sessions opened and closed in the busy window: %d", sessions.Load())
	g.Expect(sessions.Load()).To(gomega.BeNumerically(">", 100), "the busy window carried traffic")

	check("idle", idle)
	check("busy", busy)
}
