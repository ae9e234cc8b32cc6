/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package controllers

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"slices"
	"time"
)

// Lifetimes of the webhook's own CA and serving certificate, and how long
// before its end a certificate is replaced.
const (
	webhookCALifetime      = 10 * 365 * 24 * time.Hour
	webhookServingLifetime = 365 * 24 * time.Hour
	webhookRenewBefore     = 30 * 24 * time.Hour
	// backdate covers clock skew between the manager and API servers.
	webhookCertBackdate = 5 * time.Minute
)

// Keys of the Secret holding the webhook certificates.
const (
	keyCACert = "ca.crt" // the signing CA first, then a previous CA still trusted
	keyCAKey  = "ca.key"
	keyCert   = "tls.crt"
	keyKey    = "tls.key"
)

// webhookPEM is the PEM material of the webhook certificates, as stored.
type webhookPEM struct {
	CACert, CAKey, Cert, Key []byte
}

func webhookPEMFrom(data map[string][]byte) webhookPEM {
	return webhookPEM{CACert: data[keyCACert], CAKey: data[keyCAKey], Cert: data[keyCert], Key: data[keyKey]}
}

func (p webhookPEM) data() map[string][]byte {
	return map[string][]byte{keyCACert: p.CACert, keyCAKey: p.CAKey, keyCert: p.Cert, keyKey: p.Key}
}

// certRenewal says what to regenerate.
type certRenewal int

const (
	renewNothing certRenewal = iota
	renewServing             // a new serving certificate from the same CA
	renewAll                 // a new CA and serving certificate
)

func (r certRenewal) String() string {
	return [...]string{"nothing", "serving certificate", "CA and serving certificate"}[r]
}

// decideCertRenewal judges stored material for serving dnsNames at now:
// the CA is replaced when missing, unparsable, not matching its key or
// within webhookRenewBefore of its end; the serving certificate when
// missing, unparsable, not matching its key, not issued by the CA, not
// covering every name, not yet valid or within webhookRenewBefore of its
// end. The reason says why, for the log.
func decideCertRenewal(p webhookPEM, dnsNames []string, now time.Time) (certRenewal, string) {
	ca, _, err := parseKeyPair(p.CACert, p.CAKey)
	switch {
	case err != nil:
		return renewAll, "CA: " + err.Error()
	case !ca.IsCA:
		return renewAll, "CA: not a CA certificate"
	case now.Before(ca.NotBefore):
		return renewAll, "CA: not valid before " + ca.NotBefore.UTC().Format(time.RFC3339)
	case !now.Before(ca.NotAfter.Add(-webhookRenewBefore)):
		return renewAll, "CA: ends " + ca.NotAfter.UTC().Format(time.RFC3339)
	}
	leaf, _, err := parseKeyPair(p.Cert, p.Key)
	if err != nil {
		return renewServing, "serving certificate: " + err.Error()
	}
	if err := leaf.CheckSignatureFrom(ca); err != nil {
		return renewServing, "serving certificate: not issued by the current CA"
	}
	for _, n := range dnsNames {
		covered := slices.Contains(leaf.DNSNames, n)
		if ip := net.ParseIP(n); ip != nil {
			covered = slices.ContainsFunc(leaf.IPAddresses, ip.Equal)
		}
		if !covered {
			return renewServing, fmt.Sprintf("serving certificate: does not cover %s", n)
		}
	}
	switch {
	case now.Before(leaf.NotBefore):
		return renewServing, "serving certificate: not valid before " + leaf.NotBefore.UTC().Format(time.RFC3339)
	case !now.Before(leaf.NotAfter.Add(-webhookRenewBefore)):
		return renewServing, "serving certificate: ends " + leaf.NotAfter.UTC().Format(time.RFC3339)
	}
	return renewNothing, "valid"
}

// parseKeyPair parses the first certificate of certPEM and checks that
// keyPEM is its key.
func parseKeyPair(certPEM, keyPEM []byte) (*x509.Certificate, crypto.Signer, error) {
	if len(certPEM) == 0 || len(keyPEM) == 0 {
		return nil, nil, errors.New("missing")
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, nil, err
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, nil, errors.New("key cannot sign")
	}
	return pair.Leaf, signer, nil
}

// renewWebhookPEM returns p with what r says regenerated. A replaced CA
// that has not ended yet stays in CACert after the new one, so servers
// still presenting a certificate it issued stay trusted until they pick
// up the new one.
func renewWebhookPEM(p webhookPEM, r certRenewal, dnsNames []string, now time.Time) (webhookPEM, error) {
	if r == renewNothing {
		return p, nil
	}
	if r == renewAll {
		caCert, caKey, err := newWebhookCert(nil, nil, nil, now, webhookCALifetime)
		if err != nil {
			return p, fmt.Errorf("generate CA: %w", err)
		}
		bundle := caCert
		if old, err := firstCert(p.CACert); err == nil && now.Before(old.NotAfter) {
			bundle = append(bytes.Clone(caCert), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: old.Raw})...)
		}
		p = webhookPEM{CACert: bundle, CAKey: caKey}
	}
	ca, caKey, err := parseKeyPair(p.CACert, p.CAKey)
	if err != nil {
		return p, fmt.Errorf("CA: %w", err)
	}
	if p.Cert, p.Key, err = newWebhookCert(ca, caKey, dnsNames, now, webhookServingLifetime); err != nil {
		return p, fmt.Errorf("generate serving certificate: %w", err)
	}
	return p, nil
}

// newWebhookCert creates an ECDSA P-256 key and a certificate for it:
// a self-signed CA when ca is nil, else a serving certificate for dnsNames
// (IP addresses among them become IP SANs) issued by ca, ending no later
// than ca.
func newWebhookCert(ca *x509.Certificate, caKey crypto.Signer, dnsNames []string, now time.Time, lifetime time.Duration) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-webhookCertBackdate),
		NotAfter:              now.Add(lifetime),
		BasicConstraintsValid: true,
	}
	parent, signer := tmpl, crypto.Signer(key)
	if ca == nil {
		tmpl.Subject = pkix.Name{CommonName: "hoststack-webhook-ca", Organization: []string{"hoststack"}}
		tmpl.IsCA = true
		tmpl.MaxPathLenZero = true
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature
	} else {
		tmpl.Subject = pkix.Name{CommonName: dnsNames[0], Organization: []string{"hoststack"}}
		for _, n := range dnsNames {
			if ip := net.ParseIP(n); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, n)
			}
		}
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		if tmpl.NotAfter.After(ca.NotAfter) {
			tmpl.NotAfter = ca.NotAfter
		}
		parent, signer = ca, caKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

func firstCert(certPEM []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}

// webhookDNSNames are the names the API server may use for Service svc in
// namespace ns, then extra names (DNS names or IP addresses, for a
// webhook configuration with a url instead of a Service).
func webhookDNSNames(svc, ns string, extra ...string) []string {
	names := []string{
		svc + "." + ns + ".svc",
		svc + "." + ns + ".svc.cluster.local",
		svc + "." + ns,
		svc,
	}
	for _, n := range extra {
		if n != "" && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	return names
}
