/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"crypto/x509"
	"strings"
	"testing"
	"time"
)

func TestDecideCertRenewal(t *testing.T) {
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	names := webhookDNSNames("hoststack-webhook", "hoststack-system")
	fresh := func(t *testing.T, at time.Time) webhookPEM {
		p, err := renewWebhookPEM(webhookPEM{}, renewAll, names, at)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := fresh(t, now)
	other := fresh(t, now)
	// A serving certificate from good's CA for other names.
	wrongNames, err := renewWebhookPEM(good, renewServing, []string{"elsewhere.svc"}, now)
	if err != nil {
		t.Fatal(err)
	}
	with := func(p webhookPEM, mod func(*webhookPEM)) webhookPEM { mod(&p); return p }

	tests := []struct {
		name   string
		pem    webhookPEM
		at     time.Time
		want   certRenewal
		reason string
	}{
		{"nothing stored", webhookPEM{}, now, renewAll, "CA: missing"},
		{"valid", good, now, renewNothing, "valid"},
		{"valid 11 months on", good, now.Add(330 * 24 * time.Hour), renewNothing, "valid"},
		{"serving cert within 30 days of its end", good, now.Add(340 * 24 * time.Hour), renewServing, "serving certificate: ends"},
		{"CA within 30 days of its end", good, now.Add(webhookCALifetime - 10*24*time.Hour), renewAll, "CA: ends"},
		{"CA not yet valid", good, now.Add(-time.Hour), renewAll, "CA: not valid before"},
		{"garbage CA", with(good, func(p *webhookPEM) { p.CACert = []byte("junk") }), now, renewAll, "CA:"},
		{"CA key of another CA", with(good, func(p *webhookPEM) { p.CAKey = other.CAKey }), now, renewAll, "CA:"},
		{"serving cert is not a CA", with(good, func(p *webhookPEM) { p.CACert, p.CAKey = p.Cert, p.Key }), now, renewAll, "not a CA"},
		{"serving cert missing", with(good, func(p *webhookPEM) { p.Cert = nil }), now, renewServing, "serving certificate: missing"},
		{"serving key of another cert", with(good, func(p *webhookPEM) { p.Key = other.Key }), now, renewServing, "serving certificate:"},
		{"serving cert from another CA", with(good, func(p *webhookPEM) { p.Cert, p.Key = other.Cert, other.Key }), now, renewServing, "not issued by the current CA"},
		{"serving cert for other names", wrongNames, now, renewServing, "does not cover hoststack-webhook.hoststack-system.svc"},
		{"serving cert without a new extra IP", good, now, renewServing, "does not cover 127.0.0.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			names := names
			if strings.Contains(tt.name, "extra IP") {
				names = webhookDNSNames("hoststack-webhook", "hoststack-system", "127.0.0.1", "localhost")
			}
			got, why := decideCertRenewal(tt.pem, names, tt.at)
			if got != tt.want || !strings.Contains(why, tt.reason) {
				t.Fatalf("got %v (%s), want %v (%s)", got, why, tt.want, tt.reason)
			}
			if got == renewNothing {
				return
			}
			// What the renewal produces is judged valid.
			renewed, err := renewWebhookPEM(tt.pem, got, names, tt.at)
			if err != nil {
				t.Fatal(err)
			}
			if again, why := decideCertRenewal(renewed, names, tt.at); again != renewNothing {
				t.Fatalf("after renewing %v: %v (%s)", got, again, why)
			}
		})
	}
}

func TestRenewWebhookPEM(t *testing.T) {
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	names := webhookDNSNames("svc", "ns")
	first, err := renewWebhookPEM(webhookPEM{}, renewAll, names, now)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _, err := parseKeyPair(first.Cert, first.Key)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(first.CACert) {
		t.Fatal("CA bundle does not parse")
	}
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "svc.ns.svc", Roots: roots, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Fatalf("serving certificate does not verify: %v", err)
	}
	withIP, err := renewWebhookPEM(first, renewServing, webhookDNSNames("svc", "ns", "127.0.0.1"), now)
	if err != nil {
		t.Fatal(err)
	}
	ipLeaf, _, _ := parseKeyPair(withIP.Cert, withIP.Key)
	if _, err := ipLeaf.Verify(x509.VerifyOptions{DNSName: "127.0.0.1", Roots: roots, CurrentTime: now}); err != nil {
		t.Fatalf("serving certificate does not verify for 127.0.0.1: %v", err)
	}

	// A new serving certificate keeps the CA (no caBundle change).
	serving, err := renewWebhookPEM(first, renewServing, names, now.Add(340*24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if string(serving.CACert) != string(first.CACert) || string(serving.CAKey) != string(first.CAKey) || string(serving.Cert) == string(first.Cert) {
		t.Fatal("renewing the serving certificate changed the CA or kept the certificate")
	}

	// A new CA keeps the old one trusted while it lasts: a replica still
	// serving the old certificate verifies against the new bundle.
	later := now.Add(webhookCALifetime - 10*24*time.Hour)
	rotated, err := renewWebhookPEM(serving, renewAll, names, later)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(rotated.CACert), "BEGIN CERTIFICATE"); n != 2 {
		t.Fatalf("rotated bundle holds %d certificates, want 2", n)
	}
	bundle := x509.NewCertPool()
	bundle.AppendCertsFromPEM(rotated.CACert)
	oldLeaf, _, _ := parseKeyPair(first.Cert, first.Key)
	if _, err := oldLeaf.Verify(x509.VerifyOptions{DNSName: "svc.ns.svc", Roots: bundle, CurrentTime: now.Add(time.Hour)}); err != nil {
		t.Fatalf("old serving certificate not trusted by the rotated bundle: %v", err)
	}
	// Rotating once more drops the CA before last.
	again, err := renewWebhookPEM(rotated, renewAll, names, later)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(again.CACert), "BEGIN CERTIFICATE"); n != 2 {
		t.Fatalf("bundle after a second rotation holds %d certificates, want 2", n)
	}
}
