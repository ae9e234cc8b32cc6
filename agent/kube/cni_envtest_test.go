package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/hoststack/hoststack/agent/cni"
	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// agentDaemonSet creates the DaemonSet hoststack-agent and a pod of it on
// nodeName, as the cluster would run the agent (no controller runs here:
// the objects just exist).
func agentDaemonSet(t *testing.T, ctx context.Context, nodeName string) (*appsv1.DaemonSet, *corev1.Pod) {
	t.Helper()
	labels := map[string]string{"app.kubernetes.io/name": "hoststack", "app.kubernetes.io/component": "agent"}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: "hoststack-node", Name: "hoststack-agent"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Image: "hoststack-agent"}}},
			},
		},
	}
	if err := k8s.Create(ctx, ds); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), ds) })
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "hoststack-node", Name: "hoststack-agent-" + nodeName, Labels: labels,
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "DaemonSet", Name: ds.Name, UID: ds.UID, Controller: ptr.To(true)}}},
		Spec: corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "agent", Image: "hoststack-agent"}}},
	}
	if err := k8s.Create(ctx, pod); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), pod) })
	return ds, pod
}

func hasOurEntry(path string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	var l struct {
		Plugins []struct {
			Type string `json:"type"`
		} `json:"plugins"`
	}
	if json.Unmarshal(data, &l) != nil {
		return false
	}
	for _, p := range l.Plugins {
		if p.Type == cni.PluginType {
			return true
		}
	}
	return false
}

const bridgeConflist031 = `{"cniVersion":"0.3.1","name":"podnet","plugins":[{"type":"bridge","bridge":"cni0","isGateway":true,"ipam":{"type":"host-local","subnet":"10.244.0.0/24"}},{"type":"portmap","capabilities":{"portMappings":true}}]}`

// The agent with --cni-install on a node whose CNI has not written its
// configuration yet: it does not exit (it used to, and crash-looped), it
// serves CSI and reports CNIChained=False NoConfig; the primary CNI writes
// a 0.3.1 conflist and the condition turns True; the CNI rewrites its
// conflist and the entry comes back. SIGTERM while the DaemonSet stays (a
// restart, upgrade or drain) keeps the chain; SIGTERM once the DaemonSet
// is deleted (uninstall) removes the entry, the binary and the CNI state,
// and the primary conflist still loads for the runtime.
func TestAgentKeepsTheCNIChain(t *testing.T) {
	needAPIServer(t)
	g := gomega.NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	asAgent := agentUser(t, ctx)
	cniBin, err := cniBinary()
	g.Expect(err).NotTo(gomega.HaveOccurred())

	runs++
	nodeName := fmt.Sprintf("cni-node-%d", runs)
	g.Expect(k8s.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName}})).To(gomega.Succeed())
	ds, pod := agentDaemonSet(t, ctx, nodeName)

	host := t.TempDir()
	binDir, confDir := filepath.Join(host, "opt", "cni", "bin"), filepath.Join(host, "etc", "cni", "net.d")
	args := []string{"--cni-install", "--cni-binary", cniBin, "--cni-bin-dir", binDir, "--cni-conf-dir", confDir,
		"--cni-uninstall", "when-removed", "--pod-name", pod.Name, "--pod-namespace", pod.Namespace}
	ap := startAgent(t, nodeName, args...)

	cniCondition := func(g gomega.Gomega) metav1.Condition {
		var sn hsv1.SessionNode
		g.Expect(k8s.Get(ctx, client.ObjectKey{Name: nodeName}, &sn)).To(gomega.Succeed())
		c := meta.FindStatusCondition(sn.Status.Conditions, ConditionCNIChained)
		g.Expect(c).NotTo(gomega.BeNil())
		g.Expect(meta.IsStatusConditionTrue(sn.Status.Conditions, "Ready")).To(gomega.BeTrue())
		return *c
	}
	g.Eventually(func(g gomega.Gomega) {
		c := cniCondition(g)
		g.Expect(c.Status).To(gomega.Equal(metav1.ConditionFalse))
		g.Expect(c.Reason).To(gomega.Equal(cni.ReasonNoConfig))
	}).WithTimeout(30 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.Succeed())
	g.Eventually(func() int {
		code, _, _ := httpGet("http://" + ap.probeAddr + "/readyz")
		return code
	}).WithTimeout(10 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.Equal(http.StatusOK))
	g.Expect(isSocket(ap.path("csi", "csi.sock"))).To(gomega.BeTrue())

	// The primary CNI comes up and writes its conflist (temp file, rename).
	primary := filepath.Join(confDir, "10-bridge.conflist")
	write := func() {
		tmp := filepath.Join(confDir, ".tmp-bridge")
		g.Expect(os.WriteFile(tmp, []byte(bridgeConflist031), 0o644)).To(gomega.Succeed())
		g.Expect(os.Rename(tmp, primary)).To(gomega.Succeed())
	}
	write()
	g.Eventually(func(g gomega.Gomega) {
		c := cniCondition(g)
		g.Expect(c.Status).To(gomega.Equal(metav1.ConditionTrue))
		g.Expect(c.Reason).To(gomega.Equal(cni.ReasonChained))
		g.Expect(c.Message).To(gomega.ContainSubstring(primary))
	}).WithTimeout(30 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.Succeed())
	g.Expect(hasOurEntry(primary)).To(gomega.BeTrue())
	g.Expect(filepath.Join(binDir, cni.PluginType)).To(gomega.BeARegularFile())

	// Its installer runs again (a restart of the CNI's pod).
	write() // synchronous: only the agent can put the entry back
	g.Eventually(func() bool { return hasOurEntry(primary) }).WithTimeout(10 * time.Second).WithPolling(50 * time.Millisecond).Should(gomega.BeTrue())

	// A restart (the DaemonSet stays): the chain stays.
	g.Expect(ap.cmd.Process.Signal(syscall.SIGTERM)).To(gomega.Succeed())
	g.Expect(ap.wait(ctx)).To(gomega.Succeed())
	g.Expect(hasOurEntry(primary)).To(gomega.BeTrue(), "a restart removed the chain entry")
	g.Expect(filepath.Join(binDir, cni.PluginType)).To(gomega.BeARegularFile())

	// Uninstall: the DaemonSet is deleted, then its pods get SIGTERM.
	ap = startAgent(t, nodeName, args...)
	g.Eventually(func(g gomega.Gomega) {
		c := cniCondition(g)
		g.Expect(c.Status).To(gomega.Equal(metav1.ConditionTrue))
	}).WithTimeout(30 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.Succeed())
	g.Expect(ap.path("cni-state")).To(gomega.BeADirectory())
	g.Expect(k8s.Delete(ctx, ds)).To(gomega.Succeed())
	// Helm deletes the agent's RBAC right after the DaemonSet, before the
	// pod is stopped: what the agent watched must be enough.
	binding := &rbacv1.RoleBinding{}
	g.Expect(k8s.Get(ctx, client.ObjectKey{Namespace: "hoststack-node", Name: "hoststack-agent"}, binding)).To(gomega.Succeed())
	g.Expect(k8s.Delete(ctx, binding)).To(gomega.Succeed())
	t.Cleanup(func() {
		// The other tests' agents need it.
		binding.ResourceVersion, binding.UID = "", ""
		if err := k8s.Create(context.Background(), binding); err != nil {
			t.Errorf("restoring the agent's RoleBinding: %v", err)
		}
	})
	g.Eventually(func() bool {
		return apierrors.IsForbidden(asAgent.Get(ctx, client.ObjectKeyFromObject(ds), &appsv1.DaemonSet{}))
	}).WithTimeout(10 * time.Second).Should(gomega.BeTrue())
	g.Expect(ap.cmd.Process.Signal(syscall.SIGTERM)).To(gomega.Succeed())
	g.Expect(ap.wait(ctx)).To(gomega.Succeed())
	g.Expect(hasOurEntry(primary)).To(gomega.BeFalse(), "the chain entry is left after the uninstall")
	g.Expect(filepath.Join(binDir, cni.PluginType)).NotTo(gomega.BeAnExistingFile())
	g.Expect(ap.path("cni-state")).NotTo(gomega.BeAnExistingFile())
	g.Expect(ap.path("cni.sock")).NotTo(gomega.BeAnExistingFile())
	l, err := libcni.ConfListFromFile(primary)
	g.Expect(err).NotTo(gomega.HaveOccurred())
	g.Expect(l.Plugins).To(gomega.HaveLen(2))
}

// A primary CNI configuration the plugin cannot chain into is a condition,
// not an exit: the agent keeps serving.
func TestAgentWithUnchainableCNI(t *testing.T) {
	needAPIServer(t)
	g := gomega.NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cniBin, err := cniBinary()
	g.Expect(err).NotTo(gomega.HaveOccurred())
	runs++
	nodeName := fmt.Sprintf("cni-node-%d", runs)
	g.Expect(k8s.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName}})).To(gomega.Succeed())
	host := t.TempDir()
	binDir, confDir := filepath.Join(host, "bin"), filepath.Join(host, "net.d")
	g.Expect(os.MkdirAll(confDir, 0o755)).To(gomega.Succeed())
	g.Expect(os.WriteFile(filepath.Join(confDir, "10-old.conflist"), []byte(`{"cniVersion":"0.2.0","name":"old","plugins":[{"type":"bridge"}]}`), 0o644)).To(gomega.Succeed())
	ap := startAgent(t, nodeName, "--cni-install", "--cni-binary", cniBin, "--cni-bin-dir", binDir, "--cni-conf-dir", confDir, "--cni-uninstall", "never")
	g.Eventually(func(g gomega.Gomega) {
		var sn hsv1.SessionNode
		g.Expect(k8s.Get(ctx, client.ObjectKey{Name: nodeName}, &sn)).To(gomega.Succeed())
		c := meta.FindStatusCondition(sn.Status.Conditions, ConditionCNIChained)
		g.Expect(c).NotTo(gomega.BeNil())
		g.Expect(c.Status).To(gomega.Equal(metav1.ConditionFalse))
		g.Expect(c.Reason).To(gomega.Equal(cni.ReasonUnsupportedVersion))
		g.Expect(c.Message).To(gomega.ContainSubstring("0.2.0"))
	}).WithTimeout(30 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.Succeed())
	g.Eventually(func() int {
		code, _, _ := httpGet("http://" + ap.probeAddr + "/readyz")
		return code
	}).WithTimeout(10 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.Equal(http.StatusOK))
	g.Expect(isSocket(ap.path("cni.sock"))).To(gomega.BeTrue())
	g.Expect(ap.cmd.Process.Signal(syscall.SIGTERM)).To(gomega.Succeed())
	g.Expect(ap.wait(ctx)).To(gomega.Succeed())
}
