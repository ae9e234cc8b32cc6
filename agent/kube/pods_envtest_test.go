package kube

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
	hsclient "github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/internal/certstest"
	"github.com/hoststack/hoststack/internal/echotest"
	"github.com/hoststack/hoststack/internal/netnstest"
)

// cniBinary builds cmd/hoststack-cni once per test process.
var cniBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "hs-cni-bin")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "hoststack-cni")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/hoststack/hoststack/cmd/hoststack-cni").CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the CNI plugin: %v\n%s", err, out)
	}
	return bin, nil
})

// cniAdd runs the chained plugin's ADD for pod as a container runtime would
// after the main plugin put addr (a CIDR) on eth0 of the namespace at netns.
func cniAdd(t *testing.T, ap *agentProc, pod *corev1.Pod, netns, addr string) {
	t.Helper()
	bin, err := cniBinary()
	if err != nil {
		t.Fatal(err)
	}
	ip, ipnet, err := net.ParseCIDR(addr)
	if err != nil {
		t.Fatal(err)
	}
	ipnet.IP = ip
	prev := &current.Result{CNIVersion: "1.1.0",
		Interfaces: []*current.Interface{{Name: "eth0", Sandbox: netns}},
		IPs:        []*current.IPConfig{{Interface: current.Int(0), Address: *ipnet}}}
	var pb bytes.Buffer
	if err := prev.PrintTo(&pb); err != nil {
		t.Fatal(err)
	}
	conf, err := json.Marshal(map[string]any{"cniVersion": "1.1.0", "name": "podnet", "type": "hoststack-cni",
		"agentSocket": ap.path("cni.sock"), "pendingDir": ap.path("cni-pending"), "prevResult": json.RawMessage(pb.Bytes())})
	if err != nil {
		t.Fatal(err)
	}
	c := exec.Command(bin)
	c.Env = []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=sandbox-" + string(pod.UID), "CNI_NETNS=" + netns, "CNI_IFNAME=eth0",
		"CNI_PATH=" + filepath.Dir(bin),
		"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=" + pod.Namespace + ";K8S_POD_NAME=" + pod.Name + ";K8S_POD_UID=" + string(pod.UID)}
	c.Stdin = bytes.NewReader(conf)
	if out, err := c.CombinedOutput(); err != nil {
		t.Fatalf("CNI ADD: %v\n%s", err, out)
	}
}

// TestAgentCarriesPodTraffic: a pod (a real network namespace, announced by
// the real CNI plugin) attaches through its hostPath socket; its sessions to
// a kernel TCP server in another namespace leave from the pod's own address
// through the agent's kernel transport, its listener is reachable from
// outside there, a SessionRule applied with kubectl refuses new sessions
// within a second, and CertKeyPairs of its namespace are loaded.
func TestAgentCarriesPodTraffic(t *testing.T) {
	needAPIServer(t)
	tp := netnstest.NewPair(t)
	g := gomega.NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	nodeName, ns := testNode(ctx, t, g, "pods")
	createYAML(t, ctx, `apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: web, namespace: `+ns+`}
spec:
  podSelector: {matchLabels: {app: web}}
`)
	server := netnstest.Listen(t, tp.B.Path(), "tcp", "10.99.0.2:0")
	serverPeers := echotest.Serve(server)

	ap := startAgent(t, nodeName, "--interface-netns", tp.A.Path())
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web-0", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "app", Image: "app"}}}}
	g.Expect(k8s.Create(ctx, pod)).To(gomega.Succeed())
	// Before the agent listens, the plugin answers "try again later" (11),
	// and the runtime retries: wait as it would.
	g.Eventually(func() bool { return isSocket(ap.path("cni.sock")) }).WithTimeout(30 * time.Second).WithPolling(50 * time.Millisecond).Should(gomega.BeTrue())
	cniAdd(t, ap, pod, tp.A.Path(), "10.99.0.1/24")
	sock := ap.path("hp", ns, "web-0", "session.sock")
	g.Eventually(func() bool { return isSocket(sock) }).WithTimeout(20 * time.Second).WithPolling(50 * time.Millisecond).Should(gomega.BeTrue())
	app, err := hsclient.Attach(ctx, hsclient.Options{Socket: sock, Name: "web"})
	g.Expect(err).NotTo(gomega.HaveOccurred())
	defer app.Close()

	// Out through the pod's namespace: the server sees the pod's address.
	c, err := app.Dial(ctx, "tcp", server.Addr().String())
	g.Expect(err).NotTo(gomega.HaveOccurred())
	g.Expect(c.LocalAddr().(*net.TCPAddr).IP.String()).To(gomega.Equal("10.99.0.1"))
	g.Expect(echotest.RoundTrip(c, bytes.Repeat([]byte("pod traffic "), 50_000), 20*time.Second)).To(gomega.Succeed())
	g.Expect((<-serverPeers).String()).To(gomega.HavePrefix("10.99.0.1:"))

	// In from outside: the app's listener listens in the pod's namespace.
	ln, err := app.Listen("tcp", ":8080")
	g.Expect(err).NotTo(gomega.HaveOccurred())
	appPeers := echotest.Serve(ln)
	oc, err := netnstest.Dial(tp.B.Path(), "tcp", "10.99.0.1:8080")
	g.Expect(err).NotTo(gomega.HaveOccurred())
	g.Expect(echotest.RoundTrip(oc, []byte("from outside"), 20*time.Second)).To(gomega.Succeed())
	g.Expect((<-appPeers).String()).To(gomega.HavePrefix("10.99.0.2:"))

	// kubectl apply a global deny: within a second new sessions to the
	// server are refused, naming the rule; a session opened before stays.
	before, err := app.Dial(ctx, "tcp", server.Addr().String())
	g.Expect(err).NotTo(gomega.HaveOccurred())
	<-serverPeers
	admin, err := testEnv.AddUser(envtest.User{Name: "admin", Groups: []string{"system:masters"}}, nil)
	g.Expect(err).NotTo(gomega.HaveOccurred())
	akc, err := admin.KubeConfig()
	g.Expect(err).NotTo(gomega.HaveOccurred())
	adminKubeconfig := filepath.Join(t.TempDir(), "admin.kubeconfig")
	g.Expect(os.WriteFile(adminKubeconfig, akc, 0o600)).To(gomega.Succeed())
	rule := filepath.Join(t.TempDir(), "rule.yaml")
	g.Expect(os.WriteFile(rule, []byte(`apiVersion: hoststack.dev/v1alpha1
kind: SessionRule
metadata: {name: no-server, namespace: `+ns+`}
spec:
  appNamespaceRef: {name: web}
  scope: Global
  transport: TCP
  local: {cidr: 0.0.0.0/0, port: 0}
  remote: {cidr: 10.99.0.2/32, port: 0}
  action: {type: Deny}
`), 0o600)).To(gomega.Succeed())
	kubectl := exec.CommandContext(ctx, filepath.Join(testEnv.BinaryAssetsDirectory, "kubectl"), "--kubeconfig", adminKubeconfig, "apply", "-f", rule)
	if out, err := kubectl.CombinedOutput(); err != nil {
		t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	applied := time.Now()
	g.Eventually(func() error {
		c, err := app.Dial(ctx, "tcp", server.Addr().String())
		if err == nil {
			c.Close()
		}
		return err
	}).WithTimeout(time.Second).WithPolling(10 * time.Millisecond).Should(gomega.SatisfyAll(
		gomega.MatchError(gomega.ContainSubstring("denied by SessionRule "+ns+"/no-server")),
		gomega.WithTransform(func(err error) bool { return errors.Is(err, syscall.EACCES) }, gomega.BeTrue())))
	t.Logf("the SessionRule took effect %v after kubectl apply returned", time.Since(applied).Round(time.Millisecond))
	g.Expect(echotest.RoundTrip(before, []byte("still here"), 20*time.Second)).To(gomega.Succeed())

	// CertKeyPairs of the namespace are loaded; one whose Secret holds a
	// key of another certificate is reported, naming it.
	ca := certstest.NewCA(t, "test CA")
	good, other := ca.Issue(t, "web."+ns), ca.Issue(t, "other")
	for name, data := range map[string]map[string][]byte{
		"good": {"tls.crt": good.CertPEM, "tls.key": good.KeyPEM},
		"bad":  {"tls.crt": good.CertPEM, "tls.key": other.KeyPEM},
	} {
		g.Expect(k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name + "-tls"},
			Type: corev1.SecretTypeTLS, Data: data})).To(gomega.Succeed())
		createYAML(t, ctx, `apiVersion: hoststack.dev/v1alpha1
kind: CertKeyPair
metadata: {name: `+name+`, namespace: `+ns+`}
spec:
  secretRef: {name: `+name+`-tls}
`)
	}
	g.Eventually(func(g gomega.Gomega) {
		var sn hsv1.SessionNode
		g.Expect(k8s.Get(ctx, client.ObjectKey{Name: nodeName}, &sn)).To(gomega.Succeed())
		g.Expect(sn.Status.CertKeyPairs).To(gomega.Equal(int32(1)))
		g.Expect(sn.Status.Transport.Type).To(gomega.Equal(hsv1.TransportKernel))
		g.Expect(sn.Status.Errors).To(gomega.ContainElement(gomega.SatisfyAll(
			gomega.HaveField("Reason", "CertKeyPairNotLoaded"),
			gomega.HaveField("Object", "CertKeyPair/"+ns+"/bad"))))
	}).WithTimeout(20 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.Succeed())

	// Interface mode: AppNamespace edge gets a userspace stack (AF_PACKET)
	// on the veth with its own address; its pod's app reaches the server
	// from that address, not the pod's.
	createYAML(t, ctx, `apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: edge, namespace: `+ns+`}
spec:
  podSelector: {matchLabels: {app: edge}}
  network:
    mode: Interface
    interface: {name: `+tp.A.Dev+`, vrf: 0, addresses: [10.99.0.11/24], driver: AFPacket}
`)
	g.Expect(k8s.Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "edge-0", Labels: map[string]string{"app": "edge"}},
		Spec: corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "app", Image: "app"}}}})).To(gomega.Succeed())
	edgeSock := ap.path("hp", ns, "edge-0", "session.sock")
	g.Eventually(func() bool { return isSocket(edgeSock) }).WithTimeout(20 * time.Second).WithPolling(50 * time.Millisecond).Should(gomega.BeTrue())
	edge, err := hsclient.Attach(ctx, hsclient.Options{Socket: edgeSock, Name: "edge"})
	g.Expect(err).NotTo(gomega.HaveOccurred())
	defer edge.Close()
	ec, err := edge.Dial(ctx, "tcp", server.Addr().String())
	g.Expect(err).NotTo(gomega.HaveOccurred())
	g.Expect(echotest.RoundTrip(ec, []byte("through the userspace stack"), 20*time.Second)).To(gomega.Succeed())
	// (dials that raced the deny above left peers of the pod queued: skip
	// them)
	g.Eventually(serverPeers).WithTimeout(10 * time.Second).Should(gomega.Receive(gomega.WithTransform(func(a net.Addr) string { return a.String() }, gomega.HavePrefix("10.99.0.11:"))))
	g.Eventually(func(g gomega.Gomega) {
		var sn hsv1.SessionNode
		g.Expect(k8s.Get(ctx, client.ObjectKey{Name: nodeName}, &sn)).To(gomega.Succeed())
		var states []string
		for _, e := range sn.Status.AppNamespaces {
			states = append(states, e.Name+"="+string(e.State))
		}
		g.Expect(states).To(gomega.ContainElements("edge=Ready", "web=Ready"))
	}).WithTimeout(20 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.Succeed())

	g.Expect(ap.cmd.Process.Signal(syscall.SIGTERM)).To(gomega.Succeed())
	g.Expect(ap.wait(ctx)).To(gomega.Succeed(), "agent exit status")
}
