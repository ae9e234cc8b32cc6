/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package enginetls

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// MaxPEMBytes bounds tls.crt and tls.key each. It is the controller's limit
// (controllers.MaxPEMBytes); the value is repeated rather than imported
// because the engine must not depend on the controller and its Kubernetes
// libraries. Keep the two equal.
const MaxPEMBytes = 64 << 10

// maxCABundleBytes bounds a CA bundle handed to RootCAs or ClientCAs. A
// bundle may legitimately be a whole system trust store (~200 KiB).
const maxCABundleBytes = 1 << 20

// The keys of a kubernetes.io/tls Secret's data (corev1.TLSCertKey and
// corev1.TLSPrivateKeyKey, spelled out so the engine imports nothing of
// Kubernetes).
const (
	SecretCertKey = "tls.crt"
	SecretKeyKey  = "tls.key"
)

// Reasons a pair is refused. They are the CertKeyPair condition reasons of
// api/v1alpha1 (same strings, so the agent can put them in SessionNode
// status and a human sees the same word the controller used).
const (
	ReasonInvalidCertificate = "InvalidCertificate"
	ReasonInvalidKey         = "InvalidKey"
	ReasonKeyMismatch        = "KeyMismatch"
	ReasonExpired            = "Expired"
	ReasonNotYetValid        = "NotYetValid"
	ReasonTooLarge           = "TooLarge"
)

// ErrInvalid is the sentinel of every material error (errors.Is); the
// concrete error is a *MaterialError.
var ErrInvalid = errors.New("invalid certificate/key material")

// MaterialError says why cert/key material was refused and for which pair.
type MaterialError struct {
	Namespace, Name string // the pair; empty when not known yet (LoadFiles, SecretData)
	Reason          string // one of the Reason constants
	Msg             string // what is wrong, naming tls.crt or tls.key
}

func (e *MaterialError) Error() string {
	if e.Name == "" {
		return e.Msg
	}
	return fmt.Sprintf("certkeypair %s/%s: %s", e.Namespace, e.Name, e.Msg)
}

// Is makes errors.Is(err, ErrInvalid) true for every MaterialError.
func (e *MaterialError) Is(target error) bool { return target == ErrInvalid }

func invalid(reason, format string, args ...any) *MaterialError {
	return &MaterialError{Reason: reason, Msg: fmt.Sprintf(format, args...)}
}

// Pair is a validated certificate chain and private key. It is immutable
// once stored: the Store swaps whole Pairs, so a handshake that picked one
// keeps a consistent view. Callers must not modify it.
type Pair struct {
	Namespace, Name string
	// Certificate is what crypto/tls serves: the chain as given (leaf
	// first), the key, and the parsed leaf.
	Certificate *tls.Certificate
	// Leaf is Certificate.Leaf, for convenience.
	Leaf *x509.Certificate
	// NotBefore and NotAfter bound the validity of the whole chain (the
	// latest NotBefore and the earliest NotAfter of its certificates).
	NotBefore, NotAfter time.Time
	// FingerprintSHA256 is the lower-case hex SHA-256 of the leaf's DER, as
	// in CertKeyPair status, so agent logs and kubectl output can be matched.
	FingerprintSHA256 string
}

// parsePair judges PEM material at time now with the controller's policy
// (controllers/certkeypair_policy.go): size limits; tls.crt holds only
// CERTIFICATE blocks, leaf first, each signed by the next; tls.key holds
// exactly one PKCS#8, PKCS#1 or SEC 1 key of a type crypto/tls can sign
// with; the key is the leaf's; and every certificate of the chain is valid
// at now. An expired pair is refused, as the controller marks it not Ready:
// serving it would only move the failure to every peer.
func parsePair(certPEM, keyPEM []byte, now time.Time) (*Pair, *MaterialError) {
	if len(certPEM) > MaxPEMBytes {
		return nil, invalid(ReasonTooLarge, "tls.crt is %d bytes, more than the %d allowed", len(certPEM), MaxPEMBytes)
	}
	if len(keyPEM) > MaxPEMBytes {
		return nil, invalid(ReasonTooLarge, "tls.key is %d bytes, more than the %d allowed", len(keyPEM), MaxPEMBytes)
	}
	chain, err := ParseChain(certPEM)
	if err != nil {
		return nil, invalid(ReasonInvalidCertificate, "tls.crt: %v", err)
	}
	leaf := chain[0]
	key, err := ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, invalid(ReasonInvalidKey, "tls.key: %v", err)
	}
	if !KeyMatches(key, leaf.PublicKey) {
		return nil, invalid(ReasonKeyMismatch, "tls.key is not the private key of the first certificate in tls.crt")
	}
	p := &Pair{Leaf: leaf, NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter}
	first, last := 0, 0
	for i, c := range chain {
		if c.NotBefore.After(p.NotBefore) {
			p.NotBefore, first = c.NotBefore, i
		}
		if c.NotAfter.Before(p.NotAfter) {
			p.NotAfter, last = c.NotAfter, i
		}
	}
	if now.Before(p.NotBefore) {
		return nil, invalid(ReasonNotYetValid, "%s is valid from %s",
			describe(first, chain[first]), p.NotBefore.UTC().Format(time.RFC3339))
	}
	if now.After(p.NotAfter) {
		return nil, invalid(ReasonExpired, "%s expired at %s",
			describe(last, chain[last]), p.NotAfter.UTC().Format(time.RFC3339))
	}
	der := make([][]byte, len(chain))
	for i, c := range chain {
		der[i] = c.Raw
	}
	p.Certificate = &tls.Certificate{Certificate: der, PrivateKey: key, Leaf: leaf}
	sum := sha256.Sum256(leaf.Raw)
	p.FingerprintSHA256 = hex.EncodeToString(sum[:])
	return p, nil
}

// describe names certificate i of tls.crt in a message.
func describe(i int, c *x509.Certificate) string {
	if i == 0 {
		return "certificate"
	}
	return fmt.Sprintf("chain certificate %d (%s)", i, c.Subject)
}

// ParseChain decodes tls.crt. Only CERTIFICATE blocks are accepted (a key
// pasted into tls.crt must never be sent to peers), and each certificate
// must be signed by the next, so a chain in the wrong order is refused
// here with a message instead of failing at every peer.
func ParseChain(data []byte) ([]*x509.Certificate, error) {
	certs, err := parseCertificates(data)
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

// parseCertificates decodes a sequence of PEM CERTIFICATE blocks, strictly:
// unlike x509.CertPool.AppendCertsFromPEM it does not skip what it cannot
// read, so a truncated bundle is an error rather than a smaller trust set.
func parseCertificates(data []byte) ([]*x509.Certificate, error) {
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

// SecretData takes tls.crt and tls.key out of a kubernetes.io/tls Secret's
// data. The agent passes secret.Data; the engine never sees Secret objects.
func SecretData(data map[string][]byte) (certPEM, keyPEM []byte, err error) {
	// A missing key is reported as the controller does: as the unparsable
	// certificate or key it amounts to.
	certPEM, ok := data[SecretCertKey]
	if !ok || len(certPEM) == 0 {
		return nil, nil, invalid(ReasonInvalidCertificate, "secret has no %s", SecretCertKey)
	}
	keyPEM, ok = data[SecretKeyKey]
	if !ok || len(keyPEM) == 0 {
		return nil, nil, invalid(ReasonInvalidKey, "secret has no %s", SecretKeyKey)
	}
	return certPEM, keyPEM, nil
}

// LoadFiles reads a PEM certificate chain and key for standalone mode. It
// only reads (bounded by MaxPEMBytes); Store.Set validates. There is no
// watcher: the caller calls LoadFiles and Set again when the files change,
// exactly as the agent calls Set again when the Secret changes.
func LoadFiles(certFile, keyFile string) (certPEM, keyPEM []byte, err error) {
	if certPEM, err = readBounded(certFile, SecretCertKey); err != nil {
		return nil, nil, err
	}
	if keyPEM, err = readBounded(keyFile, SecretKeyKey); err != nil {
		return nil, nil, err
	}
	return certPEM, keyPEM, nil
}

// readBounded reads at most MaxPEMBytes+1 bytes so a wrong path (a huge
// file, a device) cannot make the agent allocate without bound.
func readBounded(name, role string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", role, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxPEMBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%s: read %s: %w", role, name, err)
	}
	if len(b) > MaxPEMBytes {
		return nil, invalid(ReasonTooLarge, "%s: %s is more than the %d bytes allowed", role, name, MaxPEMBytes)
	}
	return b, nil
}

// parseCABundle builds a pool from PEM certificates, strictly.
func parseCABundle(what string, data []byte) (*x509.CertPool, error) {
	if len(data) > maxCABundleBytes {
		return nil, fmt.Errorf("%s: %d bytes, more than the %d allowed", what, len(data), maxCABundleBytes)
	}
	certs, err := parseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}
