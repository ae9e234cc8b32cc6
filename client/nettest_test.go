package client_test

import (
	"context"
	"net"
	"testing"

	"golang.org/x/net/nettest"
)

// TestNetConn runs x/net's conformance suite for net.Conn over cut-through
// sessions between two apps.
func TestNetConn(t *testing.T) {
	_, sock := startEngine(t, testNS)
	srv := attach(t, sock, "server")
	cli := attach(t, sock, "client")
	ln, err := srv.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
		acc := make(chan net.Conn, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				acc <- nil
				return
			}
			acc <- c
		}()
		c1, err = cli.Dial(context.Background(), "tcp", ln.Addr().String())
		if err != nil {
			return nil, nil, nil, err
		}
		c2 = <-acc
		stop = func() { c1.Close(); c2.Close() }
		return c1, c2, stop, nil
	})
}
