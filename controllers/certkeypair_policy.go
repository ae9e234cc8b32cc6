/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"time"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

// MaxPEMBytes bounds tls.crt and tls.key each. The agents hand this
// material to every engine that terminates TLS for the namespace, and a
// real chain is a few KiB; anything larger is a mistake or an attack.
const MaxPEMBytes = 64 << 10

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
	chain, err := parseChain(certPEM)
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

	key, err := parsePrivateKey(keyPEM)
	if err != nil {
		return verdict(hsv1.ReasonInvalidKey, "tls.key: "+err.Error())
	}
	if !publicKeyMatches(key, leaf.PublicKey) {
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

// parseChain decodes every PEM block of tls.crt. Only CERTIFICATE blocks
// are allowed (a private key pasted into tls.crt must not be served), and
// each certificate must be signed by the one after it, so a chain in the
// wrong order is caught here rather than by a failing TLS client.
func parseChain(data []byte) ([]*x509.Certificate, error) {
	var chain []*x509.Certificate
	rest := bytes.TrimSpace(data)
	for len(rest) > 0 {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, fmt.Errorf("data after certificate %d is not PEM", len(chain))
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is %q, want CERTIFICATE", len(chain), block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(chain), err)
		}
		chain = append(chain, cert)
		rest = bytes.TrimSpace(rest)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("no PEM certificate found")
	}
	for i := 0; i+1 < len(chain); i++ {
		if err := chain[i].CheckSignatureFrom(chain[i+1]); err != nil {
			return nil, fmt.Errorf("certificate %d is not signed by certificate %d (chain must be leaf first): %w", i, i+1, err)
		}
	}
	return chain, nil
}

// parsePrivateKey decodes the single PEM private key of tls.key, in any of
// the encodings cert-manager and openssl write (PKCS#8, PKCS#1, SEC 1).
func parsePrivateKey(data []byte) (crypto.Signer, error) {
	block, rest := pem.Decode(bytes.TrimSpace(data))
	if block == nil {
		return nil, fmt.Errorf("no PEM private key found")
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, fmt.Errorf("more than one PEM block; want exactly one private key")
	}
	var (
		key any
		err error
	)
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block is %q, want PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", block.Type, err)
	}
	switch k := key.(type) {
	case *rsa.PrivateKey:
		return k, nil
	case *ecdsa.PrivateKey:
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	default:
		return nil, fmt.Errorf("unsupported private key type %T", key)
	}
}

// publicKeyMatches reports whether key is the private half of pub.
func publicKeyMatches(key crypto.Signer, pub any) bool {
	p, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && p.Equal(pub)
}

// fingerprintSHA256 is the lower-case hex SHA-256 of a certificate's DER.
func fingerprintSHA256(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}
