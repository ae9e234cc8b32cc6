/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1alpha1

// Condition types. Every kind has Ready; the specific types say which part of
// the object decided it, so `kubectl wait --for=condition=Ready` works on all
// of them and a human can still see why.
const (
	// ConditionReady summarises the object: True when it is usable.
	ConditionReady = "Ready"

	// ConditionSecretValid (CertKeyPair) is True when the referenced Secret
	// holds a usable certificate chain and matching key.
	ConditionSecretValid = "SecretValid"

	// ConditionResolved (SessionRule) is True when the referenced
	// AppNamespace exists.
	ConditionResolved = "Resolved"
	// ConditionConflict (SessionRule) is True when an older rule with the
	// same match exists in the same AppNamespace; that rule wins.
	ConditionConflict = "Conflict"

	// ConditionValid (AppNamespace) is True when the spec passes the checks
	// the schema cannot express (selector syntax).
	ConditionValid = "Valid"
	// ConditionNodesReady (AppNamespace) is True when every node that
	// selected the AppNamespace reports it ready at the current generation.
	ConditionNodesReady = "NodesReady"
)

// Condition reasons (CamelCase, stable: tools match on them).
const (
	// CertKeyPair.
	ReasonValid              = "Valid"
	ReasonSecretNotFound     = "SecretNotFound"
	ReasonInvalidSecretType  = "InvalidSecretType"
	ReasonInvalidCertificate = "InvalidCertificate"
	ReasonInvalidKey         = "InvalidKey"
	ReasonKeyMismatch        = "KeyMismatch"
	ReasonExpired            = "Expired"
	ReasonNotYetValid        = "NotYetValid"
	ReasonTooLarge           = "TooLarge"

	// SessionRule.
	ReasonAccepted             = "Accepted"
	ReasonAppNamespaceFound    = "AppNamespaceFound"
	ReasonAppNamespaceNotFound = "AppNamespaceNotFound"
	ReasonConflict             = "Conflict"
	ReasonNoConflict           = "NoConflict"

	// AppNamespace.
	ReasonInvalidPodSelector  = "InvalidPodSelector"
	ReasonInvalidNodeSelector = "InvalidNodeSelector"
	ReasonNodesReady          = "NodesReady"
	ReasonNoNodesSelected     = "NoNodesSelected"
	ReasonNodesNotReady       = "NodesNotReady"
)
