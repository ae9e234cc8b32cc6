package kube

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	csispec "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/onsi/gomega"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/hoststack/hoststack/api/attach"
	hsclient "github.com/hoststack/hoststack/client"
)

// TestSocketAdmitsOnlyTheChosenAppNamespace: a pod selected by two
// AppNamespaces belongs to one. Through the CSI volume (the real agent's
// CSI socket, called as kubelet calls it) its socket admits only the
// AppNamespace the webhook wrote into the volume's attributes; through
// the hostPath fallback (no webhook) only the one the webhook would have
// chosen, the oldest. A volume naming an AppNamespace that does not
// select the pod is refused.
func TestSocketAdmitsOnlyTheChosenAppNamespace(t *testing.T) {
	needAPIServer(t)
	g := gomega.NewWithT(t)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	nodeName, ns := testNode(ctx, t, g, "chosen")
	for _, an := range []struct{ name, app string }{{"a-older", "web"}, {"b-newer", "web"}, {"c-db", "db"}} {
		createYAML(t, ctx, `apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: `+an.name+`, namespace: `+ns+`}
spec:
  podSelector: {matchLabels: {app: `+an.app+`}}
`)
	}
	ap := startAgent(t, nodeName)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web-0", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "app", Image: "app"}}}}
	g.Expect(k8s.Create(ctx, pod)).To(gomega.Succeed())

	// admits says which AppNamespaces an app may attach to through sock.
	admits := func(sock string) []string {
		var ok []string
		for _, an := range []string{"a-older", "b-newer", "c-db"} {
			actx, acancel := context.WithTimeout(ctx, 10*time.Second)
			app, err := hsclient.Attach(actx, hsclient.Options{Socket: sock, Name: "probe", Namespace: ns + "/" + an, NoReattach: true})
			acancel()
			if err == nil {
				ok = append(ok, an)
				g.Expect(app.Close()).To(gomega.Succeed())
			}
		}
		return ok
	}

	// hostPath: no webhook choice, so the webhook's rule: the oldest.
	hp := ap.path("hp", ns, "web-0", attach.SocketFile)
	g.Eventually(func() bool { return isSocket(hp) }).WithTimeout(20 * time.Second).WithPolling(50 * time.Millisecond).Should(gomega.BeTrue())
	g.Expect(admits(hp)).To(gomega.Equal([]string{"a-older"}))

	// CSI, as kubelet calls it for the volume the webhook wrote.
	conn, err := grpc.NewClient("unix://"+ap.path("csi", "csi.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	g.Expect(err).NotTo(gomega.HaveOccurred())
	defer conn.Close()
	node := csispec.NewNodeClient(conn)
	publish := func(target, chosen string) error {
		g.Expect(os.MkdirAll(filepath.Dir(target), 0o755)).To(gomega.Succeed())
		_, err := node.NodePublishVolume(ctx, &csispec.NodePublishVolumeRequest{
			VolumeId: "csi-" + chosen, TargetPath: target,
			VolumeCapability: &csispec.VolumeCapability{
				AccessType: &csispec.VolumeCapability_Mount{Mount: &csispec.VolumeCapability_MountVolume{}},
				AccessMode: &csispec.VolumeCapability_AccessMode{Mode: csispec.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}},
			VolumeContext: map[string]string{
				"csi.storage.k8s.io/ephemeral":     "true",
				"csi.storage.k8s.io/pod.name":      pod.Name,
				"csi.storage.k8s.io/pod.namespace": pod.Namespace,
				"csi.storage.k8s.io/pod.uid":       string(pod.UID),
				attach.VolumeAttrAppNamespace:      chosen,
			}})
		return err
	}
	// short: a client cannot connect to a path longer than a sockaddr_un
	short, err := os.MkdirTemp("", "hs")
	g.Expect(err).NotTo(gomega.HaveOccurred())
	t.Cleanup(func() { _ = os.RemoveAll(short) })
	target := filepath.Join(short, "newer")
	g.Expect(publish(target, "b-newer")).To(gomega.Succeed())
	g.Expect(admits(filepath.Join(target, attach.SocketFile))).To(gomega.Equal([]string{"b-newer"}))

	bad := filepath.Join(short, "db")
	err = publish(bad, "c-db")
	g.Expect(status.Code(err)).To(gomega.Equal(codes.FailedPrecondition), "%v", err)
	g.Expect(err).To(gomega.MatchError(gomega.ContainSubstring(ns + "/c-db")))
}
