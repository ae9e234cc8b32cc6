package client_test

import (
	"context"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/session"
)

// TestCutThroughSurvivesEngineStop: an engine that stops cleanly (the
// agent's SIGTERM before an upgrade) tells its apps but leaves their
// cut-through sessions alone; the apps re-attach to the next engine on the
// same socket, and the session still carries data both ways, then closes.
func TestCutThroughSurvivesEngineStop(t *testing.T) {
	dir := t.TempDir()
	start := func() *session.Engine {
		e, err := session.New(session.Config{RunDir: filepath.Join(dir, "run"), Logf: t.Logf})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.AddNamespace(testNS); err != nil {
			t.Fatal(err)
		}
		return e
	}
	e := start()
	sock := filepath.Join(dir, "run", testNS.Namespace+"_"+testNS.Name+".sock")
	evs := make(chan bool, 8)
	watch := func(o *client.Options) { o.OnEngine = func(up bool, _ error) { evs <- up } }
	srv := attach(t, sock, "srv", watch)
	cli := attach(t, sock, "cli", watch)
	ln, err := srv.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c, err := cli.Dial(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
	for range 2 {
		if up := <-evs; up {
			t.Fatal("re-attached before losing the engine")
		}
	}
	roundTrip := func(what string) {
		t.Helper()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		s.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte(what)); err != nil {
			t.Fatalf("%s: write: %v", what, err)
		}
		b := make([]byte, len(what))
		if _, err := io.ReadFull(s, b); err != nil || string(b) != what {
			t.Fatalf("%s: server read %q, %v", what, b, err)
		}
		if _, err := s.Write(b); err != nil {
			t.Fatalf("%s: echo: %v", what, err)
		}
		if _, err := io.ReadFull(c, b); err != nil || string(b) != what {
			t.Fatalf("%s: client read %q, %v", what, b, err)
		}
	}
	roundTrip("no engine")
	e = start()
	defer e.Close()
	for range 2 {
		select {
		case up := <-evs:
			if !up {
				t.Fatal("lost the engine twice")
			}
		case <-time.After(30 * time.Second):
			t.Fatal("no re-attach within 30s")
		}
	}
	roundTrip("next engine")
	// the listener is back too
	c2, err := cli.Dial(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c2.Close()
	// closing the old session needs no engine: EOF travels in the fifo
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	s.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := s.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("server read after the client closed: %d, %v", n, err)
	}
	s.Close()
}
