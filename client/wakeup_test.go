package client_test

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hoststack/hoststack/client"
)

// TestRingsRecheckOnlyTheirSessions: a server worker with many idle blocked
// Reads (keep-alive connections of one client app) serves a ping-pong with
// another app; each ring of the ping-pong's segment re-checks the calls
// blocked on that segment, not the idle ones (which cost one check per ring
// each before).
func TestRingsRecheckOnlyTheirSessions(t *testing.T) {
	cfg := testNS
	cfg.SegmentSize, cfg.RxFifoSize, cfg.TxFifoSize = 16<<20, 16<<10, 16<<10
	_, sock := startEngine(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// every wait sleeps: rings are what this counts
	noSpin := func(o *client.Options) { o.SpinFor = -1 }
	srv, idle, busy := attach(t, sock, "srv", noSpin), attach(t, sock, "idle", noSpin), attach(t, sock, "busy", noSpin)
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
	for i := 0; i < idleConns; i++ {
		c, err := idle.Dial(ctx, "tcp", "127.0.0.1:7000")
		if err != nil {
			t.Fatalf("idle conn %d: %v", i, err)
		}
		defer c.Close()
	}
	// All idle conns accepted and their echo goroutines blocked in Read.
	waitBlocked(t, srv, idleConns)
	c, err := busy.Dial(ctx, "tcp", "127.0.0.1:7000")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	before := client.Rechecked(srv)
	const rounds = 500
	pingPong(t, c, rounds)
	checked := client.Rechecked(srv) - before
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
