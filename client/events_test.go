package client_test

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/transport/kernel"
	"github.com/hoststack/hoststack/internal/echotest"
)

// TestEngineRingsRecheckOnlyTheirSessions: an app with many transport
// sessions blocked in Read (idle keep-alive connections to a kernel
// server) and one busy one on the same worker: the engine names the busy
// session's event bit before each ring of the worker doorbell, so the ring
// re-checks its calls only (without the bits it re-checked all 200).
func TestEngineRingsRecheckOnlyTheirSessions(t *testing.T) {
	cfg := testNS
	cfg.SegmentSize, cfg.RxFifoSize, cfg.TxFifoSize = 16<<20, 16<<10, 16<<10
	_, sock := startEngineWith(t, cfg, kernel.New(kernel.Options{}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	app, err := client.Attach(ctx, client.Options{Socket: sock, Name: "app", SpinFor: -1}) // every wait sleeps
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	echotest.Serve(ln)
	const idleConns = 200
	for i := range idleConns {
		c, err := app.Dial(ctx, "tcp", ln.Addr().String())
		if err != nil {
			t.Fatalf("idle conn %d: %v", i, err)
		}
		defer c.Close()
		go func() { _, _ = c.Read(make([]byte, 1)) }() // blocked until the end
	}
	waitBlocked(t, app, idleConns)
	c, err := app.Dial(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	before := client.Rechecked(app)
	const rounds = 300
	pingPong(t, c, rounds)
	checked := client.Rechecked(app) - before
	// A round trip rings the worker about once (the answer); the idle
	// reads would add 200 checks each time.
	if checked > 4*rounds {
		t.Fatalf("%d round trips re-checked %d blocked calls (%.1f per round trip): the engine's rings re-check the idle sessions",
			rounds, checked, float64(checked)/rounds)
	}
	t.Logf("%d round trips: %d re-checks with %d idle blocked reads", rounds, checked, idleConns)
}
