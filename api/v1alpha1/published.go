/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package v1alpha1

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// Published Secrets: agents may read no Secret of the teams' namespaces.
// The manager copies the material a hoststack object needs (the TLS
// Secret of a CertKeyPair, the key of an AppNamespace's secretRef) into
// the agent namespace, where the agents read them with a namespaced Role
// (the way Cilium publishes what its agents need). The copy is named after
// the object that needs it, so the agent finds it without reading the
// object's Secret, and the manager deletes it without reading anything.
const (
	// LabelPublished marks a Secret the manager publishes for the agents
	// (value "true"); agents cache only Secrets with this label.
	LabelPublished = "hoststack.dev/published"
	// AnnotationPublishedFor names the object the copy serves, as
	// "Kind/namespace/name".
	AnnotationPublishedFor = "hoststack.dev/published-for"
	// AnnotationPublishedFrom names the Secret copied, as
	// "namespace/name".
	AnnotationPublishedFrom = "hoststack.dev/published-from"
)

// PublishedSecretName is the name of the copy the manager publishes for
// the object kind namespace/name: the lower-case kind and a hash (object
// names are too long to be joined into a Secret name).
func PublishedSecretName(kind, namespace, name string) string {
	sum := sha256.Sum256([]byte(kind + "/" + namespace + "/" + name))
	return strings.ToLower(kind) + "-" + hex.EncodeToString(sum[:10])
}
