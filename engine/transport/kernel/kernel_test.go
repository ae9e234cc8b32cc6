package kernel_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hoststack/hoststack/agent/apply"
	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/rules"
	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/engine/transport/kernel"
	"github.com/hoststack/hoststack/internal/echotest"
	"github.com/hoststack/hoststack/internal/netnstest"
)

// newTopo is two network namespaces joined by a veth pair: the app side A
// (10.99.0.1, the "pod" where the transport opens its sockets) and the server
// side B (10.99.0.2) where plain kernel sockets run.
func newTopo(t *testing.T) *netnstest.Pair { return netnstest.NewPair(t) }

// listenIn listens on addr inside the namespace at path.
func listenIn(t *testing.T, path, addr string) net.Listener {
	return netnstest.Listen(t, path, "tcp", addr)
}

type env struct {
	sock     string
	eng      *session.Engine
	app      *client.App
	resolves *atomic.Int32
	table    *rules.Table
}

func newEnv(t *testing.T, tp *netnstest.Pair) *env {
	t.Helper()
	// No test but the one of the close timer may depend on it: an hour
	// stands for never.
	return newEnvClosing(t, tp, time.Hour)
}

func newEnvClosing(t *testing.T, tp *netnstest.Pair, closeTimeout time.Duration) *env {
	t.Helper()
	return newEnvNS(t, tp, closeTimeout, session.NamespaceConfig{Namespace: "team", Name: "web", SegmentSize: 4 << 20})
}

func newEnvNS(t *testing.T, tp *netnstest.Pair, closeTimeout time.Duration, nscfg session.NamespaceConfig) *env {
	t.Helper()
	ev := &env{resolves: new(atomic.Int32), table: new(rules.Table)}
	tr := kernel.New(kernel.Options{CloseTimeout: closeTimeout, Netns: func(host string) (string, error) {
		ev.resolves.Add(1)
		if host != "" {
			return "", fmt.Errorf("unknown host %q", host)
		}
		return tp.A.Path(), nil
	}})
	eng, err := session.New(session.Config{RunDir: t.TempDir(), Transport: tr, Rules: apply.RuleLookup{Table: ev.table},
		Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	ev.eng = eng
	sock, err := eng.AddNamespace(nscfg)
	if err != nil {
		t.Fatal(err)
	}
	ev.sock = sock
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ev.app, err = client.Attach(ctx, client.Options{Socket: sock, Name: "app"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ev.app.Close() })
	return ev
}

func dial(t *testing.T, app *client.App, addr string) (net.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return app.Dial(ctx, "tcp", addr)
}

// TestCloseResetsWhatCannotDrain: an app closes a session whose peer reads
// nothing; what it wrote cannot leave, so once the close timeout passed the
// engine resets the socket (the peer reads ECONNRESET, not a clean end of
// stream) and releases the session's fifos.
func TestCloseResetsWhatCannotDrain(t *testing.T) {
	tp := newTopo(t)
	ln := listenIn(t, tp.B.Path(), "10.99.0.2:0")
	ev := newEnvClosing(t, tp, 300*time.Millisecond)
	key := session.NamespaceConfig{Namespace: "team", Name: "web"}.Key()
	if err := echotest.UndrainableClose(ln, func(addr string) (net.Conn, error) { return dial(t, ev.app, addr) }, func() bool {
		st, _ := ev.eng.NamespaceStats(key)
		return st.FifoBytesInUse == 0
	}); err != nil {
		t.Fatal(err)
	}
}

// slowReader reads r to the end in 4 KiB reads, pausing after each: a
// reader that keeps the fifo (or the socket) behind it full, so the
// transport waits for room in both directions. The pause only paces; the
// hash says whether every byte arrived in order.
func slowReader(r io.Reader) ([32]byte, int64, error) {
	h := sha256.New()
	buf := make([]byte, 4<<10)
	var n int64
	for {
		k, err := r.Read(buf)
		h.Write(buf[:k])
		n += int64(k)
		if err == io.EOF {
			var sum [32]byte
			copy(sum[:], h.Sum(nil))
			return sum, n, nil
		}
		if err != nil {
			return [32]byte{}, n, err
		}
		time.Sleep(20 * time.Microsecond)
	}
}

// TestSlowReadersBothWays: 8 MiB each way through the kernel transport to
// readers slower than their writers: the app's rx fifo fills (the transport
// waits for the app's kick) and the socket fills (it waits for the socket
// to drain), and every byte arrives.
func TestSlowReadersBothWays(t *testing.T) {
	tp := newTopo(t)
	ln := listenIn(t, tp.B.Path(), "10.99.0.2:0")
	ev := newEnv(t, tp)
	const size = 8 << 20
	data := make([]byte, size)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256(data)
	type result struct {
		sum [32]byte
		n   int64
		err error
	}
	srvGot := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvGot <- result{err: err}
			return
		}
		defer c.Close()
		werr := make(chan error, 1)
		go func() {
			_, err := c.Write(data)
			if err == nil {
				err = c.(*net.TCPConn).CloseWrite()
			}
			werr <- err
		}()
		sum, n, err := slowReader(c)
		if err == nil {
			err = <-werr
		}
		srvGot <- result{sum, n, err}
	}()
	c, err := dial(t, ev.app, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		werr <- err
	}()
	sum, n, err := slowReader(c)
	if err != nil || n != size || sum != want {
		t.Fatalf("app read %d of %d bytes (hash match %v): %v", n, size, sum == want, err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("app write: %v", err)
	}
	r := <-srvGot
	if r.err != nil || r.n != size || r.sum != want {
		t.Fatalf("server read %d of %d bytes (hash match %v): %v", r.n, size, r.sum == want, r.err)
	}
}

func TestEchoThroughThePodNetns(t *testing.T) {
	tp := newTopo(t)
	ln := listenIn(t, tp.B.Path(), "10.99.0.2:0")
	ev := newEnv(t, tp)
	peer := make(chan string, 1)
	srvErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		defer c.Close()
		peer <- c.RemoteAddr().String()
		if _, err := io.Copy(c, c); err != nil { // until the app's end of stream
			srvErr <- err
			return
		}
		srvErr <- c.(*net.TCPConn).CloseWrite()
	}()
	c, err := dial(t, ev.app, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.LocalAddr().(*net.TCPAddr).IP.String(); got != "10.99.0.1" {
		t.Errorf("local address %s, want the app-side 10.99.0.1", got)
	}
	if r := <-peer; !strings.HasPrefix(r, "10.99.0.1:") {
		t.Fatalf("server saw the connection from %s, want 10.99.0.1 (socket outside the app's netns?)", r)
	}
	data := make([]byte, 1<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	wErr := make(chan error, 1)
	go func() {
		_, err := c.Write(data)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		wErr <- err
	}()
	got, err := io.ReadAll(c) // ends at the server's half-close
	if err != nil {
		t.Fatalf("read: %v (after %d bytes)", err, len(got))
	}
	if err := <-wErr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := <-srvErr; err != nil {
		t.Fatalf("server: %v", err)
	}
	if sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("echo differs: %d bytes back of %d", len(got), len(data))
	}
}

func TestServerResetReachesTheApp(t *testing.T) {
	tp := newTopo(t)
	ln := listenIn(t, tp.B.Path(), "10.99.0.2:0")
	ev := newEnv(t, tp)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		buf := make([]byte, 5)
		_, _ = io.ReadFull(c, buf) // the app's hello, then abort
		_ = c.(*net.TCPConn).SetLinger(0)
		c.Close()
	}()
	c, err := dial(t, ev.app, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	_, err = io.ReadAll(c)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read after the server's reset: %v, want ECONNRESET", err)
	}
	if !strings.Contains(err.Error(), "reset") {
		t.Errorf("error does not say reset: %v", err)
	}
}

func TestNothingListeningIsRefused(t *testing.T) {
	tp := newTopo(t)
	ev := newEnv(t, tp)
	_, err := dial(t, ev.app, "10.99.0.2:1")
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial: %v, want ECONNREFUSED", err)
	}
	if !strings.Contains(err.Error(), "nothing listens on 10.99.0.2:1") {
		t.Errorf("message does not name the address: %v", err)
	}
}

func TestGlobalDenyRuleRefusesBeforeAnySocket(t *testing.T) {
	tp := newTopo(t)
	ln := listenIn(t, tp.B.Path(), "10.99.0.2:0")
	ev := newEnv(t, tp)
	set, _, err := rules.Compile([]rules.Rule{{Namespace: "team/web", Scope: rules.Global, Proto: rules.TCP, Action: rules.Deny,
		Name: "team/no-server", Local: netip.MustParsePrefix("0.0.0.0/0"), Remote: netip.MustParsePrefix("10.99.0.2/32")}})
	if err != nil {
		t.Fatal(err)
	}
	ev.table.Store(set)
	_, err = dial(t, ev.app, ln.Addr().String())
	if !errors.Is(err, syscall.EACCES) || !strings.Contains(err.Error(), "team/no-server") {
		t.Fatalf("dial: %v, want EACCES naming the rule", err)
	}
	if n := ev.resolves.Load(); n != 0 {
		t.Fatalf("the transport was asked for a netns %d times: a socket was about to be opened", n)
	}
	// the server saw nothing: a connect to it now is the first
	ev.table.Store(nil)
	acc := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			acc <- err.Error()
			return
		}
		buf := make([]byte, 3)
		_, _ = io.ReadFull(c, buf)
		c.Close()
		acc <- string(buf)
	}()
	c, err := dial(t, ev.app, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("one")); err != nil {
		t.Fatal(err)
	}
	if got := <-acc; !bytes.Equal([]byte(got), []byte("one")) {
		t.Fatalf("first connection the server accepted carried %q, want the allowed one", got)
	}
}

func TestAppCloseAndResetReachTheServer(t *testing.T) {
	tp := newTopo(t)
	ln := listenIn(t, tp.B.Path(), "10.99.0.2:0")
	ev := newEnv(t, tp)
	for _, abort := range []bool{false, true} {
		got := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				got <- err
				return
			}
			defer c.Close()
			b, err := io.ReadAll(c)
			if err == nil && string(b) != "bye" {
				err = fmt.Errorf("server read %q", b)
			}
			got <- err
		}()
		c, err := dial(t, ev.app, ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		if abort {
			if err := c.(interface{ SetLinger(int) error }).SetLinger(0); err != nil {
				t.Fatal(err)
			}
			c.Close()
			if err := <-got; !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("server after the app's reset: %v, want ECONNRESET", err)
			}
			continue
		}
		if _, err := c.Write([]byte("bye")); err != nil {
			t.Fatal(err)
		}
		c.Close()
		if err := <-got; err != nil {
			t.Fatalf("server after the app's close: %v, want the data then EOF", err)
		}
	}
}

// TestFifoPairsAreFreed runs many more sequential sessions than the app's
// segment holds fifo pairs: each finished session must give its pair back.
func TestFifoPairsAreFreed(t *testing.T) {
	tp := newTopo(t)
	ln := listenIn(t, tp.B.Path(), "10.99.0.2:0")
	ev := newEnv(t, tp) // 4 MiB segment, 2×64 KiB per pair: ~31 pairs
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	for i := 0; i < 100; i++ {
		c, err := dial(t, ev.app, ln.Addr().String())
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		msg := fmt.Sprintf("session %d", i)
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(c)
		if err != nil || string(b) != msg {
			t.Fatalf("session %d: read %q, %v", i, b, err)
		}
		c.Close()
	}
}

// TestAppDetachEndsItsSessions: an app that detaches with a session open
// ends it; the server sees the end of stream.
func TestAppDetachEndsItsSessions(t *testing.T) {
	tp := newTopo(t)
	ln := listenIn(t, tp.B.Path(), "10.99.0.2:0")
	ev := newEnv(t, tp)
	got := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- err
			return
		}
		defer c.Close()
		_, err = io.ReadAll(c)
		got <- err
	}()
	c, err := dial(t, ev.app, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	ev.app.Close()
	if err := <-got; err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("server: %v, want the end of stream or a reset", err)
	}
}

// TestEngineCloseWithBusySessions stops the engine while the server streams
// into a session: the app sees its session end, the server its connection
// reset or closed, and the fifos the transport still uses stay mapped until
// it lets go (the race detector and the absence of a fault check that).
func TestEngineCloseWithBusySessions(t *testing.T) {
	tp := newTopo(t)
	ln := listenIn(t, tp.B.Path(), "10.99.0.2:0")
	ev := newEnv(t, tp)
	srv := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srv <- err
			return
		}
		defer c.Close()
		buf := make([]byte, 32<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				srv <- err
				return
			}
		}
	}()
	c, err := dial(t, ev.app, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 1<<20)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	ev.eng.Close()
	for {
		if _, err := c.Read(buf); err != nil {
			break
		}
	}
	if err := <-srv; err == nil {
		t.Fatal("server kept writing")
	}
}

// TestAppCloseWithUnreadData: the app closes while the server fills its rx
// fifo; the transport lets go at once (the server's writes fail) instead of
// waiting for room that never comes.
func TestAppCloseWithUnreadData(t *testing.T) {
	tp := newTopo(t)
	ln := listenIn(t, tp.B.Path(), "10.99.0.2:0")
	ev := newEnv(t, tp)
	srv := make(chan error, 1)
	plenty := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srv <- err
			return
		}
		defer c.Close()
		buf := make([]byte, 32<<10)
		for n := 0; ; n += len(buf) {
			if n == 96<<10 {
				close(plenty) // more than the app's rx fifo holds
			}
			if _, err := c.Write(buf); err != nil {
				srv <- err
				return
			}
		}
	}()
	c, err := dial(t, ev.app, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	<-plenty
	c.Close()
	if err := <-srv; err == nil {
		t.Fatal("server kept writing")
	}
}

func TestIPv6(t *testing.T) {
	tp := newTopo(t)
	ln := listenIn(t, tp.B.Path(), "[fd99::2]:0")
	ev := newEnv(t, tp)
	peer := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			peer <- err.Error()
			return
		}
		defer c.Close()
		peer <- c.RemoteAddr().(*net.TCPAddr).IP.String()
		_, _ = io.Copy(c, c)
	}()
	c, err := dial(t, ev.app, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if r := <-peer; r != "fd99::1" {
		t.Fatalf("server saw %s, want fd99::1", r)
	}
	if _, err := c.Write([]byte("six")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 3)
	if _, err := io.ReadFull(c, b); err != nil || string(b) != "six" {
		t.Fatalf("echo %q, %v", b, err)
	}
}

// TestUnknownNetnsIsRefused: an app whose host's network namespace cannot
// be resolved gets no socket at all, and a message saying why.
func TestUnknownNetnsIsRefused(t *testing.T) {
	tp := newTopo(t)
	ev := newEnv(t, tp)
	sock, err := ev.eng.Serve(session.SocketConfig{Path: filepath.Join(t.TempDir(), "ghost.sock"), Host: "ghost", Namespaces: []string{"team/web"}})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	other, err := client.Attach(ctx, client.Options{Socket: sock.Path(), Name: "stranger"})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	_, err = other.Dial(ctx, "tcp", "10.99.0.2:80")
	if !errors.Is(err, syscall.ECONNREFUSED) || !strings.Contains(err.Error(), `no network namespace for app stranger (host ghost): unknown host "ghost"`) {
		t.Fatalf("dial: %v, want ECONNREFUSED naming the missing netns", err)
	}
	_, err = other.Listen("tcp", ":8080")
	if err == nil || !strings.Contains(err.Error(), "no network namespace for app stranger") {
		t.Fatalf("listen: %v, want the missing netns", err)
	}
}

// TestSessionsShareTheWakeEnd: a transport session costs the engine its
// socket and nothing else — no descriptor of its own to wake the app (the
// worker's flows share one) — and the sessions left after the first ones
// (including the one whose flow made the shared end) close keep waking
// the app; with all closed the descriptors return to where they started.
func TestSessionsShareTheWakeEnd(t *testing.T) {
	tp := newTopo(t)
	ln := listenIn(t, tp.B.Path(), "10.99.0.2:0")
	ev := newEnv(t, tp)
	echotest.Serve(ln)
	echo := func(i int, c net.Conn) { t.Helper(); echoOnce(t, c, fmt.Sprintf("session %d", i)) }
	// One session first: the worker's segment and doorbells exist from here.
	first, err := dial(t, ev.app, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	echo(0, first)
	before := countFDs(t)
	const n = 20
	conns := []net.Conn{first}
	for i := 1; i <= n; i++ {
		c, err := dial(t, ev.app, ln.Addr().String())
		if err != nil {
			t.Fatalf("session %d: %v", i, err)
		}
		echo(i, c)
		conns = append(conns, c)
	}
	// Per session: the engine's socket and the test server's accepted one.
	if got := countFDs(t) - before; got > 2*n+4 {
		t.Fatalf("%d sessions took %d descriptors in this process, want about %d (2 per session)", n, got, 2*n)
	}
	for _, c := range conns[:n/2] {
		c.Close()
	}
	for i, c := range conns[n/2:] {
		echo(n/2+i, c) // the reads wait for the engine's wake-ups
	}
	for _, c := range conns[n/2:] {
		c.Close()
	}
	deadline := time.Now().Add(10 * time.Second)
	for countFDs(t) > before-2 { // first's socket and its accepted peer are gone too
		if time.Now().After(deadline) {
			t.Fatalf("%d descriptors open after closing every session, %d before the 20", countFDs(t), before)
		}
		time.Sleep(10 * time.Millisecond) // polling the count, not synchronising
	}
}

func countFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestQuietSessionGivesPagesBack: the pages of an rx fifo that a burst
// walked over are given back once the session was quiet for a while and
// moves again.
func TestQuietSessionGivesPagesBack(t *testing.T) {
	tp := newTopo(t)
	ln := listenIn(t, tp.B.Path(), "10.99.0.2:0")
	ev := newEnvNS(t, tp, time.Hour, session.NamespaceConfig{Namespace: "team", Name: "web", SegmentSize: 64 << 20,
		RxFifoSize: 4 << 20, TxFifoSize: 4 << 20})
	if err := echotest.QuietGivesPagesBack(ln, func(addr string) (net.Conn, error) { return dial(t, ev.app, addr) }, 8<<20, func() int64 {
		st, _ := ev.eng.NamespaceStats("team/web")
		return st.SegmentResident
	}); err != nil {
		t.Fatal(err)
	}
}
