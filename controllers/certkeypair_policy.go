/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"time"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
	enginetls "github.com/hoststack/hoststack/engine/tls"
)

// MaxPEMBytes bounds tls.crt and tls.key each. The agents hand this
// material to every engine that terminates TLS for the namespace, and a
// real chain is a few KiB; anything larger is a mistake or an attack.
const MaxPEMBytes = enginetls.MaxPEMBytes

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
// time now: sizes, the certificate chain (leaf first, each certificate
// signed by the next), the private key, that the key belongs to the leaf,
// and the validity period of every certificate of the chain. It is pure:
// no I/O, no clock.
func evaluateKeyPair(certPEM, keyPEM []byte, now time.Time) keyPairVerdict {
	if len(certPEM) > MaxPEMBytes {
		return keyPairVerdict{Reason: hsv1.ReasonTooLarge,
			Message: fmt.Sprintf("tls.crt is %d bytes, more than the %d allowed", len(certPEM), MaxPEMBytes)}
	}
	if len(keyPEM) > MaxPEMBytes {
		return keyPairVerdict{Reason: hsv1.ReasonTooLarge,
			Message: fmt.Sprintf("tls.key is %d bytes, more than the %d allowed", len(keyPEM), MaxPEMBytes)}
	}
	chain, err := enginetls.ParseChain(certPEM)
	if err != nil {
		return keyPairVerdict{Reason: hsv1.ReasonInvalidCertificate, Message: "tls.crt: " + err.Error()}
	}
	leaf := chain[0]
	firstIdx, first := latestNotBefore(chain)
	lastIdx, last := earliestNotAfter(chain)
	// Facts known from here on, whatever the verdict.
	facts := keyPairVerdict{Leaf: leaf, NotBefore: first.NotBefore, NotAfter: last.NotAfter}
	verdict := func(reason, msg string) keyPairVerdict {
		v := facts
		v.Reason, v.Message = reason, msg
		return v
	}

	key, err := enginetls.ParsePrivateKey(keyPEM)
	if err != nil {
		return verdict(hsv1.ReasonInvalidKey, "tls.key: "+err.Error())
	}
	if !enginetls.KeyMatches(key, leaf.PublicKey) {
		return verdict(hsv1.ReasonKeyMismatch, "tls.key is not the private key of the first certificate in tls.crt")
	}
	if now.Before(first.NotBefore) {
		return verdict(hsv1.ReasonNotYetValid,
			fmt.Sprintf("%s is valid from %s", describe(firstIdx, first), first.NotBefore.UTC().Format(time.RFC3339)))
	}
	if now.After(last.NotAfter) {
		return verdict(hsv1.ReasonExpired,
			fmt.Sprintf("%s expired at %s", describe(lastIdx, last), last.NotAfter.UTC().Format(time.RFC3339)))
	}
	return verdict(hsv1.ReasonValid,
		fmt.Sprintf("certificate for %q valid until %s", leaf.Subject.String(), last.NotAfter.UTC().Format(time.RFC3339)))
}

// describe names certificate i of a chain for a message.
func describe(i int, c *x509.Certificate) string {
	if i == 0 {
		return "certificate"
	}
	return fmt.Sprintf("chain certificate %d (%s)", i, c.Subject.String())
}

// latestNotBefore and earliestNotAfter find the certificate of the chain
// that starts its validity last and the one that ends it first: an expired
// intermediate breaks the chain as surely as an expired leaf.
func latestNotBefore(chain []*x509.Certificate) (int, *x509.Certificate) {
	at := 0
	for i, c := range chain {
		if c.NotBefore.After(chain[at].NotBefore) {
			at = i
		}
	}
	return at, chain[at]
}

func earliestNotAfter(chain []*x509.Certificate) (int, *x509.Certificate) {
	at := 0
	for i, c := range chain {
		if c.NotAfter.Before(chain[at].NotAfter) {
			at = i
		}
	}
	return at, chain[at]
}

// fingerprintSHA256 is the lower-case hex SHA-256 of a certificate's DER.
func fingerprintSHA256(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}
