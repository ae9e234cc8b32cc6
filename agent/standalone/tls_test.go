package standalone

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/transport/kernel"
	"github.com/hoststack/hoststack/internal/certstest"
)

func tlsSecretYAML(l certstest.Leaf, ca *certstest.CA) string {
	indent := func(b []byte) string {
		return "    " + strings.ReplaceAll(strings.TrimSpace(string(b)), "\n", "\n    ")
	}
	return `apiVersion: v1
kind: Secret
metadata: {name: web-tls}
type: kubernetes.io/tls
stringData:
  tls.crt: |
` + indent(l.CertPEM) + `
  tls.key: |
` + indent(l.KeyPEM) + `
  ca.crt: |
` + indent(ca.PEM) + "\n"
}

// TestTLSFromFiles: standalone mode loads CertKeyPairs and their Secrets
// from the directory; an app's TLS listener serves the pair to a stock
// crypto/tls client, and rewriting the Secret's file rotates the
// certificate for new handshakes while the open session carries on.
func TestTLSFromFiles(t *testing.T) {
	ca := certstest.NewCA(t, "standalone CA")
	first := ca.Issue(t, "web.local")
	cfg := t.TempDir()
	writeConfig(t, cfg, map[string]string{
		"ns.yaml": nsYAML,
		"tls.yaml": `apiVersion: hoststack.dev/v1alpha1
kind: CertKeyPair
metadata: {name: web}
spec:
  secretRef: {name: web-tls}
`,
		"secret.yaml": tlsSecretYAML(first, ca),
	})
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan map[string]string, 1)
	reloaded := make(chan error, 4)
	done := make(chan error, 1)
	logs := &lockedBuffer{}
	go func() {
		done <- Run(ctx, Options{ConfigDir: cfg, RunDir: filepath.Join(t.TempDir(), "run"), Log: slog.New(slog.NewTextHandler(logs, nil)),
			Watch: true, Transport: kernel.New(kernel.Options{}),
			Ready: func(s map[string]string) { ready <- s }, Reloaded: func(err error) { reloaded <- err }})
	}()
	var socket string
	select {
	case s := <-ready:
		socket = s["default/web"]
	case err := <-done:
		t.Fatalf("agent exited: %v\n%s", err, logs)
	case <-time.After(30 * time.Second):
		t.Fatal("agent not ready")
	}
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("shutdown: %v", err)
		}
	}()

	app, err := client.Attach(ctx, client.Options{Socket: socket, Name: "web"})
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	ln, err := app.ListenTLS("tcp", "127.0.0.1:0", client.TLSConfig{CertKeyPair: "web"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(c, c); c.Close() }()
		}
	}()
	dial := func() *tls.Conn {
		t.Helper()
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", ln.Addr().String(),
			&tls.Config{ServerName: "web.local", RootCAs: ca.Pool()})
		if err != nil {
			t.Fatalf("stock TLS client: %v", err)
		}
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		return c
	}
	old := dial()
	defer old.Close()
	if got := old.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(first.Serial) != 0 {
		t.Fatalf("served serial %v, want %v", got, first.Serial)
	}

	second := ca.Issue(t, "web.local")
	writeConfig(t, cfg, map[string]string{"secret.yaml": tlsSecretYAML(second, ca)})
	select {
	case err := <-reloaded:
		if err != nil {
			t.Fatalf("reload: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no reload after the Secret's file changed")
	}
	fresh := dial()
	defer fresh.Close()
	if got := fresh.ConnectionState().PeerCertificates[0].SerialNumber; got.Cmp(second.Serial) != 0 {
		t.Fatalf("after the rotation: serial %v, want %v", got, second.Serial)
	}
	for _, c := range []*tls.Conn{old, fresh} {
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 4)
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "ping" {
			t.Fatalf("echo %q, %v", b, err)
		}
	}
}
