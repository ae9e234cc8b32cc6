package kube

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/hoststack/hoststack/agent/csi"
)

// PodSocketAccess decides, from the pod spec, who may open the pod's attach
// socket and whether its apps may listen on ports below 1024.
//
//   - Privileged ports: a container of the pod (init containers included:
//     sidecars run alongside) is privileged or adds NET_BIND_SERVICE to its
//     capabilities. The runtime's default capability set is not counted: a
//     pod that wants the ports asks for them in its spec.
//   - Socket file: with the pod's fsGroup, 0660 and that group (every
//     container has it as a supplementary group); else, when every
//     container's user is set (runAsUser of the container or the pod) and
//     the same, 0600 owned by it; else, when every container's group is set
//     and the same, 0660 with that group; else (or with hostUsers: false,
//     whose ids are not the node's) 0666 — only this pod mounts the volume
//     directory the socket is in.
func PodSocketAccess(pod *corev1.Pod) csi.PodAccess {
	var acc csi.PodAccess
	psc := pod.Spec.SecurityContext
	if psc == nil {
		psc = &corev1.PodSecurityContext{}
	}
	all := make([]corev1.Container, 0, len(pod.Spec.Containers)+len(pod.Spec.InitContainers))
	all = append(all, pod.Spec.InitContainers...)
	all = append(all, pod.Spec.Containers...)
	var uid, gid *int64
	sameUID, sameGID := len(all) > 0, len(all) > 0
	for _, c := range all {
		sc := c.SecurityContext
		if sc != nil && ((sc.Privileged != nil && *sc.Privileged) || hasNetBindService(sc.Capabilities)) {
			acc.PrivilegedPorts = true
		}
		u, g := psc.RunAsUser, psc.RunAsGroup
		if sc != nil && sc.RunAsUser != nil {
			u = sc.RunAsUser
		}
		if sc != nil && sc.RunAsGroup != nil {
			g = sc.RunAsGroup
		}
		sameUID = sameUID && u != nil && (uid == nil || *uid == *u)
		sameGID = sameGID && g != nil && (gid == nil || *gid == *g)
		if u != nil {
			uid = u
		}
		if g != nil {
			gid = g
		}
	}
	ptr := func(v int64) *int { i := int(v); return &i }
	switch {
	case pod.Spec.HostUsers != nil && !*pod.Spec.HostUsers:
		// a user namespace: the pod's ids are not the node's
		acc.Mode = 0o666
	case psc.FSGroup != nil:
		acc.Mode, acc.GID = 0o660, ptr(*psc.FSGroup)
	case sameUID:
		acc.Mode, acc.UID = 0o600, ptr(*uid)
	case sameGID:
		acc.Mode, acc.GID = 0o660, ptr(*gid)
	default:
		acc.Mode = 0o666
	}
	return acc
}

func hasNetBindService(c *corev1.Capabilities) bool {
	if c == nil {
		return false
	}
	for _, a := range c.Add {
		if a == "NET_BIND_SERVICE" || a == "CAP_NET_BIND_SERVICE" {
			return true
		}
	}
	return false
}

// Access is the CSI socket access function: PodSocketAccess of the pod
// kubelet named.
func (a *Agent) Access(ctx context.Context, ref csi.PodRef) (csi.PodAccess, error) {
	var pod corev1.Pod
	key := client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}
	err := a.c.Get(ctx, key, &pod)
	if apierrors.IsNotFound(err) || (err == nil && string(pod.UID) != ref.UID) {
		err = a.api.Get(ctx, key, &pod)
	}
	if err != nil {
		return csi.PodAccess{}, fmt.Errorf("pod %s: %w", key, err)
	}
	if string(pod.UID) != ref.UID {
		return csi.PodAccess{}, fmt.Errorf("pod %s has uid %s, not %s", key, pod.UID, ref.UID)
	}
	return PodSocketAccess(&pod), nil
}
