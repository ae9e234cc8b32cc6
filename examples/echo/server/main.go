// Command server is the echo server of the hoststack example: it attaches to
// the engine, listens, and echoes every byte back. Peers on the same node in
// the same app namespace reach it through a cut-through session: the bytes
// move through shared-memory FIFOs, not the kernel.
//
//	HOSTSTACK_SOCKET=/run/hoststack/default/echo/session.sock server -listen 127.0.0.1:7000
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/hoststack/hoststack/client"
)

func main() {
	socket := flag.String("socket", os.Getenv(client.EnvSocket), "engine attach socket (default $HOSTSTACK_SOCKET)")
	listen := flag.String("listen", "127.0.0.1:7000", "address to listen on")
	kernel := flag.Bool("kernel", false, "listen with a plain kernel socket instead of hoststack (a server outside the cluster)")
	tlsPair := flag.String("tls", "", "serve TLS with this CertKeyPair (the engine terminates it; the app reads plaintext)")
	name := flag.String("name", "echo-server", "app name to attach with (unique per pod and AppNamespace)")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("echo-server: ")

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var ln net.Listener
	var err error
	if *kernel {
		ln, err = net.Listen("tcp", *listen)
	} else {
		var app *client.App
		app, err = client.Attach(ctx, client.Options{Socket: *socket, Name: *name})
		if err != nil {
			log.Fatalf("attach: %v", err)
		}
		defer app.Close()
		if *tlsPair != "" {
			ln, err = app.ListenTLS("tcp", *listen, client.TLSConfig{CertKeyPair: *tlsPair})
		} else {
			ln, err = app.Listen("tcp", *listen)
		}
	}
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	// The line a supervisor (or `make demo`) waits for.
	fmt.Printf("listening on %s\n", ln.Addr())
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			log.Printf("accept: %v", err)
			return
		}
		go func() {
			defer c.Close()
			n, err := io.Copy(c, c)
			log.Printf("session from %s: echoed %d bytes (%v)", c.RemoteAddr(), n, errOrEOF(err))
		}()
	}
}

func errOrEOF(err error) any {
	if err == nil {
		return "EOF"
	}
	return err
}
