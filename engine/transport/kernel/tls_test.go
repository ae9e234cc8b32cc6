package kernel_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hoststack/hoststack/agent/apply"
	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/rules"
	"github.com/hoststack/hoststack/engine/session"
	enginetls "github.com/hoststack/hoststack/engine/tls"
	"github.com/hoststack/hoststack/engine/transport/kernel"
	"github.com/hoststack/hoststack/internal/certstest"
	"github.com/hoststack/hoststack/internal/echotest"
	"github.com/hoststack/hoststack/internal/netnstest"
)

// tlsEnv is an engine with the kernel transport in netns A and a TLS store
// holding CertKeyPairs of Kubernetes namespace team.
type tlsEnv struct {
	store *enginetls.Store
	sock  string
	ca    *certstest.CA
}

func newTLSEnv(t *testing.T, tp *netnstest.Pair) *tlsEnv {
	t.Helper()
	te := &tlsEnv{store: &enginetls.Store{}, ca: certstest.NewCA(t, "test CA")}
	tr := kernel.New(kernel.Options{CloseTimeout: time.Hour, Netns: func(string) (string, error) { return tp.A.Path(), nil }})
	eng, err := session.New(session.Config{RunDir: t.TempDir(), Transport: tr, TLS: te.store,
		Rules: apply.RuleLookup{Table: new(rules.Table)}, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	if te.sock, err = eng.AddNamespace(session.NamespaceConfig{Namespace: "team", Name: "web", SegmentSize: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	return te
}

func (te *tlsEnv) set(t *testing.T, ns, name string, l certstest.Leaf) {
	t.Helper()
	if err := te.store.Set(ns, name, l.CertPEM, l.KeyPEM); err != nil {
		t.Fatal(err)
	}
	if err := te.store.SetCA(ns, name, te.ca.PEM); err != nil {
		t.Fatal(err)
	}
}

func (te *tlsEnv) attach(t *testing.T, name string) *client.App {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a, err := client.Attach(ctx, client.Options{Socket: te.sock, Name: name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// stockClient dials addr from namespace path with crypto/tls, trusting ca.
func stockClient(path, addr, serverName string, ca *certstest.CA) (*tls.Conn, error) {
	c, err := netnstest.Dial(path, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(c, &tls.Config{ServerName: serverName, RootCAs: ca.Pool(), MinVersion: tls.VersionTLS12})
	_ = tc.SetDeadline(time.Now().Add(20 * time.Second))
	if err := tc.Handshake(); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

// say writes msg and reads as many bytes back.
func say(c net.Conn, msg string) error {
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo %q, want %q", buf, msg)
	}
	return nil
}

// TestTLSListenerAndRotation: an app's TLS listener is reached by a stock
// crypto/tls client from outside; the app reads plaintext. Rotating the
// CertKeyPair changes the certificate of new handshakes and leaves the
// open session working.
func TestTLSListenerAndRotation(t *testing.T) {
	tp := newTopo(t)
	te := newTLSEnv(t, tp)
	first := te.ca.Issue(t, "web.team", "10.99.0.1")
	te.set(t, "team", "web", first)
	app := te.attach(t, "server")
	ln, err := app.ListenTLS("tcp", ":0", client.TLSConfig{CertKeyPair: "web"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	echotest.Serve(ln)
	addr := fmt.Sprintf("10.99.0.1:%d", ln.Addr().(*net.TCPAddr).Port)

	old, err := stockClient(tp.B.Path(), addr, "web.team", te.ca)
	if err != nil {
		t.Fatalf("stock client: %v", err)
	}
	defer old.Close()
	if got := old.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(first.Serial) != 0 {
		t.Fatalf("served serial %v, want %v", got, first.Serial)
	}
	if err := say(old, "plaintext to the app, TLS on the wire"); err != nil {
		t.Fatal(err)
	}

	second := te.ca.Issue(t, "web.team")
	te.set(t, "team", "web", second)
	fresh, err := stockClient(tp.B.Path(), addr, "web.team", te.ca)
	if err != nil {
		t.Fatalf("after rotation: %v", err)
	}
	defer fresh.Close()
	if got := fresh.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(second.Serial) != 0 {
		t.Fatalf("after rotation the server presented serial %v, want the new %v", got, second.Serial)
	}
	if err := say(fresh, "new certificate"); err != nil {
		t.Fatal(err)
	}
	if err := say(old, "the session opened before the rotation still works"); err != nil {
		t.Fatalf("old session after rotation: %v", err)
	}

	// A client that does not trust the CA never reaches the app.
	if _, err := stockClient(tp.B.Path(), addr, "web.team", certstest.NewCA(t, "stranger")); err == nil {
		t.Fatal("a client trusting another CA completed the handshake")
	}
}

// TestTLSDial: an app dials a stock crypto/tls server through the engine,
// trusting a CertKeyPair's CA bundle; without it (system roots) the
// handshake fails with a clear error.
func TestTLSDial(t *testing.T) {
	tp := newTopo(t)
	te := newTLSEnv(t, tp)
	te.set(t, "team", "corp", te.ca.Issue(t, "client.team"))
	srvCert := te.ca.Issue(t, "api.outside")
	raw := netnstest.Listen(t, tp.B.Path(), "tcp", "10.99.0.2:0")
	ln := tls.NewListener(raw, &tls.Config{Certificates: []tls.Certificate{srvCert.TLS}})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	app := te.attach(t, "client")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := app.DialTLS(ctx, "tcp", raw.Addr().String(), client.TLSConfig{ServerName: "api.outside", Trust: "corp"})
	if err != nil {
		t.Fatalf("DialTLS: %v", err)
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if err := say(c, "over TLS the engine speaks"); err != nil {
		t.Fatal(err)
	}
	c.Close()
	_, err = app.DialTLS(ctx, "tcp", raw.Addr().String(), client.TLSConfig{ServerName: "api.outside"})
	if !errors.Is(err, syscall.EPROTO) || !strings.Contains(err.Error(), "tls") {
		t.Fatalf("DialTLS trusting only the system roots: %v, want EPROTO saying why", err)
	}
	_, err = app.DialTLS(ctx, "tcp", raw.Addr().String(), client.TLSConfig{ServerName: "wrong.name", Trust: "corp"})
	if !errors.Is(err, syscall.EPROTO) {
		t.Fatalf("DialTLS with the wrong server name: %v, want EPROTO", err)
	}
}

// TestTLSAuthorizationAndCutThrough: a CertKeyPair of another Kubernetes
// namespace is refused; two apps of the node talk TLS cut-through (the
// engine runs the handshake, then the bytes go FIFO to FIFO); a plaintext
// connect to a TLS listener is refused.
func TestTLSAuthorizationAndCutThrough(t *testing.T) {
	tp := newTopo(t)
	te := newTLSEnv(t, tp)
	te.set(t, "team", "web", te.ca.Issue(t, "web.team", "127.0.0.1"))
	te.set(t, "other", "web", te.ca.Issue(t, "web.other"))
	srv := te.attach(t, "server")
	if _, err := srv.ListenTLS("tcp", ":0", client.TLSConfig{CertKeyPair: "other/web"}); !errors.Is(err, syscall.EACCES) ||
		!strings.Contains(err.Error(), "another namespace") {
		t.Fatalf("a CertKeyPair of another namespace: %v, want EACCES", err)
	}
	if _, err := srv.ListenTLS("tcp", ":0", client.TLSConfig{CertKeyPair: "missing"}); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("a missing CertKeyPair: %v, want EINVAL", err)
	}
	ln, err := srv.ListenTLS("tcp", "127.0.0.1:8443", client.TLSConfig{CertKeyPair: "web"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	echotest.Serve(ln)
	cli := te.attach(t, "client")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := cli.DialTLS(ctx, "tcp", "127.0.0.1:8443", client.TLSConfig{ServerName: "web.team", Trust: "web"})
	if err != nil {
		t.Fatalf("TLS cut-through: %v", err)
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if err := say(c, "verified, then shared memory"); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, err := cli.Dial(ctx, "tcp", "127.0.0.1:8443"); !errors.Is(err, syscall.EPROTO) || !strings.Contains(err.Error(), "listens with TLS") {
		t.Fatalf("plaintext connect to a TLS listener: %v", err)
	}
	if _, err := cli.DialTLS(ctx, "tcp", "127.0.0.1:8443", client.TLSConfig{ServerName: "web.team"}); !errors.Is(err, syscall.EPROTO) {
		t.Fatalf("cut-through TLS without trusting the CA: %v, want EPROTO", err)
	}
}
