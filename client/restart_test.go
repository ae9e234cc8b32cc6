//go:build !race

// Agent restarts with real processes: the engine runs in a child process
// that is killed with SIGKILL and started again on the same socket path;
// apps run in the test process and in other children. (Cross-process: kept
// out of -race, golang/go#16206.)

package client_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hoststack/hoststack/client"
)

// engineProc is an engine in a child process.
type engineProc struct {
	t    *testing.T
	dir  string
	cmd  *exec.Cmd
	sock string
}

func startEngineProc(t *testing.T, dir string) *engineProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"=engine", envRunDir+"="+dir)
	cmd.Stderr = childStderr()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	sc := bufio.NewScanner(out)
	if !sc.Scan() {
		t.Fatal("engine child exited before it was ready")
	}
	sock, ok := strings.CutPrefix(sc.Text(), "ready ")
	if !ok {
		t.Fatalf("engine child said %q", sc.Text())
	}
	return &engineProc{t: t, dir: dir, cmd: cmd, sock: sock}
}

// restart kills the engine with SIGKILL (no goodbye to anyone) and starts
// a new one on the same socket path.
func (p *engineProc) kill() {
	p.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		p.t.Fatal(err)
	}
	_ = p.cmd.Wait()
}

func (p *engineProc) restart() *engineProc {
	p.t.Helper()
	p.kill()
	n := startEngineProc(p.t, p.dir)
	if n.sock != p.sock {
		p.t.Fatalf("restarted engine serves %s, was %s", n.sock, p.sock)
	}
	return n
}

// engineEvents attaches with a channel that receives the app's engine
// losses (false) and re-attachments (true).
func attachWatching(t *testing.T, sock, name string) (*client.App, chan bool) {
	t.Helper()
	ev := make(chan bool, 16)
	app, err := client.Attach(context.Background(), client.Options{Socket: sock, Name: name,
		OnEngine: func(attached bool, err error) { ev <- attached }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close() })
	return app, ev
}

func waitEvent(t *testing.T, ev chan bool, want bool, what string) {
	t.Helper()
	select {
	case got := <-ev:
		if got != want {
			t.Fatalf("%s: got engine event attached=%v", what, got)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: no engine event within 30s", what)
	}
}

func echoOnce(t *testing.T, app *client.App, addr, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := app.Dial(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo: %q, %v", buf, err)
	}
}

// TestReattachAfterEngineKill: the agent's engine dies (SIGKILL) and comes
// back on the same socket; an app in another process re-attaches by itself
// and its listener, re-created on the same address, accepts new dials.
func TestReattachAfterEngineKill(t *testing.T) {
	eng := startEngineProc(t, t.TempDir())
	srv, addr := startChild(t, "restart-echo", eng.sock, "127.0.0.1:0")
	app, ev := attachWatching(t, eng.sock, "dialer")
	echoOnce(t, app, addr, "before")

	killed := time.Now()
	eng = eng.restart()
	waitEvent(t, ev, false, "dialer loses the engine")
	waitEvent(t, ev, true, "dialer re-attaches")
	t.Logf("re-attached %v after the SIGKILL (the new engine process included)", time.Since(killed))
	// the server child says when it is back, listener re-created
	for want := range []string{"lost", "attached"} {
		if !srv.lines.Scan() {
			t.Fatal("echo child exited during the restart")
		}
		if l := srv.lines.Text(); !strings.HasPrefix(l, []string{"lost", "attached"}[want]) {
			t.Fatalf("echo child said %q", l)
		}
	}
	echoOnce(t, app, addr, "after the restart")
	// and once more through a second restart
	eng.restart()
	waitEvent(t, ev, false, "second loss")
	waitEvent(t, ev, true, "second re-attach")
	for range 2 {
		srv.lines.Scan()
	}
	echoOnce(t, app, addr, "after the second restart")
}

// TestCutThroughSurvivesEngineKill: a cut-through session between two apps
// (this process and a child) keeps moving a hash-checked stream while the
// engine is killed, absent and restarted: its data and wake-ups pass between
// the two apps only. Closing it afterwards works without the old engine.
func TestCutThroughSurvivesEngineKill(t *testing.T) {
	eng := startEngineProc(t, t.TempDir())
	srv, addr := startChild(t, "hash-server", eng.sock, "127.0.0.1:0")
	app, ev := attachWatching(t, eng.sock, "sender")
	c, err := app.Dial(context.Background(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	src := rand.NewChaCha8([32]byte{7})
	total := int64(0)
	send := func(n int64) {
		t.Helper()
		k, err := io.Copy(io.MultiWriter(c, h), io.LimitReader(src, n))
		total += k
		if err != nil {
			t.Fatalf("write after %d bytes: %v", total, err)
		}
	}
	send(32 << 20)
	eng.kill()
	waitEvent(t, ev, false, "sender loses the engine")
	// no engine at all: 64 MiB through 1 MiB fifos means the child keeps
	// reading and waking this side
	start := time.Now()
	send(64 << 20)
	d := time.Since(start)
	t.Logf("64 MiB moved cut-through with no engine running in %v (%.0f MB/s)", d, 64*1.048576/d.Seconds())
	eng = startEngineProc(t, eng.dir)
	waitEvent(t, ev, true, "sender re-attaches")
	send(32 << 20)
	if err := c.(*client.Conn).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	reply, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("%d %x", total, h.Sum(nil)); string(reply) != want {
		t.Fatalf("child read %q, sent %q", reply, want)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// the child closed its side and detached from the new engine cleanly
	if err := srv.cmd.Wait(); err != nil {
		t.Fatalf("hash-server child: %v", err)
	}
	// and new sessions go through the new engine
	srv2, addr2 := startChild(t, "restart-echo", eng.sock, "127.0.0.1:0")
	_ = srv2
	echoOnce(t, app, addr2, "new session")
}

// TestTransportSessionResetOnEngineKill: a session through the engine's
// kernel transport ends with a reset naming the engine restart (the engine
// held its other end), and once re-attached the app dials out again.
func TestTransportSessionResetOnEngineKill(t *testing.T) {
	eng := startEngineProc(t, t.TempDir())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			k, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(k, k); k.Close() }()
		}
	}()
	app, ev := attachWatching(t, eng.sock, "outbound")
	echoOnce(t, app, ln.Addr().String(), "through the kernel")
	c, err := app.Dial(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	eng = eng.restart()
	waitEvent(t, ev, false, "loses the engine")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = c.Read(make([]byte, 1))
	if !errors.Is(err, syscall.ECONNRESET) || !strings.Contains(err.Error(), "engine restarted") {
		t.Fatalf("transport session after the engine died: %v, want ECONNRESET saying the engine restarted", err)
	}
	waitEvent(t, ev, true, "re-attaches")
	echoOnce(t, app, ln.Addr().String(), "through the new engine")
}
