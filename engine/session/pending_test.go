package session

import (
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/hoststack/hoststack/engine/wire"
)

// TestPendingAttaches: connections that never send their attach are bounded
// per attach socket (the next one is refused at once, naming the limit) and
// closed after the attach deadline, which frees their slots.
func TestPendingAttaches(t *testing.T) {
	dir, err := os.MkdirTemp("", "hsp")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	e, err := New(Config{RunDir: dir, Logf: t.Logf, Limits: Limits{MaxPendingAttaches: 4, AttachTimeout: 2 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	path, err := e.AddNamespace(testCfg)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	var idle []*net.UnixConn
	for i := 0; i < 4; i++ {
		idle = append(idle, dialRaw(t, path))
	}
	// The engine accepts in order: the fifth connection is over the cap
	// as long as the first four wait (2 s).
	c := dialRaw(t, path)
	m, _ := recv(t, c)
	r, ok := m.(*wire.AttachReply)
	if !ok || r.Code != wire.ErrQuota || !strings.Contains(r.Msg, "maxPendingAttaches (4) reached") {
		t.Fatalf("fifth pending connection: %#v", m)
	}
	if time.Since(start) > 1500*time.Millisecond {
		t.Skip("machine too slow to judge the cap before the deadline")
	}
	// the idle ones are closed at the deadline
	for i, ic := range idle {
		b := make([]byte, 64)
		ic.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := ic.Read(b); !errors.Is(err, io.EOF) {
			t.Fatalf("idle connection %d: %v, want the engine to close it at the attach deadline", i, err)
		}
	}
	if d := time.Since(start); d > 6*time.Second {
		t.Fatalf("idle connections closed after %v, deadline 2s", d)
	}
	// their slots are free again
	waitFor(t, "pending slots released", func() bool {
		e.mu.Lock()
		defer e.mu.Unlock()
		for s := range e.sockets {
			if s.pending.Load() != 0 {
				return false
			}
		}
		return true
	})
	attachRaw(t, path, "late")
}

// TestConstEq: the secret compare is right for every length (it compares
// SHA-256 digests, so its time depends on neither secret's length).
func TestConstEq(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		eq   bool
	}{
		{"open sesame", "open sesame", true},
		{"", "", true},
		{"open sesame", "open sesam", false},
		{"open sesame", "open sesame!", false},
		{"a", "b", false},
		{"", "x", false},
		{strings.Repeat("x", wire.MaxSecretLen), strings.Repeat("x", wire.MaxSecretLen), true},
	} {
		if got := constEq(tc.a, tc.b); got != tc.eq {
			t.Errorf("constEq(%q, %q) = %v", tc.a, tc.b, got)
		}
	}
}
