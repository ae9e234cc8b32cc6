package session

import (
	"context"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/internal/echotest"
)

// checkOpenPairs: ns.openPairs (what statistics snapshots read) holds
// exactly the cut-through pairs not freed yet, each at its client end's
// pairIdx. It holds at any moment the lock is held.
func checkOpenPairs(t *testing.T, ns *namespace) int {
	t.Helper()
	ns.mu.Lock()
	defer ns.mu.Unlock()
	want := map[*session]bool{}
	for _, s := range ns.sessions {
		switch {
		case s.seg == nil:
		case s.client:
			want[s] = true
		case s.peer.done: // the client end went first: the pair lives on
			want[s.peer] = true
		}
	}
	if len(ns.openPairs) != len(want) {
		t.Fatalf("%d open pairs listed, %d pairs not freed", len(ns.openPairs), len(want))
	}
	for i, p := range ns.openPairs {
		if !want[p.client] || int(p.client.pairIdx) != i || p.seg != p.client.seg || p.a != p.client.pairOff {
			t.Fatalf("open pair %d: %+v does not match its client end (pairIdx %d)", i, p.pairRead, p.client.pairIdx)
		}
	}
	return len(want)
}

// TestOpenPairsFollowTheSessions: sessions of three apps open, close in
// scattered order from either end, and one app leaves with its sessions;
// the list of open pairs follows, and is empty once all are gone.
func TestOpenPairsFollowTheSessions(t *testing.T) {
	e, sock := newEngine(t, NamespaceConfig{Namespace: "team", Name: "pairs", SegmentSize: 4 << 20, RxFifoSize: 4096, TxFifoSize: 4096})
	ns := e.ns("team/pairs")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	attach := func(name string) *client.App {
		a, err := client.Attach(ctx, client.Options{Socket: sock, Name: name})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { a.Close() })
		return a
	}
	srv := attach("srv")
	ln, err := srv.Listen("tcp", "127.0.0.1:7200")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	echotest.Serve(ln)
	var apps []*client.App
	var conns []net.Conn
	for a := range 3 {
		app := attach(fmt.Sprintf("cli-%d", a))
		apps = append(apps, app)
		for i := range 10 {
			c, err := app.Dial(ctx, "tcp", "127.0.0.1:7200")
			if err != nil {
				t.Fatal(err)
			}
			msg := fmt.Sprintf("app %d session %d", a, i)
			if _, err := c.Write([]byte(msg)); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, make([]byte, len(msg))); err != nil {
				t.Fatal(err)
			}
			conns = append(conns, c)
		}
	}
	if n := checkOpenPairs(t, ns); n != 30 {
		t.Fatalf("%d pairs open, want 30", n)
	}
	// the pairs go as both ends close: every third client end first (the
	// echo server's end follows), then a whole app
	for i := 0; i < len(conns); i += 3 {
		conns[i].Close()
	}
	checkOpenPairs(t, ns)
	apps[1].Close()
	checkOpenPairs(t, ns)
	for _, c := range conns {
		c.Close()
	}
	for deadline := time.Now().Add(10 * time.Second); checkOpenPairs(t, ns) > 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d pairs still open 10 s after every session closed", checkOpenPairs(t, ns))
		}
		time.Sleep(5 * time.Millisecond) // polling a count, not synchronising
	}
}
