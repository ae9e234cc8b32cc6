package session_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/internal/testreq"
)

// quotaEngine starts an engine with the fake transport of transport_test.go
// and the given limits; sockets live in a short temp dir.
func quotaEngine(t *testing.T, lim session.Limits) *session.Engine {
	t.Helper()
	dir, err := os.MkdirTemp("", "hsq")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	eng, err := session.New(session.Config{RunDir: dir, Transport: fakeTransport{}, Limits: lim, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	return eng
}

func quotaAttach(t *testing.T, sock, name string, mod ...func(*client.Options)) (*client.App, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	o := client.Options{Socket: sock, Name: name}
	for _, f := range mod {
		f(&o)
	}
	a, err := client.Attach(ctx, o)
	if err == nil {
		t.Cleanup(func() { a.Close() })
	}
	return a, err
}

func mustAttach(t *testing.T, sock, name string, mod ...func(*client.Options)) *client.App {
	t.Helper()
	a, err := quotaAttach(t, sock, name, mod...)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func wantQuota(t *testing.T, what string, err error, text string) {
	t.Helper()
	if err == nil || !strings.Contains(err.Error(), text) || !errors.Is(err, syscall.ENOBUFS) {
		t.Fatalf("%s: %v, want ENOBUFS naming %q", what, err, text)
	}
}

// TestTransportSegmentsOnDemand: transport sessions are not limited to the
// app's first segment: new segments are added (and announced) while the app
// is below maxSegmentsPerApp, carry data both ways, and are removed when
// they empty. Before, the eighth session here failed with "no room for a
// fifo pair".
func TestTransportSegmentsOnDemand(t *testing.T) {
	eng := quotaEngine(t, session.Limits{})
	cfg := session.NamespaceConfig{Namespace: "team", Name: "segs", SegmentSize: 1 << 20,
		RxFifoSize: 64 << 10, TxFifoSize: 64 << 10, MaxSegmentsPerApp: 6, MaxSessionsPerApp: 100}
	sock, err := eng.AddNamespace(cfg)
	if err != nil {
		t.Fatal(err)
	}
	app := mustAttach(t, sock, "app")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const perSeg = 7 // (64 KiB + header) × 2 per pair in 1 MiB
	var conns []net.Conn
	for i := 0; i < 5*perSeg; i++ {
		c, err := app.Dial(ctx, "tcp", "192.0.2.9:4")
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	st, _ := eng.NamespaceStats(cfg.Key())
	if st.Segments < 5 || st.Segments > 6 {
		t.Fatalf("%d segments for %d sessions, want 5 or 6 (own + added)", st.Segments, len(conns))
	}
	// every session moves data through the transport, the ones in added
	// segments too (the transport's wake-ups reach the app and back)
	for i, c := range conns {
		msg := []byte(fmt.Sprintf("session %d", i))
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("session %d echoed %q, %v", i, got, err)
		}
	}
	// the cap: maxSegmentsPerApp counts the app's own segment
	for len(conns) < 6*perSeg+5 {
		c, err := app.Dial(ctx, "tcp", "192.0.2.9:4")
		if err != nil {
			wantQuota(t, "past maxSegmentsPerApp", err, "reached maxSegmentsPerApp (6) of app namespace team/segs")
			break
		}
		conns = append(conns, c)
	}
	if len(conns) < 6*perSeg-1 || len(conns) >= 6*perSeg+5 {
		t.Fatalf("%d sessions fitted in 6 segments", len(conns))
	}
	for _, c := range conns {
		c.Close()
	}
	waitUntil(t, "added segments removed once empty", func() bool {
		st, _ := eng.NamespaceStats(cfg.Key())
		return st.Segments == 1 && st.Sessions == 0
	})
	// and they come back on demand
	for i := 0; i < 2*perSeg; i++ {
		c, err := app.Dial(ctx, "tcp", "192.0.2.9:4")
		if err != nil {
			t.Fatalf("after release, session %d: %v", i, err)
		}
		defer c.Close()
	}
}

// TestListenerQuota: maxListenersPerApp bounds an app's listeners, and an
// unlisten gives the slot back.
func TestListenerQuota(t *testing.T) {
	eng := quotaEngine(t, session.Limits{})
	sock, err := eng.AddNamespace(session.NamespaceConfig{Namespace: "team", Name: "ln", MaxListenersPerApp: 3, SegmentSize: 1 << 20,
		RxFifoSize: 4096, TxFifoSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	app := mustAttach(t, sock, "many", func(o *client.Options) { o.Scope = client.ScopeLocal })
	var lns []net.Listener
	for i := 0; i < 3; i++ {
		ln, err := app.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
	}
	_, err = app.Listen("tcp", "127.0.0.1:0")
	wantQuota(t, "fourth listener", err, "app many reached maxListenersPerApp (3) of app namespace team/ln")
	lns[0].Close()
	if _, err := app.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatalf("after unlisten: %v", err)
	}
}

// TestWorkerQuota: maxWorkersPerApp bounds an app's workers.
func TestWorkerQuota(t *testing.T) {
	eng := quotaEngine(t, session.Limits{})
	sock, err := eng.AddNamespace(session.NamespaceConfig{Namespace: "team", Name: "wk", MaxWorkersPerApp: 2, SegmentSize: 1 << 20,
		RxFifoSize: 4096, TxFifoSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	mustAttach(t, sock, "two", func(o *client.Options) { o.Workers = 2 })
	_, err = quotaAttach(t, sock, "three", func(o *client.Options) { o.Workers = 3 })
	wantQuota(t, "third worker", err, "app three reached maxWorkersPerApp (2) of app namespace team/wk")
}

// TestNodeLimits: node-wide caps on apps and workers hold across app
// namespaces, are refused naming the limit, and are reported.
func TestNodeLimits(t *testing.T) {
	eng := quotaEngine(t, session.Limits{MaxApps: 3, MaxWorkers: 4})
	var socks []string
	for _, n := range []string{"a", "b"} {
		s, err := eng.AddNamespace(session.NamespaceConfig{Namespace: "team", Name: n, SegmentSize: 1 << 20, RxFifoSize: 4096, TxFifoSize: 4096})
		if err != nil {
			t.Fatal(err)
		}
		socks = append(socks, s)
	}
	mustAttach(t, socks[0], "one", func(o *client.Options) { o.Workers = 2 })
	mustAttach(t, socks[1], "two")
	_, err := quotaAttach(t, socks[1], "three", func(o *client.Options) { o.Workers = 2 })
	wantQuota(t, "fifth worker", err, "node limit nodeMaxWorkers (4) reached")
	// the refused app gave up after its first worker was set up: the engine
	// frees that worker when it sees the app's socket close
	waitUntil(t, "the refused app's first worker comes back", func() bool {
		st := eng.Limits()
		return st.Apps == 2 && st.Workers == 3
	})
	three := mustAttach(t, socks[1], "three")
	_, err = quotaAttach(t, socks[0], "four")
	wantQuota(t, "fourth app", err, "node limit nodeMaxApps (3) reached")
	st := eng.Limits()
	if st.Apps != 3 || st.Workers != 4 || st.Refusals[session.LimitNodeMaxApps] != 1 || st.Refusals[session.LimitNodeMaxWorkers] != 1 ||
		!strings.Contains(st.LastRefusal, "nodeMaxApps") || strings.Join(st.Reached(), ",") != "nodeMaxApps,nodeMaxWorkers" {
		t.Fatalf("limit status %+v, reached %v", st, st.Reached())
	}
	three.Close()
	waitUntil(t, "the detached app's slots come back", func() bool {
		st := eng.Limits()
		return st.Apps == 2 && st.Workers == 3
	})
	mustAttach(t, socks[0], "four")
}

// TestNodeThreadLimit: no worker is added while the engine's process has
// maxThreads OS threads (counted in /proc/self/task). Goroutines blocked
// in read(2) on a pipe, a thread each, stand for whatever else the process
// runs (the engine's own threads are bounded by its shards:
// TestShardsBoundThreads); once they are gone, workers are added again.
func TestNodeThreadLimit(t *testing.T) {
	threads := func() int {
		ents, err := os.ReadDir("/proc/self/task")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	max := threads() + 24
	eng := quotaEngine(t, session.Limits{MaxThreads: max})
	sock, err := eng.AddNamespace(session.NamespaceConfig{Namespace: "team", Name: "thr", SegmentSize: 1 << 20, RxFifoSize: 4096, TxFifoSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	mustAttach(t, sock, "below", func(o *client.Options) { o.Workers = 4 })
	var p [2]int
	if err := syscall.Pipe2(p[:], syscall.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(p[0])
	release := func() {
		if p[1] >= 0 {
			syscall.Close(p[1]) // every blocked read returns 0
			p[1] = -1
		}
	}
	defer release()
	// Each blocked goroutine holds a thread of its own, so the count
	// reaches the cap after at most max of them (fewer: they may take
	// idle threads first, and a check may overshoot by one or two).
	for threads() < max {
		started := make(chan struct{})
		go func() {
			// Locked and never unlocked: the thread ends with the
			// goroutine (idle threads would otherwise stay).
			runtime.LockOSThread()
			close(started)
			var b [1]byte
			_, _ = syscall.Read(p[0], b[:]) // a blocking pipe: holds its thread
		}()
		<-started
	}
	_, refused := quotaAttach(t, sock, "past", func(o *client.Options) { o.Workers = 4 })
	wantQuota(t, "a worker past the thread cap", refused, fmt.Sprintf("node limit nodeMaxThreads (%d) reached", max))
	if st := eng.Limits(); st.Refusals[session.LimitNodeMaxThreads] == 0 || st.Threads < max {
		t.Fatalf("limit status %+v", st)
	}
	release()
	waitUntil(t, "the blocked threads gone", func() bool { return threads() < max })
	mustAttach(t, sock, "after", func(o *client.Options) { o.Workers = 4 })
}

// redirectRules redirects connects to port 9000 to the app named target.
type redirectRules struct{}

func (redirectRules) Lookup(q session.RuleQuery) session.Verdict {
	if q.Dir == session.Connect && q.Remote.Port() == 9000 {
		return session.Verdict{Action: session.Redirect, Rule: "team/to-target", App: "target"}
	}
	return session.Verdict{}
}

// TestAppIdentity: an app name is unique per app namespace and host (a
// second attach under a taken name is refused, naming it); apps of other
// hosts may use the name, but a redirect to it goes to the app of the
// connecting app's host, else to the one that attached first — an app
// attaching later under the target's name cannot take its sessions.
func TestAppIdentity(t *testing.T) {
	dir, err := os.MkdirTemp("", "hsi")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	eng, err := session.New(session.Config{RunDir: dir, Rules: redirectRules{}, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	cfg := session.NamespaceConfig{Namespace: "team", Name: "id", SegmentSize: 1 << 20, RxFifoSize: 4096, TxFifoSize: 4096}
	if _, err := eng.AddNamespace(cfg); err != nil {
		t.Fatal(err)
	}
	pod := func(name string) string {
		s, err := eng.Serve(session.SocketConfig{Path: filepath.Join(dir, name+".sock"), Namespaces: []string{cfg.Key()}, Host: name})
		if err != nil {
			t.Fatal(err)
		}
		return s.Path()
	}
	podA, podB, podC := pod("pod-a"), pod("pod-b"), pod("pod-c")

	target := mustAttach(t, podA, "target")
	_, err = quotaAttach(t, podA, "target")
	if err == nil || !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), `app name "target" is taken in app namespace team/id on host pod-a`) {
		t.Fatalf("second attach under a taken name: %v", err)
	}
	// unnamed apps get unique names
	mustAttach(t, podA, "")
	mustAttach(t, podA, "")

	impostor := mustAttach(t, podB, "target") // another pod: its own name space
	tln, err := target.Listen("tcp", "127.0.0.1:7001")
	if err != nil {
		t.Fatal(err)
	}
	// the impostor listens on the very port connects are made to
	iln, err := impostor.Listen("tcp", "127.0.0.1:9000")
	if err != nil {
		t.Fatal(err)
	}
	who := func(ln net.Listener, name string) {
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Write([]byte(name))
				c.Close()
			}
		}()
	}
	who(tln, "target")
	who(iln, "impostor")
	ask := func(from *client.App) string {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := from.Dial(ctx, "tcp", "127.0.0.1:9000")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		return string(b)
	}
	if got := ask(mustAttach(t, podC, "client")); got != "target" {
		t.Fatalf("a redirect from a third pod reached %q, want the target that attached first", got)
	}
	if got := ask(mustAttach(t, podB, "client")); got != "impostor" {
		t.Fatalf("a redirect from pod-b reached %q, want pod-b's own app of that name", got)
	}
}

// TestBindConflicts: wildcard and specific listeners of one host conflict
// as Linux judges binds: 127.0.0.1:P cannot be listened on while another
// app holds 0.0.0.0:P and vice versa; [::]:P (dual stack) covers both
// families; other hosts keep their own wildcard ports.
func TestBindConflicts(t *testing.T) {
	eng := quotaEngine(t, session.Limits{})
	dir := t.TempDir()
	cfg := session.NamespaceConfig{Namespace: "team", Name: "bind", SegmentSize: 1 << 20, RxFifoSize: 4096, TxFifoSize: 4096}
	if _, err := eng.AddNamespace(cfg); err != nil {
		t.Fatal(err)
	}
	pod := func(name string) string {
		s, err := eng.Serve(session.SocketConfig{Path: filepath.Join(dir, name+".sock"), Namespaces: []string{cfg.Key()}, Host: name})
		if err != nil {
			t.Fatal(err)
		}
		return s.Path()
	}
	pa, pb := pod("a"), pod("b")
	local := func(o *client.Options) { o.Scope = client.ScopeLocal }
	x, y := mustAttach(t, pa, "x", local), mustAttach(t, pa, "y", local)
	other := mustAttach(t, pb, "z", local)
	listen := func(a *client.App, addr string) (net.Listener, error) { return a.Listen("tcp", addr) }
	must := func(ln net.Listener, err error) net.Listener {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return ln
	}
	refused := func(a *client.App, addr, holder string) {
		t.Helper()
		ln, err := listen(a, addr)
		if err == nil {
			ln.Close()
			t.Fatalf("%s was listened on while %s holds the port", addr, holder)
		}
		if !errors.Is(err, syscall.EADDRINUSE) || !strings.Contains(err.Error(), holder) {
			t.Fatalf("%s: %v, want EADDRINUSE naming %s", addr, err, holder)
		}
	}
	w := must(listen(x, "0.0.0.0:7100"))
	refused(y, "127.0.0.1:7100", "0.0.0.0:7100")
	refused(y, ":7100", "0.0.0.0:7100") // [::], dual stack
	must(listen(y, "[::1]:7100"))       // another family
	must(listen(other, "127.0.0.1:7100"))
	w.Close()
	s := must(listen(x, "127.0.0.1:7101"))
	refused(y, "0.0.0.0:7101", "127.0.0.1:7101")
	refused(y, ":7101", "127.0.0.1:7101")
	must(listen(y, "127.0.0.2:7101"))
	s.Close()
	must(listen(x, ":7102"))
	refused(y, "127.0.0.1:7102", "[::]:7102")
	refused(y, "[::1]:7102", "[::]:7102")
}

// TestPrivilegedPorts: ports below 1024 need an app its socket allows them;
// before, any app could listen on them (and the root agent bound them).
func TestPrivilegedPorts(t *testing.T) {
	eng := quotaEngine(t, session.Limits{})
	cfg := session.NamespaceConfig{Namespace: "team", Name: "priv", SegmentSize: 1 << 20, RxFifoSize: 4096, TxFifoSize: 4096}
	sock, err := eng.AddNamespace(cfg)
	if err != nil {
		t.Fatal(err)
	}
	local := func(o *client.Options) { o.Scope = client.ScopeLocal }
	plain := mustAttach(t, sock, "plain", local)
	_, err = plain.Listen("tcp", "127.0.0.1:80")
	if !errors.Is(err, syscall.EACCES) || !strings.Contains(err.Error(), "app plain may not listen on port 80: ports below 1024 need NET_BIND_SERVICE in its pod") {
		t.Fatalf("port 80 without the allowance: %v", err)
	}
	if _, err := plain.ListenPacket("udp", "127.0.0.1:53"); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("udp port 53 without the allowance: %v", err)
	}
	s, err := eng.Serve(session.SocketConfig{Path: filepath.Join(t.TempDir(), "p.sock"), Namespaces: []string{cfg.Key()}, Host: "p", PrivilegedPorts: true})
	if err != nil {
		t.Fatal(err)
	}
	priv := mustAttach(t, s.Path(), "priv", local)
	if _, err := priv.Listen("tcp", "127.0.0.1:80"); err != nil {
		t.Fatalf("port 80 with the allowance: %v", err)
	}
	if _, err := plain.Listen("tcp", "127.0.0.1:1024"); err != nil {
		t.Fatalf("port 1024: %v", err)
	}
}

// TestSocketAccess: an attach socket gets the mode and owner it was served
// with (0600 by default), not 0666.
func TestSocketAccess(t *testing.T) {
	testreq.Root(t) // chown
	eng := quotaEngine(t, session.Limits{})
	cfg := session.NamespaceConfig{Namespace: "team", Name: "acc", SegmentSize: 1 << 20, RxFifoSize: 4096, TxFifoSize: 4096}
	sock, err := eng.AddNamespace(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mode := func(p string) os.FileMode {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Mode().Perm()
	}
	if m := mode(sock); m != 0o600 {
		t.Fatalf("node socket mode %o, want 600", m)
	}
	gid := 4242
	s, err := eng.Serve(session.SocketConfig{Path: filepath.Join(t.TempDir(), "g.sock"), Namespaces: []string{cfg.Key()}, Mode: 0o660, GID: &gid})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 || fi.Sys().(*syscall.Stat_t).Gid != uint32(gid) {
		t.Fatalf("pod socket mode %o gid %d, want 660 and %d", fi.Mode().Perm(), fi.Sys().(*syscall.Stat_t).Gid, gid)
	}
}

// waitUntil polls cond: the engine releases asynchronously and has no
// event for it.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestSocketModeAcrossUsers: another user's process cannot open a 0600
// socket (before, every socket was 0666), and one of the socket's group
// can open a 0660 one. The dialer is this test binary re-run as nobody.
func TestSocketModeAcrossUsers(t *testing.T) {
	testreq.Root(t)
	if os.Getenv("HS_DIAL_AS_OTHER") != "" {
		t.Skip("helper run")
	}
	const nobody = 65534
	dir, err := os.MkdirTemp("", "hsu")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	// only the socket's own mode may decide: the directory and the binary
	// are open to everyone
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "helper.test")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	eng, err := session.New(session.Config{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	cfg := session.NamespaceConfig{Namespace: "team", Name: "users", SegmentSize: 1 << 20, RxFifoSize: 4096, TxFifoSize: 4096}
	if _, err := eng.AddNamespace(cfg); err != nil {
		t.Fatal(err)
	}
	gid := nobody
	private, err := eng.Serve(session.SocketConfig{Path: filepath.Join(dir, "private.sock"), Namespaces: []string{cfg.Key()}})
	if err != nil {
		t.Fatal(err)
	}
	group, err := eng.Serve(session.SocketConfig{Path: filepath.Join(dir, "group.sock"), Namespaces: []string{cfg.Key()}, Mode: 0o660, GID: &gid})
	if err != nil {
		t.Fatal(err)
	}
	dialAsNobody := func(path string) (string, error) {
		cmd := exec.Command(bin, "-test.run=^TestSocketModeHelper$", "-test.count=1")
		cmd.Env = append(os.Environ(), "HS_DIAL_AS_OTHER="+path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := dialAsNobody(private.Path()); err == nil || !strings.Contains(out, "permission denied") {
		t.Fatalf("nobody attached through a 0600 root socket: %v\n%s", err, out)
	}
	if out, err := dialAsNobody(group.Path()); err != nil {
		t.Fatalf("nobody could not attach through a 0660 socket of its group: %v\n%s", err, out)
	}
	// sockets are set up under a temporary name and renamed into place:
	// nothing else stays in the directory, and Close removes them
	sockets := func() []string {
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range ents {
			if e.Type()&os.ModeSocket != 0 || strings.HasPrefix(e.Name(), ".") {
				names = append(names, e.Name())
			}
		}
		return names
	}
	if got := strings.Join(sockets(), ","); got != "group.sock,private.sock" {
		t.Fatalf("socket directory holds %q", got)
	}
	private.Close()
	group.Close()
	if got := sockets(); len(got) != 0 {
		t.Fatalf("closed sockets left %q", got)
	}
}

// TestSocketModeHelper is the dialer of TestSocketModeAcrossUsers.
func TestSocketModeHelper(t *testing.T) {
	path := os.Getenv("HS_DIAL_AS_OTHER")
	if path == "" {
		t.Skip("run by TestSocketModeAcrossUsers")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	app, err := client.Attach(ctx, client.Options{Socket: path, Name: "other-user"})
	if err != nil {
		t.Fatal(err)
	}
	app.Close()
}
