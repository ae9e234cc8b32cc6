package client_test

import (
	"context"
	"errors"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/hoststack/hoststack/engine/session"
)

func TestDialAcceptEcho(t *testing.T) {
	e, sock := startEngine(t, testNS)
	srv := attach(t, sock, "server")
	cli := attach(t, sock, "client")
	ln, err := srv.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	ctx := context.Background()
	c, err := cli.Dial(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("hello, shared memory")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	if string(buf) != string(msg) {
		t.Fatalf("got %q", buf)
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(buf); err != io.EOF {
		t.Fatalf("after CloseWrite: %d %v", n, err)
	}
	c.Close()
	if _, ok := c.LocalAddr().(*net.TCPAddr); !ok {
		t.Fatal("local addr type")
	}
	waitStats(t, e, testNS.Key(), "sessions released and bytes counted", func(st session.NamespaceStats) bool {
		return st.Sessions == 0 && st.Bytes == 2*uint64(len(msg))
	})
	// nothing listening
	_, err = cli.Dial(ctx, "tcp", "127.0.0.1:1")
	if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("dial closed port: %v", err)
	}
	t.Log(err)
	// deadline
	c, err = cli.Dial(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := c.Read(buf); !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
		t.Fatalf("read with deadline: %v", err)
	}
	c.Close()
	if _, err := c.Read(buf); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
