/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1alpha1

import "github.com/hoststack/hoststack/api/keypair"

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
	// ConditionAccepted (SessionRule) is True when the manager accepted the
	// rule: its AppNamespace exists and no older rule has the same match.
	// Ready adds that at least one live node enforces it.
	ConditionAccepted = "Accepted"

	// ConditionValid (AppNamespace) is True when the spec passes the checks
	// the schema cannot express (selector syntax).
	ConditionValid = "Valid"
	// ConditionNodesReady (AppNamespace) is True when every node that
	// selected the AppNamespace reports it ready at the current generation.
	ConditionNodesReady = "NodesReady"

	// ConditionEngineLimitReached (SessionNode) is True while the session
	// engine of the node is at one of its node-wide caps (the agent's
	// --node-max-apps, --node-max-workers, --node-max-engine-threads) or
	// refused an app or worker for one since the previous status report;
	// the reason names the cap, the message the numbers.
	ConditionEngineLimitReached = "EngineLimitReached"

	// ConditionServing (SessionNode) is written by the manager, not the
	// agent: True while the agent renews its Lease and the Node is not
	// NotReady. A node that is not serving counts for no AppNamespace and
	// enforces no SessionRule, whatever its (possibly stale) entries say.
	ConditionServing = "Serving"
)

// Condition reasons (CamelCase, stable: tools match on them).
const (
	// CertKeyPair (the material's reasons are api/keypair's, which the
	// agent reports too).
	ReasonValid              = keypair.ReasonValid
	ReasonSecretNotFound     = "SecretNotFound"
	ReasonInvalidSecretType  = "InvalidSecretType"
	ReasonInvalidCertificate = keypair.ReasonInvalidCertificate
	ReasonInvalidKey         = keypair.ReasonInvalidKey
	ReasonKeyMismatch        = keypair.ReasonKeyMismatch
	ReasonExpired            = keypair.ReasonExpired
	ReasonNotYetValid        = keypair.ReasonNotYetValid
	ReasonTooLarge           = keypair.ReasonTooLarge

	// SessionRule.
	ReasonAccepted             = "Accepted"
	ReasonAppNamespaceFound    = "AppNamespaceFound"
	ReasonAppNamespaceNotFound = "AppNamespaceNotFound"
	ReasonConflict             = "Conflict"
	ReasonNoConflict           = "NoConflict"
	ReasonEnforced             = "Enforced"
	ReasonNotEnforced          = "NotEnforced"

	// AppNamespace.
	ReasonInvalidPodSelector  = "InvalidPodSelector"
	ReasonInvalidNodeSelector = "InvalidNodeSelector"
	ReasonNodesReady          = "NodesReady"
	ReasonNoNodesSelected     = "NoNodesSelected"
	ReasonNodesNotReady       = "NodesNotReady"

	// SessionNode, condition EngineLimitReached.
	ReasonNodeMaxApps    = "NodeMaxApps"
	ReasonNodeMaxWorkers = "NodeMaxWorkers"
	ReasonNodeMaxThreads = "NodeMaxEngineThreads"
	ReasonWithinLimits   = "WithinLimits"

	// SessionNode, condition Serving (written by the manager).
	ReasonLeaseRenewed = "LeaseRenewed"
	ReasonLeaseExpired = "LeaseExpired"
	ReasonLeaseMissing = "LeaseNotFound"
	ReasonNodeNotReady = "NodeNotReady"
)
