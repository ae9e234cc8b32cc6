package apply

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/rules"
	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/engine/wire"
)

// recordingTransport stands in for the transports of a later issue at the
// engine's seam: it counts the connects the engine hands it and refuses them.
type recordingTransport struct{ calls atomic.Int32 }

func (t *recordingTransport) Name() string                                   { return "recording" }
func (t *recordingTransport) Host(string, netip.Addr) (host string, ok bool) { return "", false }
func (t *recordingTransport) Connect(session.ConnectRequest) (wire.Code, string) {
	t.calls.Add(1)
	return wire.ErrNoTransport, "recording transport: not connected anywhere"
}

// TestGlobalRulesJudgeSessionsLeavingThroughTheTransport checks that global
// rules are consulted where transports plug in, local ones for cut-through,
// and that neither leaks into the other's sessions.
func TestGlobalRulesJudgeSessionsLeavingThroughTheTransport(t *testing.T) {
	var table rules.Table
	tr := &recordingTransport{}
	eng, err := session.New(session.Config{RunDir: t.TempDir(), Rules: RuleLookup{Table: &table}, Transport: tr,
		Logf: func(string, ...any) {}})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	sock, err := eng.AddNamespace(session.NamespaceConfig{Namespace: "team", Name: "web", SegmentSize: 1 << 20, RxFifoSize: 64 << 10, TxFifoSize: 64 << 10})
	if err != nil {
		t.Fatal(err)
	}
	mk := func(name string, scope rules.Scope, remote string, port uint16) rules.Rule {
		return rules.Rule{Namespace: "team/web", Scope: scope, Proto: rules.TCP, Action: rules.Deny, Name: "team/" + name,
			Local: netip.MustParsePrefix("0.0.0.0/0"), Remote: netip.MustParsePrefix(remote), RemotePort: port}
	}
	set, _, err := rules.Compile([]rules.Rule{
		mk("global-deny-metadata", rules.Global, "169.254.169.254/32", 80),
		mk("local-deny-10", rules.Local, "10.0.0.0/8", 443),
		mk("global-deny-loopback", rules.Global, "127.0.0.0/8", 0), // must not touch cut-through
	})
	if err != nil {
		t.Fatal(err)
	}
	table.Store(set)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	app, err := client.Attach(ctx, client.Options{Socket: sock, Name: "app"})
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	ln, err := app.Listen("tcp", "127.0.0.1:9000")
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

	// Global deny: refused before the transport is asked.
	_, err = app.Dial(ctx, "tcp", "169.254.169.254:80")
	if !errors.Is(err, syscall.EACCES) || !strings.Contains(err.Error(), "SessionRule team/global-deny-metadata") {
		t.Errorf("metadata: want denied by team/global-deny-metadata, got %v", err)
	}
	if n := tr.calls.Load(); n != 0 {
		t.Errorf("transport asked %d times for a denied session", n)
	}
	// Local rules judge sessions leaving too.
	if _, err := app.Dial(ctx, "tcp", "10.1.2.3:443"); !errors.Is(err, syscall.EACCES) || !strings.Contains(err.Error(), "team/local-deny-10") {
		t.Errorf("10.1.2.3:443: want denied by team/local-deny-10, got %v", err)
	}
	// Allowed: handed to the transport.
	if _, err := app.Dial(ctx, "tcp", "192.0.2.1:80"); err == nil || errors.Is(err, syscall.EACCES) {
		t.Errorf("192.0.2.1:80: want the transport's refusal, got %v", err)
	}
	if n := tr.calls.Load(); n != 1 {
		t.Errorf("transport asked %d times, want 1", n)
	}
	// A global rule never judges a cut-through session.
	c, err := app.Dial(ctx, "tcp", "127.0.0.1:9000")
	if err != nil {
		t.Fatalf("cut-through judged by a global rule: %v", err)
	}
	c.Close()
}

// TestLookupJudgesInboundOnlyInGlobalScope: an accept query is allowed in
// local scope (the connect was judged already) and judged by the global
// table when a transport accepted the session from outside.
func TestLookupJudgesInboundOnlyInGlobalScope(t *testing.T) {
	var table rules.Table
	set, _, err := rules.Compile([]rules.Rule{{Namespace: "team/web", Scope: rules.Global, Proto: rules.TCP, Action: rules.Deny,
		Name: "team/no-scanner", Local: netip.MustParsePrefix("0.0.0.0/0"), Remote: netip.MustParsePrefix("203.0.113.0/24")},
		{Namespace: "team/web", Scope: rules.Local, Proto: rules.TCP, Action: rules.Deny,
			Name: "team/local-no-scanner", Local: netip.MustParsePrefix("0.0.0.0/0"), Remote: netip.MustParsePrefix("203.0.113.0/24")}})
	if err != nil {
		t.Fatal(err)
	}
	table.Store(set)
	l := RuleLookup{Table: &table}
	q := session.RuleQuery{Namespace: "team/web", App: "web", Dir: session.Accept, Proto: wire.TCP,
		Local: netip.MustParseAddrPort("10.1.0.5:8080"), Remote: netip.MustParseAddrPort("203.0.113.9:40000")}
	for _, tc := range []struct {
		scope session.Scope
		want  session.Action
		rule  string
	}{{session.LocalScope, session.Allow, ""}, {session.GlobalScope, session.Deny, "team/no-scanner"}} {
		q.Scope = tc.scope
		if v := l.Lookup(q); v.Action != tc.want || v.Rule != tc.rule {
			t.Errorf("scope %v: %+v, want %v by %q", tc.scope, v, tc.want, tc.rule)
		}
	}
	q.Scope, q.Remote = session.GlobalScope, netip.MustParseAddrPort("198.51.100.1:40000")
	if v := l.Lookup(q); v.Action != session.Allow {
		t.Errorf("unmatched inbound: %+v", v)
	}
}
