/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// RuleScope says which lookups a SessionRule takes part in.
// +kubebuilder:validation:Enum=Local;Global
type RuleScope string

const (
	// RuleScopeLocal: lookups between apps inside the AppNamespace
	// (cut-through sessions).
	RuleScopeLocal RuleScope = "Local"
	// RuleScopeGlobal: sessions that go through the transport.
	RuleScopeGlobal RuleScope = "Global"
)

// TransportProtocol is the transport a SessionRule matches.
// +kubebuilder:validation:Enum=TCP;UDP
type TransportProtocol string

const (
	TransportTCP TransportProtocol = "TCP"
	TransportUDP TransportProtocol = "UDP"
)

// RuleActionType is what a matching SessionRule does.
// +kubebuilder:validation:Enum=Allow;Deny;Redirect
type RuleActionType string

const (
	RuleActionAllow    RuleActionType = "Allow"
	RuleActionDeny     RuleActionType = "Deny"
	RuleActionRedirect RuleActionType = "Redirect"
)

// SessionRuleSpec is the desired state of a SessionRule. The match is
// (scope, transport, local, remote); the most specific match wins, and two
// rules with the same match in one AppNamespace conflict: the older one
// applies, the newer one is reported with Ready=False, reason Conflict.
// +kubebuilder:validation:XValidation:rule="!isCIDR(self.local.cidr) || !isCIDR(self.remote.cidr) || cidr(self.local.cidr).ip().family() == cidr(self.remote.cidr).ip().family()",message="spec.local.cidr and spec.remote.cidr must be of the same IP family",fieldPath=".remote.cidr"
type SessionRuleSpec struct {
	// appNamespaceRef names the AppNamespace, in this Kubernetes namespace,
	// whose tables the rule belongs to.
	// +required
	AppNamespaceRef AppNamespaceReference `json:"appNamespaceRef"`

	// scope is Local (lookups between apps of the AppNamespace) or Global
	// (sessions through the transport).
	// +required
	Scope RuleScope `json:"scope"`

	// transport is the protocol matched: TCP or UDP.
	// +required
	Transport TransportProtocol `json:"transport"`

	// local matches the local end of the session.
	// +required
	Local RuleEndpoint `json:"local"`

	// remote matches the remote end of the session.
	// +required
	Remote RuleEndpoint `json:"remote"`

	// action is what happens to a matching session.
	// +required
	Action RuleAction `json:"action"`

	// tag is a free-form label shown by tools, at most 64 characters.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Tag string `json:"tag,omitempty"`
}

// AppNamespaceReference names an AppNamespace in the referrer's namespace.
type AppNamespaceReference struct {
	// name of the AppNamespace.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="!format.dns1123Subdomain().validate(self).hasValue()",message="spec.appNamespaceRef.name must be a valid object name (DNS subdomain)"
	Name string `json:"name"`
}

// RuleEndpoint is one end of a session: a prefix and a port.
type RuleEndpoint struct {
	// cidr is the address prefix, IPv4 or IPv6, in canonical form (host
	// bits zero), e.g. 10.0.0.0/8 or fd00::/64; 0.0.0.0/0 or ::/0 match
	// any address.
	// +required
	// +kubebuilder:validation:MinLength=4
	// +kubebuilder:validation:MaxLength=43
	// +kubebuilder:validation:XValidation:rule="isCIDR(self)",message="cidr must be a valid IPv4 or IPv6 CIDR such as 10.0.0.0/8 or fd00::/64"
	// +kubebuilder:validation:XValidation:rule="!isCIDR(self) || string(cidr(self).masked()) == self",message="cidr must be in canonical form, with the host bits zero (e.g. 10.1.0.0/16, not 10.1.2.3/16)"
	CIDR string `json:"cidr"`

	// port is the transport port; 0 matches any port.
	// +optional
	// +kubebuilder:default=0
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port"`
}

// RuleAction is what a matching SessionRule does.
// +kubebuilder:validation:XValidation:rule="self.type == 'Redirect' ? has(self.redirect) : !has(self.redirect)",message="spec.action.redirect is required when spec.action.type is Redirect, and forbidden otherwise",fieldPath=".redirect"
type RuleAction struct {
	// type is Allow, Deny or Redirect.
	// +required
	Type RuleActionType `json:"type"`

	// redirect names the app that receives matching sessions; only with
	// type Redirect.
	// +optional
	Redirect *RedirectAction `json:"redirect,omitempty"`
}

// RedirectAction sends matching sessions to a named app of the AppNamespace.
type RedirectAction struct {
	// app is the name the target app attached with.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=128
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`
	App string `json:"app"`
}

// SessionRuleStatus is the observed state of a SessionRule.
type SessionRuleStatus struct {
	// conditions: Ready (accepted and enforced by at least one live node),
	// Accepted (the AppNamespace exists and no older rule has the same
	// match), Resolved, Conflict.
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

	// enforcingNodes counts the live nodes (SessionNode condition Serving)
	// that serve the rule's AppNamespace Ready with as many rules as the
	// manager accepted for it.
	// +optional
	// +kubebuilder:validation:Minimum=0
	EnforcingNodes int32 `json:"enforcingNodes,omitempty"`
}

// SessionRule is an allow, deny or redirect rule on session lookups of an
// AppNamespace (VPP's session rules).
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=srule,categories=hoststack
// +kubebuilder:printcolumn:name="AppNamespace",type=string,JSONPath=`.spec.appNamespaceRef.name`
// +kubebuilder:printcolumn:name="Scope",type=string,JSONPath=`.spec.scope`
// +kubebuilder:printcolumn:name="Transport",type=string,JSONPath=`.spec.transport`
// +kubebuilder:printcolumn:name="Local",type=string,JSONPath=`.spec.local.cidr`
// +kubebuilder:printcolumn:name="LPort",type=integer,JSONPath=`.spec.local.port`,priority=1
// +kubebuilder:printcolumn:name="Remote",type=string,JSONPath=`.spec.remote.cidr`
// +kubebuilder:printcolumn:name="RPort",type=integer,JSONPath=`.spec.remote.port`,priority=1
// +kubebuilder:printcolumn:name="Action",type=string,JSONPath=`.spec.action.type`
// +kubebuilder:printcolumn:name="Tag",type=string,JSONPath=`.spec.tag`,priority=1
// +kubebuilder:printcolumn:name="Enforcing",type=integer,JSONPath=`.status.enforcingNodes`,priority=1
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type SessionRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec SessionRuleSpec `json:"spec"`
	// +optional
	Status SessionRuleStatus `json:"status,omitempty"`
}

// SessionRuleList is a list of SessionRules.
//
// +kubebuilder:object:root=true
type SessionRuleList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []SessionRule `json:"items"`
}

func init() {
	SchemeBuilder.Register(&SessionRule{}, &SessionRuleList{})
}
