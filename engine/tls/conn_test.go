/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package enginetls

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"
)

// testCtx bounds every handshake of a test: a bug shows up as a timeout
// error, never as a hung test.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// echoServer runs the engine's side on conn: handshake with Handshake,
// then echo until EOF. The result carries the handshake error (nil on
// success) and, after the echo ends, the connection state.
type echoServer struct {
	handshake chan error
	done      chan struct{}
	state     tls.ConnectionState
}

func serveEcho(ctx context.Context, conn net.Conn, cfg *tls.Config) *echoServer {
	e := &echoServer{handshake: make(chan error, 1), done: make(chan struct{})}
	go func() {
		defer close(e.done)
		sc := tls.Server(conn, cfg)
		err := Handshake(ctx, sc)
		if err == nil {
			e.state = sc.ConnectionState()
		}
		e.handshake <- err
		if err != nil {
			conn.Close()
			return
		}
		io.Copy(sc, sc)
		sc.Close()
	}()
	return e
}

// roundTrip writes msg and reads the echo.
func roundTrip(t testing.TB, c *tls.Conn, msg string) {
	t.Helper()
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write: %v", err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read: %v", err)
	}
	if string(buf) != msg {
		t.Fatalf("echo %q, want %q", buf, msg)
	}
}

func peerSerial(c *tls.Conn) *big.Int {
	return c.ConnectionState().PeerCertificates[0].SerialNumber
}

func TestServerAgainstStockClient(t *testing.T) {
	ca := newCA(t, "test-ca")
	l := ca.issue(t, leafOpts{})
	var s Store
	if err := s.Set("team-a", "web", l.certPEM, l.keyPEM); err != nil {
		t.Fatal(err)
	}
	for _, tr := range []struct {
		name string
		pair func(testing.TB) (net.Conn, net.Conn)
	}{{"tcp", tcpPair}, {"pipe", pipePair}} {
		t.Run(tr.name, func(t *testing.T) {
			ctx := testCtx(t)
			cfg, err := s.ServerConfig("team-a", "web", NextProtos("h2", "http/1.1"))
			if err != nil {
				t.Fatal(err)
			}
			cconn, sconn := tr.pair(t)
			srv := serveEcho(ctx, sconn, cfg)
			ccfg := stockClient(ca, "svc.test")
			ccfg.NextProtos = []string{"http/1.1"}
			c := tls.Client(cconn, ccfg)
			if err := c.HandshakeContext(ctx); err != nil {
				t.Fatalf("stock client handshake: %v", err)
			}
			if err := <-srv.handshake; err != nil {
				t.Fatalf("server handshake: %v", err)
			}
			st := c.ConnectionState()
			if st.Version != tls.VersionTLS13 {
				t.Errorf("negotiated %s, want TLS 1.3", tls.VersionName(st.Version))
			}
			if st.NegotiatedProtocol != "http/1.1" {
				t.Errorf("ALPN %q", st.NegotiatedProtocol)
			}
			if peerSerial(c).Cmp(l.serial) != 0 {
				t.Errorf("served serial %v, want %v", peerSerial(c), l.serial)
			}
			roundTrip(t, c, "hello through the engine")
			c.Close()
			<-srv.done
		})
	}
}

func TestServerAcceptsTLS12Client(t *testing.T) {
	ca := newCA(t, "test-ca")
	l := ca.issue(t, leafOpts{})
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
	ccfg := stockClient(ca, "svc.test")
	ccfg.MaxVersion = tls.VersionTLS12
	c := tls.Client(cconn, ccfg)
	if err := c.HandshakeContext(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-srv.handshake; err != nil {
		t.Fatal(err)
	}
	if v := c.ConnectionState().Version; v != tls.VersionTLS12 {
		t.Errorf("negotiated %s", tls.VersionName(v))
	}
	roundTrip(t, c, "twelve")
	c.Close()
	<-srv.done
}

func TestMutualTLS(t *testing.T) {
	ca := newCA(t, "test-ca")
	clientCA := newCA(t, "client-ca")
	srvLeaf := ca.issue(t, leafOpts{})
	cliLeaf := clientCA.issue(t, leafOpts{dnsNames: []string{"client.test"}})
	strangerCA := newCA(t, "stranger-ca")
	stranger := strangerCA.issue(t, leafOpts{dnsNames: []string{"stranger.test"}})

	var s Store
	for _, p := range []struct {
		ns, name string
		l        *leaf
	}{{"team-a", "server", srvLeaf}, {"team-a", "client", cliLeaf}, {"team-a", "stranger", stranger}} {
		if err := s.Set(p.ns, p.name, p.l.certPEM, p.l.keyPEM); err != nil {
			t.Fatal(err)
		}
	}
	scfg, err := s.ServerConfig("team-a", "server", ClientCAs(clientCA.pem))
	if err != nil {
		t.Fatal(err)
	}

	t.Run("client certificate from the store", func(t *testing.T) {
		ctx := testCtx(t)
		ccfg, err := s.ClientConfig("team-a", "team-a/client", "svc.test", RootCAs(ca.pem))
		if err != nil {
			t.Fatal(err)
		}
		cconn, sconn := tcpPair(t)
		srv := serveEcho(ctx, sconn, scfg)
		c := tls.Client(cconn, ccfg)
		if err := Handshake(ctx, c); err != nil {
			t.Fatal(err)
		}
		if err := <-srv.handshake; err != nil {
			t.Fatal(err)
		}
		roundTrip(t, c, "mutual")
		c.Close()
		<-srv.done
		if got := srv.state.PeerCertificates[0].SerialNumber; got.Cmp(cliLeaf.serial) != 0 {
			t.Errorf("server saw client serial %v, want %v", got, cliLeaf.serial)
		}
	})

	refused := func(t *testing.T, ccfg *tls.Config, serverMsg string) {
		t.Helper()
		ctx := testCtx(t)
		cconn, sconn := tcpPair(t)
		srv := serveEcho(ctx, sconn, scfg)
		c := tls.Client(cconn, ccfg)
		// TLS 1.3: the client finishes before the server judges its
		// certificate; the refusal arrives on the first read.
		err := Handshake(ctx, c)
		if err == nil {
			_, err = c.Read(make([]byte, 1))
		}
		e := Classify(err)
		if e == nil || e.Kind != KindPeerRejected {
			t.Errorf("client: %v, want KindPeerRejected", err)
		}
		var serr *Error
		if err := <-srv.handshake; !errors.As(err, &serr) || serr.Kind != KindBadCertificate || !strings.Contains(serr.Msg, serverMsg) {
			t.Errorf("server: %v, want KindBadCertificate %q", err, serverMsg)
		}
		<-srv.done
	}
	t.Run("no client certificate", func(t *testing.T) {
		ccfg, err := s.ClientConfig("team-a", "", "svc.test", RootCAs(ca.pem))
		if err != nil {
			t.Fatal(err)
		}
		refused(t, ccfg, "peer sent no certificate")
	})
	t.Run("client certificate from an untrusted CA", func(t *testing.T) {
		ccfg, err := s.ClientConfig("team-a", "stranger", "svc.test", RootCAs(ca.pem))
		if err != nil {
			t.Fatal(err)
		}
		refused(t, ccfg, "unknown authority")
	})
}

func TestRotationUnderOpenSessions(t *testing.T) {
	ca := newCA(t, "test-ca")
	v1, v2 := ca.issue(t, leafOpts{}), ca.issue(t, leafOpts{})
	var s Store
	if err := s.Set("team-a", "web", v1.certPEM, v1.keyPEM); err != nil {
		t.Fatal(err)
	}
	// One config for the listener's whole life: rotation must not need a
	// new one.
	cfg, err := s.ServerConfig("team-a", "web")
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	open := func() (*tls.Conn, *echoServer) {
		cconn, sconn := tcpPair(t)
		srv := serveEcho(ctx, sconn, cfg)
		c := tls.Client(cconn, stockClient(ca, "svc.test"))
		if err := c.HandshakeContext(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-srv.handshake; err != nil {
			t.Fatal(err)
		}
		return c, srv
	}

	old, oldSrv := open()
	if peerSerial(old).Cmp(v1.serial) != 0 {
		t.Fatalf("first session serial %v, want %v", peerSerial(old), v1.serial)
	}
	roundTrip(t, old, "before rotation")

	if err := s.Set("team-a", "web", v2.certPEM, v2.keyPEM); err != nil {
		t.Fatal(err)
	}
	// A refused update in between must not disturb either session.
	if err := s.Set("team-a", "web", v2.certPEM, v1.keyPEM); err == nil {
		t.Fatal("mismatched update accepted")
	}

	fresh, freshSrv := open()
	if peerSerial(fresh).Cmp(v2.serial) != 0 {
		t.Fatalf("new session serial %v, want rotated %v", peerSerial(fresh), v2.serial)
	}
	// The old session still moves data, in both directions, with its
	// original certificate.
	roundTrip(t, old, "after rotation, old session")
	roundTrip(t, fresh, "after rotation, new session")
	if peerSerial(old).Cmp(v1.serial) != 0 {
		t.Errorf("old session's certificate changed")
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 64<<10/16)
	roundTrip(t, old, string(big))
	old.Close()
	fresh.Close()
	<-oldSrv.done
	<-freshSrv.done
}

func TestRemovedPairFailsNewHandshakes(t *testing.T) {
	ca := newCA(t, "test-ca")
	l := ca.issue(t, leafOpts{})
	var s Store
	if err := s.Set("team-a", "web", l.certPEM, l.keyPEM); err != nil {
		t.Fatal(err)
	}
	cfg, err := s.ServerConfig("team-a", "web")
	if err != nil {
		t.Fatal(err)
	}
	ccfg, err := s.ClientConfig("team-a", "web", "svc.test", RootCAs(ca.pem))
	if err != nil {
		t.Fatal(err)
	}
	s.Remove("team-a", "web")

	ctx := testCtx(t)
	cconn, sconn := tcpPair(t)
	srv := serveEcho(ctx, sconn, cfg)
	err = Handshake(ctx, tls.Client(cconn, stockClient(ca, "svc.test")))
	if e := Classify(err); e == nil || e.Kind != KindPeerRejected {
		t.Errorf("client: %v, want KindPeerRejected", err)
	}
	var se *Error
	if err := <-srv.handshake; !errors.As(err, &se) || se.Kind != KindNoCertificate || !strings.Contains(se.Msg, "team-a/web") {
		t.Errorf("server: %v, want KindNoCertificate naming team-a/web", err)
	}

	// The client side too: a vanished client certificate fails the
	// handshake instead of connecting anonymously.
	scfg := &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		p, err := parsePair(l.certPEM, l.keyPEM, time.Now())
		if err != nil {
			return nil, err
		}
		return p.Certificate, nil
	}, ClientAuth: tls.RequireAnyClientCert}
	cconn, sconn = tcpPair(t)
	go tls.Server(sconn, scfg).HandshakeContext(ctx)
	err = Handshake(ctx, tls.Client(cconn, ccfg))
	if e := Classify(err); e == nil || e.Kind != KindNoCertificate {
		t.Errorf("client with removed certificate: %v, want KindNoCertificate", err)
	}
}

func TestNamespaceAuthorization(t *testing.T) {
	ca := newCA(t, "test-ca")
	l := ca.issue(t, leafOpts{})
	var s Store
	if err := s.Set("team-b", "web", l.certPEM, l.keyPEM); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		appNS, ref string
		want       error
	}{
		{"team-a", "team-b/web", ErrForbidden},
		{"team-a", "team-b/missing", ErrForbidden}, // refused before lookup
		{"", "web", ErrForbidden},
		{"team-a", "web", ErrNotFound},
		{"team-a", "team-a/web", ErrNotFound},
		{"team-a", "", ErrNotFound},
		{"team-a", "team-a/", ErrNotFound},
		{"team-b", "web", nil},
		{"team-b", "team-b/web", nil},
	} {
		_, serr := s.ServerConfig(tc.appNS, tc.ref)
		errs := map[string]error{"server": serr}
		if tc.ref != "" { // an empty client pair means "no client certificate"
			_, errs["client"] = s.ClientConfig(tc.appNS, tc.ref, "svc.test")
		}
		for side, err := range errs {
			if tc.want == nil {
				if err != nil {
					t.Errorf("%s %q uses %q: %v", side, tc.appNS, tc.ref, err)
				}
				continue
			}
			if !errors.Is(err, tc.want) {
				t.Errorf("%s %q uses %q: %v, want %v", side, tc.appNS, tc.ref, err, tc.want)
				continue
			}
			if tc.appNS != "" && !strings.Contains(err.Error(), `"`+tc.appNS+`"`) {
				t.Errorf("%s: %q does not name the app namespace", side, err)
			}
		}
	}
	_, err := s.ServerConfig("team-a", "team-b/web")
	if msg := err.Error(); !strings.Contains(msg, "team-b/web") {
		t.Errorf("forbidden error %q does not name the pair", msg)
	}
}

func TestConfigOptions(t *testing.T) {
	ca := newCA(t, "test-ca")
	l := ca.issue(t, leafOpts{})
	var s Store
	if err := s.Set("ns", "p", l.certPEM, l.keyPEM); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ClientConfig("ns", "", ""); err == nil || !strings.Contains(err.Error(), "server name is required") {
		t.Errorf("client without server name: %v", err)
	}
	if _, err := s.ServerConfig("ns", "p", RootCAs(ca.pem)); err == nil {
		t.Error("RootCAs accepted on a server")
	}
	if _, err := s.ClientConfig("ns", "p", "svc.test", ClientCAs(ca.pem)); err == nil {
		t.Error("ClientCAs accepted on a client")
	}
	if _, err := s.ClientConfig("ns", "", "svc.test", RootCAs([]byte("junk"))); err == nil {
		t.Error("junk root CA bundle accepted")
	}
	if _, err := s.ServerConfig("ns", "p", ClientCAs(l.keyPEM)); err == nil {
		t.Error("a private key accepted as client CA bundle")
	}
	if _, err := s.ServerConfig("ns", "p", NextProtos("")); err == nil {
		t.Error("empty ALPN protocol accepted")
	}
	cfg, err := s.ClientConfig("ns", "", "svc.test")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.InsecureSkipVerify || cfg.RootCAs != nil || cfg.MinVersion != tls.VersionTLS12 {
		t.Errorf("client defaults: insecure=%v roots=%v min=%x", cfg.InsecureSkipVerify, cfg.RootCAs, cfg.MinVersion)
	}
	scfg, err := s.ServerConfig("ns", "p")
	if err != nil {
		t.Fatal(err)
	}
	if scfg.MinVersion != tls.VersionTLS12 || scfg.ClientAuth != tls.NoClientCert || len(scfg.Certificates) != 0 {
		t.Errorf("server defaults: min=%x auth=%v certs=%d", scfg.MinVersion, scfg.ClientAuth, len(scfg.Certificates))
	}
}
