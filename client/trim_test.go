package client_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/session"
)

// TestIdleSessionGivesBackItsPages: a session that streamed through 4 MiB
// fifos walked every page of both rings; once quiet, each app's worker
// gives back the pages of its tx fifo that hold nothing (the memfd's own
// block count shows it), and the session carries data correctly afterwards.
func TestIdleSessionGivesBackItsPages(t *testing.T) {
	_, cli, ln := trimPair(t, 20*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c}) // echo
	}()
	c, err := cli.Dial(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resident := func() int64 {
		t.Helper()
		r, err := client.SegmentResident(c)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	rng := rand.New(rand.NewPCG(5, 6))
	echo := func(total int) {
		t.Helper()
		sent := sha256.New()
		done := make(chan error, 1)
		go func() {
			buf := make([]byte, 64<<10)
			for left := total; left > 0; {
				n := min(left, 1+rng.IntN(len(buf)))
				for i := range buf[:n] {
					buf[i] = byte(rng.Uint32())
				}
				sent.Write(buf[:n])
				if _, err := c.Write(buf[:n]); err != nil {
					done <- err
					return
				}
				left -= n
			}
			done <- nil
		}()
		got := sha256.New()
		if _, err := io.CopyN(got, c, int64(total)); err != nil {
			t.Fatalf("echo read: %v", err)
		}
		if err := <-done; err != nil {
			t.Fatalf("echo write: %v", err)
		}
		if !bytes.Equal(got.Sum(nil), sent.Sum(nil)) {
			t.Fatal("echoed bytes differ from the bytes sent")
		}
	}
	const quiet = 256 << 10 // headers and the pages next to them, with room
	waitQuiet := func(after string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for r := resident(); r > quiet; r = resident() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the quiet session still holds %d resident bytes of fifo memory after 20s (want <= %d)", after, r, quiet)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	echo(24 << 20) // six laps of each ring
	waitQuiet("after the first stream")
	// Pages given back are faulted in again, holding the right bytes.
	echo(9 << 20)
	waitQuiet("after the second stream")
}

// TestClosedSessionGivesBackItsPages: apps that never trim (a long trim
// period) leave a streamed session's rings resident while it is open; once
// both ends closed, the engine punches the fifo pair's extent.
func TestClosedSessionGivesBackItsPages(t *testing.T) {
	e, cli, ln := trimPair(t, time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	accepted := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- -1
			return
		}
		n, _ := io.Copy(io.Discard, c)
		c.Close()
		accepted <- n
	}()
	c, err := cli.Dial(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	const total = 16 << 20
	buf := make([]byte, 64<<10)
	for sent := 0; sent < total; sent += len(buf) {
		if _, err := c.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	resident := func() int64 {
		st, _ := e.NamespaceStats(testNS.Key())
		return st.SegmentResident
	}
	// the reader may not have drained the ring yet, but it was walked
	if r := resident(); r < 4<<20 {
		t.Fatalf("open session after a 16 MiB stream: %d resident bytes, want >= 4 MiB (its whole tx ring)", r)
	}
	c.Close()
	if n := <-accepted; n != total {
		t.Fatalf("server read %d bytes, want %d", n, total)
	}
	const closed = 256 << 10 // the apps' own segments' first pages
	deadline := time.Now().Add(20 * time.Second)
	for r := resident(); r > closed; r = resident() {
		if time.Now().After(deadline) {
			t.Fatalf("closed session: %d resident bytes after 20s, want <= %d", r, closed)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// trimPair is an engine with 4 MiB fifos, a client app and a listening app,
// both giving back their written pages after trimAfter.
func trimPair(t *testing.T, trimAfter time.Duration) (*session.Engine, *client.App, net.Listener) {
	t.Helper()
	cfg := testNS
	cfg.SegmentSize, cfg.RxFifoSize, cfg.TxFifoSize = 64<<20, 4<<20, 4<<20
	e, sock := startEngine(t, cfg)
	srv, cli := attach(t, sock, "srv"), attach(t, sock, "cli")
	for _, a := range []*client.App{srv, cli} {
		client.SetTrimAfter(a, trimAfter)
	}
	ln, err := srv.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return e, cli, ln
}
