//go:build e2e

// Package e2e installs hoststack with its Helm chart on the single-node cluster
// hack/cluster builds on this machine, and uses, breaks, upgrades and uninstalls it
// as a user would. `make e2e` brings the cluster up, runs this, and takes it down.
// The steps build on each other and run in order; the first failure stops the run.
package e2e

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrlclient "sigs.k8s.io/controller-runtime/pkg/client"

	hoststackv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

const (
	releaseNS   = "hoststack-system"
	release     = "hoststack"
	appsNS      = "e2e-apps"
	appNSName   = "echo"
	tlsPair     = "e2e-tls"
	tlsName     = "echo.e2e.test"
	csiDriver   = "csi.hoststack.dev"
	cniPlugin   = "hoststack-cni"
	agentSel    = "app.kubernetes.io/component=agent"
	managerSel  = "app.kubernetes.io/component=manager"
	bigTransfer = 64 << 20
	// defaultRegistry is the chart's image.registry default (and hack/images').
	defaultRegistry = "ghcr.io/hoststack"
)

func TestE2E(t *testing.T) {
	e := newEnv(t)
	g := NewWithT(t)
	g.SetDefaultEventuallyTimeout(3 * time.Minute)
	g.SetDefaultEventuallyPollingInterval(500 * time.Millisecond)
	ctx := context.Background()
	start := time.Now()
	step := func(name string, f func(t *testing.T, g *WithT)) {
		t.Helper()
		s := time.Now()
		ok := t.Run(name, func(t *testing.T) {
			g := NewWithT(t)
			g.SetDefaultEventuallyTimeout(3 * time.Minute)
			g.SetDefaultEventuallyPollingInterval(500 * time.Millisecond)
			f(t, g)
		})
		t.Logf("step %q: %s (%s since start)", name, time.Since(s).Round(100*time.Millisecond), time.Since(start).Round(time.Second))
		if !ok {
			t.Logf("agent logs:\n%s", e.podLogs("", agentSel))
			t.Logf("manager logs:\n%s", e.podLogs("", managerSel))
			t.Logf("app logs:\n%s", e.podLogs(appsNS, "e2e=app"))
			t.FailNow()
		}
	}
	var refs map[string]string
	var h *helm
	originalConflist, err := os.ReadFile(e.cniConf)
	g.Expect(err).NotTo(HaveOccurred(), "the primary conflist hack/cluster writes")

	step("images", func(t *testing.T, g *WithT) {
		refs = e.buildImages(t, "e2e-1")
		g.Expect(refs).To(HaveKey("hoststack-manager"))
		g.Expect(refs).To(HaveKey("hoststack-agent"))
		g.Expect(refs).To(HaveKey("hoststack-apps"))
	})

	step("helm install", func(t *testing.T, g *WithT) {
		// The README's install, command for command: the manager's namespace
		// enforces Pod Security "restricted" (the agent gets its own privileged
		// namespace from the chart), then `helm install hoststack charts/hoststack -n
		// hoststack-system --create-namespace --wait --set image.tag=TAG`.
		_, err := e.kubectlRun("", "create", "namespace", releaseNS)
		g.Expect(err).NotTo(HaveOccurred())
		_, err = e.kubectlRun("", "label", "namespace", releaseNS, "pod-security.kubernetes.io/enforce=restricted")
		g.Expect(err).NotTo(HaveOccurred())
		h = e.helm(t, releaseNS, release)
		g.Expect(h.install(chartValues(g, refs, "e2e-1"))).To(Succeed())
		e.expectInstalled(ctx, t, g)
	})

	step("apps", func(t *testing.T, g *WithT) { e.deployApps(ctx, t, g, refs["hoststack-apps"]) })

	var a, b, plain string // pod IPs
	step("injected", func(t *testing.T, g *WithT) {
		a, b, plain = e.podIP(ctx, g, "echo-a"), e.podIP(ctx, g, "echo-b"), e.podIP(ctx, g, "plain")
		for _, app := range []string{"echo-a", "echo-b"} {
			p := e.pod(ctx, g, app)
			g.Expect(hasCSIVolume(p)).To(BeTrue(), "pod %s has no %s volume: not injected", p.Name, csiDriver)
			g.Expect(envOf(p, "HOSTSTACK_SOCKET")).NotTo(BeEmpty())
		}
		g.Expect(hasCSIVolume(e.pod(ctx, g, "plain"))).To(BeFalse(), "the plain pod is not selected and must not be injected")
		// The AppNamespace reports this node as serving it; the agent's
		// metrics (where counts live, not in status) count both apps.
		g.Eventually(func(g Gomega) {
			an := &hoststackv1.AppNamespace{}
			g.Expect(e.c.Get(ctx, types.NamespacedName{Namespace: appsNS, Name: appNSName}, an)).To(Succeed())
			g.Expect(an.Status.ReadyNodes).To(BeNumerically(">=", 1))
		}).Should(Succeed())
		e.scraperToken = e.newScraperToken(ctx, t, g)
		g.Eventually(func() (int32, error) { return e.nodeApps(ctx) }).Should(BeNumerically(">=", 2))
	})

	step("cut-through 64 MiB", func(t *testing.T, g *WithT) {
		r, err := call(b, fmt.Sprintf("/dial?to=%s:7000&bytes=%d", a, bigTransfer))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(r.Error).To(BeEmpty())
		g.Expect(r.OK).To(BeTrue())
		g.Expect(r.Bytes).To(Equal(bigTransfer))
		t.Logf("64 MiB %s -> %s, sha256 %s", r.Local, r.Remote, r.SHA256)
	})

	step("kernel transport", func(t *testing.T, g *WithT) {
		r, err := call(b, fmt.Sprintf("/dial?to=%s:7000&bytes=%d", plain, 1<<20))
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(r.Error).To(BeEmpty())
		g.Expect(r.OK).To(BeTrue())
		w, err := call(b, "/whoami?to="+plain+":7001")
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(w.Error).To(BeEmpty())
		host, _, err := net.SplitHostPort(w.Line)
		g.Expect(err).NotTo(HaveOccurred(), "whoami line %q", w.Line)
		g.Expect(host).To(Equal(b), "the plain pod sees the client pod's address")
	})

	step("SessionRule denies", func(t *testing.T, g *WithT) {
		rule := fmt.Sprintf(`apiVersion: hoststack.dev/v1alpha1
kind: SessionRule
metadata: {name: e2e-deny-plain, namespace: %s}
spec:
  appNamespaceRef: {name: %s}
  scope: Global
  transport: TCP
  local: {cidr: 0.0.0.0/0}
  remote: {cidr: %s/32, port: 7000}
  action: {type: Deny}
`, appsNS, appNSName, plain)
		_, err := e.kubectlRun(rule, "apply", "-f", "-")
		g.Expect(err).NotTo(HaveOccurred())
		_, err = e.kubectlRun("", "-n", appsNS, "wait", "--for=condition=Ready", "--timeout=3m", "sessionrule/e2e-deny-plain")
		g.Expect(err).NotTo(HaveOccurred())
		want := fmt.Sprintf("denied by SessionRule %s/e2e-deny-plain", appsNS)
		g.Eventually(func() string {
			r, err := call(b, fmt.Sprintf("/dial?to=%s:7000&bytes=16", plain))
			if err != nil {
				return err.Error()
			}
			return r.Error
		}, 2*time.Minute).Should(ContainSubstring(want))
		_, err = e.kubectlRun("", "-n", appsNS, "delete", "sessionrule", "e2e-deny-plain")
		g.Expect(err).NotTo(HaveOccurred())
		g.Eventually(func() error { return dialOK(b, plain+":7000", 16) }, 2*time.Minute).Should(Succeed())
	})

	step("NetworkPolicy holds on cut-through", func(t *testing.T, g *WithT) {
		// echo-a's pod is isolated for ingress and nothing allows echo-b: the
		// agent drops the cut-through connect as the CNI would drop the SYN
		// (a timeout after --connect-timeout, naming the policy)
		policy := fmt.Sprintf(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: e2e-isolate-a, namespace: %s}
spec:
  podSelector: {matchLabels: {app: echo-a}}
  policyTypes: [Ingress]
`, appsNS)
		_, err := e.kubectlRun(policy, "apply", "-f", "-")
		g.Expect(err).NotTo(HaveOccurred())
		g.Eventually(func() string {
			r, err := call(b, fmt.Sprintf("/dial?to=%s:7000&bytes=16", a))
			if err != nil {
				return err.Error()
			}
			return r.Error
		}, 3*time.Minute).Should(ContainSubstring("e2e-isolate-a"))
		_, err = e.kubectlRun("", "-n", appsNS, "delete", "networkpolicy", "e2e-isolate-a")
		g.Expect(err).NotTo(HaveOccurred())
		g.Eventually(func() error { return dialOK(b, a+":7000", 16) }, 2*time.Minute).Should(Succeed())
	})

	step("TLS listener serves a stock TLS client", func(t *testing.T, g *WithT) {
		g.Eventually(func(g Gomega) {
			r, err := call(plain, fmt.Sprintf("/dial?to=%s:8443&server-name=%s&bytes=%d", a, tlsName, 1<<16))
			g.Expect(err).NotTo(HaveOccurred())
			g.Expect(r.Error).To(BeEmpty())
			g.Expect(r.OK).To(BeTrue())
		}, 2*time.Minute).Should(Succeed())
	})

	step("deleting an app pod reaps its apps", func(t *testing.T, g *WithT) {
		e.createAppPod(ctx, g, "reap-me", refs["hoststack-apps"], true)
		g.Eventually(func() (int32, error) { return e.nodeApps(ctx) }).Should(BeNumerically(">=", 3))
		before, err := e.nodeApps(ctx)
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(e.cs.CoreV1().Pods(appsNS).Delete(ctx, "reap-me", metav1.DeleteOptions{})).To(Succeed())
		g.Eventually(func() (int32, error) { return e.nodeApps(ctx) }).Should(Equal(before - 1))
	})

	step("agent kill -9", func(t *testing.T, g *WithT) {
		agent := e.agentPod(ctx, g)
		restarts := agent.Status.ContainerStatuses[0].RestartCount
		apps := e.appPods(ctx, g)
		// Keep the agent down (kill every incarnation as soon as it appears) until a
		// pod that does not use hoststack is running: its CNI ADD must not need the
		// agent. hoststack-cni queues an ADD it could not hand to the agent in its
		// pending directory, naming the pod: seeing it there proves the ADD ran while
		// the agent was down.
		pendingDir := e.cniPendingDir(g)
		g.Expect(killAgent()).To(BeNumerically(">=", 1))
		var kills atomic.Int64
		kills.Add(1)
		stop := make(chan struct{})
		killed := make(chan struct{})
		go func() {
			defer close(killed)
			tick := time.NewTicker(10 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
					kills.Add(int64(killAgent()))
				}
			}
		}()
		e.createAppPod(ctx, g, "while-agent-down", refs["hoststack-apps"], false)
		var queued string
		g.Eventually(func() corev1.PodPhase {
			if queued == "" {
				queued = queuedAdd(pendingDir, appsNS, "while-agent-down")
			}
			p, err := e.cs.CoreV1().Pods(appsNS).Get(ctx, "while-agent-down", metav1.GetOptions{})
			if err != nil {
				return ""
			}
			return p.Status.Phase
		}, 3*time.Minute, 100*time.Millisecond).Should(Equal(corev1.PodRunning))
		close(stop)
		<-killed
		t.Logf("agent killed %d times while the plain pod started; its ADD queued as %s", kills.Load(), queued)
		g.Expect(queued).NotTo(BeEmpty(), "no ADD for the plain pod queued in %s: it did not run while the agent was down", pendingDir)
		// The DaemonSet's kubelet brings it back.
		g.Eventually(func(g Gomega) {
			p := e.agentPod(ctx, g)
			g.Expect(p.Status.ContainerStatuses[0].RestartCount).To(BeNumerically(">", restarts))
			g.Expect(podReady(p)).To(BeTrue())
		}, 4*time.Minute).Should(Succeed())
		// Back, the agent takes the queued ADD.
		g.Eventually(func() bool { return exists(queued) }).Should(BeFalse(), "the agent left the queued ADD %s", queued)
		e.expectAppsWorkAfterAgentRestart(ctx, t, g, apps)
	})

	step("conflist rewritten as Calico's installer does", func(t *testing.T, g *WithT) {
		g.Eventually(func() ([]string, error) { return pluginTypes(e.cniConf) }).Should(ContainElement(cniPlugin))
		// Calico's install-cni writes its conflist afresh (without chained entries it
		// did not write) on every start.
		g.Expect(writeAtomic(e.cniConf, originalConflist)).To(Succeed())
		g.Expect(pluginTypes(e.cniConf)).NotTo(ContainElement(cniPlugin))
		g.Eventually(func() ([]string, error) { return pluginTypes(e.cniConf) }, 2*time.Minute).Should(ContainElement(cniPlugin))
	})

	step("helm upgrade to a new image tag", func(t *testing.T, g *WithT) {
		refs2 := e.buildImages(t, "e2e-2")
		apps := e.appPods(ctx, g)
		g.Expect(h.upgrade(chartValues(g, refs2, "e2e-2"))).To(Succeed())
		g.Eventually(func(g Gomega) {
			for _, sel := range []string{agentSel, managerSel} {
				pods, err := e.cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{LabelSelector: sel})
				g.Expect(err).NotTo(HaveOccurred())
				g.Expect(pods.Items).NotTo(BeEmpty())
				for _, p := range pods.Items {
					g.Expect(p.DeletionTimestamp).To(BeNil(), "old pod %s still terminating", p.Name)
					g.Expect(p.Spec.Containers[0].Image).To(HaveSuffix(":e2e-2"))
					g.Expect(podReady(&p)).To(BeTrue())
				}
			}
		}).Should(Succeed())
		e.expectAppsWorkAfterAgentRestart(ctx, t, g, apps)
	})

	step("helm uninstall", func(t *testing.T, g *WithT) {
		// Apps go first, as a user removing hoststack would do: their volumes are
		// unmounted through the agent while it still runs.
		for _, d := range []string{"echo-a", "echo-b"} {
			g.Expect(e.cs.AppsV1().Deployments(appsNS).Delete(ctx, d, metav1.DeleteOptions{})).To(Succeed())
		}
		g.Eventually(func() int {
			pods, _ := e.cs.CoreV1().Pods(appsNS).List(ctx, metav1.ListOptions{LabelSelector: "hoststack.dev/app-namespace=" + appNSName})
			return len(pods.Items)
		}).Should(BeZero())
		g.Expect(h.uninstall()).To(Succeed())
		g.Eventually(func() int {
			pods, _ := e.cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{LabelSelector: agentSel})
			return len(pods.Items)
		}).Should(BeZero())
		g.Eventually(func() ([]string, error) { return pluginTypes(e.cniConf) }, 2*time.Minute).ShouldNot(ContainElement(cniPlugin))
		for _, p := range []string{
			filepath.Join(e.cniBinDir, cniPlugin),
			"/run/hoststack/cni.sock",
			"/var/lib/kubelet/plugins/" + csiDriver + "/csi.sock",
			"/var/lib/kubelet/plugins_registry/" + csiDriver + "-reg.sock",
		} {
			g.Eventually(func() bool { return exists(p) }, 2*time.Minute).Should(BeFalse(), "%s left on the node", p)
		}
		g.Expect(dirEmptyOrGone("/var/lib/hoststack")).To(BeTrue(), "agent state left in /var/lib/hoststack")
		g.Expect(dirEmptyOrGone("/run/hoststack")).To(BeTrue(), "agent runtime state left in /run/hoststack")
		e.createAppPod(ctx, g, "after-uninstall", refs["hoststack-apps"], false)
		g.Eventually(func() corev1.PodPhase {
			p, err := e.cs.CoreV1().Pods(appsNS).Get(ctx, "after-uninstall", metav1.GetOptions{})
			if err != nil {
				return ""
			}
			return p.Status.Phase
		}).Should(Equal(corev1.PodRunning))
		// Helm leaves CRDs (and so the users' objects) in place.
		for _, crd := range []string{"appnamespaces", "sessionrules", "certkeypairs", "sessionnodes"} {
			_, err := e.kubectlRun("", "get", "crd", crd+".hoststack.dev")
			g.Expect(err).NotTo(HaveOccurred())
		}
		an := &hoststackv1.AppNamespace{}
		g.Expect(e.c.Get(ctx, types.NamespacedName{Namespace: appsNS, Name: appNSName}, an)).To(Succeed())
	})
}

// chartValues is `--set image.tag=TAG`: the images hack/images built carry the
// chart's default registry, so the tag is all the README's install sets.
func chartValues(g *WithT, refs map[string]string, tag string) map[string]any {
	for name, ref := range refs {
		g.Expect(ref).To(Equal(defaultRegistry+"/"+name+":"+tag), "hack/images names its images as the chart does by default")
	}
	return map[string]any{"image": map[string]any{"tag": tag}}
}

// expectInstalled checks what `helm install` promises.
func (e *env) expectInstalled(ctx context.Context, t *testing.T, g *WithT) {
	// The manager is Ready and has filled the webhook's caBundle.
	g.Eventually(func(g Gomega) {
		pods, err := e.cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{LabelSelector: managerSel})
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(pods.Items).NotTo(BeEmpty())
		for _, p := range pods.Items {
			g.Expect(podReady(&p)).To(BeTrue(), "manager %s not Ready", p.Name)
		}
		whs, err := e.cs.AdmissionregistrationV1().MutatingWebhookConfigurations().List(ctx, metav1.ListOptions{})
		g.Expect(err).NotTo(HaveOccurred())
		found := false
		for _, w := range whs.Items {
			for _, hook := range w.Webhooks {
				if strings.Contains(hook.Name, "hoststack") {
					found = true
					g.Expect(hook.ClientConfig.CABundle).NotTo(BeEmpty(), "webhook %s has no caBundle", hook.Name)
				}
			}
		}
		g.Expect(found).To(BeTrue(), "no hoststack mutating webhook")
	}).Should(Succeed())
	// The agent runs, in a namespace whose Pod Security level is enforced and admits it.
	g.Eventually(func(g Gomega) {
		p := e.agentPod(ctx, g)
		g.Expect(p.Status.Phase).To(Equal(corev1.PodRunning))
		g.Expect(podReady(p)).To(BeTrue())
		ns, err := e.cs.CoreV1().Namespaces().Get(ctx, p.Namespace, metav1.GetOptions{})
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(ns.Labels).To(HaveKey("pod-security.kubernetes.io/enforce"))
	}).Should(Succeed())
	managers, err := e.cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{LabelSelector: managerSel})
	g.Expect(err).NotTo(HaveOccurred())
	mns, err := e.cs.CoreV1().Namespaces().Get(ctx, managers.Items[0].Namespace, metav1.GetOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	g.Expect(mns.Labels).To(HaveKeyWithValue("pod-security.kubernetes.io/enforce", "restricted"))
	// CSINode lists the driver.
	g.Eventually(func(g Gomega) {
		cn, err := e.cs.StorageV1().CSINodes().Get(ctx, e.nodeName, metav1.GetOptions{})
		g.Expect(err).NotTo(HaveOccurred())
		var names []string
		for _, d := range cn.Spec.Drivers {
			names = append(names, d.Name)
		}
		g.Expect(names).To(ContainElement(csiDriver))
	}).Should(Succeed())
	// One SessionNode, owned by the Node.
	g.Eventually(func(g Gomega) {
		var list hoststackv1.SessionNodeList
		g.Expect(e.c.List(ctx, &list)).To(Succeed())
		g.Expect(list.Items).To(HaveLen(1))
		sn := list.Items[0]
		g.Expect(sn.Name).To(Equal(e.nodeName))
		g.Expect(sn.OwnerReferences).To(ContainElement(SatisfyAll(
			HaveField("Kind", "Node"), HaveField("Name", e.nodeName))))
		g.Expect(meta.IsStatusConditionTrue(sn.Status.Conditions, "CNIChained")).To(BeTrue(), "CNIChained: %+v", sn.Status.Conditions)
		// hack/images stamps the version (git describe) into every binary.
		g.Expect(sn.Status.Engine.Version).NotTo(BeElementOf("", "dev"), "engine version not stamped")
		t.Logf("SessionNode engine %s %s", sn.Status.Engine.State, sn.Status.Engine.Version)
	}).Should(Succeed())
	g.Expect(pluginTypes(e.cniConf)).To(Equal([]string{"bridge", cniPlugin}), "hoststack-cni chained last into the 0.3.1 conflist")
}

// deployApps makes the apps' namespace (Pod Security restricted, opted in to the
// pod webhook as the chart's NOTES say), the AppNamespace,
// the TLS Secret and its CertKeyPair, two injected echo Deployments and a plain pod.
func (e *env) deployApps(ctx context.Context, t *testing.T, g *WithT, image string) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: appsNS, Labels: map[string]string{
		"pod-security.kubernetes.io/enforce": "restricted",
		"hoststack.dev/webhook":              "enabled",
	}}}
	g.Expect(e.c.Create(ctx, ns)).To(Succeed())
	an := &hoststackv1.AppNamespace{
		ObjectMeta: metav1.ObjectMeta{Namespace: appsNS, Name: appNSName},
		Spec: hoststackv1.AppNamespaceSpec{PodSelector: metav1.LabelSelector{
			MatchLabels: map[string]string{"hoststack.dev/app-namespace": appNSName}}},
	}
	g.Expect(e.c.Create(ctx, an)).To(Succeed())
	crt, key, ca := tlsCert(g)
	g.Expect(e.c.Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: appsNS, Name: tlsPair},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{"tls.crt": crt, "tls.key": key, "ca.crt": ca},
	})).To(Succeed())
	g.Expect(e.c.Create(ctx, &hoststackv1.CertKeyPair{
		ObjectMeta: metav1.ObjectMeta{Namespace: appsNS, Name: tlsPair},
		Spec:       hoststackv1.CertKeyPairSpec{SecretRef: hoststackv1.SecretReference{Name: tlsPair}},
	})).To(Succeed())
	e.waitInjection(ctx, g, image)
	for _, d := range []*appsv1.Deployment{
		appDeployment("echo-a", image, true, "-tls-pair", tlsPair),
		appDeployment("echo-b", image, true),
		appDeployment("plain", image, false, "-ca", "/etc/e2e-tls/ca.crt"),
	} {
		g.Expect(e.c.Create(ctx, d)).To(Succeed())
	}
	for _, d := range []string{"echo-a", "echo-b", "plain"} {
		e.waitDeployment(ctx, g, d)
	}
}

// waitInjection waits until the webhook injects a pod the AppNamespace selects (a
// server-side dry run): the webhook fails open (failurePolicy Ignore), so pods
// created before the API server reaches it through its Service, or before the
// manager's cache has the AppNamespace, start uninjected.
func (e *env) waitInjection(ctx context.Context, g *WithT, image string) {
	start := time.Now()
	g.Eventually(func(g Gomega) {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: appsNS, Name: "injection-probe",
			Labels: map[string]string{"hoststack.dev/app-namespace": appNSName}},
			Spec: appPodSpec("injection-probe", image, true)}
		g.Expect(e.c.Create(ctx, p, ctrlclient.DryRunAll)).To(Succeed())
		g.Expect(hasCSIVolume(p)).To(BeTrue(), "dry-run pod not injected")
	}).Should(Succeed())
	if d := time.Since(start); d > time.Second {
		fmt.Printf("webhook injecting after %s\n", d.Round(100*time.Millisecond))
	}
}

func appDeployment(name, image string, hoststack bool, extraArgs ...string) *appsv1.Deployment {
	spec := appPodSpec(name, image, hoststack, extraArgs...)
	labels := map[string]string{"app": name, "e2e": "app"}
	if hoststack {
		labels["hoststack.dev/app-namespace"] = appNSName
	}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Namespace: appsNS, Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr(int32(1)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: spec},
		},
	}
}

// appPodSpec runs the e2e app, meeting Pod Security "restricted".
func appPodSpec(name, image string, hoststack bool, extraArgs ...string) corev1.PodSpec {
	args := []string{"-name", name}
	if hoststack {
		args = append(args, "-hoststack")
	}
	args = append(args, extraArgs...)
	spec := corev1.PodSpec{
		TerminationGracePeriodSeconds: ptr(int64(2)),
		SecurityContext: &corev1.PodSecurityContext{
			RunAsNonRoot: ptr(true), RunAsUser: ptr(int64(65532)), RunAsGroup: ptr(int64(65532)),
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		Containers: []corev1.Container{{
			Name:            "app",
			Image:           image,
			ImagePullPolicy: corev1.PullIfNotPresent,
			Command:         []string{"/usr/local/bin/e2eapp"},
			Args:            args,
			ReadinessProbe: &corev1.Probe{
				ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstrPort(9000)}},
				PeriodSeconds: 1,
			},
			SecurityContext: &corev1.SecurityContext{
				AllowPrivilegeEscalation: ptr(false),
				Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			},
		}},
	}
	if !hoststack {
		spec.Volumes = []corev1.Volume{{Name: "tls", VolumeSource: corev1.VolumeSource{
			Secret: &corev1.SecretVolumeSource{SecretName: tlsPair}}}}
		spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "tls", MountPath: "/etc/e2e-tls", ReadOnly: true}}
	}
	return spec
}

// createAppPod creates a bare pod running the e2e app (selected by the AppNamespace
// when hoststack is true) and, for hoststack ones, waits until it is Ready.
func (e *env) createAppPod(ctx context.Context, g *WithT, name, image string, hoststack bool) {
	labels := map[string]string{"e2e": "app", "app": name}
	if hoststack {
		labels["hoststack.dev/app-namespace"] = appNSName
	}
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: appsNS, Name: name, Labels: labels},
		Spec: appPodSpec(name, image, hoststack)}
	g.Expect(e.c.Create(ctx, p)).To(Succeed())
	if hoststack {
		g.Eventually(func(g Gomega) {
			got := e.pod(ctx, g, name)
			g.Expect(podReady(got)).To(BeTrue())
		}).Should(Succeed())
	}
}

func (e *env) waitDeployment(ctx context.Context, g *WithT, name string) {
	g.Eventually(func(g Gomega) {
		d, err := e.cs.AppsV1().Deployments(appsNS).Get(ctx, name, metav1.GetOptions{})
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(d.Status.ObservedGeneration).To(Equal(d.Generation))
		g.Expect(d.Status.UpdatedReplicas).To(Equal(*d.Spec.Replicas))
		g.Expect(d.Status.AvailableReplicas).To(Equal(*d.Spec.Replicas))
		g.Expect(d.Status.Replicas).To(Equal(*d.Spec.Replicas), "old pods still there")
	}).Should(Succeed(), "deployment %s", name)
}

// pod is the one live pod labelled app=name.
func (e *env) pod(ctx context.Context, g Gomega, name string) *corev1.Pod {
	pods, err := e.cs.CoreV1().Pods(appsNS).List(ctx, metav1.ListOptions{LabelSelector: "app=" + name})
	g.Expect(err).NotTo(HaveOccurred())
	var live []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			live = append(live, p)
		}
	}
	g.Expect(live).To(HaveLen(1), "pods app=%s", name)
	return &live[0]
}

func (e *env) podIP(ctx context.Context, g *WithT, name string) string {
	var ip string
	g.Eventually(func(g Gomega) {
		p := e.pod(ctx, g, name)
		g.Expect(p.Status.PodIP).NotTo(BeEmpty())
		ip = p.Status.PodIP
	}).Should(Succeed())
	return ip
}

func (e *env) agentPod(ctx context.Context, g Gomega) *corev1.Pod {
	pods, err := e.cs.CoreV1().Pods("").List(ctx, metav1.ListOptions{LabelSelector: agentSel})
	g.Expect(err).NotTo(HaveOccurred())
	var live []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			live = append(live, p)
		}
	}
	g.Expect(live).To(HaveLen(1), "agent pods")
	g.Expect(live[0].Status.ContainerStatuses).NotTo(BeEmpty())
	return &live[0]
}

// newScraperToken binds a service account to the chart's
// hoststack-metrics-reader, as a Prometheus would be, and returns a token of it.
func (e *env) newScraperToken(ctx context.Context, t *testing.T, g *WithT) string {
	const name = "e2e-scraper"
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: appsNS, Name: name}}
	if err := e.c.Create(ctx, sa); !apierrors.IsAlreadyExists(err) {
		g.Expect(err).NotTo(HaveOccurred())
	}
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "hoststack-metrics-reader"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: appsNS, Name: name}},
	}
	if err := e.c.Create(ctx, crb); !apierrors.IsAlreadyExists(err) {
		g.Expect(err).NotTo(HaveOccurred())
	}
	t.Cleanup(func() { _ = e.c.Delete(context.Background(), crb) })
	tr, err := e.cs.CoreV1().ServiceAccounts(appsNS).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr[int64](3600)}}, metav1.CreateOptions{})
	g.Expect(err).NotTo(HaveOccurred())
	return tr.Status.Token
}

// nodeApps is the apps count of the test's AppNamespace on the node, read
// from the agent's authenticated /metrics (hostNetwork, the chart's default
// metrics port) with the scraper's token. Apps and sessions are counted in
// Prometheus only, not in any status.
func (e *env) nodeApps(ctx context.Context) (int32, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://127.0.0.1:7464/metrics", nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+e.scraperToken)
	// the agent serves a self-signed certificate unless one is configured
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("agent /metrics: %s", resp.Status)
	}
	series := fmt.Sprintf(`hoststack_agent_apps{app_namespace="%s/%s"} `, appsNS, appNSName)
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series); ok {
			f, err := strconv.ParseFloat(v, 64)
			return int32(f), err
		}
	}
	return 0, sc.Err()
}

// clientReattaches: the README ("Agent restarts and upgrades") promises that apps
// attach again by themselves when the agent comes back, without restarting their pods.
// False: the documented recourse is restarting the injected pods.
const clientReattaches = true

// appsBefore is what the injected apps were before the agent went away: their pods
// (UID and container restarts) and what OnEngine had told them.
type appsBefore struct {
	pods   map[string]string
	engine map[string]appResult
}

// appPods records the injected apps' pods and engine counts before the agent goes away.
func (e *env) appPods(ctx context.Context, g *WithT) appsBefore {
	return appsBefore{pods: e.appPodIDs(ctx, g), engine: e.engineCounts(ctx, g)}
}

func (e *env) appPodIDs(ctx context.Context, g Gomega) map[string]string {
	m := map[string]string{}
	for _, name := range []string{"echo-a", "echo-b"} {
		p := e.pod(ctx, g, name)
		m[name] = fmt.Sprintf("%s restarts=%d", p.UID, p.Status.ContainerStatuses[0].RestartCount)
	}
	return m
}

// engineCounts asks each injected app how often its client reported the engine lost
// and back (client.Options.OnEngine).
func (e *env) engineCounts(ctx context.Context, g Gomega) map[string]appResult {
	m := map[string]appResult{}
	for _, name := range []string{"echo-a", "echo-b"} {
		r, err := call(e.pod(ctx, g, name).Status.PodIP, "/engine")
		g.Expect(err).NotTo(HaveOccurred())
		g.Expect(r.OK).To(BeTrue(), "%s does not use hoststack", name)
		m[name] = r
	}
	return m
}

// expectAppsWorkAfterAgentRestart: the injected apps are told the engine went away
// and work again once it is back.
func (e *env) expectAppsWorkAfterAgentRestart(ctx context.Context, t *testing.T, g *WithT, before appsBefore) {
	if !clientReattaches {
		for _, d := range []string{"echo-a", "echo-b"} {
			_, err := e.kubectlRun("", "-n", appsNS, "rollout", "restart", "deployment/"+d)
			g.Expect(err).NotTo(HaveOccurred())
		}
		for _, d := range []string{"echo-a", "echo-b"} {
			e.waitDeployment(ctx, g, d)
		}
	}
	a, b, plain := e.podIP(ctx, g, "echo-a"), e.podIP(ctx, g, "echo-b"), e.podIP(ctx, g, "plain")
	start := time.Now()
	// The agent serves the apps' sockets again as soon as it has applied its
	// configuration (it republishes the volumes kubelet has mounted), not at
	// kubelet's next republish of the volume (every pod sync, 60-90 s).
	g.Eventually(func() error { return dialOK(b, a+":7000", 1<<20) }, 20*time.Second).Should(Succeed())
	g.Eventually(func() error { return dialOK(b, plain+":7000", 1<<20) }, time.Minute).Should(Succeed())
	t.Logf("apps work again %s after the agent was back", time.Since(start).Round(100*time.Millisecond))
	if clientReattaches {
		g.Expect(e.appPodIDs(ctx, g)).To(Equal(before.pods), "the apps' pods were neither replaced nor restarted")
		// Each app was told (OnEngine) that its engine went away and that it is
		// attached again.
		g.Eventually(func(g Gomega) {
			now := e.engineCounts(ctx, g)
			for name, was := range before.engine {
				g.Expect(now[name].EngineLost).To(BeNumerically(">", was.EngineLost), "%s was not told the engine went away", name)
				g.Expect(now[name].EngineBack).To(BeNumerically(">", was.EngineBack), "%s was not told it is attached again", name)
			}
		}, time.Minute).Should(Succeed())
	}
}

func dialOK(from, to string, n int) error {
	r, err := call(from, fmt.Sprintf("/dial?to=%s&bytes=%d", to, n))
	if err != nil {
		return err
	}
	if !r.OK {
		return errors.New(r.Error)
	}
	return nil
}

// cniPendingDir is where the chained hoststack-cni entry queues what the agent did
// not take.
func (e *env) cniPendingDir(g *WithT) string {
	b, err := os.ReadFile(e.cniConf)
	g.Expect(err).NotTo(HaveOccurred())
	var conf struct {
		Plugins []struct {
			Type       string `json:"type"`
			PendingDir string `json:"pendingDir"`
		} `json:"plugins"`
	}
	g.Expect(json.Unmarshal(b, &conf)).To(Succeed())
	for _, p := range conf.Plugins {
		if p.Type == cniPlugin {
			g.Expect(p.PendingDir).NotTo(BeEmpty(), "the chained entry names no pendingDir")
			return p.PendingDir
		}
	}
	g.Expect(conf.Plugins).To(ContainElement(HaveField("Type", cniPlugin)), "no chained entry")
	return ""
}

// queuedAdd is the file in which hoststack-cni queued an ADD for the pod, or "".
func queuedAdd(dir, namespace, name string) string {
	ents, _ := os.ReadDir(dir)
	for _, ent := range ents {
		if strings.HasPrefix(ent.Name(), ".") {
			continue // being written
		}
		p := filepath.Join(dir, ent.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		var req struct {
			Command string `json:"command"`
			Pod     struct {
				Namespace string `json:"namespace"`
				Name      string `json:"name"`
			} `json:"pod"`
		}
		if json.Unmarshal(b, &req) == nil && req.Command == "ADD" && req.Pod.Namespace == namespace && req.Pod.Name == name {
			return p
		}
	}
	return ""
}

// killAgent SIGKILLs the cluster's hoststack-agent processes (those in the kubelet's
// pod cgroups: other agents on this machine are not ours); it returns how many.
func killAgent() int {
	n := 0
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		exe, err := os.Readlink(filepath.Join("/proc", ent.Name(), "exe"))
		if err != nil || filepath.Base(strings.TrimSuffix(exe, " (deleted)")) != "hoststack-agent" {
			continue
		}
		cg, err := os.ReadFile(filepath.Join("/proc", ent.Name(), "cgroup"))
		if err != nil || !strings.Contains(string(cg), "/kubepods") {
			continue
		}
		if syscall.Kill(pid, syscall.SIGKILL) == nil {
			n++
		}
	}
	return n
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func hasCSIVolume(p *corev1.Pod) bool {
	for _, v := range p.Spec.Volumes {
		if v.CSI != nil && v.CSI.Driver == csiDriver {
			return true
		}
	}
	return false
}

func envOf(p *corev1.Pod, name string) string {
	for _, c := range p.Spec.Containers {
		for _, ev := range c.Env {
			if ev.Name == name {
				return ev.Value
			}
		}
	}
	return ""
}

// pluginTypes lists the plugin types of a conflist, in order.
func pluginTypes(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var conf struct {
		Plugins []struct {
			Type string `json:"type"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(b, &conf); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var ts []string
	for _, p := range conf.Plugins {
		ts = append(ts, p.Type)
	}
	return ts, nil
}

func writeAtomic(path string, data []byte) error {
	tmp := path + ".e2e-tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func dirEmptyOrGone(p string) bool {
	var files []string
	_ = filepath.WalkDir(p, func(path string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, path)
		}
		return nil
	})
	return len(files) == 0
}

// tlsCert makes a CA and a serving certificate for tlsName it signed.
func tlsCert(g *WithT) (crtPEM, keyPEM, caPEM []byte) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	g.Expect(err).NotTo(HaveOccurred())
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "hoststack e2e CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	g.Expect(err).NotTo(HaveOccurred())
	caCert, err := x509.ParseCertificate(caDER)
	g.Expect(err).NotTo(HaveOccurred())
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	g.Expect(err).NotTo(HaveOccurred())
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: tlsName}, DNSNames: []string{tlsName},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	g.Expect(err).NotTo(HaveOccurred())
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	g.Expect(err).NotTo(HaveOccurred())
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
}
