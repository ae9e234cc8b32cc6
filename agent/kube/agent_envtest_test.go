package kube

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
	hsclient "github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/internal/testreq"
)

// The suite runs a real etcd and kube-apiserver with the CRDs of
// config/crd/bases; the agent under test is the real hoststack-agent
// binary, talking to that API server with a kubeconfig of its own.
var (
	testEnv    *envtest.Environment
	k8s        client.Client
	notRunning string
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
	testEnv = &envtest.Environment{
		CRDDirectoryPaths:     []string{filepath.Join("..", "..", "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		BinaryAssetsDirectory: dir,
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
	ctx, stopManager := context.WithCancel(context.Background())
	defer stopManager()
	if err := installControlPlane(ctx, k8s); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: install RBAC and policy:", err)
		return 1
	}
	waitManager, err := runManager(ctx, asServiceAccount(cfg, managerSA, ""))
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL: manager:", err)
		return 1
	}
	defer func() {
		stopManager()
		waitManager() // the manager must be gone before its API server stops
	}()
	// Build the binaries once, before any test's clock starts: with -race
	// and gVisor linked in, a cold build on a loaded 2-core machine takes
	// minutes.
	for _, build := range []func() (string, error){agentBinary, cniBinary} {
		bin, err := build()
		if bin != "" {
			defer os.RemoveAll(filepath.Dir(bin))
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "FAIL:", err)
			return 1
		}
	}
	return m.Run()
}

func needAPIServer(t *testing.T) {
	t.Helper()
	if notRunning != "" {
		testreq.Missing(t, notRunning)
	}
}

// freeAddr returns a loopback address with a port nothing listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func createYAML(t *testing.T, ctx context.Context, doc string, mayExist ...bool) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Create(ctx, u); err != nil && !(len(mayExist) > 0 && apierrors.IsAlreadyExists(err)) {
		t.Fatalf("creating %s %s: %v", u.GetKind(), u.GetName(), err)
	}
	return u
}

// logTail keeps the agent's output for failure messages.
type logTail struct {
	mu    sync.Mutex
	lines []string
}

func (l *logTail) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, s)
}

func (l *logTail) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

func isSocket(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode()&os.ModeSocket != 0
}

func httpGet(url string) (int, string, error) {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

var runs int

// testNode creates a Node and a namespace named after prefix and this run,
// and deletes the namespace's AppNamespaces when the test ends.
func testNode(ctx context.Context, t *testing.T, g *gomega.WithT, prefix string) (nodeName, ns string) {
	t.Helper()
	runs++
	nodeName, ns = fmt.Sprintf("%s-node-%d", prefix, runs), fmt.Sprintf("%s-%d", prefix, runs)
	t.Cleanup(func() { _ = k8s.DeleteAllOf(context.Background(), &hsv1.AppNamespace{}, client.InNamespace(ns)) })
	g.Expect(k8s.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName}})).To(gomega.Succeed())
	g.Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(gomega.Succeed())
	return nodeName, ns
}

func TestAgentProcessAgainstAPIServer(t *testing.T) {
	needAPIServer(t)
	g := gomega.NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	tmp := t.TempDir()

	asAgent := agentUser(t, ctx)
	// RBAC is enforced: the agent reads no Secret outside its namespace.
	g.Eventually(func() error { return asAgent.List(ctx, &corev1.NodeList{}) }).Should(gomega.Succeed())
	g.Expect(apierrors.IsForbidden(asAgent.List(ctx, &corev1.SecretList{}))).To(gomega.BeTrue(), "listing Secrets must be forbidden")

	// Names are unique per run, so -count=N reruns against one API server.
	runs++
	nodeName, ns := fmt.Sprintf("node-%d", runs), fmt.Sprintf("team-%d", runs)
	t.Cleanup(func() {
		// What a later run's agent must not see (there is no namespace
		// controller to collect it).
		_ = k8s.DeleteAllOf(context.Background(), &hsv1.AppNamespace{}, client.InNamespace(ns))
	})
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName, Labels: map[string]string{"zone": "a"}}}
	g.Expect(k8s.Create(ctx, node)).To(gomega.Succeed())
	g.Expect(k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}})).To(gomega.Succeed())
	createYAML(t, ctx, `apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: web, namespace: `+ns+`}
spec:
  podSelector: {matchLabels: {app: web}}
  nodeSelector: {zone: a}
`)
	createYAML(t, ctx, `apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: elsewhere, namespace: `+ns+`}
spec:
  podSelector: {}
  nodeSelector: {zone: b}
`)
	createYAML(t, ctx, `apiVersion: hoststack.dev/v1alpha1
kind: SessionRule
metadata: {name: no-metadata, namespace: `+ns+`}
spec:
  appNamespaceRef: {name: web}
  scope: Global
  transport: TCP
  local: {cidr: 0.0.0.0/0, port: 0}
  remote: {cidr: 169.254.169.254/32, port: 80}
  action: {type: Deny}
`)
	createYAML(t, ctx, `apiVersion: hoststack.dev/v1alpha1
kind: SessionRule
metadata: {name: no-db, namespace: `+ns+`}
spec:
  appNamespaceRef: {name: web}
  scope: Local
  transport: TCP
  local: {cidr: 0.0.0.0/0, port: 0}
  remote: {cidr: 127.0.0.1/32, port: 5432}
  action: {type: Deny}
`)

	ap := startAgent(t, nodeName)
	metricsAddr, probeAddr, cmd, tmp := ap.metricsAddr, ap.probeAddr, ap.cmd, ap.tmp
	sessionNode := func() (*hsv1.SessionNode, error) {
		var sn hsv1.SessionNode
		err := k8s.Get(ctx, client.ObjectKey{Name: nodeName}, &sn)
		return &sn, err
	}
	entry := func(sn *hsv1.SessionNode, name string) *hsv1.AppNamespaceNodeStatus {
		for i := range sn.Status.AppNamespaces {
			if e := &sn.Status.AppNamespaces[i]; e.Namespace == ns && e.Name == name {
				return e
			}
		}
		return nil
	}
	var web hsv1.AppNamespace
	g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "web"}, &web)).To(gomega.Succeed())

	// The SessionNode appears, owned by the Node, with web Ready at its
	// generation and its one rule, and without the AppNamespace whose
	// nodeSelector excludes the node.
	g.Eventually(func(g gomega.Gomega) {
		sn, err := sessionNode()
		g.Expect(err).NotTo(gomega.HaveOccurred())
		g.Expect(sn.Status.Engine.State).To(gomega.Equal(hsv1.EngineRunning))
		e := entry(sn, "web")
		g.Expect(e).NotTo(gomega.BeNil())
		g.Expect(e.State).To(gomega.Equal(hsv1.AppNamespaceReady))
		g.Expect(e.ObservedGeneration).To(gomega.Equal(web.Generation))
		g.Expect(e.Rules).To(gomega.Equal(int32(2)))
		g.Expect(entry(sn, "elsewhere")).To(gomega.BeNil())
		g.Expect(sn.Status.RulesGeneration).To(gomega.BeNumerically(">=", 1))
		g.Expect(sn.OwnerReferences).To(gomega.HaveLen(1))
		g.Expect(sn.OwnerReferences[0].Kind).To(gomega.Equal("Node"))
		// The agent's two conditions, and the manager's Serving.
		g.Expect(sn.Status.Conditions).To(gomega.HaveLen(3))
		g.Expect(meta.FindStatusCondition(sn.Status.Conditions, hsv1.ConditionReady).Status).To(gomega.Equal(metav1.ConditionTrue))
		g.Expect(meta.FindStatusCondition(sn.Status.Conditions, hsv1.ConditionEngineLimitReached).Reason).To(gomega.Equal(hsv1.ReasonWithinLimits))
		g.Expect(meta.FindStatusCondition(sn.Status.Conditions, hsv1.ConditionServing).Reason).To(gomega.Equal(hsv1.ReasonLeaseRenewed))
		var managers []string
		for _, f := range sn.ManagedFields {
			managers = append(managers, f.Manager)
		}
		g.Expect(managers).To(gomega.ContainElement(FieldOwner))
	}).WithTimeout(30 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.Succeed())

	g.Eventually(func() int {
		code, _, _ := httpGet("http://" + probeAddr + "/readyz")
		return code
	}).WithTimeout(10 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.Equal(http.StatusOK))
	series := `hoststack_agent_apps{app_namespace="` + ns + `/web"} 0`
	g.Eventually(func() string {
		_, body, _ := scrape(t, metricsAddr, metricsToken(t))
		return body
	}).WithTimeout(10 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.And(
		gomega.ContainSubstring(series),
		gomega.ContainSubstring(`hoststack_agent_rule_denies_total{app_namespace="`+ns+`/web"} 0`),
		gomega.ContainSubstring(`hoststack_agent_segment_bytes{app_namespace="`+ns+`/web"}`),
		gomega.ContainSubstring(`hoststack_agent_transport_rings_total{app_namespace="`+ns+`/web"} 0`),
		gomega.ContainSubstring(`hoststack_agent_transport_kicks_total{app_namespace="`+ns+`/web"} 0`),
		gomega.Not(gomega.ContainSubstring(`/elsewhere"`)),
	))

	// A deleted SessionNode comes back.
	old, err := sessionNode()
	g.Expect(err).NotTo(gomega.HaveOccurred())
	g.Expect(k8s.Delete(ctx, old)).To(gomega.Succeed())
	g.Eventually(func(g gomega.Gomega) {
		sn, err := sessionNode()
		g.Expect(err).NotTo(gomega.HaveOccurred())
		g.Expect(sn.UID).NotTo(gomega.Equal(old.UID))
		g.Expect(entry(sn, "web")).NotTo(gomega.BeNil())
		g.Expect(sn.OwnerReferences).To(gomega.HaveLen(1))
	}).WithTimeout(20 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.Succeed())

	// An AppNamespace whose Secret is missing fails on the node, saying
	// why; the Secret appearing (published by the manager into the agent
	// namespace, which the agent watches) makes it Ready.
	createYAML(t, ctx, `apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: locked, namespace: `+ns+`}
spec:
  podSelector: {matchLabels: {app: locked}}
  secretRef: {name: attach}
`)
	g.Eventually(func(g gomega.Gomega) {
		sn, err := sessionNode()
		g.Expect(err).NotTo(gomega.HaveOccurred())
		e := entry(sn, "locked")
		g.Expect(e).NotTo(gomega.BeNil())
		g.Expect(e.State).To(gomega.Equal(hsv1.AppNamespaceFailed))
		g.Expect(e.Message).To(gomega.ContainSubstring("Secret " + ns + "/attach"))
		g.Expect(sn.Status.Engine.State).To(gomega.Equal(hsv1.EngineDegraded))
		g.Expect(sn.Status.Errors).To(gomega.ContainElement(gomega.HaveField("Reason", "SecretNotFound")))
	}).WithTimeout(20 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.Succeed())
	g.Expect(k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "attach"},
		StringData: map[string]string{"secret": "s3cret"}})).To(gomega.Succeed())
	g.Eventually(func(g gomega.Gomega) {
		sn, err := sessionNode()
		g.Expect(err).NotTo(gomega.HaveOccurred())
		e := entry(sn, "locked")
		g.Expect(e).NotTo(gomega.BeNil())
		g.Expect(e.State).To(gomega.Equal(hsv1.AppNamespaceReady))
		g.Expect(sn.Status.Engine.State).To(gomega.Equal(hsv1.EngineRunning))
		g.Expect(sn.Status.Errors).To(gomega.BeEmpty())
	}).WithTimeout(20 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.Succeed())

	// The CSI and CNI servers listen.
	for _, sock := range []string{filepath.Join(tmp, "csi", "csi.sock"), filepath.Join(tmp, "reg", "csi.hoststack.dev-reg.sock"), filepath.Join(tmp, "cni.sock")} {
		g.Expect(isSocket(sock)).To(gomega.BeTrue(), sock)
	}

	// A pod of the node that web selects gets its hostPath socket (the CSI
	// resolver decides, from the pod cache); one web does not select, and
	// one of another node, do not.
	mkPod := func(name, nodeName string, labels map[string]string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
			Spec: corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "app", Image: "app"}}}}
		g.Expect(k8s.Create(ctx, p)).To(gomega.Succeed())
		return p
	}
	webPod := mkPod("web-0", nodeName, map[string]string{"app": "web"})
	mkPod("db-0", nodeName, map[string]string{"app": "db"})
	mkPod("web-far", "far-node", map[string]string{"app": "web"})
	webSock := filepath.Join(tmp, "hp", ns, "web-0", "session.sock")
	g.Eventually(func() bool { return isSocket(webSock) }).WithTimeout(20 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.BeTrue())
	g.Expect(filepath.Join(tmp, "hp", ns, "db-0")).NotTo(gomega.BeAnExistingFile())
	g.Expect(filepath.Join(tmp, "hp", ns, "web-far")).NotTo(gomega.BeAnExistingFile())
	g.Expect(k8s.Delete(ctx, webPod)).To(gomega.Succeed())
	g.Eventually(func() bool { return isSocket(webSock) }).WithTimeout(20 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.BeFalse())

	// An app attaches through a pod's socket: the node's metrics count it,
	// and a connect the SessionRule denies (counters live in Prometheus,
	// not in the SessionNode).
	mkPod("web-1", nodeName, map[string]string{"app": "web"})
	web1Sock := filepath.Join(tmp, "hp", ns, "web-1", "session.sock")
	g.Eventually(func() bool { return isSocket(web1Sock) }).WithTimeout(20 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.BeTrue())
	app, err := hsclient.Attach(ctx, hsclient.Options{Socket: web1Sock, Name: "probe", Namespace: ns + "/web"})
	g.Expect(err).NotTo(gomega.HaveOccurred())
	_, err = app.Dial(ctx, "tcp", "127.0.0.1:5432")
	g.Expect(err).To(gomega.MatchError(gomega.ContainSubstring("denied by SessionRule " + ns + "/no-db")))
	g.Eventually(func() string {
		_, body, _ := scrape(t, metricsAddr, metricsToken(t))
		return body
	}).WithTimeout(10 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.And(
		gomega.ContainSubstring(`hoststack_agent_apps{app_namespace="`+ns+`/web"} 1`),
		gomega.Not(gomega.ContainSubstring(`hoststack_agent_segment_bytes{app_namespace="`+ns+`/web"} 0`)),
		gomega.ContainSubstring(`hoststack_agent_rule_denies_total{app_namespace="`+ns+`/web"} 1`),
	))
	g.Expect(app.Close()).To(gomega.Succeed())

	// A spec change bumps the generation the node reports.
	g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(&web), &web)).To(gomega.Succeed())
	maxApps := int32(7)
	web.Spec.Quotas.MaxApps = &maxApps
	g.Expect(k8s.Update(ctx, &web)).To(gomega.Succeed())
	g.Expect(web.Generation).To(gomega.BeNumerically(">", 1))
	g.Eventually(func(g gomega.Gomega) {
		sn, err := sessionNode()
		g.Expect(err).NotTo(gomega.HaveOccurred())
		e := entry(sn, "web")
		g.Expect(e).NotTo(gomega.BeNil())
		g.Expect(e.ObservedGeneration).To(gomega.Equal(web.Generation))
		g.Expect(e.State).To(gomega.Equal(hsv1.AppNamespaceReady))
	}).WithTimeout(20 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.Succeed())

	// The node's labels change: the other AppNamespace is now served there.
	g.Expect(k8s.Get(ctx, client.ObjectKeyFromObject(node), node)).To(gomega.Succeed())
	node.Labels["zone"] = "b"
	g.Expect(k8s.Update(ctx, node)).To(gomega.Succeed())
	g.Eventually(func(g gomega.Gomega) {
		sn, err := sessionNode()
		g.Expect(err).NotTo(gomega.HaveOccurred())
		g.Expect(entry(sn, "web")).To(gomega.BeNil())
		e := entry(sn, "elsewhere")
		g.Expect(e).NotTo(gomega.BeNil())
		g.Expect(e.State).To(gomega.Equal(hsv1.AppNamespaceReady))
	}).WithTimeout(20 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.Succeed())
	node.Labels["zone"] = "a"
	g.Expect(k8s.Update(ctx, node)).To(gomega.Succeed())
	g.Eventually(func(g gomega.Gomega) {
		sn, err := sessionNode()
		g.Expect(err).NotTo(gomega.HaveOccurred())
		g.Expect(entry(sn, "web")).NotTo(gomega.BeNil())
	}).WithTimeout(20 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.Succeed())

	// Deleting the AppNamespace removes its entry and its series.
	g.Expect(k8s.Delete(ctx, &web)).To(gomega.Succeed())
	g.Eventually(func(g gomega.Gomega) {
		sn, err := sessionNode()
		g.Expect(err).NotTo(gomega.HaveOccurred())
		g.Expect(entry(sn, "web")).To(gomega.BeNil())
	}).WithTimeout(20 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.Succeed())
	g.Eventually(func() string {
		_, body, _ := scrape(t, metricsAddr, metricsToken(t))
		return body
	}).WithTimeout(10 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.And(
		gomega.ContainSubstring("hoststack_agent_app_namespaces 1"), // locked is still served
		gomega.Not(gomega.ContainSubstring(`/web"`)),
	))

	// An app of the AppNamespace still served listens; SIGTERM tells it the
	// engine is shutting down, the agent exits 0, and the SessionNode says
	// the engine stopped.
	mkPod("locked-0", nodeName, map[string]string{"app": "locked"})
	lockedSock := filepath.Join(tmp, "hp", ns, "locked-0", "session.sock")
	g.Eventually(func() bool { return isSocket(lockedSock) }).WithTimeout(20 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.BeTrue())
	lost := make(chan error, 1) // the app is told, then re-attaches by itself
	lapp, err := hsclient.Attach(ctx, hsclient.Options{Socket: lockedSock, Name: "server", Secret: "s3cret", Scope: hsclient.ScopeLocal,
		OnEngine: func(attached bool, err error) {
			if !attached {
				select {
				case lost <- err:
				default:
				}
			}
		}})
	g.Expect(err).NotTo(gomega.HaveOccurred())
	defer lapp.Close()
	_, err = lapp.Listen("tcp", "127.0.0.1:7000")
	g.Expect(err).NotTo(gomega.HaveOccurred())
	g.Expect(cmd.Process.Signal(syscall.SIGTERM)).To(gomega.Succeed())
	select {
	case err := <-lost:
		g.Expect(errors.Is(err, syscall.ESHUTDOWN)).To(gomega.BeTrue(), "after SIGTERM: %v", err)
	case <-ctx.Done():
		t.Fatal("the app was not told of the shutdown")
	}
	g.Expect(ap.wait(ctx)).To(gomega.Succeed(), "agent exit status")
	sn, err := sessionNode()
	g.Expect(err).NotTo(gomega.HaveOccurred())
	g.Expect(sn.Status.Engine.State).To(gomega.Equal(hsv1.EngineStopped))
	g.Expect(sn.Status.AppNamespaces).To(gomega.BeEmpty())
}

// The hand-written manifests of config/agent are objects the API server
// accepts (server-side dry run: schema and defaulting, nothing stored), and
// the agent's Pod is admitted by Pod Security in the namespace config/agent
// creates (created for real, with its labels; admission enforces Pod
// Security on Pods and only warns on DaemonSets). test/chart checks the
// whole install, chart and config/default, the same way.
func TestAgentManifestsAreValid(t *testing.T) {
	needAPIServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	files, err := filepath.Glob(filepath.Join("..", "..", "config", "agent", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	var objs []*unstructured.Unstructured
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(b), "\n---\n") {
			u := &unstructured.Unstructured{}
			if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if len(u.Object) > 0 {
				objs = append(objs, u)
			}
		}
	}
	kinds := map[string]bool{}
	for _, u := range objs {
		if u.GetKind() == "Namespace" {
			if err := k8s.Create(ctx, u.DeepCopy()); err != nil && !apierrors.IsAlreadyExists(err) {
				t.Fatal(err)
			}
			kinds["Namespace"] = true
		}
	}
	for _, u := range objs {
		kinds[u.GetKind()] = true
		if u.GetKind() == "Namespace" {
			continue
		}
		// AlreadyExists comes from storage, after validation passed (the
		// other test binds the ClusterRole for real).
		if err := k8s.Create(ctx, u.DeepCopy(), client.DryRunAll); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Errorf("%s %s: %v", u.GetKind(), u.GetName(), err)
		}
		if u.GetKind() != "DaemonSet" {
			continue
		}
		tmpl, _, err := unstructured.NestedMap(u.Object, "spec", "template")
		if err != nil {
			t.Fatal(err)
		}
		pod := &unstructured.Unstructured{Object: tmpl}
		pod.SetAPIVersion("v1")
		pod.SetKind("Pod")
		pod.SetName(u.GetName() + "-pod")
		pod.SetNamespace(u.GetNamespace())
		if err := unstructured.SetNestedField(pod.Object, "node-1", "spec", "nodeName"); err != nil {
			t.Fatal(err)
		}
		if err := k8s.Create(ctx, pod, client.DryRunAll); err != nil {
			t.Errorf("the agent's pod in namespace %s: %v", u.GetNamespace(), err)
		}
	}
	for _, k := range []string{"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "CSIDriver", "DaemonSet"} {
		if !kinds[k] {
			t.Errorf("config/agent has no %s", k)
		}
	}
}

// agentBinary builds cmd/hoststack-agent once per test process.
var agentBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "hs-agent-bin")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "hoststack-agent")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	args = append(args, "github.com/hoststack/hoststack/cmd/hoststack-agent")
	if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the agent: %v\n%s", err, out)
	}
	return bin, nil
})

// agentUser returns a client acting as the agent's service account (no
// node bound to it), under the RBAC of config/agent the suite installed.
func agentUser(t *testing.T, ctx context.Context) client.Client {
	t.Helper()
	c, err := client.New(asServiceAccount(testEnv.Config, agentSA, ""), client.Options{Scheme: k8s.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// agentProc is a running hoststack-agent binary with its state under tmp.
type agentProc struct {
	cmd                    *exec.Cmd
	logs                   *logTail
	logsDone               chan struct{}
	exited                 bool
	tmp                    string
	metricsAddr, probeAddr string
}

func (ap *agentProc) path(elem ...string) string {
	return filepath.Join(append([]string{ap.tmp}, elem...)...)
}

// startAgent runs the agent for nodeName in Kubernetes mode with CSI, the
// hostPath fallback (under hp/) and CNI (cni.sock), as the agent's service
// account with a token bound to nodeName (impersonated: see
// agentKubeconfig); it is killed at cleanup unless the test waited for it.
func startAgent(t *testing.T, nodeName string, extra ...string) *agentProc {
	t.Helper()
	kubeconfig := agentKubeconfig(t, nodeName)
	bin, err := agentBinary()
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	ap := &agentProc{tmp: tmp, logs: &logTail{}, logsDone: make(chan struct{}), metricsAddr: freeAddr(t), probeAddr: freeAddr(t)}
	args := append([]string{"--node-name", nodeName, "--kubeconfig", kubeconfig,
		"--metrics-bind-address", ap.metricsAddr, "--health-probe-bind-address", ap.probeAddr,
		"--status-interval", "1s", "--run-dir", filepath.Join(tmp, "run"), "--log-format", "json",
		"--csi", "--csi-socket", filepath.Join(tmp, "csi", "csi.sock"), "--csi-registry-dir", filepath.Join(tmp, "reg"),
		"--hostpath-sockets-dir", filepath.Join(tmp, "hp"),
		"--cni", "--cni-socket", filepath.Join(tmp, "cni.sock"), "--cni-state-dir", filepath.Join(tmp, "cni-state"),
		"--cni-pending-dir", filepath.Join(tmp, "cni-pending")}, extra...)
	for _, d := range []string{"csi", "reg", "hp"} {
		if err := os.MkdirAll(filepath.Join(tmp, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	ap.cmd = exec.Command(bin, args...)
	stderr, err := ap.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := ap.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(ap.logsDone)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			ap.logs.add(sc.Text())
		}
	}()
	t.Cleanup(func() {
		if !ap.exited {
			_ = ap.cmd.Process.Kill()
			_ = ap.cmd.Wait()
		}
		if t.Failed() {
			t.Logf("agent output:\n%s", ap.logs)
		}
	})
	return ap
}

// wait waits for the agent to exit (after a signal) and returns its status.
func (ap *agentProc) wait(ctx context.Context) error {
	waitErr := make(chan error, 1)
	go func() {
		<-ap.logsDone
		waitErr <- ap.cmd.Wait()
	}()
	select {
	case err := <-waitErr:
		ap.exited = true
		return err
	case <-ctx.Done():
		return errors.New("agent did not exit")
	}
}
