/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package attach is the contract between the three parties of a pod's
// attachment: the manager's pod webhook writes it into the pod, the
// agent's CSI node plugin serves it, and the client library reads it. It
// is the one place these names are spelled, and it imports nothing, so
// the client library stays free of Kubernetes.
package attach

const (
	// CSIDriver is the agent's CSI driver serving attach volumes (and the
	// name kubelet registers it under).
	CSIDriver = "csi.hoststack.dev"
	// VolumeAttrAppNamespace is the volume attribute the webhook sets to
	// the name of the AppNamespace (of the pod's namespace) it chose for
	// the pod; the pod's socket admits only that AppNamespace.
	VolumeAttrAppNamespace = "appNamespace"
	// VolumeName is the name of the injected volume.
	VolumeName = "hoststack"
	// MountPath is where the webhook mounts the volume in containers.
	MountPath = "/var/run/hoststack"
	// SocketFile is the attach socket's name inside the volume.
	SocketFile = "session.sock"
	// SocketPath is the socket's path in a container with the volume at
	// MountPath.
	SocketPath = MountPath + "/" + SocketFile

	// EnvSocket names the attach socket's path; the client attaches
	// through it.
	EnvSocket = "HOSTSTACK_SOCKET"
	// EnvAppNamespace is "namespace/name" of the AppNamespace the pod
	// was attached to; the client asks for it at attach.
	EnvAppNamespace = "HOSTSTACK_APP_NAMESPACE"

	// InjectAnnotation set to "false" on a pod opts it out of injection.
	InjectAnnotation = "hoststack.dev/inject"
	// InjectedAnnotation records, on a pod, the AppNamespace
	// ("namespace/name") the webhook attached it to.
	InjectedAnnotation = "hoststack.dev/injected"
)
