package session_test

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/engine/wire"
)

// twoHosts owns 10.0.0.1 (host "a") and 10.0.0.2 (host "b"): connects
// between them are cut-through; nothing leaves through it.
type twoHosts struct{}

var hostAddrs = map[string]netip.Addr{"a": netip.MustParseAddr("10.0.0.1"), "b": netip.MustParseAddr("10.0.0.2")}

func (twoHosts) Name() string { return "two-hosts" }
func (twoHosts) Host(_ string, addr netip.Addr) (string, bool) {
	for h, a := range hostAddrs {
		if a == addr {
			return h, true
		}
	}
	return "", false
}
func (twoHosts) HostAddr(_, host string, _ netip.Addr) (netip.Addr, bool) {
	a, ok := hostAddrs[host]
	return a, ok
}
func (twoHosts) Connect(session.ConnectRequest) (wire.Code, string) {
	return wire.ErrNoTransport, "two-hosts: no outside world"
}

// denyPort refuses sessions to one port and records what it was asked.
type denyPort struct {
	port uint16
	mu   sync.Mutex
	seen []session.PeerQuery
}

func (d *denyPort) CheckPeer(q session.PeerQuery) session.PeerVerdict {
	d.mu.Lock()
	d.seen = append(d.seen, q)
	d.mu.Unlock()
	if q.Dst.Port() == d.port {
		return session.PeerVerdict{Reason: "NetworkPolicy t/deny isolates pod b"}
	}
	return session.PeerVerdict{Allowed: true}
}

func (d *denyPort) queries() []session.PeerQuery {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]session.PeerQuery(nil), d.seen...)
}

// TestPeerPolicy: a cut-through connect between two hosts asks the peer
// policy (hosts and addresses of both ends, the listener's port); a refused
// one is dropped: it fails with ETIMEDOUT after the drop delay, naming the
// reason, and at most maxSessionsPerApp of an app wait at once (the rest
// time out at once). A connect within one host is not asked about.
func TestPeerPolicy(t *testing.T) {
	pol := &denyPort{port: 7007}
	const delay = 300 * time.Millisecond
	e, err := session.New(session.Config{Transport: twoHosts{}, PeerPolicy: pol, PolicyDropDelay: delay, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	cfg := session.NamespaceConfig{Namespace: "t", Name: "np", SegmentSize: 1 << 20, RxFifoSize: 4096, TxFifoSize: 4096, QueueSlots: 16, MaxSessionsPerApp: 4}
	if _, err := e.AddNamespace(cfg); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	apps := map[string]*client.App{}
	for _, h := range []string{"a", "b"} {
		s, err := e.Serve(session.SocketConfig{Path: filepath.Join(t.TempDir(), h+".sock"), Namespaces: []string{cfg.Key()}, Host: h})
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		app, err := client.Attach(ctx, client.Options{Socket: s.Path(), Name: "app-" + h, NoReattach: true})
		if err != nil {
			t.Fatal(err)
		}
		defer app.Close()
		apps[h] = app
	}
	for _, addr := range []string{":7007", ":7008"} {
		ln, err := apps["b"].Listen("tcp", addr)
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
				c.Close()
			}
		}()
	}

	c, err := apps["a"].Dial(ctx, "tcp", "10.0.0.2:7008")
	if err != nil {
		t.Fatalf("allowed connect: %v", err)
	}
	c.Close()
	q := pol.queries()
	want := session.PeerQuery{Namespace: cfg.Key(), Proto: wire.TCP, SrcHost: "a", Src: hostAddrs["a"], DstHost: "b", Dst: netip.MustParseAddrPort("10.0.0.2:7008")}
	if len(q) != 1 || q[0] != want {
		t.Fatalf("queries %+v, want [%+v]", q, want)
	}

	start := time.Now()
	_, err = apps["a"].Dial(ctx, "tcp", "10.0.0.2:7007")
	took := time.Since(start)
	if !errors.Is(err, syscall.ETIMEDOUT) || !strings.Contains(err.Error(), "NetworkPolicy t/deny") {
		t.Fatalf("dropped connect: %v", err)
	}
	if took < delay {
		t.Fatalf("dropped connect failed after %v, before the drop delay %v", took, delay)
	}

	// Six dropped connects at once: four wait (maxSessionsPerApp), two
	// time out at once.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var fast int
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := time.Now()
			_, err := apps["a"].Dial(ctx, "tcp", "10.0.0.2:7007")
			if !errors.Is(err, syscall.ETIMEDOUT) {
				t.Errorf("dropped connect: %v", err)
			}
			if time.Since(s) < delay/2 {
				mu.Lock()
				fast++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if fast != 2 {
		t.Fatalf("%d of 6 dropped connects timed out at once, want 2 (the 4 others wait)", fast)
	}

	// Within one host (b to itself, by its address or loopback): not asked.
	n := len(pol.queries())
	for _, to := range []string{"10.0.0.2:7007", "127.0.0.1:7007"} {
		c, err := apps["b"].Dial(ctx, "tcp", to)
		if err != nil {
			t.Fatalf("connect within a host to %s: %v", to, err)
		}
		c.Close()
	}
	if got := len(pol.queries()); got != n {
		t.Fatalf("connects within a host were judged: %+v", pol.queries()[n:])
	}
}
