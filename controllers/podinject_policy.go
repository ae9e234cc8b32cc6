/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"fmt"
	"path"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/hoststack/hoststack/api/attach"
	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// What the pod webhook injects: the names of the attach contract
// (api/attach), shared with the agent and the client.
const (
	InjectAnnotation    = attach.InjectAnnotation
	InjectedAnnotation  = attach.InjectedAnnotation
	CSIDriverName       = attach.CSIDriver
	CSIAttrAppNamespace = attach.VolumeAttrAppNamespace
	AttachVolumeName    = attach.VolumeName
	AttachMountPath     = attach.MountPath
	SocketFile          = attach.SocketFile
	EnvSocket           = attach.EnvSocket
	EnvAppNamespace     = attach.EnvAppNamespace
)

// injection is what injectPod did to a pod.
type injection struct {
	// AppNamespace is the name of the AppNamespace selected for the pod;
	// empty when none selects it (or the pod opted out).
	AppNamespace string
	// Changed reports whether the pod was modified.
	Changed bool
	// Warnings are returned to the client as admission warnings.
	Warnings []string
}

// injectPod attaches pod, created in namespace, to the AppNamespace of
// candidates (the AppNamespaces of that namespace) whose podSelector selects
// it: it adds the CSI attach volume, mounts it in every container and init
// container and sets the attach environment. Several selecting
// AppNamespaces: the oldest wins (name breaks ties) and a warning names the
// others. The pod is modified in place; a second call changes nothing.
// What the pod already has is kept: a volume of the same name or of our
// driver that is not the one we would add stops the injection, a
// container's own mount at AttachMountPath skips that container, and a
// variable the container sets itself is left alone; each with a warning.
func injectPod(pod *corev1.Pod, namespace string, candidates []hsv1.AppNamespace) injection {
	var res injection
	if v, ok := pod.Annotations[InjectAnnotation]; ok {
		on, err := strconv.ParseBool(v)
		switch {
		case err != nil:
			res.Warnings = append(res.Warnings, fmt.Sprintf(
				"annotation %s=%q is not a boolean; injecting as if unset (use \"false\" to opt out)", InjectAnnotation, v))
		case !on:
			return res
		}
	}
	an, others := selectAppNamespace(pod.Labels, candidates)
	if an == nil {
		return res
	}
	res.AppNamespace = an.Name
	key := namespace + "/" + an.Name
	if len(others) > 0 {
		res.Warnings = append(res.Warnings, fmt.Sprintf(
			"pod is selected by several AppNamespaces; attached to %s (the oldest), not to %s",
			an.Name, strings.Join(others, ", ")))
	}

	want := attachVolume(an.Name)
	found := false
	for _, v := range pod.Spec.Volumes {
		ours := v.Name == AttachVolumeName || (v.CSI != nil && v.CSI.Driver == CSIDriverName)
		if !ours {
			continue
		}
		if !sameAttachVolume(&v, &want) {
			res.Warnings = append(res.Warnings, fmt.Sprintf(
				"pod already has volume %q, not the %s attach volume for AppNamespace %s; nothing injected",
				v.Name, CSIDriverName, an.Name))
			return injection{AppNamespace: an.Name, Warnings: res.Warnings}
		}
		found = true
	}
	if !found {
		pod.Spec.Volumes = append(pod.Spec.Volumes, want)
		res.Changed = true
	}

	for i := range pod.Spec.InitContainers {
		res.injectContainer(&pod.Spec.InitContainers[i], key)
	}
	for i := range pod.Spec.Containers {
		res.injectContainer(&pod.Spec.Containers[i], key)
	}

	if pod.Annotations[InjectedAnnotation] != key {
		if pod.Annotations == nil {
			pod.Annotations = map[string]string{}
		}
		pod.Annotations[InjectedAnnotation] = key
		res.Changed = true
	}
	return res
}

// injectContainer mounts the attach volume into c and sets its attach
// environment.
func (res *injection) injectContainer(c *corev1.Container, appNamespaceKey string) {
	mountPath := ""
	for _, m := range c.VolumeMounts {
		if m.Name == AttachVolumeName {
			mountPath = m.MountPath // the container chose where; keep it
			break
		}
	}
	if mountPath == "" {
		for _, m := range c.VolumeMounts {
			if path.Clean(m.MountPath) == AttachMountPath {
				res.Warnings = append(res.Warnings, fmt.Sprintf(
					"container %q already mounts volume %q at %s; hoststack not injected into it",
					c.Name, m.Name, AttachMountPath))
				return
			}
		}
		mountPath = AttachMountPath
		c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: AttachVolumeName, MountPath: mountPath})
		res.Changed = true
	}
	res.setEnv(c, EnvSocket, path.Join(mountPath, SocketFile))
	res.setEnv(c, EnvAppNamespace, appNamespaceKey)
}

// setEnv adds name=value to c's environment unless c sets name itself,
// which is kept (with a warning when it differs).
func (res *injection) setEnv(c *corev1.Container, name, value string) {
	for _, e := range c.Env {
		if e.Name != name {
			continue
		}
		if e.ValueFrom != nil || e.Value != value {
			res.Warnings = append(res.Warnings, fmt.Sprintf(
				"container %q sets %s itself; kept (hoststack would set %q)", c.Name, name, value))
		}
		return
	}
	c.Env = append(c.Env, corev1.EnvVar{Name: name, Value: value})
	res.Changed = true
}

// selectAppNamespace is the choice the agent also makes for a socket
// without the webhook's (hsv1.SelectAppNamespace).
func selectAppNamespace(podLabels map[string]string, candidates []hsv1.AppNamespace) (*hsv1.AppNamespace, []string) {
	return hsv1.SelectAppNamespace(podLabels, candidates)
}

// attachVolume is the CSI inline volume attaching a pod to AppNamespace
// name of its namespace.
func attachVolume(appNamespace string) corev1.Volume {
	return corev1.Volume{
		Name: AttachVolumeName,
		VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
			Driver:           CSIDriverName,
			ReadOnly:         ptr.To(false), // apps create and connect to the socket
			VolumeAttributes: map[string]string{CSIAttrAppNamespace: appNamespace},
		}},
	}
}

// sameAttachVolume reports whether have is the attach volume want.
func sameAttachVolume(have, want *corev1.Volume) bool {
	if have.Name != want.Name || have.CSI == nil {
		return false
	}
	h, w := have.CSI, want.CSI
	if h.Driver != w.Driver || ptr.Deref(h.ReadOnly, false) != ptr.Deref(w.ReadOnly, false) ||
		h.FSType != nil || h.NodePublishSecretRef != nil || len(h.VolumeAttributes) != len(w.VolumeAttributes) {
		return false
	}
	for k, v := range w.VolumeAttributes {
		if h.VolumeAttributes[k] != v {
			return false
		}
	}
	return true
}
