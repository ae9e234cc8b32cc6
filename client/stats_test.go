package client_test

import (
	"context"
	"io"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/internal/echotest"
)

// TestStatsWhileAppsComeAndGo: statistics snapshots read the open
// sessions' fifo indices outside the namespace lock; segments dropped
// meanwhile (apps leaving, their cut-through segments with them) stay
// mapped until the snapshot is done. Snapshots run back to back while apps
// attach, move data and leave; the bytes they report never go down, and
// count a long-lived session's bytes while it is open (its pair stays in
// the namespace's list of open pairs as the others come and go).
func TestStatsWhileAppsComeAndGo(t *testing.T) {
	cfg := testNS
	cfg.SegmentSize, cfg.RxFifoSize, cfg.TxFifoSize = 4<<20, 4<<10, 4<<10
	e, sock := startEngine(t, cfg)
	srv := attach(t, sock, "srv")
	ln, err := srv.Listen("tcp", ":7100")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	echotest.Serve(ln)
	stop := make(chan struct{})
	done := make(chan struct{})
	var snapshots atomic.Int64
	var regress atomic.Value
	go func() {
		defer close(done)
		var last uint64
		for {
			select {
			case <-stop:
				return
			default:
			}
			st, _ := e.NamespaceStats(cfg.Key())
			if st.Bytes < last {
				regress.CompareAndSwap(nil, [2]uint64{last, st.Bytes})
			}
			last = st.Bytes
			snapshots.Add(1)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	b := make([]byte, 512)
	long := attach(t, sock, "long")
	lc, err := long.Dial(ctx, "tcp", "127.0.0.1:7100")
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close()
	for round := range 40 {
		if _, err := lc.Write(b); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(lc, b); err != nil {
			t.Fatal(err)
		}
		app, err := client.Attach(ctx, client.Options{Socket: sock, Name: "churn"})
		if err != nil {
			t.Fatal(err)
		}
		for i := range 20 {
			c, err := app.Dial(ctx, "tcp", "127.0.0.1:7100")
			if err != nil {
				t.Fatalf("round %d session %d: %v", round, i, err)
			}
			if _, err := c.Write(b); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, b); err != nil {
				t.Fatal(err)
			}
		}
		app.Close() // its sessions and segments go, snapshots or not
	}
	close(stop)
	<-done
	if r := regress.Load(); r != nil {
		t.Fatalf("bytes went from %d down to %d between two snapshots", r.([2]uint64)[0], r.([2]uint64)[1])
	}
	st, _ := e.NamespaceStats(cfg.Key())
	if want := uint64(41 * 20 * 2 * 512); st.Bytes < want { // the churn's, and the open session's 40 echoes
		t.Fatalf("%d bytes counted, want at least %d", st.Bytes, want)
	}
	t.Logf("%d snapshots while 800 sessions came and went", snapshots.Load())
}
