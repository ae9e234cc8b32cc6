package client

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hoststack/hoststack/engine/session"
)

// TestRingsRecheckOnlyTheirSessions: a server worker with many idle blocked
// Reads (keep-alive connections of one client app) serves a ping-pong with
// another app; each ring of the ping-pong's segment re-checks the calls
// blocked on that segment, not the idle ones (which cost one check per ring
// each before).
func TestRingsRecheckOnlyTheirSessions(t *testing.T) {
	dir, err := os.MkdirTemp("", "hs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e, err := session.New(session.Config{RunDir: filepath.Join(dir, "run"), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	sock, err := e.AddNamespace(session.NamespaceConfig{Namespace: "team", Name: "default",
		SegmentSize: 16 << 20, RxFifoSize: 16 << 10, TxFifoSize: 16 << 10})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	noSpin := Options{Socket: sock, SpinFor: -1} // every wait sleeps: rings are what we count
	attach := func(name string) *App {
		o := noSpin
		o.Name = name
		a, err := Attach(ctx, o)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		return a
	}
	srv, idle, busy := attach("srv"), attach("idle"), attach("busy")
	ln, err := srv.Listen("tcp", ":7000")
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
			go func() { // echo: blocks in Read between requests
				defer c.Close()
				_, _ = io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c})
			}()
		}
	}()
	const idleConns = 200
	w := srv.workers[0]
	for i := 0; i < idleConns; i++ {
		c, err := idle.Dial(ctx, "tcp", "127.0.0.1:7000")
		if err != nil {
			t.Fatalf("idle conn %d: %v", i, err)
		}
		defer c.Close()
	}
	// All idle conns accepted and their echo goroutines blocked in Read.
	for deadline := time.Now().Add(10 * time.Second); ; {
		w.mu.Lock()
		n := 0
		for _, set := range w.waiters {
			n += len(set)
		}
		w.mu.Unlock()
		if n >= idleConns {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d idle reads blocked after 10s", n, idleConns)
		}
		time.Sleep(time.Millisecond) // polling a count, not synchronising
	}
	c, err := busy.Dial(ctx, "tcp", "127.0.0.1:7000")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	w.mu.Lock()
	before := w.checked
	w.mu.Unlock()
	const rounds = 500
	pingPong(t, c, rounds)
	w.mu.Lock()
	checked := w.checked - before
	w.mu.Unlock()
	// A round trip rings the server's worker about once (the request); the
	// idle reads would add 200 checks each time.
	if checked > 4*rounds {
		t.Fatalf("%d round trips re-checked %d blocked calls (%.1f per round trip): rings re-check the idle sessions of another segment",
			rounds, checked, float64(checked)/rounds)
	}
	t.Logf("%d round trips: %d re-checks with %d idle blocked reads", rounds, checked, idleConns)
}

func pingPong(t *testing.T, c net.Conn, rounds int) {
	t.Helper()
	b := make([]byte, 64)
	for i := 0; i < rounds; i++ {
		b[0] = byte(i)
		if _, err := c.Write(b); err != nil {
			t.Fatalf("round %d: write: %v", i, err)
		}
		if _, err := io.ReadFull(c, b); err != nil || b[0] != byte(i) {
			t.Fatalf("round %d: read %v (byte %d)", i, err, b[0])
		}
	}
}
