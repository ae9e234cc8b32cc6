/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// CertKeyPairSpec is the desired state of a CertKeyPair.
type CertKeyPairSpec struct {
	// secretRef names a Secret of type kubernetes.io/tls, in this
	// Kubernetes namespace, holding tls.crt (PEM chain, leaf first) and
	// tls.key (PEM private key). cert-manager Certificates produce exactly
	// this; rotating the Secret rotates the pair.
	// +required
	SecretRef SecretReference `json:"secretRef"`
}

// CertKeyPairStatus is the observed state of a CertKeyPair: facts about the
// leaf certificate whenever tls.crt parses (even if the pair is unusable,
// e.g. expired), none otherwise.
type CertKeyPairStatus struct {
	// conditions: Ready, SecretValid.
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

	// subject is the leaf certificate's subject, RFC 2253 style.
	// +optional
	// +kubebuilder:validation:MaxLength=1024
	Subject string `json:"subject,omitempty"`

	// dnsNames are the leaf certificate's DNS subject alternative names.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:MaxLength=253
	DNSNames []string `json:"dnsNames,omitempty"`

	// notAfter is when the certificate chain stops being valid: the
	// earliest expiry of its certificates, normally the leaf's.
	// +optional
	NotAfter *metav1.Time `json:"notAfter,omitempty"`

	// fingerprintSHA256 is the SHA-256 of the leaf certificate (DER), in
	// lower-case hex.
	// +optional
	// +kubebuilder:validation:MaxLength=64
	FingerprintSHA256 string `json:"fingerprintSHA256,omitempty"`
}

// CertKeyPair makes the TLS certificate and key of a Secret available to
// the apps of its Kubernetes namespace, which name it when they listen or
// connect with TLS (VPP's app cert/key pairs, with an owner).
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ckp,categories=hoststack
// +kubebuilder:printcolumn:name="Secret",type=string,JSONPath=`.spec.secretRef.name`
// +kubebuilder:printcolumn:name="Subject",type=string,JSONPath=`.status.subject`,priority=1
// +kubebuilder:printcolumn:name="Not After",type=string,format=date-time,JSONPath=`.status.notAfter`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type CertKeyPair struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +required
	Spec CertKeyPairSpec `json:"spec"`
	// +optional
	Status CertKeyPairStatus `json:"status,omitempty"`
}

// CertKeyPairList is a list of CertKeyPairs.
//
// +kubebuilder:object:root=true
type CertKeyPairList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []CertKeyPair `json:"items"`
}

func init() {
	SchemeBuilder.Register(&CertKeyPair{}, &CertKeyPairList{})
}
