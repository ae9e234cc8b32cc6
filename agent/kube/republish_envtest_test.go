package kube

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/onsi/gomega"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/hoststack/hoststack/agent/csi"
	"github.com/hoststack/hoststack/api/attach"
	hsclient "github.com/hoststack/hoststack/client"
)

// TestAgentRepublishesMountedVolumes: an agent that starts (or starts again
// after SIGKILL) serves the attach socket of every hoststack volume kubelet
// has mounted for the node's pods, without waiting for kubelet's periodic
// NodePublishVolume (60-90 s on a real node): no CSI call is made here.
func TestAgentRepublishesMountedVolumes(t *testing.T) {
	needAPIServer(t)
	g := gomega.NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	nodeName, ns := testNode(ctx, t, g, "republish")
	createYAML(t, ctx, `apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: web, namespace: `+ns+`}
spec:
  podSelector: {matchLabels: {app: web}}
`)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web-0", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "app", Image: "app"}},
			Volumes: []corev1.Volume{{Name: "hoststack", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
				Driver: attach.CSIDriver, VolumeAttributes: map[string]string{attach.VolumeAttrAppNamespace: "web"}}}}}}}
	g.Expect(k8s.Create(ctx, pod)).To(gomega.Succeed())

	// kubelet's layout: <kubelet dir>/pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount,
	// the kubelet dir being the parent of the plugin registry
	kubelet := t.TempDir()
	dir := filepath.Join(kubelet, "pods", string(pod.UID), "volumes", "kubernetes.io~csi", "hoststack", "mount")
	g.Expect(os.MkdirAll(dir, 0o755)).To(gomega.Succeed())
	g.Expect(os.MkdirAll(filepath.Join(kubelet, "plugins_registry"), 0o755)).To(gomega.Succeed())
	// the path is past sun_path's 108 bytes, as on a real node: dial it
	// through a short link (the agent binds it its own way)
	short, err := os.MkdirTemp("", "rp")
	g.Expect(err).NotTo(gomega.HaveOccurred())
	t.Cleanup(func() { os.RemoveAll(short) })
	g.Expect(os.Symlink(dir, filepath.Join(short, "m"))).To(gomega.Succeed())
	sock := filepath.Join(short, "m", csi.SocketName)

	attachOnce := func() error {
		actx, acancel := context.WithTimeout(ctx, 5*time.Second)
		defer acancel()
		app, err := hsclient.Attach(actx, hsclient.Options{Socket: sock, Name: "web", NoReattach: true})
		if err != nil {
			return err
		}
		return app.Close()
	}
	for run := 1; run <= 2; run++ {
		ap := startAgent(t, nodeName, "--transport", "none", "--csi-registry-dir", filepath.Join(kubelet, "plugins_registry"))
		g.Eventually(attachOnce).WithTimeout(30*time.Second).WithPolling(100*time.Millisecond).Should(gomega.Succeed(), "start %d", run)
		// SIGKILL: the socket file stays behind with no one serving it,
		// as after an OOM kill
		g.Expect(ap.cmd.Process.Kill()).To(gomega.Succeed())
		_ = ap.cmd.Wait()
		ap.exited = true
		g.Expect(attachOnce()).NotTo(gomega.Succeed(), "attached with the agent killed")
	}
}
