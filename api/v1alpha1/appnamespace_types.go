/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1alpha1

import (
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// NetworkMode says where an AppNamespace's sessions meet the network.
// +kubebuilder:validation:Enum=PodNetwork;Interface
type NetworkMode string

const (
	// NetworkModePodNetwork: the kernel transport opens sockets inside each
	// pod's own network namespace. Works everywhere.
	NetworkModePodNetwork NetworkMode = "PodNetwork"
	// NetworkModeInterface: the userspace stack owns a node interface and
	// a VRF table.
	NetworkModeInterface NetworkMode = "Interface"
)

// AppNamespaceSpec is the desired state of an AppNamespace.
type AppNamespaceSpec struct {
	// podSelector selects the pods, in this Kubernetes namespace, that may
	// attach to this AppNamespace. An empty selector selects every pod.
	// +required
	// +kubebuilder:validation:XValidation:rule="!has(self.matchExpressions) || self.matchExpressions.all(e, e.operator in ['In', 'NotIn', 'Exists', 'DoesNotExist'])",message="spec.podSelector.matchExpressions[].operator must be one of In, NotIn, Exists, DoesNotExist"
	// +kubebuilder:validation:XValidation:rule="!has(self.matchExpressions) || self.matchExpressions.all(e, !(e.operator in ['In', 'NotIn']) || (has(e.values) && size(e.values) > 0))",message="spec.podSelector.matchExpressions[].values must be non-empty when operator is In or NotIn"
	// +kubebuilder:validation:XValidation:rule="!has(self.matchExpressions) || self.matchExpressions.all(e, !(e.operator in ['Exists', 'DoesNotExist']) || !has(e.values) || size(e.values) == 0)",message="spec.podSelector.matchExpressions[].values must be empty when operator is Exists or DoesNotExist"
	PodSelector metav1.LabelSelector `json:"podSelector"`

	// nodeSelector restricts the nodes whose agents serve this
	// AppNamespace; all nodes when empty. Same syntax as a pod's
	// nodeSelector.
	// +optional
	// +kubebuilder:validation:MaxProperties=32
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`

	// network says where sessions meet the network.
	// +optional
	// +kubebuilder:default={mode: PodNetwork}
	Network AppNamespaceNetwork `json:"network,omitzero"`

	// segments sizes the shared-memory segments and FIFOs given to apps.
	// These are defaults and limits: an app may ask for smaller FIFOs when
	// it attaches, never larger ones. Sizes are address space, not memory:
	// a FIFO's pages are allocated as data flows through it and given back
	// once it has been quiet for a couple of seconds, so large FIFOs cost
	// memory only while they carry a stream.
	// +optional
	// +kubebuilder:default={segmentSize: "1Gi", rxFIFOSize: "4Mi", txFIFOSize: "4Mi", maxSegmentsPerApp: 32}
	Segments SegmentsSpec `json:"segments,omitzero"`

	// quotas bound what apps of this AppNamespace may hold on each node.
	// +optional
	// +kubebuilder:default={maxApps: 64, maxSessionsPerApp: 512, maxWorkersPerApp: 16, maxListenersPerApp: 64}
	Quotas QuotasSpec `json:"quotas,omitzero"`

	// secretRef names a Secret, in this Kubernetes namespace, whose key
	// `secret` apps must present when they attach (VPP-style namespace
	// secret). Optional: which attach socket a pod is given already
	// decides which AppNamespace it may use.
	// +optional
	SecretRef *SecretReference `json:"secretRef,omitempty"`
}

// AppNamespaceNetwork says where an AppNamespace's sessions meet the network.
// +kubebuilder:validation:XValidation:rule="has(self.mode) && self.mode == 'Interface' ? has(self.interface) : !has(self.interface)",message="spec.network.interface is required when spec.network.mode is Interface, and forbidden otherwise",fieldPath=".interface"
type AppNamespaceNetwork struct {
	// mode is PodNetwork (kernel sockets in each pod's network namespace)
	// or Interface (the userspace stack on a node interface).
	// +optional
	// +kubebuilder:default=PodNetwork
	Mode NetworkMode `json:"mode,omitempty"`

	// interface is the node interface and VRF used in Interface mode.
	// +optional
	Interface *NetworkInterface `json:"interface,omitempty"`
}

// LinkDriver is how the userspace stack reaches a node interface.
// +kubebuilder:validation:Enum=AFXDP;AFPacket;DPDK
type LinkDriver string

const (
	// LinkDriverAFXDP: an AF_XDP socket, with an XDP program that steers
	// only the AppNamespace's addresses to it (zero-copy where the driver
	// supports it).
	LinkDriverAFXDP LinkDriver = "AFXDP"
	// LinkDriverAFPacket: an AF_PACKET socket with a TPACKET ring and
	// virtio-net headers (GSO); works on any interface.
	LinkDriverAFPacket LinkDriver = "AFPacket"
	// LinkDriverDPDK: a DPDK port (agents built with DPDK support only).
	LinkDriverDPDK LinkDriver = "DPDK"
)

// NetworkInterface is a node network interface, the addresses the
// userspace stack owns on it, and the VRF table the AppNamespace uses.
// +kubebuilder:validation:XValidation:rule="!has(self.ipv4Gateway) || self.addresses.exists(a, cidr(a).ip().family() == 4)",message="spec.network.interface.ipv4Gateway needs an IPv4 address in spec.network.interface.addresses",fieldPath=".ipv4Gateway"
// +kubebuilder:validation:XValidation:rule="!has(self.ipv6Gateway) || self.addresses.exists(a, cidr(a).ip().family() == 6)",message="spec.network.interface.ipv6Gateway needs an IPv6 address in spec.network.interface.addresses",fieldPath=".ipv6Gateway"
type NetworkInterface struct {
	// name is the Linux interface name on each selected node.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=15
	// +kubebuilder:validation:Pattern=`^[^/:\s]+$`
	Name string `json:"name"`

	// vrf is the routing table id (0 is the main table) for the
	// AppNamespace's sessions.
	// +required
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=4294967295
	VRF *int64 `json:"vrf,omitempty"`

	// addresses are the userspace stack's own addresses on the interface,
	// with their on-link prefix (e.g. 192.0.2.10/24). They must not be
	// configured on the kernel's interface: the stack answers ARP and
	// neighbour solicitation for them itself.
	// +required
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=8
	// +kubebuilder:validation:items:MaxLength=43
	// +kubebuilder:validation:items:XValidation:rule="isCIDR(self)",message="spec.network.interface.addresses must be CIDRs such as 192.0.2.10/24"
	Addresses []string `json:"addresses,omitempty"`

	// ipv4Gateway is the next hop of the stack's IPv4 default route;
	// without it only on-link IPv4 destinations are reachable.
	// +optional
	// +kubebuilder:validation:MaxLength=15
	// +kubebuilder:validation:XValidation:rule="isIP(self) && ip(self).family() == 4",message="spec.network.interface.ipv4Gateway must be an IPv4 address"
	IPv4Gateway string `json:"ipv4Gateway,omitempty"`

	// ipv6Gateway is the next hop of the stack's IPv6 default route.
	// +optional
	// +kubebuilder:validation:MaxLength=39
	// +kubebuilder:validation:XValidation:rule="isIP(self) && ip(self).family() == 6",message="spec.network.interface.ipv6Gateway must be an IPv6 address"
	IPv6Gateway string `json:"ipv6Gateway,omitempty"`

	// driver is how the stack reaches the interface: AFXDP (default),
	// AFPacket or DPDK.
	// +optional
	// +kubebuilder:default=AFXDP
	Driver LinkDriver `json:"driver,omitempty"`
}

// SegmentsSpec sizes the shared-memory segments and FIFOs.
// +kubebuilder:validation:XValidation:rule="!has(self.segmentSize) || !has(self.rxFIFOSize) || !has(self.txFIFOSize) || !isQuantity(string(self.segmentSize)) || !isQuantity(string(self.rxFIFOSize)) || !isQuantity(string(self.txFIFOSize)) || quantity(string(self.rxFIFOSize)).add(quantity(string(self.txFIFOSize))).compareTo(quantity(string(self.segmentSize))) <= 0",message="spec.segments.rxFIFOSize + spec.segments.txFIFOSize must fit in spec.segments.segmentSize (a session's two FIFOs share one segment)",fieldPath=".segmentSize"
type SegmentsSpec struct {
	// segmentSize is the size of each shared-memory segment, 1Mi to 4Gi:
	// address space that apps map, holding up to segmentSize / (rxFIFOSize
	// + txFIFOSize) sessions; memory is used only by the pages written.
	// +optional
	// +kubebuilder:default="1Gi"
	// +kubebuilder:validation:XValidation:rule="!isQuantity(string(self)) || quantity(string(self)).isInteger() && quantity(string(self)).compareTo(quantity('1Mi')) >= 0 && quantity(string(self)).compareTo(quantity('4Gi')) <= 0",message="spec.segments.segmentSize must be a whole number of bytes from 1Mi to 4Gi"
	SegmentSize *resource.Quantity `json:"segmentSize,omitempty"`

	// rxFIFOSize is the default receive FIFO size per session, 4Ki to 1Gi:
	// how far a stream can run ahead of its reader. Pages are allocated as
	// the stream needs them and given back when the session is quiet.
	// +optional
	// +kubebuilder:default="4Mi"
	// +kubebuilder:validation:XValidation:rule="!isQuantity(string(self)) || quantity(string(self)).isInteger() && quantity(string(self)).compareTo(quantity('4Ki')) >= 0 && quantity(string(self)).compareTo(quantity('1Gi')) <= 0",message="spec.segments.rxFIFOSize must be a whole number of bytes from 4Ki to 1Gi"
	RxFIFOSize *resource.Quantity `json:"rxFIFOSize,omitempty"`

	// txFIFOSize is the default transmit FIFO size per session, 4Ki to 1Gi
	// (see rxFIFOSize).
	// +optional
	// +kubebuilder:default="4Mi"
	// +kubebuilder:validation:XValidation:rule="!isQuantity(string(self)) || quantity(string(self)).isInteger() && quantity(string(self)).compareTo(quantity('4Ki')) >= 0 && quantity(string(self)).compareTo(quantity('1Gi')) <= 0",message="spec.segments.txFIFOSize must be a whole number of bytes from 4Ki to 1Gi"
	TxFIFOSize *resource.Quantity `json:"txFIFOSize,omitempty"`

	// maxSegmentsPerApp bounds the FIFO segments one app may hold.
	// +optional
	// +kubebuilder:default=32
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1024
	MaxSegmentsPerApp *int32 `json:"maxSegmentsPerApp,omitempty"`
}

// QuotasSpec bounds what apps of an AppNamespace hold on each node.
type QuotasSpec struct {
	// maxApps bounds the apps attached to this AppNamespace on one node.
	// +optional
	// +kubebuilder:default=64
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	MaxApps *int32 `json:"maxApps,omitempty"`

	// maxSessionsPerApp bounds the open sessions of one app.
	// +optional
	// +kubebuilder:default=512
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=1048576
	MaxSessionsPerApp *int32 `json:"maxSessionsPerApp,omitempty"`

	// maxWorkersPerApp bounds the workers (event-queue pairs, each served
	// by an engine thread) of one app, its first worker included.
	// +optional
	// +kubebuilder:default=16
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=256
	MaxWorkersPerApp *int32 `json:"maxWorkersPerApp,omitempty"`

	// maxListenersPerApp bounds the stream listeners of one app (a
	// listener in global scope also holds a kernel socket on the node).
	// +optional
	// +kubebuilder:default=64
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=4096
	MaxListenersPerApp *int32 `json:"maxListenersPerApp,omitempty"`
}

// SecretReference names a Secret in the referrer's namespace.
type SecretReference struct {
	// name of the Secret.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="!format.dns1123Subdomain().validate(self).hasValue()",message="spec.secretRef.name must be a valid Secret name (DNS subdomain)"
	Name string `json:"name"`
}

// AppNamespaceStatus is the observed state of an AppNamespace, aggregated
// from the SessionNodes of the nodes that serve it.
type AppNamespaceStatus struct {
	// conditions: Ready (the spec is valid and at least one live node
	// serves it, every live selected node at the current generation),
	// Valid, NodesReady (False with reason NoNodesSelected while no live
	// node serves it).
	// +optional
	// +listType=map
	// +listMapKey=type
	// +patchStrategy=merge
	// +patchMergeKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty" patchStrategy:"merge" patchMergeKey:"type"`

	// observedGeneration is the generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// selectedNodes counts the live nodes (SessionNode condition Serving)
	// whose agent serves this AppNamespace.
	// +optional
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	SelectedNodes int32 `json:"selectedNodes,omitempty"`

	// readyNodes counts the selected nodes that report it ready at the
	// current generation.
	// +optional
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	ReadyNodes int32 `json:"readyNodes,omitempty"`

	// podsNotInjected counts the pods this AppNamespace selects (it is the
	// one the pod webhook would choose for them) that were created
	// without the attach volume: their namespace is not opted in to the
	// webhook (label hoststack.dev/webhook=enabled), or the webhook was
	// unavailable (failurePolicy Ignore). Each also gets an Event
	// (reason NotInjected). Recreate them once the cause is fixed.
	// +optional
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	PodsNotInjected int32 `json:"podsNotInjected,omitempty"`
}

// AppNamespace is an isolated session-layer namespace (VPP's app
// namespace): which pods may attach, on which nodes, over which network,
// with which segment sizes and quotas.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=appns,categories=hoststack
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.network.mode`
// +kubebuilder:printcolumn:name="Ready Nodes",type=integer,JSONPath=`.status.readyNodes`
// +kubebuilder:printcolumn:name="Selected",type=integer,JSONPath=`.status.selectedNodes`
// +kubebuilder:printcolumn:name="Not Injected",type=integer,JSONPath=`.status.podsNotInjected`,priority=1
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AppNamespace struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec AppNamespaceSpec `json:"spec"`
	// +optional
	Status AppNamespaceStatus `json:"status,omitempty"`
}

// AppNamespaceList is a list of AppNamespaces.
//
// +kubebuilder:object:root=true
type AppNamespaceList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AppNamespace `json:"items"`
}

func init() {
	SchemeBuilder.Register(&AppNamespace{}, &AppNamespaceList{})
}
