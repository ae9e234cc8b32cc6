/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package enginetls

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestSetRefusesBadMaterialAndKeepsPrevious(t *testing.T) {
	ca := newCA(t, "test-ca")
	good := ca.issue(t, leafOpts{})
	other := ca.issue(t, leafOpts{})
	inter := issueCA(t, "test-intermediate", ca)
	chained := ca.issue(t, leafOpts{}, inter)
	expired := ca.issue(t, leafOpts{notBefore: time.Now().Add(-48 * time.Hour), notAfter: time.Now().Add(-time.Hour)})
	future := ca.issue(t, leafOpts{notBefore: time.Now().Add(time.Hour), notAfter: time.Now().Add(48 * time.Hour)})

	var s Store
	if err := s.Set("team-a", "web", good.certPEM, good.keyPEM); err != nil {
		t.Fatalf("good pair refused: %v", err)
	}
	want := s.Get("team-a", "web").FingerprintSHA256

	wrongOrder := append(append([]byte(nil), inter.pem...), pemCert(chained.cert.Raw)...)
	cases := []struct {
		name      string
		cert, key []byte
		reason    string
		contains  string
	}{
		{"garbage cert", []byte("hello, not PEM"), good.keyPEM, ReasonInvalidCertificate, "tls.crt: data after certificate 0 is not PEM"},
		{"empty cert", nil, good.keyPEM, ReasonInvalidCertificate, "no PEM certificate"},
		{"garbage key", good.certPEM, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), ReasonInvalidKey, "tls.key: parse PRIVATE KEY"},
		{"no key", good.certPEM, nil, ReasonInvalidKey, "no PEM private key"},
		{"two keys", good.certPEM, append(append([]byte(nil), good.keyPEM...), other.keyPEM...), ReasonInvalidKey, "more than one PEM block"},
		{"key in tls.crt", append(append([]byte(nil), good.certPEM...), good.keyPEM...), good.keyPEM, ReasonInvalidCertificate, `"PRIVATE KEY", want CERTIFICATE`},
		{"mismatched key", good.certPEM, other.keyPEM, ReasonKeyMismatch, "not the private key of the first certificate"},
		{"chain not leaf first", wrongOrder, chained.keyPEM, ReasonInvalidCertificate, "chain must be leaf first"},
		{"expired", expired.certPEM, expired.keyPEM, ReasonExpired, "certificate expired at"},
		{"not yet valid", future.certPEM, future.keyPEM, ReasonNotYetValid, "certificate is valid from"},
		{"too large", bytes.Repeat([]byte("x"), MaxPEMBytes+1), good.keyPEM, ReasonTooLarge, "tls.crt is 65537 bytes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := s.Set("team-a", "web", tc.cert, tc.key)
			if err == nil {
				t.Fatal("accepted")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v is not ErrInvalid", err)
			}
			var me *MaterialError
			if !errors.As(err, &me) || me.Reason != tc.reason {
				t.Errorf("error %v: want reason %s", err, tc.reason)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "certkeypair team-a/web: ") || !strings.Contains(msg, tc.contains) {
				t.Errorf("message %q: want it to name the pair and contain %q", msg, tc.contains)
			}
			if p := s.Get("team-a", "web"); p == nil || p.FingerprintSHA256 != want {
				t.Errorf("previous good pair not kept in service")
			}
			// Still usable by apps, not reported as rejected.
			if _, err := s.ServerConfig("team-a", "web"); err != nil {
				t.Errorf("ServerConfig after refused update: %v", err)
			}
		})
	}

	// A correct chain (leaf, intermediate) is accepted and kept whole.
	if err := s.Set("team-a", "chained", chained.certPEM, chained.keyPEM); err != nil {
		t.Fatalf("leaf-first chain refused: %v", err)
	}
	if n := len(s.Get("team-a", "chained").Certificate.Certificate); n != 2 {
		t.Errorf("chain has %d certificates, want 2", n)
	}
}

func TestSetExpiredPolicyUsesStoreClock(t *testing.T) {
	// The expiry decision is the controller's: refused, at the time of Set.
	ca := newCA(t, "test-ca")
	l := ca.issue(t, leafOpts{})
	s := Store{now: func() time.Time { return l.cert.NotAfter.Add(time.Second) }}
	err := s.Set("ns", "p", l.certPEM, l.keyPEM)
	var me *MaterialError
	if !errors.As(err, &me) || me.Reason != ReasonExpired {
		t.Fatalf("Set after NotAfter: %v, want Expired", err)
	}
	s.now = nil
	if err := s.Set("ns", "p", l.certPEM, l.keyPEM); err != nil {
		t.Fatal(err)
	}
}

func TestSetRejectedNewPairExplainsLookup(t *testing.T) {
	ca := newCA(t, "test-ca")
	a, b := ca.issue(t, leafOpts{}), ca.issue(t, leafOpts{})
	var s Store
	if err := s.Set("ns", "p", a.certPEM, b.keyPEM); err == nil {
		t.Fatal("mismatched pair accepted")
	}
	if s.Get("ns", "p") != nil || s.Len() != 0 {
		t.Fatal("refused pair is in service")
	}
	_, err := s.ServerConfig("ns", "p")
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), ReasonKeyMismatch) {
		t.Fatalf("ServerConfig: %v, want ErrNotFound saying KeyMismatch", err)
	}
	// Fixing the material clears the rejection.
	if err := s.Set("ns", "p", a.certPEM, a.keyPEM); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ServerConfig("ns", "p"); err != nil {
		t.Fatal(err)
	}
}

func TestSetNames(t *testing.T) {
	ca := newCA(t, "test-ca")
	l := ca.issue(t, leafOpts{})
	var s Store
	for _, n := range [][2]string{{"", "p"}, {"ns", ""}, {"a/b", "p"}, {"ns", "x/y"}} {
		if err := s.Set(n[0], n[1], l.certPEM, l.keyPEM); err == nil {
			t.Errorf("Set(%q, %q) accepted", n[0], n[1])
		}
	}
}

func TestRemove(t *testing.T) {
	ca := newCA(t, "test-ca")
	l := ca.issue(t, leafOpts{})
	var s Store
	s.Remove("ns", "absent") // no-op
	if err := s.Set("ns", "p", l.certPEM, l.keyPEM); err != nil {
		t.Fatal(err)
	}
	if s.Len() != 1 || s.Get("ns", "p") == nil {
		t.Fatal("pair not stored")
	}
	s.Remove("ns", "p")
	if s.Len() != 0 || s.Get("ns", "p") != nil {
		t.Fatal("pair not removed")
	}
	if _, err := s.ServerConfig("ns", "p"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ServerConfig after Remove: %v", err)
	}
}

func TestPairFacts(t *testing.T) {
	ca := newCA(t, "test-ca")
	inter := issueCA(t, "test-intermediate", ca)
	l := ca.issue(t, leafOpts{}, inter)
	var s Store
	if err := s.Set("ns", "p", l.certPEM, l.keyPEM); err != nil {
		t.Fatal(err)
	}
	p := s.Get("ns", "p")
	if p.Namespace != "ns" || p.Name != "p" || p.Leaf.SerialNumber.Cmp(l.serial) != 0 {
		t.Errorf("pair facts wrong: %s/%s serial %v", p.Namespace, p.Name, p.Leaf.SerialNumber)
	}
	if len(p.FingerprintSHA256) != 64 || strings.ToLower(p.FingerprintSHA256) != p.FingerprintSHA256 {
		t.Errorf("fingerprint %q", p.FingerprintSHA256)
	}
	// The chain is only as valid as its shortest-lived certificate.
	wantAfter := l.cert.NotAfter
	if inter.cert.NotAfter.Before(wantAfter) {
		wantAfter = inter.cert.NotAfter
	}
	if !p.NotAfter.Equal(wantAfter) {
		t.Errorf("NotAfter %v, want %v", p.NotAfter, wantAfter)
	}
}

func TestSecretData(t *testing.T) {
	ca := newCA(t, "test-ca")
	l := ca.issue(t, leafOpts{})
	c, k, err := SecretData(map[string][]byte{"tls.crt": l.certPEM, "tls.key": l.keyPEM, "ca.crt": ca.pem})
	if err != nil || !bytes.Equal(c, l.certPEM) || !bytes.Equal(k, l.keyPEM) {
		t.Fatalf("SecretData: %v", err)
	}
	var s Store
	if err := s.Set("ns", "p", c, k); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		data   map[string][]byte
		reason string
	}{
		{map[string][]byte{"tls.key": l.keyPEM}, ReasonInvalidCertificate},
		{map[string][]byte{"tls.crt": l.certPEM}, ReasonInvalidKey},
		{map[string][]byte{"tls.crt": l.certPEM, "tls.key": {}}, ReasonInvalidKey},
		{nil, ReasonInvalidCertificate},
	} {
		_, _, err := SecretData(tc.data)
		var me *MaterialError
		if !errors.As(err, &me) || me.Reason != tc.reason || !errors.Is(err, ErrInvalid) {
			t.Errorf("SecretData(%d keys): %v, want %s", len(tc.data), err, tc.reason)
		}
	}
}

func TestLoadFiles(t *testing.T) {
	ca := newCA(t, "test-ca")
	l := ca.issue(t, leafOpts{})
	dir := t.TempDir()
	cf, kf := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(cf, l.certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kf, l.keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	c, k, err := LoadFiles(cf, kf)
	if err != nil {
		t.Fatal(err)
	}
	var s Store
	if err := s.Set("standalone", "p", c, k); err != nil {
		t.Fatal(err)
	}

	if _, _, err := LoadFiles(filepath.Join(dir, "missing"), kf); !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), "tls.crt") {
		t.Errorf("missing cert file: %v", err)
	}
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, bytes.Repeat([]byte("x"), MaxPEMBytes+10), 0o600); err != nil {
		t.Fatal(err)
	}
	var me *MaterialError
	if _, _, err := LoadFiles(cf, big); !errors.As(err, &me) || me.Reason != ReasonTooLarge {
		t.Errorf("oversized key file: %v", err)
	}
}
