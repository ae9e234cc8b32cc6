package standalone

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hoststack/hoststack/client"
)

const nsYAML = `apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: web}
spec:
  podSelector: {}
  segments: {segmentSize: 4Mi, rxFIFOSize: 64Ki, txFIFOSize: 64Ki}
`

func ruleYAML(name, remoteCIDR string, remotePort int, action, redirectApp string) string {
	s := `apiVersion: hoststack.dev/v1alpha1
kind: SessionRule
metadata: {name: ` + name + `}
spec:
  appNamespaceRef: {name: web}
  scope: Local
  transport: TCP
  local: {cidr: 0.0.0.0/0}
  remote: {cidr: ` + remoteCIDR + `, port: ` + itoa(remotePort) + `}
  action: {type: ` + action
	if redirectApp != "" {
		s += `, redirect: {app: ` + redirectApp + `}`
	}
	return s + "}\n"
}

func itoa(i int) string {
	var b [8]byte
	n := len(b)
	if i == 0 {
		return "0"
	}
	for i > 0 {
		n--
		b[n] = byte('0' + i%10)
		i /= 10
	}
	return string(b[n:])
}

// agent runs standalone mode in-process and reports readiness and reloads
// over channels: tests wait on them, never on time.
type agent struct {
	run      string
	socket   string
	reloaded chan error
	done     chan error
	cancel   context.CancelFunc
	logs     *lockedBuffer
}

func startAgent(t *testing.T, cfgDir string, watch bool, hup <-chan struct{}) *agent {
	t.Helper()
	run := filepath.Join(t.TempDir(), "run")
	ctx, cancel := context.WithCancel(context.Background())
	a := &agent{run: run, reloaded: make(chan error, 8), done: make(chan error, 1), cancel: cancel, logs: &lockedBuffer{}}
	ready := make(chan map[string]string, 1)
	log := slog.New(slog.NewTextHandler(a.logs, nil))
	go func() {
		a.done <- Run(ctx, Options{ConfigDir: cfgDir, RunDir: run, Log: log, Watch: watch, Reload: hup,
			Ready:    func(s map[string]string) { ready <- s },
			Reloaded: func(err error) { a.reloaded <- err }})
	}()
	select {
	case s := <-ready:
		a.socket = s["default/web"]
	case err := <-a.done:
		t.Fatalf("agent exited before ready: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("agent not ready after 30s")
	}
	t.Cleanup(func() {
		cancel()
		if err := <-a.done; err != nil {
			t.Errorf("agent shutdown: %v", err)
		}
	})
	return a
}

func (a *agent) waitReload(t *testing.T) {
	t.Helper()
	select {
	case err := <-a.reloaded:
		if err != nil {
			t.Fatalf("reload failed: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no reload after 30s; logs:\n%s", a.logs)
	}
}

func attach(t *testing.T, socket, name string) *client.App {
	t.Helper()
	app, err := client.Attach(context.Background(), client.Options{Socket: socket, Name: name})
	if err != nil {
		t.Fatalf("attach %s: %v", name, err)
	}
	t.Cleanup(func() { app.Close() })
	return app
}

// serve answers every session with the server's name, then closes.
func serve(t *testing.T, app *client.App, name, addr string) {
	t.Helper()
	ln, err := app.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("%s listen %s: %v", name, addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.WriteString(c, name)
			}()
		}
	}()
}

// who dials addr and returns which server answered.
func who(app *client.App, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := app.Dial(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	b, err := io.ReadAll(c)
	return string(b), err
}

func writeConfig(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, body := range files {
		tmp := filepath.Join(dir, "."+name+".tmp")
		if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil { // atomic, as editors do
			t.Fatal(err)
		}
	}
}

func TestRulesEnforcedEndToEnd(t *testing.T) {
	cfg := t.TempDir()
	writeConfig(t, cfg, map[string]string{
		"ns.yaml": nsYAML,
		"rules.yaml": strings.Join([]string{
			ruleYAML("deny-db", "127.0.0.1/32", 5432, "Deny", ""),
			ruleYAML("to-canary", "127.0.0.1/32", 8080, "Redirect", "canary"),
			ruleYAML("deny-loopback-9000", "127.0.0.0/8", 9000, "Deny", ""),
			ruleYAML("allow-one-9000", "127.0.0.2/32", 9000, "Allow", ""),
		}, "---\n"),
	})
	a := startAgent(t, cfg, false, nil)

	db, stable, canary, other, cli :=
		attach(t, a.socket, "db"), attach(t, a.socket, "stable"), attach(t, a.socket, "canary"),
		attach(t, a.socket, "other"), attach(t, a.socket, "client")
	serve(t, db, "db", "127.0.0.1:5432")
	serve(t, stable, "stable", "127.0.0.1:8080")
	serve(t, canary, "canary", "127.0.0.2:8080") // 0.0.0.0:8080 would conflict with stable's, as in Linux
	serve(t, other, "other-1", "127.0.0.1:9000")
	serve(t, other, "other-2", "127.0.0.2:9000")

	// Deny: permission denied at once, naming the rule.
	_, err := who(cli, "127.0.0.1:5432")
	if !errors.Is(err, syscall.EACCES) || !strings.Contains(err.Error(), "denied by SessionRule default/deny-db") {
		t.Errorf("dial db: want EACCES naming default/deny-db, got %v", err)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "dial" {
		t.Errorf("dial db: want *net.OpError{Op: dial}, got %T %v", err, err)
	}
	// Redirect: the exact listener would be "stable"; the rule hands the
	// session to app canary's listener on that port.
	if got, err := who(cli, "127.0.0.1:8080"); err != nil || got != "canary" {
		t.Errorf("dial :8080 = %q, %v; want canary (redirected)", got, err)
	}
	// A more specific Allow overrides a broader Deny.
	if _, err := who(cli, "127.0.0.1:9000"); !errors.Is(err, syscall.EACCES) {
		t.Errorf("dial 127.0.0.1:9000: want denied by the /8 rule, got %v", err)
	}
	if got, err := who(cli, "127.0.0.2:9000"); err != nil || got != "other-2" {
		t.Errorf("dial 127.0.0.2:9000 = %q, %v; want other-2 (the /32 Allow wins)", got, err)
	}

	// The rules subcommand's view of the engine.
	var dump bytes.Buffer
	if err := DumpRules(context.Background(), a.run, &dump); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"default/deny-db", "default/to-canary", "canary", "default/allow-one-9000", "127.0.0.0/8"} {
		if !strings.Contains(dump.String(), want) {
			t.Errorf("rules dump lacks %q:\n%s", want, dump.String())
		}
	}
}

func TestRuleReloadAppliesToNewSessionsOnly(t *testing.T) {
	cfg := t.TempDir()
	writeConfig(t, cfg, map[string]string{"ns.yaml": nsYAML})
	a := startAgent(t, cfg, true, nil)
	srv, cli := attach(t, a.socket, "server"), attach(t, a.socket, "client")

	ln, err := srv.Listen("tcp", "127.0.0.1:7000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	open, err := cli.Dial(ctx, "tcp", "127.0.0.1:7000")
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	peer := <-accepted
	defer peer.Close()

	// A file change (written atomically, as editors do) reloads the rules.
	writeConfig(t, cfg, map[string]string{"rules.yaml": ruleYAML("deny-7000", "127.0.0.1/32", 7000, "Deny", "")})
	a.waitReload(t)

	if _, err := cli.Dial(ctx, "tcp", "127.0.0.1:7000"); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("new session after reload: want denied, got %v", err)
	}
	// The session opened before the rule still carries bytes both ways.
	if _, err := open.Write([]byte("ping")); err != nil {
		t.Fatalf("open session cut by reload: %v", err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(peer, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("open session after reload: read %q, %v", buf, err)
	}

	// An invalid change is refused and the running rules stay.
	writeConfig(t, cfg, map[string]string{"rules.yaml": ruleYAML("bad", "127.0.0.300/32", 7000, "Deny", "")})
	select {
	case err := <-a.reloaded:
		if err == nil || !strings.Contains(err.Error(), "spec.remote.cidr") {
			t.Fatalf("invalid reload: want an error naming spec.remote.cidr, got %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no reload attempt after 30s")
	}
	if _, err := cli.Dial(ctx, "tcp", "127.0.0.1:7000"); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("after refused reload the old rule must still deny, got %v", err)
	}
}

func TestConflictingRulesReportedNamingBoth(t *testing.T) {
	cfg := t.TempDir()
	writeConfig(t, cfg, map[string]string{
		"ns.yaml": nsYAML,
		"a.yaml":  ruleYAML("first", "127.0.0.1/32", 80, "Deny", ""),
		"b.yaml":  ruleYAML("second", "127.0.0.1/32", 80, "Allow", ""),
	})
	hup := make(chan struct{})
	a := startAgent(t, cfg, false, hup)
	logs := a.logs.String()
	if !strings.Contains(logs, "rule=default/second") || !strings.Contains(logs, "olderRule=default/first") {
		t.Errorf("conflict not reported naming both rules:\n%s", logs)
	}
	// The older rule (earlier in the directory) applies.
	cli := attach(t, a.socket, "client")
	if _, err := who(cli, "127.0.0.1:80"); !errors.Is(err, syscall.EACCES) {
		t.Errorf("want the older Deny to apply, got %v", err)
	}
	// SIGHUP path: removing the older rule lets the newer one apply.
	if err := os.Remove(filepath.Join(cfg, "a.yaml")); err != nil {
		t.Fatal(err)
	}
	hup <- struct{}{}
	a.waitReload(t)
	if _, err := who(cli, "127.0.0.1:80"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("after removing the Deny, want connection refused (nothing listens), got %v", err)
	}
}
