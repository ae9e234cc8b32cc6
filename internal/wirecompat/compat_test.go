//go:build !race

// Cross-process tests (kept out of -race, which cannot see the ordering
// atomics in shared memory give between processes, golang/go#16206).

// Package wirecompat_test proves that today's engine serves apps built
// against the client of the previous wire version (frozen in v2/ by
// hack/wire-compat.sh), and that such an app and an app of today's client
// talk cut-through to each other; that an app of wire version 3 (frozen in
// v3/) with several workers gets its listener's sessions on the worker that
// listened, as its client expects; and that an app of wire version 4
// (frozen in v4/), which has no transport event bits, gets its transport
// sessions served.
package wirecompat_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/engine/transport/kernel"
	"github.com/hoststack/hoststack/engine/wire"
	"github.com/hoststack/hoststack/internal/echotest"
)

// engineLog collects the engine's log lines.
type engineLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *engineLog) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *engineLog) has(sub string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.lines {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

func startEngine(t *testing.T) (string, *engineLog) {
	t.Helper()
	sock, lg, _ := startEngineStats(t)
	return sock, lg
}

// startEngineStats is startEngine that also returns the engine, for its
// statistics.
func startEngineStats(t *testing.T) (string, *engineLog, *session.Engine) {
	t.Helper()
	lg := &engineLog{}
	e, err := session.New(session.Config{RunDir: t.TempDir(), Logf: lg.logf, Transport: kernel.New(kernel.Options{})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	sock, err := e.AddNamespace(session.NamespaceConfig{Namespace: "compat", Name: "default", RxFifoSize: 1 << 18, TxFifoSize: 1 << 18})
	if err != nil {
		t.Fatal(err)
	}
	return sock, lg, e
}

func buildV2App(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "v2app")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/hoststack/hoststack/internal/wirecompat/v2app").CombinedOutput(); err != nil {
		t.Fatalf("build the wire-version-2 app: %v\n%s", err, out)
	}
	return bin
}

// run starts the v2 app and returns its stdout lines.
func run(t *testing.T, bin string, args ...string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() && stderr.Len() > 0 {
			t.Logf("v2app %v stderr:\n%s", args, stderr.String())
		}
	})
	return cmd, bufio.NewScanner(out)
}

func line(t *testing.T, sc *bufio.Scanner, prefix string) string {
	t.Helper()
	if !sc.Scan() {
		t.Fatalf("v2app ended before printing %q: %v", prefix, sc.Err())
	}
	l := sc.Text()
	if !strings.HasPrefix(l, prefix+" ") {
		t.Fatalf("v2app printed %q, want %q...", l, prefix)
	}
	return strings.TrimPrefix(l, prefix+" ")
}

const transfer = 64 << 20

// TestPreviousVersionApp: an app of the previous wire version attaches to
// today's engine (which speaks that version with it) and exchanges
// hash-checked data cut-through with an app of today's client, as server
// and as client.
func TestPreviousVersionApp(t *testing.T) {
	sock, lg := startEngine(t)
	bin := buildV2App(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	app, err := client.Attach(ctx, client.Options{Socket: sock, Name: "today"})
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	if app.WireVersion() != wire.Version {
		t.Fatalf("today's app agreed on wire version %d, want %d", app.WireVersion(), wire.Version)
	}

	t.Run("old server, new client", func(t *testing.T) {
		_, sc := run(t, bin, "serve", sock, "127.0.0.1:0")
		addr := line(t, sc, "ready")
		if !lg.has("app v2app-serve") || !lg.has("wire version 2") {
			t.Fatalf("engine log does not show the app on wire version 2: %q", lg.lines)
		}
		c, err := app.Dial(ctx, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		h := sha256.New()
		if _, err := io.Copy(io.MultiWriter(c, h), io.LimitReader(rand.NewChaCha8([32]byte{1}), transfer)); err != nil {
			t.Fatal(err)
		}
		if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if want := hex.EncodeToString(h.Sum(nil)); strings.TrimSpace(got) != want {
			t.Fatalf("the old app read digest %s, sent %s", got, want)
		}
	})

	t.Run("new server, old client", func(t *testing.T) {
		ln, err := app.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		served := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				served <- err
				return
			}
			defer c.Close()
			h := sha256.New()
			if _, err := io.Copy(h, c); err != nil {
				served <- err
				return
			}
			_, err = fmt.Fprintf(c, "%x\n", h.Sum(nil))
			served <- err
		}()
		cmd, sc := run(t, bin, "send", sock, ln.Addr().String(), fmt.Sprint(transfer))
		sent := line(t, sc, "sent")
		got := line(t, sc, "got")
		if sent != got {
			t.Fatalf("today's app read digest %s, the old app sent %s", got, sent)
		}
		if err := <-served; err != nil {
			t.Fatal(err)
		}
		waitExit(t, cmd)
	})

	t.Run("old client through the kernel transport", func(t *testing.T) {
		// a session whose other end is the engine: the old app maps its own
		// segment from the add-segment the engine sends it and wakes the
		// engine through the descriptor that comes with it
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		served := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				served <- err
				return
			}
			defer c.Close()
			h := sha256.New()
			if _, err := io.Copy(h, c); err != nil {
				served <- err
				return
			}
			_, err = fmt.Fprintf(c, "%x\n", h.Sum(nil))
			served <- err
		}()
		cmd, sc := run(t, bin, "send", sock, ln.Addr().String(), fmt.Sprint(transfer/4))
		sent := line(t, sc, "sent")
		got := line(t, sc, "got")
		if sent != got {
			t.Fatalf("the kernel socket read digest %s, the old app sent %s", got, sent)
		}
		if err := <-served; err != nil {
			t.Fatal(err)
		}
		waitExit(t, cmd)
	})
}

// waitExit waits for the v2 app to exit by itself, successfully.
func waitExit(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("v2app: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("v2app did not exit within 30s after its session")
	}
}

// TestVersion3ListenerWithWorkers: an app of wire version 3 with 4 workers
// takes a listener's sessions only on the worker that listened; today's
// engine, which spreads accepted sessions over the workers of apps of
// version 4, must hand it every session there (its client would refuse
// them elsewhere), and every one is served.
func TestVersion3ListenerWithWorkers(t *testing.T) {
	sock, lg := startEngine(t)
	bin := filepath.Join(t.TempDir(), "v3app")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/hoststack/hoststack/internal/wirecompat/v3app").CombinedOutput(); err != nil {
		t.Fatalf("build the wire-version-3 app: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	app, err := client.Attach(ctx, client.Options{Socket: sock, Name: "today"})
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	const sessions = 16
	cmd, sc := run(t, bin, "serve", sock, "127.0.0.1:0", "4", fmt.Sprint(sessions))
	addr := line(t, sc, "ready")
	if !lg.has("app v3app-serve") || !lg.has("wire version 3") {
		t.Fatalf("engine log does not show the app on wire version 3: %q", lg.lines)
	}
	for i := 0; i < sessions; i++ {
		c, err := app.Dial(ctx, "tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("session %d\n", i)
		if _, err := io.WriteString(c, want); err != nil {
			t.Fatal(err)
		}
		got, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || got != want {
			t.Fatalf("session %d: echoed %q, %v", i, got, err)
		}
		c.Close()
	}
	if got := line(t, sc, "served"); got != fmt.Sprint(sessions) {
		t.Fatalf("served %s", got)
	}
	waitExit(t, cmd)
}

// TestVersion4TransportSessions: an app of wire version 4 has no transport
// event bits; its rings name no session, and today's engine serves its
// transport sessions by looking at every one of them on each ring (the
// counters show it: more sessions kicked than rings), where an app of
// today's client gets exactly the session that moved
// (engine/transport/kernel TestRingKicksOnlyTheSessionThatMoved).
func TestVersion4TransportSessions(t *testing.T) {
	sock, lg, eng := startEngineStats(t)
	bin := filepath.Join(t.TempDir(), "v4app")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/hoststack/hoststack/internal/wirecompat/v4app").CombinedOutput(); err != nil {
		t.Fatalf("build the wire-version-4 app: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	echotest.Serve(ln)
	const sessions, rounds = 8, 50
	cmd, sc := run(t, bin, "echo", sock, ln.Addr().String(), fmt.Sprint(sessions), fmt.Sprint(rounds))
	if got := line(t, sc, "done"); got != fmt.Sprintf("%d %d", sessions, rounds) {
		t.Fatalf("done %s", got)
	}
	waitExit(t, cmd)
	if !lg.has("app v4app-echo") || !lg.has("wire version 4") {
		t.Fatalf("engine log does not show the app on wire version 4: %q", lg.lines)
	}
	st, _ := eng.NamespaceStats("compat/default")
	t.Logf("%d rings, %d sessions kicked", st.TransportRings, st.TransportKicks)
	if st.TransportRings == 0 || st.TransportKicks <= st.TransportRings {
		t.Fatalf("%d rings kicked %d sessions: the version-4 app's rings did not reach all of its sessions", st.TransportRings, st.TransportKicks)
	}
}
