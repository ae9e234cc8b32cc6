package kernel_test

import (
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/internal/echotest"
)

// echoOnce writes msg on c and reads it back from the echo server.
func echoOnce(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("%s: write: %v", msg, err)
	}
	b := make([]byte, len(msg))
	if _, err := io.ReadFull(c, b); err != nil || string(b) != msg {
		t.Fatalf("%s: read %q, %v", msg, b, err)
	}
}

func transportStats(t *testing.T, ev *env) (rings, kicks uint64) {
	t.Helper()
	st, ok := ev.eng.NamespaceStats("team/web")
	if !ok {
		t.Fatal("no stats for team/web")
	}
	return st.TransportRings, st.TransportKicks
}

// TestRingKicksOnlyTheSessionThatMoved: with many idle transport sessions
// beside it, a session's round trips make the engine look at that session
// only (its event bit), not at every session of the app on each ring.
func TestRingKicksOnlyTheSessionThatMoved(t *testing.T) {
	tp := newTopo(t)
	ln := listenIn(t, tp.B.Path(), "10.99.0.2:0")
	ev := newEnv(t, tp)
	echotest.Serve(ln)
	const idle = 40
	var conns []net.Conn
	for i := range idle + 1 {
		c, err := dial(t, ev.app, ln.Addr().String())
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	probe := conns[idle]
	echoOnce(t, probe, "warm")
	rings0, kicks0 := transportStats(t, ev)
	const trips = 200
	for i := range trips {
		echoOnce(t, probe, fmt.Sprintf("trip %d", i))
	}
	rings, kicks := transportStats(t, ev)
	rings, kicks = rings-rings0, kicks-kicks0
	t.Logf("%d round trips beside %d idle sessions: %d rings, %d sessions kicked", trips, idle, rings, kicks)
	if rings == 0 {
		t.Fatal("no ring of the transport doorbell counted: the round trips did not go through it")
	}
	// Each ring names the probe alone; without event bits each would kick
	// all 41 sessions.
	if kicks > rings {
		t.Fatalf("%d rings kicked %d sessions: more than the one that moved", rings, kicks)
	}
	// The idle ones still work.
	for i, c := range conns[:idle] {
		echoOnce(t, c, fmt.Sprintf("idle %d", i))
	}
}

// TestSessionsBeyondTheEventBits: a worker's event bits are sized by
// maxSessionsPerApp when it is made; raised later, the sessions past them
// share bit 0 and are served all the same.
func TestSessionsBeyondTheEventBits(t *testing.T) {
	tp := newTopo(t)
	ln := listenIn(t, tp.B.Path(), "10.99.0.2:0")
	cfg := session.NamespaceConfig{Namespace: "team", Name: "web", SegmentSize: 4 << 20, MaxSessionsPerApp: 8}
	ev := newEnvNS(t, tp, time.Hour, cfg)
	echotest.Serve(ln)
	cfg.MaxSessionsPerApp = 100
	if err := ev.eng.UpdateNamespace(cfg); err != nil {
		t.Fatal(err)
	}
	// 8 sessions make a worker's bits 64: 63 of their own, then shared
	const n = 70
	var conns []net.Conn
	for i := range n {
		c, err := dial(t, ev.app, ln.Addr().String())
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	for round := range 3 {
		for i, c := range conns {
			echoOnce(t, c, fmt.Sprintf("round %d session %d", round, i))
		}
	}
	rings, kicks := transportStats(t, ev)
	if rings == 0 || kicks == 0 {
		t.Fatalf("%d rings, %d kicks: the echoes did not go through the doorbell", rings, kicks)
	}
}
