/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package v1alpha1 holds the hoststack.dev/v1alpha1 API: AppNamespace,
// SessionRule and CertKeyPair, written by users, and SessionNode, written by
// the node agents.
//
// Validation that a schema can express lives in the schema (OpenAPI markers
// and CEL rules), so the API server refuses a bad object with a message that
// names the field; the controllers report what only they can judge as
// conditions.
//
// +kubebuilder:object:generate=true
// +groupName=hoststack.dev
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of every kind in this package.
	GroupVersion = schema.GroupVersion{Group: "hoststack.dev", Version: "v1alpha1"}

	// SchemeBuilder registers the kinds of this package with a scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the kinds of this package to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
