package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hoststack/hoststack/client"
)

func TestZeroCopyAndAddresses(t *testing.T) {
	_, sock := startEngine(t, testNS)
	srv := attach(t, sock, "server")
	cli := attach(t, sock, "client")
	ln, err := srv.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	la := ln.Addr().(*net.TCPAddr)
	if !la.IP.Equal(net.IPv6loopback) || la.Port == 0 {
		t.Fatalf("listener addr %v", la)
	}
	acc := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); acc <- c }()
	c, err := cli.Dial(context.Background(), "tcp6", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := <-acc
	defer s.Close()
	if s.RemoteAddr().String() != c.LocalAddr().String() || s.LocalAddr().String() != c.RemoteAddr().String() {
		t.Fatalf("addresses: client %v->%v server %v<-%v", c.LocalAddr(), c.RemoteAddr(), s.LocalAddr(), s.RemoteAddr())
	}
	// zero-copy: gather write, peek + consume
	hc := c.(*client.Conn)
	if _, err := hc.WriteBuffers([][]byte{[]byte("zero"), nil, []byte("-copy")}); err != nil {
		t.Fatal(err)
	}
	hs := s.(*client.Conn)
	got := ""
	for len(got) < 9 {
		a, b, err := hs.Peek()
		if err != nil {
			t.Fatal(err)
		}
		got += string(a) + string(b)
		if err := hs.Consume(len(a) + len(b)); err != nil {
			t.Fatal(err)
		}
	}
	if got != "zero-copy" {
		t.Fatalf("peeked %q", got)
	}
	hc.CloseWrite()
	if _, _, err := hs.Peek(); err != io.EOF {
		t.Fatalf("peek at end: %v", err)
	}
	if _, err := hc.Write([]byte("x")); !errors.Is(err, syscall.EPIPE) {
		t.Fatalf("write after CloseWrite: %v", err)
	}
	// the server can still write back after the client's half-close
	if _, err := s.Write([]byte("back")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "back" {
		t.Fatalf("%q %v", buf, err)
	}
}

func TestCancelAndClose(t *testing.T) {
	_, sock := startEngine(t, testNS)
	srv := attach(t, sock, "server")
	cli := attach(t, sock, "client")
	// a canceled dial
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := cli.Dial(ctx, "tcp", "127.0.0.1:9"); err == nil {
		t.Fatal("canceled dial succeeded")
	}
	// Accept unblocks on Close with net.ErrClosed
	ln, err := srv.Listen("tcp4", ":0")
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { _, err := ln.Accept(); errc <- err }()
	ln.Close()
	if err := <-errc; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("accept after close: %v", err)
	}
	if err := ln.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second close: %v", err)
	}
	// the port is free again
	ln, err = srv.Listen("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	// App.Close unblocks a Read on its sessions with net.ErrClosed, and the
	// peer sees the end of the stream
	go func() {
		c, err := ln.Accept()
		if err == nil {
			io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	c, err := cli.Dial(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	go func() { _, err := c.Read(make([]byte, 1)); errc <- err }()
	cli.Close()
	if err := <-errc; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read after App.Close: %v", err)
	}
	if _, err := cli.Dial(context.Background(), "tcp", ln.Addr().String()); err == nil {
		t.Fatal("dial after App.Close succeeded")
	}
	// a dial with an unresolvable host fails cleanly
	if _, err := srv.Dial(context.Background(), "udp", "127.0.0.1:1"); err == nil {
		t.Fatal("udp dial accepted")
	}
}

func TestLingerResetAndWriteTo(t *testing.T) {
	_, sock := startEngine(t, testNS)
	srv := attach(t, sock, "server")
	cli := attach(t, sock, "client")
	ln, err := srv.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	acc := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			acc <- c
		}
	}()
	// WriteTo: io.Copy out of the fifo
	c, err := cli.Dial(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-acc
	payload := bytes.Repeat([]byte("abc"), 100000)
	go func() { c.Write(payload); c.Close() }()
	var got bytes.Buffer
	if n, err := io.Copy(&got, s); err != nil || n != int64(len(payload)) || !bytes.Equal(got.Bytes(), payload) {
		t.Fatalf("WriteTo: %d %v", n, err)
	}
	s.Close()
	// SetLinger(0): an abortive close is a reset for the peer
	c, err = cli.Dial(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s = <-acc
	c.(*client.Conn).SetLinger(0)
	c.Close()
	if _, err := s.Read(make([]byte, 1)); !errors.Is(err, syscall.ECONNRESET) || !strings.Contains(err.Error(), "reset by peer app client") {
		t.Fatalf("read after peer's abortive close: %v", err)
	}
	s.Close()
}

// TestBlockedCallsWakeOnClose: a Write blocked on a full fifo returns EPIPE
// when another goroutine calls CloseWrite, and a blocked Read and Write
// return net.ErrClosed on Close — whether the call already sleeps on the
// worker or is still spinning (Options.Spin: it never sleeps, so only its
// own checks can see the change).
func TestBlockedCallsWakeOnClose(t *testing.T) {
	_, sock := startEngine(t, testNS)
	for _, spin := range []bool{false, true} {
		opt := func(o *client.Options) { o.Spin = spin }
		name := fmt.Sprintf("spin-%v", spin)
		srv, cli := attach(t, sock, "server-"+name, opt), attach(t, sock, "client-"+name, opt)
		ln, err := srv.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		accepted := make(chan net.Conn, 2)
		go func() {
			for {
				s, err := ln.Accept()
				if err != nil {
					return
				}
				accepted <- s // never read: the client's writes fill the fifo
			}
		}()
		dial := func() net.Conn {
			t.Helper()
			c, err := cli.Dial(context.Background(), "tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			return c
		}
		fillThenBlock := func(c net.Conn) chan error {
			errc := make(chan error, 1)
			go func() {
				buf := make([]byte, 64<<10)
				for {
					if _, err := c.Write(buf); err != nil {
						errc <- err
						return
					}
				}
			}()
			return errc
		}
		within := func(what string, errc chan error, want error) {
			t.Helper()
			select {
			case err := <-errc:
				if !errors.Is(err, want) {
					t.Fatalf("spin=%v: %s: %v, want %v", spin, what, err, want)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("spin=%v: %s: still blocked after 10s", spin, what)
			}
		}
		// Without spin, the Write must be asleep on the worker first.
		asleep := func() {
			t.Helper()
			for deadline := time.Now().Add(10 * time.Second); !spin && client.BlockedCalls(cli) == 0; {
				if time.Now().After(deadline) {
					t.Fatal("the Write never blocked")
				}
				time.Sleep(time.Millisecond)
			}
		}
		c := dial()
		s := <-accepted
		errc := fillThenBlock(c)
		asleep()
		if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
			t.Fatalf("spin=%v: CloseWrite: %v", spin, err)
		}
		within("blocked Write after CloseWrite", errc, syscall.EPIPE)
		rerr := make(chan error, 1)
		go func() { _, err := c.Read(make([]byte, 1)); rerr <- err }()
		c.Close()
		within("blocked Read after Close", rerr, net.ErrClosed)
		s.Close()
		c = dial()
		s = <-accepted
		errc = fillThenBlock(c)
		asleep()
		c.Close()
		within("blocked Write after Close", errc, net.ErrClosed)
		s.Close()
		ln.Close()
	}
}
