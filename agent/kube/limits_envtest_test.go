package kube

import (
	"context"
	"errors"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
	hsclient "github.com/hoststack/hoststack/client"
)

// TestAgentEngineLimitsAndPodAccess runs the agent binary with a node-wide
// cap of two apps: a third attach is refused naming nodeMaxApps and the
// SessionNode reports EngineLimitReached; the pod's socket takes its mode
// and group from the pod's fsGroup, and only the pod whose container adds
// NET_BIND_SERVICE may listen below 1024.
func TestAgentEngineLimitsAndPodAccess(t *testing.T) {
	needAPIServer(t)
	g := gomega.NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	nodeName, ns := testNode(ctx, t, g, "limits")
	createYAML(t, ctx, `apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: web, namespace: `+ns+`}
spec:
  podSelector: {matchLabels: {app: web}}
`)
	ap := startAgent(t, nodeName, "--node-max-apps", "2", "--transport", "none")
	mkPod := func(name string, psc *corev1.PodSecurityContext, sc *corev1.SecurityContext) string {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": "web"}},
			Spec: corev1.PodSpec{NodeName: nodeName, SecurityContext: psc, Containers: []corev1.Container{{Name: "app", Image: "app", SecurityContext: sc}}}}
		g.Expect(k8s.Create(ctx, pod)).To(gomega.Succeed())
		sock := ap.path("hp", ns, name, "session.sock")
		g.Eventually(func() bool { return isSocket(sock) }).WithTimeout(30 * time.Second).WithPolling(50 * time.Millisecond).Should(gomega.BeTrue())
		return sock
	}
	privSock := mkPod("priv-0", &corev1.PodSecurityContext{FSGroup: ptr.To[int64](2345)},
		&corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_BIND_SERVICE"}}})
	plainSock := mkPod("plain-0", &corev1.PodSecurityContext{RunAsUser: ptr.To[int64](0)}, nil)

	fi, err := os.Stat(privSock)
	g.Expect(err).NotTo(gomega.HaveOccurred())
	g.Expect(fi.Mode().Perm()).To(gomega.Equal(os.FileMode(0o660)))
	g.Expect(fi.Sys().(*syscall.Stat_t).Gid).To(gomega.Equal(uint32(2345)))
	fi, err = os.Stat(plainSock)
	g.Expect(err).NotTo(gomega.HaveOccurred())
	g.Expect(fi.Mode().Perm()).To(gomega.Equal(os.FileMode(0o600)))

	priv, err := hsclient.Attach(ctx, hsclient.Options{Socket: privSock, Name: "web"})
	g.Expect(err).NotTo(gomega.HaveOccurred())
	defer priv.Close()
	plain, err := hsclient.Attach(ctx, hsclient.Options{Socket: plainSock, Name: "web"}) // another pod: the name is free there
	g.Expect(err).NotTo(gomega.HaveOccurred())
	defer plain.Close()
	ln, err := priv.Listen("tcp", "127.0.0.1:80")
	g.Expect(err).NotTo(gomega.HaveOccurred())
	defer ln.Close()
	_, err = plain.Listen("tcp", "127.0.0.1:80")
	g.Expect(errors.Is(err, syscall.EACCES)).To(gomega.BeTrue(), "port 80 from a pod without NET_BIND_SERVICE: %v", err)

	_, err = hsclient.Attach(ctx, hsclient.Options{Socket: plainSock, Name: "third"})
	g.Expect(err).To(gomega.HaveOccurred())
	g.Expect(err.Error()).To(gomega.ContainSubstring("node limit nodeMaxApps (2) reached"))

	g.Eventually(func(g gomega.Gomega) {
		var sn hsv1.SessionNode
		g.Expect(k8s.Get(ctx, client.ObjectKey{Name: nodeName}, &sn)).To(gomega.Succeed())
		var c *metav1.Condition
		for i := range sn.Status.Conditions {
			if sn.Status.Conditions[i].Type == hsv1.ConditionEngineLimitReached {
				c = &sn.Status.Conditions[i]
			}
		}
		g.Expect(c).NotTo(gomega.BeNil())
		g.Expect(c.Status).To(gomega.Equal(metav1.ConditionTrue))
		g.Expect(c.Reason).To(gomega.Equal(hsv1.ReasonNodeMaxApps))
		g.Expect(strings.Contains(c.Message, "apps 2/2")).To(gomega.BeTrue(), c.Message)
	}).WithTimeout(30 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.Succeed())

	// below the cap again: the condition clears
	plain.Close()
	g.Eventually(func(g gomega.Gomega) {
		var sn hsv1.SessionNode
		g.Expect(k8s.Get(ctx, client.ObjectKey{Name: nodeName}, &sn)).To(gomega.Succeed())
		for _, c := range sn.Status.Conditions {
			if c.Type == hsv1.ConditionEngineLimitReached {
				g.Expect(c.Status).To(gomega.Equal(metav1.ConditionFalse))
				g.Expect(c.Reason).To(gomega.Equal(hsv1.ReasonWithinLimits))
			}
		}
	}).WithTimeout(30 * time.Second).WithPolling(100 * time.Millisecond).Should(gomega.Succeed())
}
