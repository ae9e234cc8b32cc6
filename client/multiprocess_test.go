//go:build !race

// Cross-process tests: the race detector cannot see the ordering that
// atomics in shared memory give between processes (golang/go#16206), so
// these run only without -race.

package client_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/hoststack/hoststack/engine/session"
)

// TestGiBTransfer sends 1 GiB to an app in a child process and compares
// SHA-256 digests.
func TestGiBTransfer(t *testing.T) {
	if testing.Short() {
		t.Skip("1 GiB transfer skipped in -short mode")
	}
	cfg := testNS
	cfg.RxFifoSize, cfg.TxFifoSize = 1<<20, 1<<20
	e, sock := startEngine(t, cfg)
	app := attach(t, sock, "sender")
	_, addr := startChild(t, "hash-server", sock, "127.0.0.1:0")
	c, err := app.Dial(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	block := make([]byte, 4<<20)
	r := rand.NewChaCha8([32]byte{1, 2, 3})
	r.Read(block)
	const total = 1 << 30 // 1 GiB
	h := sha256.New()
	start := time.Now()
	for sent := 0; sent < total; sent += len(block) {
		block[0], block[1] = byte(sent>>22), byte(sent>>30) // every block differs
		h.Write(block)
		if _, err := c.Write(block); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	el := time.Since(start)
	want := fmt.Sprintf("%d %x", total, h.Sum(nil))
	if string(got) != want {
		t.Fatalf("child got %q, want %q", got, want)
	}
	t.Logf("1 GiB with SHA-256 on both sides in %v (%.2f GB/s)", el, float64(total)/el.Seconds()/1e9)
	c.Close()
	st := waitStats(t, e, cfg.Key(), "session released", func(st session.NamespaceStats) bool { return st.FifoBytesInUse == 0 })
	if st.Bytes < total+uint64(len(want)) {
		t.Fatalf("engine counted %d bytes, want >= %d", st.Bytes, total+len(want))
	}
}

// TestKilledPeer: an app in a child process is SIGKILLed mid-transfer; the
// peer sees a reset, the engine keeps serving, and the memory is released.
func TestKilledPeer(t *testing.T) {
	e, sock := startEngine(t, testNS)
	key := testNS.Key()
	app := attach(t, sock, "survivor")
	ln, err := app.Listen("tcp", "127.0.0.1:7100")
	if err != nil {
		t.Fatal(err)
	}
	ch, _ := startChild(t, "endless-writer", sock, "127.0.0.1:7100")
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	// mid-transfer: the child is writing
	buf := make([]byte, 64<<10)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	st, _ := e.NamespaceStats(key)
	if st.Apps != 2 || st.Sessions != 2 || st.Segments != 3 {
		t.Fatalf("before kill: %+v", st)
	}
	if err := ch.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ch.cmd.Wait()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		_, err = c.Read(buf)
		if err != nil {
			break
		}
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after the peer was killed: %v", err)
	}
	t.Logf("survivor sees: %v", err)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("timeout instead of reset")
	}
	if _, err := c.Write([]byte("x")); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("write after reset: %v", err)
	}
	c.Close()
	st = waitStats(t, e, key, "child reaped and memory released", func(st session.NamespaceStats) bool {
		return st.Apps == 1 && st.Sessions == 0 && st.Segments == 1 && st.FifoBytesInUse == 0 && st.Workers == 1
	})
	if st.AppsReaped != 1 || st.Resets == 0 {
		t.Fatalf("stats after kill: %+v", st)
	}
	// the engine keeps serving: a new child connects and moves data
	startChild(t, "echo-server", sock, "127.0.0.1:7101")
	c2, err := app.Dial(context.Background(), "tcp", "127.0.0.1:7101")
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := c2.Write([]byte("still alive")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 11)
	if _, err := io.ReadFull(c2, got); err != nil || string(got) != "still alive" {
		t.Fatalf("echo after kill: %q %v", got, err)
	}
}

// TestCloseThenExit: a child closes its session and exits without detaching;
// the peer reads the data and a clean EOF (the engine processes the dead
// app's queued disconnect before reaping it).
func TestCloseThenExit(t *testing.T) {
	_, sock := startEngine(t, testNS)
	app := attach(t, sock, "reader")
	ln, err := app.Listen("tcp", "127.0.0.1:7200")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		ch, _ := startChild(t, "write-close-exit", sock, "127.0.0.1:7200")
		c, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		ch.cmd.Wait()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "last words" {
			t.Fatalf("run %d: %q %v", i, got, err)
		}
		c.Close()
	}
}
