/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package enginetls

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/hoststack/hoststack/api/keypair"
)

// MaxPEMBytes bounds tls.crt and tls.key each (api/keypair, shared with
// the manager).
const MaxPEMBytes = keypair.MaxPEMBytes

// maxCABundleBytes bounds a CA bundle handed to RootCAs or ClientCAs. A
// bundle may legitimately be a whole system trust store (~200 KiB).
const maxCABundleBytes = 1 << 20

// The keys of a kubernetes.io/tls Secret's data.
const (
	SecretCertKey = keypair.SecretCertKey
	SecretKeyKey  = keypair.SecretKeyKey
)

// Reasons a pair is refused: api/keypair's, which are the CertKeyPair
// condition reasons, so the agent's SessionNode status says the word the
// manager used.
const (
	ReasonInvalidCertificate = keypair.ReasonInvalidCertificate
	ReasonInvalidKey         = keypair.ReasonInvalidKey
	ReasonKeyMismatch        = keypair.ReasonKeyMismatch
	ReasonExpired            = keypair.ReasonExpired
	ReasonNotYetValid        = keypair.ReasonNotYetValid
	ReasonTooLarge           = keypair.ReasonTooLarge
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

// parsePair judges PEM material at time now with the manager's policy
// (api/keypair.Evaluate). An expired pair is refused, as the manager marks
// it not Ready: serving it would only move the failure to every peer.
func parsePair(certPEM, keyPEM []byte, now time.Time) (*Pair, *MaterialError) {
	v := keypair.Evaluate(certPEM, keyPEM, now)
	if !v.Valid() {
		return nil, &MaterialError{Reason: v.Reason, Msg: v.Message}
	}
	der := make([][]byte, len(v.Chain))
	for i, c := range v.Chain {
		der[i] = c.Raw
	}
	leaf := v.Leaf()
	return &Pair{
		Certificate: &tls.Certificate{Certificate: der, PrivateKey: v.Key, Leaf: leaf},
		Leaf:        leaf, NotBefore: v.NotBefore, NotAfter: v.NotAfter,
		FingerprintSHA256: keypair.FingerprintSHA256(leaf),
	}, nil
}

// ParseChain decodes tls.crt (api/keypair.ParseChain).
func ParseChain(data []byte) ([]*x509.Certificate, error) { return keypair.ParseChain(data) }

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
	certs, err := keypair.ParseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}
