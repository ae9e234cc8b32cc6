package client_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/engine/wire"
)

type testRules struct{}

func (testRules) Lookup(q session.RuleQuery) session.Verdict {
	switch {
	case q.Dir == session.Connect && q.Remote.Port() == 23:
		return session.Verdict{Action: session.Deny, Rule: "no-telnet"}
	case q.Dir == session.Connect && q.Remote.Port() == 8081:
		return session.Verdict{Action: session.Redirect, Rule: "to-8080", To: netip.MustParseAddrPort("127.0.0.1:8080")}
	case q.Dir == session.Connect && q.Remote.Port() == 8082:
		return session.Verdict{Action: session.Redirect, Rule: "to-guard-app", App: "server"}
	case q.Dir == session.Accept && q.App == "guarded":
		return session.Verdict{Action: session.Deny, Rule: "guarded-inbound"}
	}
	return session.Verdict{}
}

type testTransport struct{ calls atomic.Int32 }

func (t *testTransport) Name() string                                   { return "test" }
func (t *testTransport) Host(string, netip.Addr) (host string, ok bool) { return "", false }
func (t *testTransport) Connect(r session.ConnectRequest) (wire.Code, string) {
	t.calls.Add(1)
	return wire.ErrNoTransport, "test transport cannot reach " + r.Remote.String()
}

// TestRulesAndTransportSeams drives the hooks later issues plug into.
func TestRulesAndTransportSeams(t *testing.T) {
	dir, _ := os.MkdirTemp("", "hs")
	defer os.RemoveAll(dir)
	tr := &testTransport{}
	e, err := session.New(session.Config{RunDir: dir, Rules: testRules{}, Transport: tr, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	sock, err := e.AddNamespace(testNS)
	if err != nil {
		t.Fatal(err)
	}
	srv := attach(t, sock, "server")
	guarded := attach(t, sock, "guarded")
	cli := attach(t, sock, "client")
	ln, _ := srv.Listen("tcp", "127.0.0.1:8080")
	echoServer(t, ln)
	gl, _ := guarded.Listen("tcp", "127.0.0.1:9000")
	echoServer(t, gl)
	ctx := context.Background()

	_, err = cli.Dial(ctx, "tcp", "127.0.0.1:23")
	if err == nil || !strings.Contains(err.Error(), "SessionRule no-telnet") || !errors.Is(err, syscall.EACCES) {
		t.Fatalf("deny: %v", err)
	}
	c, err := cli.Dial(ctx, "tcp", "127.0.0.1:8081")
	if err != nil {
		t.Fatalf("redirect: %v", err)
	}
	if c.RemoteAddr().String() != "127.0.0.1:8080" {
		t.Fatalf("redirected to %v", c.RemoteAddr())
	}
	c.Close()
	c, err = cli.Dial(ctx, "tcp", "127.0.0.1:8082")
	if err != nil || c.RemoteAddr().String() != "127.0.0.1:8080" {
		t.Fatalf("redirect to app: %v", err)
	}
	c.Close()
	_, err = cli.Dial(ctx, "tcp", "127.0.0.1:9000")
	if err == nil || !strings.Contains(err.Error(), "guarded-inbound") {
		t.Fatalf("accept deny: %v", err)
	}
	_, err = cli.Dial(ctx, "tcp", "192.0.2.7:443")
	if err == nil || !strings.Contains(err.Error(), "test transport cannot reach 192.0.2.7:443") ||
		!errors.Is(err, syscall.ECONNREFUSED) || tr.calls.Load() != 1 {
		t.Fatalf("transport: %v (calls %d)", err, tr.calls.Load())
	}
	// a loopback address with no app listening goes to the transport too:
	// in a pod, a kernel server of the pod may listen there
	if _, err = cli.Dial(ctx, "tcp", "127.0.0.1:1"); !errors.Is(err, syscall.ECONNREFUSED) || tr.calls.Load() != 2 {
		t.Fatalf("loopback without a listener: %v (calls %d)", err, tr.calls.Load())
	}
}
