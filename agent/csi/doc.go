// Package csi is the node agent's CSI node plugin for the inline ephemeral
// volume driver csi.hoststack.dev: the way a pod gets its own attach socket.
//
// Kubelet registers the plugin through the plugin-registration socket
// (pluginregistration/v1) and calls NodePublishVolume when a pod that mounts
// the volume starts. The volume context names the pod (the CSIDriver object
// sets podInfoOnMount); the plugin asks a PodSockets implementation to serve
// one listening attach socket for that pod, session.sock, inside the volume's
// target directory. Which socket an app connects through is who it is: the
// socket admits only the AppNamespace the pod was attached to (the
// volume attribute attach.VolumeAttrAppNamespace the pod webhook writes).
// NodeUnpublishVolume closes the socket and removes the directory.
//
// HostPathSockets is the fallback for clusters without CSI: the same per-pod
// sockets under <dir>/<pod-namespace>/<pod-name>/session.sock.
//
// What the deployment must provide (not in this package):
//
//   - a CSIDriver object csi.hoststack.dev with attachRequired: false,
//     podInfoOnMount: true (the pod's name, namespace and UID reach
//     NodePublishVolume), volumeLifecycleModes: [Ephemeral],
//     fsGroupPolicy: None (kubelet must not chown the socket's directory)
//     and requiresRepublish: true (kubelet calls NodePublishVolume again
//     periodically, which serves the sockets anew after an agent restart;
//     Publish is idempotent);
//   - the agent's DaemonSet mounts /var/lib/kubelet/plugins/csi.hoststack.dev,
//     /var/lib/kubelet/plugins_registry and /var/lib/kubelet/pods (the
//     volumes' target directories) at the same paths, or sets
//     Options.KubeletEndpoint to the CSI socket's path on the host.
//
// Kubelet's target paths are usually longer than a unix socket address
// holds; the socket is then bound through /proc/self/fd (see
// EngineSockets).
//
// Nothing here keeps global state: everything hangs off a Server, an
// EngineSockets or a HostPathSockets value.
package csi
