// Command server is an echo server on hoststack: it attaches to the engine
// ($HOSTSTACK_SOCKET or -socket), listens, and echoes every session back.
package main

import (
	"context"
	"flag"
	"io"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/hoststack/hoststack/client"
)

func main() {
	socket := flag.String("socket", "", "engine attach socket (default $HOSTSTACK_SOCKET)")
	addr := flag.String("listen", ":7007", "address to listen on")
	secret := flag.String("secret", os.Getenv("HOSTSTACK_SECRET"), "app namespace secret, if any")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	app, err := client.Attach(ctx, client.Options{Socket: *socket, Name: "echo-server", Secret: *secret})
	if err != nil {
		log.Fatal(err)
	}
	defer app.Close()
	ln, err := app.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("echo server listening on %v", ln.Addr())
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Fatal(err)
		}
		go func() {
			defer c.Close()
			n, err := io.Copy(c, c)
			log.Printf("%v: echoed %d bytes (%v)", c.RemoteAddr(), n, err)
		}()
	}
}
