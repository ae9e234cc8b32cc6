package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hoststack/hoststack/client"
)

// agentBinary builds the agent once per test binary run.
func agentBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "hoststack-agent")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("building agent: %v\n%s", err, out)
	}
	return bin
}

func writeFile(t *testing.T, dir, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

const goodNS = `apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: demo, namespace: team-a}
spec:
  podSelector: {}
  secretRef: {name: attach}
---
apiVersion: v1
kind: Secret
metadata: {name: attach, namespace: team-a}
stringData: {secret: s3cret}
`

// startAgent runs the agent and waits for its "ready" log line (an explicit
// signal, not a sleep). It returns the command and the rest of its stderr.
func startAgent(t *testing.T, bin string, args ...string) (*exec.Cmd, *bufio.Reader) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	r := bufio.NewReader(stderr)
	lines := make(chan string)
	go func() {
		defer close(lines)
		for {
			l, err := r.ReadString('\n')
			if l != "" {
				lines <- l
			}
			if err != nil {
				return
			}
		}
	}()
	var seen []string
	timeout := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("agent exited before ready:\n%s", strings.Join(seen, ""))
			}
			seen = append(seen, l)
			if strings.Contains(l, "msg=ready") {
				go func() { // keep draining so the agent never blocks on stderr
					for range lines {
					}
				}()
				return cmd, nil
			}
		case <-timeout:
			t.Fatalf("agent not ready after 30s:\n%s", strings.Join(seen, ""))
		}
	}
}

func TestStandaloneServesAndStopsCleanly(t *testing.T) {
	bin := agentBinary(t)
	cfg, run := t.TempDir(), t.TempDir()
	writeFile(t, cfg, "ns.yaml", goodNS)
	cmd, _ := startAgent(t, bin, "--standalone", "--config", cfg, "--run-dir", run)

	sock := filepath.Join(run, "team-a", "demo", "session.sock")
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatalf("attach socket: %v", err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("%s is not a socket: %v", sock, fi.Mode())
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("agent did not exit 0 on SIGTERM: %v", err)
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket not removed on SIGTERM: %v", err)
	}
}

func TestStandaloneRefusesInvalidConfig(t *testing.T) {
	bin := agentBinary(t)
	cases := []struct {
		name  string
		files map[string]string
		want  []string
	}{
		{
			name:  "bad YAML",
			files: map[string]string{"broken.yaml": "apiVersion: [unclosed\n"},
			want:  []string{"broken.yaml"},
		},
		{
			name: "invalid field names file and field",
			files: map[string]string{"good.yaml": goodNS, "bad.yaml": `apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: other}
spec:
  podSelector: {}
  segments: {rxFIFOSize: 1Ki}
`},
			want: []string{"bad.yaml#1", "AppNamespace other", "spec.segments.rxFIFOSize"},
		},
		{
			name: "missing secret names the field",
			files: map[string]string{"ns.yaml": `apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: demo}
spec:
  podSelector: {}
  secretRef: {name: nope}
`},
			want: []string{"spec.secretRef.name", "default/nope"},
		},
		{
			name:  "duplicate object",
			files: map[string]string{"a.yaml": goodNS, "b.yaml": goodNS},
			want:  []string{"b.yaml#1", "also defined at", "a.yaml#1"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, run := t.TempDir(), filepath.Join(t.TempDir(), "run")
			for n, b := range tc.files {
				writeFile(t, cfg, n, b)
			}
			cmd := exec.Command(bin, "--standalone", "--config", cfg, "--run-dir", run)
			stderr, _ := cmd.StderrPipe()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			msg, _ := io.ReadAll(stderr)
			err := cmd.Wait()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() == 0 {
				t.Fatalf("want non-zero exit, got %v\n%s", err, msg)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(msg), w) {
					t.Errorf("error output lacks %q:\n%s", w, msg)
				}
			}
			// Nothing half-started: no run directory, no socket.
			if _, err := os.Stat(run); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("run directory created despite invalid config: %v", err)
			}
		})
	}
}

func TestFlagErrors(t *testing.T) {
	if code := run([]string{"--log-format", "xml", "--standalone"}); code != 2 {
		t.Errorf("bad --log-format: exit %d, want 2", code)
	}
	if code := run([]string{"--standalone"}); code != 1 {
		t.Errorf("--standalone without --config: exit %d, want 1", code)
	}
}

func TestRulesSubcommandPrintsTheEnginesTable(t *testing.T) {
	bin := agentBinary(t)
	cfg, run := t.TempDir(), t.TempDir()
	writeFile(t, cfg, "ns.yaml", goodNS)
	writeFile(t, cfg, "rule.yaml", `apiVersion: hoststack.dev/v1alpha1
kind: SessionRule
metadata: {name: no-db, namespace: team-a}
spec:
  appNamespaceRef: {name: demo}
  scope: Local
  transport: TCP
  local: {cidr: 0.0.0.0/0}
  remote: {cidr: 10.0.0.0/8, port: 5432}
  action: {type: Deny}
  tag: databases
`)
	cmd, _ := startAgent(t, bin, "--standalone", "--config", cfg, "--run-dir", run)
	out, err := exec.Command(bin, "rules", "--run-dir", run).CombinedOutput()
	if err != nil {
		t.Fatalf("rules: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "NAMESPACE") {
		t.Fatalf("want a header and one rule, got:\n%s", out)
	}
	for _, f := range []string{"team-a/demo", "Local", "TCP", "10.0.0.0/8", "5432", "Deny", "team-a/no-db", "databases"} {
		if !strings.Contains(lines[1], f) {
			t.Errorf("rule line lacks %q: %s", f, lines[1])
		}
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v", err)
	}
	// With no agent running, a clear error and exit 1.
	out, err = exec.Command(bin, "rules", "--run-dir", run).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), "no agent answers") {
		t.Errorf("rules without agent: %v\n%s", err, out)
	}
}

func TestSIGTERMTellsAttachedApps(t *testing.T) {
	bin := agentBinary(t)
	cfg, run := t.TempDir(), t.TempDir()
	writeFile(t, cfg, "ns.yaml", goodNS)
	cmd, _ := startAgent(t, bin, "--standalone", "--config", cfg, "--run-dir", run)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// The app learns why the engine went (it then re-attaches to the next
	// agent on its own, see client.Options.NoReattach).
	lost := make(chan error, 1)
	app, err := client.Attach(ctx, client.Options{Socket: filepath.Join(run, "team-a", "demo", "session.sock"), Name: "app", Secret: "s3cret",
		OnEngine: func(attached bool, err error) {
			if !attached {
				select {
				case lost <- err:
				default:
				}
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	if _, err := app.Listen("tcp", "127.0.0.1:7000"); err != nil {
		t.Fatal(err)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-lost:
		if !errors.Is(err, syscall.ESHUTDOWN) || !strings.Contains(err.Error(), "shutting down") {
			t.Errorf("after SIGTERM: want ESHUTDOWN saying the engine is shutting down, got %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the app was not told of the shutdown")
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v", err)
	}
}

func TestKubernetesModeNeedsANodeName(t *testing.T) {
	t.Setenv("NODE_NAME", "")
	if code := run(nil); code != 2 {
		t.Errorf("Kubernetes mode without a node name: exit %d, want 2", code)
	}
	if code := run([]string{"--node-name", "n1", "--kubeconfig", filepath.Join(t.TempDir(), "missing")}); code != 1 {
		t.Errorf("unreadable kubeconfig: exit %d, want 1", code)
	}
}
