/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// EngineState is the session engine's lifecycle state on a node.
// +kubebuilder:validation:Enum=Starting;Running;Degraded;Stopped
type EngineState string

const (
	EngineStarting EngineState = "Starting"
	EngineRunning  EngineState = "Running"
	// EngineDegraded: running, but something it was asked to do failed
	// (see errors).
	EngineDegraded EngineState = "Degraded"
	EngineStopped  EngineState = "Stopped"
)

// TransportType is the transport the engine uses for non-local sessions.
// +kubebuilder:validation:Enum=Kernel;AFPacket;AFXDP;DPDK
type TransportType string

const (
	TransportKernel   TransportType = "Kernel"
	TransportAFPacket TransportType = "AFPacket"
	TransportAFXDP    TransportType = "AFXDP"
	TransportDPDK     TransportType = "DPDK"
)

// TransportState says whether the transport can carry sessions.
// +kubebuilder:validation:Enum=Up;Down
type TransportState string

const (
	TransportUp   TransportState = "Up"
	TransportDown TransportState = "Down"
)

// AppNamespaceState is an AppNamespace's state on one node.
// +kubebuilder:validation:Enum=Pending;Ready;Failed
type AppNamespaceState string

const (
	// AppNamespacePending: selected, not yet programmed into the engine.
	AppNamespacePending AppNamespaceState = "Pending"
	// AppNamespaceReady: programmed; apps can attach.
	AppNamespaceReady AppNamespaceState = "Ready"
	// AppNamespaceFailed: the engine refused it; message says why.
	AppNamespaceFailed AppNamespaceState = "Failed"
)

// SessionNodeStatus is what a node's agent reports about its engine.
type SessionNodeStatus struct {
	// conditions: Ready (the engine runs and its transport is up);
	// EngineLimitReached (the engine is at a node-wide cap: reasons
	// NodeMaxApps, NodeMaxWorkers, NodeMaxEngineThreads, or WithinLimits);
	// and, when the agent installs the CNI plugin, CNIChained (True:
	// hoststack-cni is chained into the node's primary CNI conflist; False
	// with reason NoConfig, UnsupportedVersion, UnsupportedConfig or
	// InstallFailed). The manager adds Serving: True (LeaseRenewed) while
	// the agent renews its Lease and the Node is not NotReady; False with
	// reason LeaseExpired, LeaseNotFound or NodeNotReady.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`

	// engine is the session engine's state.
	// +optional
	Engine EngineStatus `json:"engine,omitzero"`

	// transport is the transport used for sessions that leave the node.
	// +optional
	Transport TransportStatus `json:"transport,omitzero"`

	// appNamespaces has one entry per AppNamespace this node's agent
	// serves (its nodeSelector matches the node), even with no app
	// attached: the AppNamespace controller counts the entries as the
	// selected nodes.
	// +optional
	// +listType=map
	// +listMapKey=namespace
	// +listMapKey=name
	// At most MaxNodeAppNamespaces: a node serving more lists the first
	// (by namespace, then name) and says so in errors
	// (TooManyAppNamespaces).
	// +kubebuilder:validation:MaxItems=4096
	AppNamespaces []AppNamespaceNodeStatus `json:"appNamespaces,omitempty"`

	// rulesGeneration increases each time the agent swaps in a new set of
	// rule tables; with appNamespaces[].rules it shows what is enforced.
	// +optional
	// +kubebuilder:validation:Minimum=0
	RulesGeneration int64 `json:"rulesGeneration,omitempty"`

	// certKeyPairs is the number of CertKeyPairs loaded on this node for
	// the TLS sessions of its apps (those of the Kubernetes namespaces of
	// the AppNamespaces it serves).
	// +optional
	// +kubebuilder:validation:Minimum=0
	CertKeyPairs int32 `json:"certKeyPairs,omitempty"`

	// errors are the problems the agent currently has, newest first.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	Errors []NodeError `json:"errors,omitempty"`
}

// MaxNodeAppNamespaces bounds SessionNode status.appNamespaces (the
// schema's MaxItems); the agent caps the list before it applies it.
const MaxNodeAppNamespaces = 4096

// EngineStatus is the session engine's state on a node.
type EngineStatus struct {
	// state of the engine.
	// +optional
	State EngineState `json:"state,omitempty"`

	// version of the agent and engine.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Version string `json:"version,omitempty"`
}

// TransportStatus is the transport used for sessions that leave the node.
type TransportStatus struct {
	// type of transport.
	// +optional
	Type TransportType `json:"type,omitempty"`

	// interface is the node interface the userspace stack uses; empty for
	// the kernel transport.
	// +optional
	// +kubebuilder:validation:MaxLength=15
	Interface string `json:"interface,omitempty"`

	// state of the transport.
	// +optional
	State TransportState `json:"state,omitempty"`
}

// AppNamespaceNodeStatus is one AppNamespace on one node.
type AppNamespaceNodeStatus struct {
	// namespace of the AppNamespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Namespace string `json:"namespace"`

	// name of the AppNamespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// observedGeneration is the AppNamespace generation the engine runs
	// with; a node whose entry lags is not counted as ready.
	// +optional
	// +kubebuilder:validation:Minimum=0
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// state of the AppNamespace on this node.
	// +required
	State AppNamespaceState `json:"state"`

	// transport carries this AppNamespace's sessions to the outside world
	// on this node: Kernel (PodNetwork mode) or the link driver of its
	// userspace stack (Interface mode); empty when it has none.
	// +optional
	Transport TransportType `json:"transport,omitempty"`

	// rules is the number of SessionRules of this AppNamespace enforced.
	// +optional
	// +kubebuilder:validation:Minimum=0
	Rules int32 `json:"rules,omitempty"`

	// message says why the state is not Ready.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Message string `json:"message,omitempty"`
}

// NodeError is one problem an agent reports.
type NodeError struct {
	// reason is a CamelCase word naming the problem.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^[A-Z][A-Za-z0-9]*$`
	Reason string `json:"reason"`

	// message explains it.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Message string `json:"message,omitempty"`

	// object names what it is about, as kind/namespace/name, if anything.
	// +optional
	// +kubebuilder:validation:MaxLength=512
	Object string `json:"object,omitempty"`

	// time it was last seen.
	// +optional
	Time *metav1.Time `json:"time,omitempty"`
}

// SessionNode is the session engine on one node, reported by that node's
// agent with server-side apply (create the object, then apply status). It
// is cluster-scoped and named after the node, and should carry an owner
// reference to its Node so it is garbage-collected with it. The
// AppNamespace controller aggregates these into AppNamespace status.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=snode,categories=hoststack
// +kubebuilder:printcolumn:name="Engine",type=string,JSONPath=`.status.engine.state`
// +kubebuilder:printcolumn:name="Transport",type=string,JSONPath=`.status.transport.type`
// +kubebuilder:printcolumn:name="Interface",type=string,JSONPath=`.status.transport.interface`,priority=1
// +kubebuilder:printcolumn:name="Rules Gen",type=integer,JSONPath=`.status.rulesGeneration`,priority=1
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type SessionNode struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +optional
	Status SessionNodeStatus `json:"status,omitempty"`
}

// SessionNodeList is a list of SessionNodes.
//
// +kubebuilder:object:root=true
type SessionNodeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SessionNode `json:"items"`
}

func init() {
	SchemeBuilder.Register(&SessionNode{}, &SessionNodeList{})
}
