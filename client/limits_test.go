package client_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/session"
)

func echoServer(t testing.TB, ln net.Listener) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(c, c)
				c.Close()
			}()
		}
	}()
}

func TestSecret(t *testing.T) {
	cfg := testNS
	cfg.Secret = "open sesame"
	_, sock := startEngine(t, cfg)
	ctx := context.Background()
	_, err := client.Attach(ctx, client.Options{Socket: sock, Name: "x", Secret: "wrong"})
	if err == nil || !strings.Contains(err.Error(), "wrong secret for app namespace team/default") || !errors.Is(err, syscall.EACCES) {
		t.Fatalf("wrong secret: %v", err)
	}
	_, err = client.Attach(ctx, client.Options{Socket: sock, Name: "x"})
	if err == nil || !strings.Contains(err.Error(), "requires a secret") {
		t.Fatalf("no secret: %v", err)
	}
	attach(t, sock, "ok", func(o *client.Options) { o.Secret = "open sesame" })
	_, err = client.Attach(ctx, client.Options{Socket: sock, Name: "x", Namespace: "team/other", Secret: "open sesame"})
	if err == nil || !strings.Contains(err.Error(), "not served by this attach socket") {
		t.Fatalf("other namespace: %v", err)
	}
}

func TestQuotas(t *testing.T) {
	cfg := testNS
	cfg.MaxApps = 2
	cfg.MaxSessionsPerApp = 3
	cfg.SegmentSize = 2*(64<<10+192) + 4096 // one fifo pair per segment
	cfg.MaxSegmentsPerApp = 3               // own + two cut-through segments
	e, sock := startEngine(t, cfg)
	srv := attach(t, sock, "server")
	cli := attach(t, sock, "client")
	_, err := client.Attach(context.Background(), client.Options{Socket: sock, Name: "third"})
	if err == nil || !strings.Contains(err.Error(), "maxApps (2)") || !errors.Is(err, syscall.ENOBUFS) {
		t.Fatalf("maxApps: %v", err)
	}
	ln, err := srv.Listen("tcp", "127.0.0.1:7000")
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, ln)
	var conns []net.Conn
	for i := 0; i < 2; i++ {
		c, err := cli.Dial(context.Background(), "tcp", "127.0.0.1:7000")
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	_, err = cli.Dial(context.Background(), "tcp", "127.0.0.1:7000")
	if err == nil || !strings.Contains(err.Error(), "maxSegmentsPerApp (3)") {
		t.Fatalf("segments: %v", err)
	}
	t.Log(err)
	// free one pair: the segment stays (both apps alive) and is reused
	conns[0].Close()
	waitStats(t, e, cfg.Key(), "one session released", func(st session.NamespaceStats) bool { return st.Sessions == 2 })
	c, err := cli.Dial(context.Background(), "tcp", "127.0.0.1:7000")
	if err != nil {
		t.Fatalf("dial into the freed pair: %v", err)
	}
	conns[0] = c
	cfg.SegmentSize = 8 << 20
	if err := e.UpdateNamespace(cfg); err != nil {
		t.Fatal(err)
	}
	// sessions: client holds 2, a third needs a new segment of the new size
	c, err = cli.Dial(context.Background(), "tcp", "127.0.0.1:7000")
	if err == nil || !strings.Contains(err.Error(), "maxSegmentsPerApp (3)") {
		t.Fatalf("segments after update: %v", err)
	}
	cfg.MaxSegmentsPerApp = 4
	e.UpdateNamespace(cfg)
	c, err = cli.Dial(context.Background(), "tcp", "127.0.0.1:7000")
	if err != nil {
		t.Fatal(err)
	}
	conns = append(conns, c)
	_, err = cli.Dial(context.Background(), "tcp", "127.0.0.1:7000")
	if err == nil || !strings.Contains(err.Error(), "maxSessionsPerApp (3)") || !errors.Is(err, syscall.ENOBUFS) {
		t.Fatalf("sessions: %v", err)
	}
	t.Log(err)
	for _, c := range conns {
		c.Close()
	}
}

func TestDetachReaps(t *testing.T) {
	e, sock := startEngine(t, testNS)
	key := testNS.Key()
	srv := attach(t, sock, "server")
	cli := attach(t, sock, "client")
	ln, err := srv.Listen("tcp", "127.0.0.1:7001")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	var conns []net.Conn
	for i := 0; i < 4; i++ {
		c, err := cli.Dial(context.Background(), "tcp", "127.0.0.1:7001")
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		<-accepted
	}
	st, _ := e.NamespaceStats(key)
	if st.Apps != 2 || st.Sessions != 8 || st.Listeners != 1 || st.Segments != 3 {
		t.Fatalf("before detach: %+v", st)
	}
	// The server detaches without closing anything.
	srv.Close()
	st = waitStats(t, e, key, "server reaped", func(st session.NamespaceStats) bool {
		return st.Apps == 1 && st.Listeners == 0 && st.Sessions == 4
	})
	// The client's sessions end: EOF (the server's sessions were closed by
	// App.Close) and writes fail.
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != io.EOF && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("read after peer detach: %v", err)
		}
		c.Close()
	}
	st = waitStats(t, e, key, "memory released", func(st session.NamespaceStats) bool {
		return st.Sessions == 0 && st.Segments == 1 && st.FifoBytesInUse == 0
	})
	if _, err := cli.Dial(context.Background(), "tcp", "127.0.0.1:7001"); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial after listener reaped: %v", err)
	}
	cli.Close()
	waitStats(t, e, key, "all reaped", func(st session.NamespaceStats) bool {
		return st.Apps == 0 && st.Segments == 0 && st.QueueBytes == 0 && st.AppsReaped == 2
	})
}

// TestConcurrentSessions opens 1,000 sessions at once between two apps and
// moves data on all of them concurrently.
func TestConcurrentSessions(t *testing.T) {
	const N = 1000
	cfg := testNS
	cfg.RxFifoSize, cfg.TxFifoSize = 16<<10, 16<<10
	cfg.SegmentSize = 16 << 20
	e, sock := startEngine(t, cfg)
	srv := attach(t, sock, "server", func(o *client.Options) { o.Workers = 2 })
	cli := attach(t, sock, "client", func(o *client.Options) { o.Workers = 2 })
	ln, err := srv.Listen("tcp", "[::]:7002")
	if err != nil {
		t.Fatal(err)
	}
	echoServer(t, ln)
	conns := make([]net.Conn, N)
	var wg sync.WaitGroup
	errs := make(chan error, N)
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := cli.Dial(context.Background(), "tcp", "127.0.0.1:7002")
			if err != nil {
				errs <- err
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if st, _ := e.NamespaceStats(cfg.Key()); st.Sessions != 2*N {
		t.Fatalf("sessions %d, want %d", st.Sessions, 2*N)
	}
	errs = make(chan error, N)
	for _, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			msg := make([]byte, 8<<10)
			rand.Read(msg)
			go c.Write(msg)
			got := make([]byte, len(msg))
			c.SetReadDeadline(time.Now().Add(30 * time.Second))
			if _, err := io.ReadFull(c, got); err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(got, msg) {
				errs <- errors.New("echo mismatch")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	waitStats(t, e, cfg.Key(), "sessions released", func(st session.NamespaceStats) bool {
		return st.Sessions == 0 && st.FifoBytesInUse == 0
	})
}
