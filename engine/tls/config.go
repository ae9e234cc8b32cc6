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
)

// MinVersion is the lowest protocol version either side accepts. crypto/tls
// negotiates TLS 1.3 whenever the peer supports it.
const MinVersion = tls.VersionTLS12

// Option adjusts a config built by ServerConfig or ClientConfig. Each
// option belongs to one side; passing it to the other is an error rather
// than silently ignored, because a dropped RootCAs or ClientCAs changes
// who is trusted.
type Option func(*settings) error

type side int

const (
	serverSide side = iota
	clientSide
)

func (s side) String() string {
	if s == serverSide {
		return "server"
	}
	return "client"
}

type settings struct {
	side       side
	rootCAs    *x509.CertPool
	clientCAs  *x509.CertPool
	nextProtos []string
}

// RootCAs (client only) makes the client trust exactly the CA
// certificates of the PEM bundle instead of the system roots.
func RootCAs(pemBundle []byte) Option {
	return func(s *settings) error {
		if s.side != clientSide {
			return errors.New("RootCAs is a client option")
		}
		pool, err := parseCABundle("root CAs", pemBundle)
		s.rootCAs = pool
		return err
	}
}

// RootPool (client only) verifies the server against pool instead of the
// system roots (e.g. a pair's CA bundle from Store.TrustPool).
func RootPool(pool *x509.CertPool) Option {
	return func(s *settings) error {
		if s.side != clientSide {
			return errors.New("RootPool is a client option")
		}
		s.rootCAs = pool
		return nil
	}
}

// ClientCAs (server only) turns on mutual TLS: the server requires a
// client certificate and verifies it against the PEM bundle.
func ClientCAs(pemBundle []byte) Option {
	return func(s *settings) error {
		if s.side != serverSide {
			return errors.New("ClientCAs is a server option")
		}
		pool, err := parseCABundle("client CAs", pemBundle)
		s.clientCAs = pool
		return err
	}
}

// NextProtos sets the ALPN protocols, in preference order (both sides).
func NextProtos(protos ...string) Option {
	return func(s *settings) error {
		for _, p := range protos {
			if p == "" || len(p) > 255 {
				return fmt.Errorf("invalid ALPN protocol %q", p)
			}
		}
		s.nextProtos = append([]string(nil), protos...)
		return nil
	}
}

func apply(sd side, opts []Option) (*settings, error) {
	s := &settings{side: sd}
	for _, o := range opts {
		if err := o(s); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// errUnavailable is what a handshake callback returns when the pair
// disappeared after the config was built (Remove). Handshake maps it to
// KindNoCertificate.
type errUnavailable struct {
	pair key
	err  error
}

func (e *errUnavailable) Error() string { return e.err.Error() }
func (e *errUnavailable) Unwrap() error { return e.err }

// ServerConfig returns a crypto/tls server config for a listener of an app
// in Kubernetes namespace appNamespace serving CertKeyPair pairName ("name"
// or "namespace/name"). The error wraps ErrForbidden when the pair belongs
// to another namespace and ErrNotFound when it is missing or unusable.
//
// The certificate is not copied into the config: GetCertificate reads the
// store at every handshake, so Set (rotation) takes effect for the next
// handshake without rebuilding the config, and Remove makes handshakes
// fail. Session tickets stay enabled (the ticket key belongs to this
// config, so one per listener); a resumed session keeps the identity of
// its original handshake, as with any TLS server.
func (s *Store) ServerConfig(appNamespace, pairName string, opts ...Option) (*tls.Config, error) {
	k, err := authorize(appNamespace, pairName)
	if err != nil {
		return nil, err
	}
	set, err := apply(serverSide, opts)
	if err != nil {
		return nil, fmt.Errorf("app namespace %q: certkeypair %s: %w", appNamespace, k, err)
	}
	if _, err := s.lookup(appNamespace, k); err != nil {
		return nil, err
	}
	cfg := &tls.Config{
		MinVersion: MinVersion,
		NextProtos: set.nextProtos,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			p, err := s.lookup(appNamespace, k)
			if err != nil {
				return nil, &errUnavailable{k, err}
			}
			return p.Certificate, nil
		},
	}
	if set.clientCAs != nil {
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
		cfg.ClientCAs = set.clientCAs
	}
	return cfg, nil
}

// ClientConfig returns a crypto/tls client config for a connect by an app
// in Kubernetes namespace appNamespace. pairName, if not empty, is the
// CertKeyPair presented as client certificate (mutual TLS), authorized and
// read at handshake time exactly as in ServerConfig. serverName is
// required: it is what the server certificate is verified against (a DNS
// name or an IP address literal) and the SNI sent. The server is verified
// against the system roots, or RootCAs. There is deliberately no way to
// skip verification.
func (s *Store) ClientConfig(appNamespace, pairName, serverName string, opts ...Option) (*tls.Config, error) {
	set, err := apply(clientSide, opts)
	if err != nil {
		return nil, fmt.Errorf("app namespace %q: tls client: %w", appNamespace, err)
	}
	if serverName == "" {
		return nil, fmt.Errorf("app namespace %q: tls client: a server name is required to verify the server", appNamespace)
	}
	cfg := &tls.Config{
		MinVersion: MinVersion,
		ServerName: serverName,
		RootCAs:    set.rootCAs, // nil: system roots
		NextProtos: set.nextProtos,
	}
	if pairName == "" {
		return cfg, nil
	}
	k, err := authorize(appNamespace, pairName)
	if err != nil {
		return nil, err
	}
	if _, err := s.lookup(appNamespace, k); err != nil {
		return nil, err
	}
	// Failing is better than sending no certificate: a server that asks
	// for one would otherwise see an anonymous client and the app would
	// get a less precise error.
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		p, err := s.lookup(appNamespace, k)
		if err != nil {
			return nil, &errUnavailable{k, err}
		}
		return p.Certificate, nil
	}
	return cfg, nil
}
