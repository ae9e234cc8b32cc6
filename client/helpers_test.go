package client_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/session"
)

// testNS is the app namespace every test engine serves.
var testNS = session.NamespaceConfig{Namespace: "team", Name: "default",
	SegmentSize: 8 << 20, RxFifoSize: 64 << 10, TxFifoSize: 64 << 10}

// startEngine starts an engine with one app namespace and returns it and the
// attach socket path. Unix socket paths are short: use a short temp dir.
func startEngine(t testing.TB, cfg session.NamespaceConfig) (*session.Engine, string) {
	t.Helper()
	return startEngineWith(t, cfg, nil)
}

// startEngineWith is startEngine with a transport for the sessions that
// leave the node.
func startEngineWith(t testing.TB, cfg session.NamespaceConfig, tr session.Transport) (*session.Engine, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "hs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e, err := session.New(session.Config{RunDir: filepath.Join(dir, "run"), Logf: t.Logf, Transport: tr})
	if err != nil {
		t.Fatal(err)
	}
	path, err := e.AddNamespace(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e, path
}

// waitBlocked waits up to 10 s for n Read/Write calls blocked on a's first
// worker.
func waitBlocked(t testing.TB, a *client.App, n int) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); client.BlockedCalls(a) < n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d calls blocked after 10s", client.BlockedCalls(a), n)
		}
		time.Sleep(time.Millisecond) // polling a count, not synchronising
	}
}

func attach(t testing.TB, sock, name string, mod ...func(*client.Options)) *client.App {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	o := client.Options{Socket: sock, Name: name}
	for _, f := range mod {
		f(&o)
	}
	a, err := client.Attach(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// waitStats polls the engine's stats until cond holds or 10 s pass: the
// engine processes releases asynchronously and offers no event for them.
func waitStats(t testing.TB, e *session.Engine, key string, what string, cond func(session.NamespaceStats) bool) session.NamespaceStats {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, _ := e.NamespaceStats(key)
		if cond(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; stats %+v", what, st)
		}
		time.Sleep(time.Millisecond)
	}
}
