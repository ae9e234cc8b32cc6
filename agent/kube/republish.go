package kube

import (
	"context"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"

	"github.com/hoststack/hoststack/agent/csi"
	"github.com/hoststack/hoststack/api/attach"
)

// republish serves the attach socket of every hoststack volume kubelet
// still has mounted for a pod of this node, once, when the agent has first
// applied its configuration. After an agent restart the apps then attach
// again at once, instead of when kubelet next republishes the volume (every
// 60-90 s). A volume that cannot be served now is left to kubelet's call.
func (a *Agent) republish(ctx context.Context, pods csi.PodSockets, kubeletDir string) {
	var list corev1.PodList
	if err := a.c.List(ctx, &list); err != nil {
		a.log.Warn("republishing pod sockets: listing pods", "err", err)
		return
	}
	n := 0
	for _, v := range mountedVolumes(list.Items, a.o.NodeName, kubeletDir) {
		if _, err := pods.Publish(ctx, v.pod, v.dir); err != nil {
			a.log.Info("pod socket not republished: left to kubelet", "pod", v.pod.String(), "dir", v.dir, "err", err)
			continue
		}
		n++
	}
	if n > 0 {
		a.log.Info("pod sockets republished after start", "sockets", n)
	}
}

// mountedVolume is a hoststack volume of a pod and its directory.
type mountedVolume struct {
	pod csi.PodRef
	dir string
}

// mountedVolumes lists the hoststack CSI volumes of the live pods of node
// whose mount directory exists under kubeletDir (where kubelet mounts CSI
// volumes: pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount).
func mountedVolumes(pods []corev1.Pod, node, kubeletDir string) []mountedVolume {
	var out []mountedVolume
	for i := range pods {
		p := &pods[i]
		if p.Spec.NodeName != node || p.DeletionTimestamp != nil ||
			p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		for _, v := range p.Spec.Volumes {
			if v.CSI == nil || v.CSI.Driver != attach.CSIDriver {
				continue
			}
			dir := filepath.Join(kubeletDir, "pods", string(p.UID), "volumes", "kubernetes.io~csi", v.Name, "mount")
			if st, err := os.Stat(dir); err != nil || !st.IsDir() {
				continue
			}
			out = append(out, mountedVolume{
				pod: csi.PodRef{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID),
					AppNamespace: v.CSI.VolumeAttributes[attach.VolumeAttrAppNamespace]},
				dir: dir,
			})
		}
	}
	return out
}
