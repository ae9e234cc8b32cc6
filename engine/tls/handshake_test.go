/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package enginetls

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// stockServer runs a plain crypto/tls server (a remote peer) on conn until
// its handshake ends.
func stockServer(conn net.Conn, cfg *tls.Config) <-chan error {
	ch := make(chan error, 1)
	go func() {
		sc := tls.Server(conn, cfg)
		err := sc.Handshake()
		if err == nil {
			// Keep reading so a client-side refusal (alert) is consumed.
			io.Copy(io.Discard, sc)
		}
		conn.Close()
		ch <- err
	}()
	return ch
}

func certOf(t testing.TB, l *leaf) tls.Certificate {
	t.Helper()
	c, err := tls.X509KeyPair(l.certPEM, l.keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func checkError(t *testing.T, err error, kind Kind, contains string) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v (%T) is not an *Error", err, err)
	}
	t.Logf("%s: %q", e.Kind, e.Msg)
	if e.Kind != kind || !strings.Contains(e.Msg, contains) {
		t.Errorf("got %s %q, want %s containing %q (cause: %v)", e.Kind, e.Msg, kind, contains, e.Err)
	}
	if len(e.Msg) > MaxMessageLen || !utf8.ValidString(e.Msg) {
		t.Errorf("message %q too long or not UTF-8", e.Msg)
	}
	if !strings.HasPrefix(e.Error(), e.Msg) {
		t.Errorf("Error() %q does not start with Msg", e.Error())
	}
}

// TestClientHandshakeErrors: the engine as TLS client (an app's connect)
// against stock servers that misbehave in the ways apps will meet.
func TestClientHandshakeErrors(t *testing.T) {
	ca, stranger := newCA(t, "test-ca"), newCA(t, "stranger-ca")
	good := ca.issue(t, leafOpts{})
	untrusted := stranger.issue(t, leafOpts{})
	expired := ca.issue(t, leafOpts{notBefore: time.Now().Add(-48 * time.Hour), notAfter: time.Now().Add(-time.Hour)})
	var s Store

	client := func(t *testing.T, serverName string, opts ...Option) *tls.Config {
		t.Helper()
		cfg, err := s.ClientConfig("ns", "", serverName, append([]Option{RootCAs(ca.pem)}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	serving := func(l *leaf) *tls.Config {
		return &tls.Config{Certificates: []tls.Certificate{certOf(t, l)}}
	}
	for _, tc := range []struct {
		name       string
		serverName string
		opts       []Option
		peer       func(net.Conn) // the stock server's behaviour
		kind       Kind
		contains   string
	}{
		{"unknown authority", "svc.test", nil, func(c net.Conn) { stockServer(c, serving(untrusted)) },
			KindBadCertificate, "signed by unknown authority"},
		{"wrong name", "other.test", nil, func(c net.Conn) { stockServer(c, serving(good)) },
			KindBadCertificate, `not valid for "other.test"`},
		{"expired", "svc.test", nil, func(c net.Conn) { stockServer(c, serving(expired)) },
			KindBadCertificate, "expired"},
		{"old protocol only", "svc.test", nil, func(c net.Conn) {
			cfg := serving(good)
			cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
			stockServer(c, cfg)
		}, KindPeerRejected, "protocol version not supported"},
		{"no common ALPN", "svc.test", []Option{NextProtos("x-hoststack")}, func(c net.Conn) {
			cfg := serving(good)
			cfg.NextProtos = []string{"h2"}
			stockServer(c, cfg)
		}, KindPeerRejected, "no application protocol"},
		{"not TLS", "svc.test", nil, func(c net.Conn) {
			go func() {
				c.Read(make([]byte, 512))
				io.WriteString(c, "HTTP/1.1 400 Bad Request\r\n\r\n")
			}()
		}, KindProtocol, "not speaking TLS"},
		{"peer closes", "svc.test", nil, func(c net.Conn) {
			go func() {
				c.Read(make([]byte, 1))
				c.Close()
			}()
		}, KindClosed, "closed by peer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cconn, sconn := tcpPair(t)
			tc.peer(sconn)
			err := Handshake(testCtx(t), tls.Client(cconn, client(t, tc.serverName, tc.opts...)))
			checkError(t, err, tc.kind, tc.contains)
		})
	}

	t.Run("timeout", func(t *testing.T) {
		cconn, _ := tcpPair(t) // the peer never answers
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		err := Handshake(ctx, tls.Client(cconn, client(t, "svc.test")))
		checkError(t, err, KindTimeout, "timed out")
	})
	t.Run("canceled", func(t *testing.T) {
		cconn, _ := pipePair(t)
		ctx, cancel := context.WithCancel(testCtx(t))
		c := tls.Client(cconn, client(t, "svc.test"))
		done := make(chan error, 1)
		go func() { done <- Handshake(ctx, c) }()
		cancel()
		checkError(t, <-done, KindCanceled, "canceled")
	})
}

// TestServerHandshakeErrors: the engine as TLS server (an app's listener)
// against stock clients.
func TestServerHandshakeErrors(t *testing.T) {
	ca, stranger := newCA(t, "test-ca"), newCA(t, "stranger-ca")
	l := ca.issue(t, leafOpts{})
	var s Store
	if err := s.Set("ns", "p", l.certPEM, l.keyPEM); err != nil {
		t.Fatal(err)
	}
	cfg, err := s.ServerConfig("ns", "p")
	if err != nil {
		t.Fatal(err)
	}
	t.Run("client does not trust us", func(t *testing.T) {
		ctx := testCtx(t)
		cconn, sconn := tcpPair(t)
		srv := serveEcho(ctx, sconn, cfg)
		cerr := tls.Client(cconn, stockClient(stranger, "svc.test")).HandshakeContext(ctx)
		if cerr == nil {
			t.Fatal("stock client accepted an untrusted server")
		}
		checkError(t, <-srv.handshake, KindPeerRejected, "bad certificate")
	})
	t.Run("TLS 1.1 client", func(t *testing.T) {
		ctx := testCtx(t)
		cconn, sconn := tcpPair(t)
		srv := serveEcho(ctx, sconn, cfg)
		ccfg := stockClient(ca, "svc.test")
		ccfg.MinVersion, ccfg.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
		if tls.Client(cconn, ccfg).HandshakeContext(ctx) == nil {
			t.Fatal("TLS 1.1 handshake succeeded")
		}
		checkError(t, <-srv.handshake, KindProtocol, "unsupported versions")
	})
	t.Run("plaintext client", func(t *testing.T) {
		ctx := testCtx(t)
		cconn, sconn := tcpPair(t)
		srv := serveEcho(ctx, sconn, cfg)
		io.WriteString(cconn, "GET / HTTP/1.1\r\nHost: svc.test\r\n\r\n")
		checkError(t, <-srv.handshake, KindProtocol, "not speaking TLS")
	})
}

func TestServesWholeChain(t *testing.T) {
	ca := newCA(t, "root-ca")
	inter := issueCA(t, "intermediate-ca", ca)
	l := ca.issue(t, leafOpts{}, inter)
	var s Store
	if err := s.Set("ns", "p", l.certPEM, l.keyPEM); err != nil {
		t.Fatal(err)
	}
	cfg, err := s.ServerConfig("ns", "p")
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	cconn, sconn := tcpPair(t)
	srv := serveEcho(ctx, sconn, cfg)
	c := tls.Client(cconn, stockClient(ca, "svc.test")) // trusts the root only
	if err := c.HandshakeContext(ctx); err != nil {
		t.Fatalf("client trusting only the root: %v", err)
	}
	if n := len(c.ConnectionState().VerifiedChains[0]); n != 3 {
		t.Errorf("verified chain of %d certificates, want 3", n)
	}
	roundTrip(t, c, "chained")
	c.Close()
	<-srv.done
}

func TestClassify(t *testing.T) {
	if Classify(nil) != nil {
		t.Error("Classify(nil) != nil")
	}
	e := &Error{Kind: KindProtocol, Msg: "m"}
	if Classify(e) != e {
		t.Error("an *Error is not returned as is")
	}
	long := Classify(errors.New(strings.Repeat("é", 200)))
	if long.Kind != KindNetwork || len(long.Msg) > MaxMessageLen || !utf8.ValidString(long.Msg) || !strings.HasSuffix(long.Msg, "...") {
		t.Errorf("long message: %s %q", long.Kind, long.Msg)
	}
	if got := Classify(errors.New("tls: bad \xff name")); !utf8.ValidString(got.Msg) || got.Kind != KindProtocol {
		t.Errorf("invalid UTF-8: %s %q", got.Kind, got.Msg)
	}
	if got := Classify(fmt.Errorf("read: %w", net.ErrClosed)); got.Kind != KindClosed || strings.Contains(got.Msg, "peer") {
		t.Errorf("our own close: %s %q", got.Kind, got.Msg)
	}
	if got := Classify(io.EOF); got.Kind != KindClosed {
		t.Errorf("EOF: %s", got.Kind)
	}
	if KindTimeout.String() != "timeout" || Kind(99).String() != "kind(99)" {
		t.Error("Kind.String")
	}
}

// TestLocalHandshake: cut-through TLS between two apps of a node.
func TestLocalHandshake(t *testing.T) {
	ca, clientCA, stranger := newCA(t, "test-ca"), newCA(t, "client-ca"), newCA(t, "stranger-ca")
	srvLeaf := ca.issue(t, leafOpts{})
	cliLeaf := clientCA.issue(t, leafOpts{dnsNames: []string{"client.test"}})
	var s Store
	if err := s.Set("team-a", "server", srvLeaf.certPEM, srvLeaf.keyPEM); err != nil {
		t.Fatal(err)
	}
	if err := s.Set("team-a", "client", cliLeaf.certPEM, cliLeaf.keyPEM); err != nil {
		t.Fatal(err)
	}
	must := func(c *tls.Config, err error) *tls.Config {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	mtlsServer := must(s.ServerConfig("team-a", "server", ClientCAs(clientCA.pem), NextProtos("h2", "http/1.1")))

	t.Run("mutual TLS", func(t *testing.T) {
		client := must(s.ClientConfig("team-a", "client", "svc.test", RootCAs(ca.pem), NextProtos("http/1.1")))
		res, err := LocalHandshake(testCtx(t), client, mtlsServer)
		if err != nil {
			t.Fatal(err)
		}
		if got := res.Client.PeerCertificates[0].SerialNumber; got.Cmp(srvLeaf.serial) != 0 {
			t.Errorf("client saw server serial %v, want %v", got, srvLeaf.serial)
		}
		if got := res.Server.PeerCertificates[0].SerialNumber; got.Cmp(cliLeaf.serial) != 0 {
			t.Errorf("server saw client serial %v, want %v", got, cliLeaf.serial)
		}
		if res.Client.NegotiatedProtocol != "http/1.1" || res.Server.NegotiatedProtocol != "http/1.1" {
			t.Errorf("ALPN %q/%q", res.Client.NegotiatedProtocol, res.Server.NegotiatedProtocol)
		}
		if res.Client.Version != tls.VersionTLS13 || !res.Server.HandshakeComplete {
			t.Errorf("version %x, server complete %v", res.Client.Version, res.Server.HandshakeComplete)
		}
	})
	for _, tc := range []struct {
		name     string
		client   *tls.Config
		server   *tls.Config
		kind     Kind
		contains string
	}{
		{"server requires a client certificate", must(s.ClientConfig("team-a", "", "svc.test", RootCAs(ca.pem))), mtlsServer,
			KindBadCertificate, "tls: server side: peer sent no certificate"},
		{"client does not trust the server", must(s.ClientConfig("team-a", "client", "svc.test", RootCAs(stranger.pem))), mtlsServer,
			KindBadCertificate, "tls: peer certificate signed by unknown authority"},
		{"wrong server name", must(s.ClientConfig("team-a", "client", "other.test", RootCAs(ca.pem))), mtlsServer,
			KindBadCertificate, `not valid for "other.test"`},
		{"no common ALPN", must(s.ClientConfig("team-a", "client", "svc.test", RootCAs(ca.pem), NextProtos("x"))), mtlsServer,
			KindProtocol, "tls: server side: client requested unsupported application protocols"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := LocalHandshake(testCtx(t), tc.client, tc.server)
			checkError(t, err, tc.kind, tc.contains)
		})
	}
	t.Run("server pair removed", func(t *testing.T) {
		var s2 Store
		if err := s2.Set("team-a", "server", srvLeaf.certPEM, srvLeaf.keyPEM); err != nil {
			t.Fatal(err)
		}
		server := must(s2.ServerConfig("team-a", "server"))
		s2.Remove("team-a", "server")
		client := must(s.ClientConfig("team-a", "", "svc.test", RootCAs(ca.pem)))
		_, err := LocalHandshake(testCtx(t), client, server)
		checkError(t, err, KindNoCertificate, "tls: server side: certkeypair team-a/server is not available")
	})
	t.Run("does not change the configs", func(t *testing.T) {
		if mtlsServer.SessionTicketsDisabled {
			t.Error("LocalHandshake modified the caller's server config")
		}
	})
}
