/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"crypto/x509"
	"time"

	"github.com/hoststack/hoststack/api/keypair"
	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// MaxPEMBytes bounds tls.crt and tls.key each (api/keypair, which the
// engine judges the same material with).
const MaxPEMBytes = keypair.MaxPEMBytes

// keyPairVerdict is what evaluateKeyPair concludes about a cert/key pair.
type keyPairVerdict struct {
	// Reason is hsv1.ReasonValid or the reason the pair is unusable.
	Reason  string
	Message string
	// Leaf is the parsed leaf certificate when tls.crt parsed, even if the
	// pair is otherwise unusable (an expired certificate still has facts
	// worth showing).
	Leaf *x509.Certificate
	// NotBefore and NotAfter bound when the whole chain is valid: the
	// latest NotBefore and the earliest NotAfter of its certificates.
	NotBefore, NotAfter time.Time
}

// Valid reports whether the pair is usable.
func (v keyPairVerdict) Valid() bool { return v.Reason == hsv1.ReasonValid }

// evaluateKeyPair judges PEM material from a kubernetes.io/tls Secret at
// time now with api/keypair.Evaluate, the code the engine refuses
// material with. It is pure: no I/O, no clock.
func evaluateKeyPair(certPEM, keyPEM []byte, now time.Time) keyPairVerdict {
	v := keypair.Evaluate(certPEM, keyPEM, now)
	return keyPairVerdict{Reason: v.Reason, Message: v.Message, Leaf: v.Leaf(), NotBefore: v.NotBefore, NotAfter: v.NotAfter}
}

// fingerprintSHA256 is the lower-case hex SHA-256 of a certificate's DER.
func fingerprintSHA256(cert *x509.Certificate) string { return keypair.FingerprintSHA256(cert) }
