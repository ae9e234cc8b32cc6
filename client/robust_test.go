package client_test

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/session"
)

// TestSelfConnect: an app dials its own listener (one worker on both ends of
// a cut-through segment).
func TestSelfConnect(t *testing.T) {
	e, sock := startEngine(t, testNS)
	app := attach(t, sock, "self")
	ln, err := app.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, ln)
	for i := 0; i < 3; i++ {
		c, err := app.Dial(context.Background(), "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("me"))
		b := make([]byte, 2)
		if _, err := io.ReadFull(c, b); err != nil || string(b) != "me" {
			t.Fatalf("%q %v", b, err)
		}
		c.Close()
	}
	waitStats(t, e, testNS.Key(), "released", func(st session.NamespaceStats) bool {
		return st.Sessions == 0 && st.Segments == 2
	})
}

// TestEngineShutdownSeenByApps: Engine.Close tells the apps; with
// re-attaching off their sessions fail with a reset naming the reason, and
// App.Close still works. (TestCutThroughSurvivesEngineStop: the default.)
func TestEngineShutdownSeenByApps(t *testing.T) {
	e, sock := startEngine(t, testNS)
	noReattach := func(o *client.Options) { o.NoReattach = true }
	srv := attach(t, sock, "server", noReattach)
	cli := attach(t, sock, "client", noReattach)
	ln, err := srv.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	acc := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); acc <- c }()
	c, err := cli.Dial(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	<-acc
	errc := make(chan error, 1)
	go func() { _, err := c.Read(make([]byte, 1)); errc <- err }()
	e.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("read during engine shutdown: %v", err)
		}
		t.Log(err)
	case <-time.After(10 * time.Second):
		t.Fatal("read not unblocked by engine shutdown")
	}
	if _, err := ln.Accept(); err == nil {
		t.Fatal("accept after engine shutdown")
	}
	if _, err := cli.Dial(context.Background(), "tcp", ln.Addr().String()); err == nil {
		t.Fatal("dial after engine shutdown")
	}
	cli.Close()
	srv.Close()
}
