/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
)

func TestEvaluateKeyPair(t *testing.T) {
	now := time.Now()
	leafECDSA := newTestCert(t, certOpts{cn: "svc.example", dnsNames: []string{"svc.example"}})
	leafRSA := newTestCert(t, certOpts{cn: "rsa.example", rsa: true})
	other := newTestCert(t, certOpts{cn: "other"})
	ca := newTestCert(t, certOpts{cn: "ca", isCA: true})
	issued := newTestCert(t, certOpts{cn: "issued.example", parent: ca})
	expired := newTestCert(t, certOpts{cn: "old", notBefore: now.Add(-48 * time.Hour), notAfter: now.Add(-time.Hour)})
	future := newTestCert(t, certOpts{cn: "future", notBefore: now.Add(time.Hour), notAfter: now.Add(48 * time.Hour)})
	oldCA := newTestCert(t, certOpts{cn: "old-ca", isCA: true, notBefore: now.Add(-48 * time.Hour), notAfter: now.Add(-time.Minute)})
	issuedByOld := newTestCert(t, certOpts{cn: "issued-by-old", parent: oldCA})
	futureCA := newTestCert(t, certOpts{cn: "future-ca", isCA: true, notBefore: now.Add(time.Hour), notAfter: now.Add(48 * time.Hour)})
	issuedByFuture := newTestCert(t, certOpts{cn: "issued-by-future", parent: futureCA})
	chain := func(certs ...*testCert) []byte {
		var b []byte
		for _, c := range certs {
			b = append(b, c.certPEM...)
		}
		return b
	}

	pkcs1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY",
		Bytes: x509.MarshalPKCS1PrivateKey(leafRSA.key.(*rsa.PrivateKey))})
	sec1DER, err := x509.MarshalECPrivateKey(leafECDSA.key.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	sec1 := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1DER})
	huge := bytes.Repeat([]byte("A"), MaxPEMBytes+1)

	// A valid chain expires with its earliest certificate.
	shortCA := newTestCert(t, certOpts{cn: "short-ca", isCA: true, notAfter: now.Add(time.Hour)})
	longLeaf := newTestCert(t, certOpts{cn: "long-leaf", parent: shortCA, notAfter: now.Add(100 * time.Hour)})
	if v := evaluateKeyPair(chain(longLeaf, shortCA), longLeaf.keyPEM, now); !v.Valid() || !v.NotAfter.Equal(shortCA.cert.NotAfter) {
		t.Errorf("chain validity ends %v (%s), want the CA's %v", v.NotAfter, v.Message, shortCA.cert.NotAfter)
	}

	tests := []struct {
		name       string
		cert, key  []byte
		wantReason string
		wantMsg    string // substring
		wantLeaf   string // leaf CN when facts are expected
	}{
		{"ECDSA PKCS#8", leafECDSA.certPEM, leafECDSA.keyPEM, hsv1.ReasonValid, "valid until", "svc.example"},
		{"ECDSA SEC 1", leafECDSA.certPEM, sec1, hsv1.ReasonValid, "", "svc.example"},
		{"RSA PKCS#1", leafRSA.certPEM, pkcs1, hsv1.ReasonValid, "", "rsa.example"},
		{"chain leaf first", append(append([]byte{}, issued.certPEM...), ca.certPEM...), issued.keyPEM, hsv1.ReasonValid, "", "issued.example"},
		{"chain in wrong order", append(append([]byte{}, ca.certPEM...), issued.certPEM...), issued.keyPEM, hsv1.ReasonInvalidCertificate, "not signed by certificate 1", ""},
		{"empty certificate", nil, leafECDSA.keyPEM, hsv1.ReasonInvalidCertificate, "no PEM certificate", ""},
		{"certificate not PEM", []byte("hello"), leafECDSA.keyPEM, hsv1.ReasonInvalidCertificate, "not PEM", ""},
		{"trailing garbage", append(append([]byte{}, leafECDSA.certPEM...), "junk"...), leafECDSA.keyPEM, hsv1.ReasonInvalidCertificate, "after certificate 1 is not PEM", ""},
		{"key in tls.crt", append(append([]byte{}, leafECDSA.certPEM...), leafECDSA.keyPEM...), leafECDSA.keyPEM, hsv1.ReasonInvalidCertificate, `"PRIVATE KEY", want CERTIFICATE`, ""},
		{"corrupt DER", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}}), leafECDSA.keyPEM, hsv1.ReasonInvalidCertificate, "certificate 0", ""},
		{"empty key", leafECDSA.certPEM, nil, hsv1.ReasonInvalidKey, "no PEM private key", "svc.example"},
		{"two keys", leafECDSA.certPEM, append(append([]byte{}, leafECDSA.keyPEM...), other.keyPEM...), hsv1.ReasonInvalidKey, "exactly one", "svc.example"},
		{"certificate as key", leafECDSA.certPEM, leafECDSA.certPEM, hsv1.ReasonInvalidKey, "want PRIVATE KEY", "svc.example"},
		{"key of another certificate", leafECDSA.certPEM, other.keyPEM, hsv1.ReasonKeyMismatch, "not the private key", "svc.example"},
		{"expired", expired.certPEM, expired.keyPEM, hsv1.ReasonExpired, "expired at", "old"},
		{"not yet valid", future.certPEM, future.keyPEM, hsv1.ReasonNotYetValid, "valid from", "future"},
		{"expired intermediate", chain(issuedByOld, oldCA), issuedByOld.keyPEM, hsv1.ReasonExpired, "chain certificate 1 (CN=old-ca,O=hoststack test) expired at", "issued-by-old"},
		{"intermediate not yet valid", chain(issuedByFuture, futureCA), issuedByFuture.keyPEM, hsv1.ReasonNotYetValid, "chain certificate 1 (CN=future-ca,O=hoststack test) is valid from", "issued-by-future"},
		{"certificate too large", huge, leafECDSA.keyPEM, hsv1.ReasonTooLarge, "tls.crt is 65537 bytes", ""},
		{"key too large", leafECDSA.certPEM, huge, hsv1.ReasonTooLarge, "tls.key is 65537 bytes", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := evaluateKeyPair(tt.cert, tt.key, now)
			if v.Reason != tt.wantReason {
				t.Fatalf("reason = %s (%s), want %s", v.Reason, v.Message, tt.wantReason)
			}
			if !strings.Contains(v.Message, tt.wantMsg) {
				t.Errorf("message %q does not contain %q", v.Message, tt.wantMsg)
			}
			switch {
			case tt.wantLeaf == "" && v.Leaf != nil:
				t.Errorf("leaf %q reported, want none", v.Leaf.Subject.CommonName)
			case tt.wantLeaf != "" && (v.Leaf == nil || v.Leaf.Subject.CommonName != tt.wantLeaf):
				t.Errorf("leaf = %v, want CN %q", v.Leaf, tt.wantLeaf)
			}
		})
	}
}

func TestNextValidityChange(t *testing.T) {
	now := time.Now()
	from, until := now.Add(-time.Hour), now.Add(time.Hour)
	tests := []struct {
		name string
		v    keyPairVerdict
		want time.Duration
	}{
		{"valid: wake just after the chain expires", keyPairVerdict{Reason: hsv1.ReasonValid, NotBefore: from, NotAfter: until}, time.Hour + time.Second},
		{"not yet valid: wake when it starts", keyPairVerdict{Reason: hsv1.ReasonNotYetValid, NotBefore: until}, time.Hour + time.Second},
		{"expired: nothing to wait for", keyPairVerdict{Reason: hsv1.ReasonExpired, NotAfter: from}, 0},
		{"mismatch: only a Secret change helps", keyPairVerdict{Reason: hsv1.ReasonKeyMismatch}, 0},
		{"no certificate", keyPairVerdict{Reason: hsv1.ReasonSecretNotFound}, 0},
	}
	for _, tt := range tests {
		if got := nextValidityChange(tt.v, now); got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}

func TestSetKeyPairStatus(t *testing.T) {
	c := newTestCert(t, certOpts{cn: "svc", dnsNames: []string{"a.example", "b.example"}})
	pair := &hsv1.CertKeyPair{}
	pair.Generation = 3

	setKeyPairStatus(pair, evaluateKeyPair(c.certPEM, c.keyPEM, time.Now()))
	st := pair.Status
	if st.ObservedGeneration != 3 || st.Subject == "" || len(st.DNSNames) != 2 || st.NotAfter == nil || len(st.FingerprintSHA256) != 64 {
		t.Fatalf("facts not filled: %+v", st)
	}
	for _, ct := range []string{hsv1.ConditionReady, hsv1.ConditionSecretValid} {
		if c := findCondition(st.Conditions, ct); c == nil || c.Status != "True" || c.Reason != hsv1.ReasonValid {
			t.Errorf("%s = %+v, want True/Valid", ct, c)
		}
	}

	// The Secret goes away: the facts of the old certificate go too.
	setKeyPairStatus(pair, keyPairVerdict{Reason: hsv1.ReasonSecretNotFound, Message: "gone"})
	st = pair.Status
	if st.Subject != "" || st.DNSNames != nil || st.NotAfter != nil || st.FingerprintSHA256 != "" {
		t.Errorf("stale facts kept: %+v", st)
	}
	if c := findCondition(st.Conditions, hsv1.ConditionReady); c == nil || c.Status != "False" || c.Reason != hsv1.ReasonSecretNotFound {
		t.Errorf("Ready = %+v, want False/SecretNotFound", c)
	}
}
