/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package keypair is the one judge of a CertKeyPair's material: how a
// kubernetes.io/tls Secret's tls.crt and tls.key are parsed, what makes
// them unusable, and the reason words for it. The manager (the
// CertKeyPair's Ready condition) and the engine (what it will serve)
// import it, so the two cannot disagree; it imports only the standard
// library, so neither drags in the other's dependencies.
package keypair

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
	"errors"
	"fmt"
	"time"
)

// MaxPEMBytes bounds tls.crt and tls.key each. The agents hand this
// material to every engine that terminates TLS for the namespace, and a
// real chain is a few KiB; anything larger is a mistake or an attack.
const MaxPEMBytes = 64 << 10

// The keys of a kubernetes.io/tls Secret's data (corev1.TLSCertKey and
// corev1.TLSPrivateKeyKey).
const (
	SecretCertKey = "tls.crt"
	SecretKeyKey  = "tls.key"
)

// Reasons: Valid, or why a pair is unusable. They are the CertKeyPair
// condition reasons, and the agent reports the same words.
const (
	ReasonValid              = "Valid"
	ReasonInvalidCertificate = "InvalidCertificate"
	ReasonInvalidKey         = "InvalidKey"
	ReasonKeyMismatch        = "KeyMismatch"
	ReasonExpired            = "Expired"
	ReasonNotYetValid        = "NotYetValid"
	ReasonTooLarge           = "TooLarge"
)

// Verdict is what Evaluate concludes about a pair.
type Verdict struct {
	// Reason is ReasonValid or why the pair is unusable; Message says
	// what is wrong, naming tls.crt or tls.key.
	Reason, Message string
	// Chain (leaf first) is set once tls.crt parsed, even when the pair is
	// otherwise unusable (an expired certificate still has facts worth
	// showing); Key once tls.key parsed too.
	Chain []*x509.Certificate
	Key   crypto.Signer
	// NotBefore and NotAfter bound when the whole chain is valid: the
	// latest NotBefore and the earliest NotAfter of its certificates.
	NotBefore, NotAfter time.Time
}

// Valid reports whether the pair is usable.
func (v Verdict) Valid() bool { return v.Reason == ReasonValid }

// Leaf is the first certificate of the chain, nil if tls.crt did not parse.
func (v Verdict) Leaf() *x509.Certificate {
	if len(v.Chain) == 0 {
		return nil
	}
	return v.Chain[0]
}

// Evaluate judges PEM material at time now: size limits; tls.crt holds
// only CERTIFICATE blocks, leaf first, each signed by the next; tls.key
// holds exactly one PKCS#8, PKCS#1 or SEC 1 key of a type crypto/tls can
// sign with; the key is the leaf's; and every certificate of the chain is
// valid at now (an expired intermediate breaks the chain as surely as an
// expired leaf). Pure: no I/O, no clock.
func Evaluate(certPEM, keyPEM []byte, now time.Time) Verdict {
	if len(certPEM) > MaxPEMBytes {
		return Verdict{Reason: ReasonTooLarge, Message: fmt.Sprintf("tls.crt is %d bytes, more than the %d allowed", len(certPEM), MaxPEMBytes)}
	}
	if len(keyPEM) > MaxPEMBytes {
		return Verdict{Reason: ReasonTooLarge, Message: fmt.Sprintf("tls.key is %d bytes, more than the %d allowed", len(keyPEM), MaxPEMBytes)}
	}
	chain, err := ParseChain(certPEM)
	if err != nil {
		return Verdict{Reason: ReasonInvalidCertificate, Message: "tls.crt: " + err.Error()}
	}
	v := Verdict{Chain: chain, NotBefore: chain[0].NotBefore, NotAfter: chain[0].NotAfter}
	first, last := 0, 0
	for i, c := range chain {
		if c.NotBefore.After(v.NotBefore) {
			v.NotBefore, first = c.NotBefore, i
		}
		if c.NotAfter.Before(v.NotAfter) {
			v.NotAfter, last = c.NotAfter, i
		}
	}
	key, err := ParsePrivateKey(keyPEM)
	if err != nil {
		v.Reason, v.Message = ReasonInvalidKey, "tls.key: "+err.Error()
		return v
	}
	v.Key = key
	switch {
	case !KeyMatches(key, chain[0].PublicKey):
		v.Reason, v.Message = ReasonKeyMismatch, "tls.key is not the private key of the first certificate in tls.crt"
	case now.Before(v.NotBefore):
		v.Reason, v.Message = ReasonNotYetValid, fmt.Sprintf("%s is valid from %s", describe(first, chain[first]), v.NotBefore.UTC().Format(time.RFC3339))
	case now.After(v.NotAfter):
		v.Reason, v.Message = ReasonExpired, fmt.Sprintf("%s expired at %s", describe(last, chain[last]), v.NotAfter.UTC().Format(time.RFC3339))
	default:
		v.Reason, v.Message = ReasonValid, fmt.Sprintf("certificate for %q valid until %s", chain[0].Subject.String(), v.NotAfter.UTC().Format(time.RFC3339))
	}
	return v
}

// describe names certificate i of tls.crt in a message.
func describe(i int, c *x509.Certificate) string {
	if i == 0 {
		return "certificate"
	}
	return fmt.Sprintf("chain certificate %d (%s)", i, c.Subject.String())
}

// FingerprintSHA256 is the lower-case hex SHA-256 of a certificate's DER,
// as CertKeyPair status and the agent's logs show it.
func FingerprintSHA256(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}

// ParseChain decodes tls.crt. Only CERTIFICATE blocks are accepted (a key
// pasted into tls.crt must never be sent to peers), and each certificate
// must be signed by the next, so a chain in the wrong order is refused
// here with a message instead of failing at every peer.
func ParseChain(data []byte) ([]*x509.Certificate, error) {
	certs, err := ParseCertificates(data)
	if err != nil {
		return nil, err
	}
	for i := 0; i+1 < len(certs); i++ {
		if err := certs[i].CheckSignatureFrom(certs[i+1]); err != nil {
			return nil, fmt.Errorf("certificate %d is not signed by certificate %d (chain must be leaf first): %w", i, i+1, err)
		}
	}
	return certs, nil
}

// ParseCertificates decodes a sequence of PEM CERTIFICATE blocks, strictly:
// unlike x509.CertPool.AppendCertsFromPEM it does not skip what it cannot
// read, so a truncated bundle is an error rather than a smaller trust set.
func ParseCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := bytes.TrimSpace(data)
	for len(rest) > 0 {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			return nil, fmt.Errorf("data after certificate %d is not PEM", len(certs))
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %d is %q, want CERTIFICATE", len(certs), block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs), err)
		}
		certs = append(certs, c)
		rest = bytes.TrimSpace(rest)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM certificate found")
	}
	return certs, nil
}

// ParsePrivateKey decodes the single PEM key of tls.key in the encodings
// cert-manager and openssl write.
func ParsePrivateKey(data []byte) (crypto.Signer, error) {
	block, rest := pem.Decode(bytes.TrimSpace(data))
	if block == nil {
		return nil, errors.New("no PEM private key found")
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, errors.New("more than one PEM block; want exactly one private key")
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

// KeyMatches reports whether key is the private half of pub.
func KeyMatches(key crypto.Signer, pub any) bool {
	p, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && p.Equal(pub)
}
