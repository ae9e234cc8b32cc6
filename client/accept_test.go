package client_test

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/transport/kernel"
)

// TestAcceptsOnEveryWorker: the sessions of a listener of an app with 4
// workers are accepted on all 4 (cut-through from another app, and from
// kernel sockets through the kernel transport), each Conn bound to the
// worker that owns it and carrying data both ways.
func TestAcceptsOnEveryWorker(t *testing.T) {
	_, sock := startEngineWith(t, testNS, kernel.New(kernel.Options{}))
	const workers = 4
	srv := attach(t, sock, "srv", func(o *client.Options) { o.Workers = workers })
	cli := attach(t, sock, "cli")
	ln, err := srv.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	for _, c := range []struct {
		name string
		dial func() (net.Conn, error)
	}{
		{"cut-through", func() (net.Conn, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return cli.Dial(ctx, "tcp", ln.Addr().String())
		}},
		{"kernel transport", func() (net.Conn, error) {
			return net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			seen := map[uint32]int{}
			var open []net.Conn
			defer func() {
				for _, x := range open {
					x.Close()
				}
			}()
			for i := 0; i < 4*workers; i++ {
				d, err := c.dial()
				if err != nil {
					t.Fatal(err)
				}
				open = append(open, d)
				s, err := ln.Accept()
				if err != nil {
					t.Fatal(err)
				}
				open = append(open, s)
				seen[client.ConnWorker(s)]++
				// the session works through the worker that owns it
				if _, err := d.Write([]byte("ping")); err != nil {
					t.Fatal(err)
				}
				b := make([]byte, 4)
				if _, err := io.ReadFull(s, b); err != nil || string(b) != "ping" {
					t.Fatalf("read %q, %v", b, err)
				}
				if _, err := s.Write([]byte("pong")); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(d, b); err != nil || string(b) != "pong" {
					t.Fatalf("read %q, %v", b, err)
				}
			}
			if len(seen) != workers {
				t.Fatalf("sessions per worker %v: want all %d workers", seen, workers)
			}
		})
	}
}
