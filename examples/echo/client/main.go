// Command client sends its arguments (or stdin) to an echo server over
// hoststack and prints what comes back.
package main

import (
	"context"
	"flag"
	"io"
	"log"
	"os"
	"strings"
	"time"

	"github.com/hoststack/hoststack/client"
)

func main() {
	socket := flag.String("socket", "", "engine attach socket (default $HOSTSTACK_SOCKET)")
	addr := flag.String("connect", "127.0.0.1:7007", "echo server address")
	secret := flag.String("secret", os.Getenv("HOSTSTACK_SECRET"), "app namespace secret, if any")
	timeout := flag.Duration("timeout", 10*time.Second, "overall timeout")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	app, err := client.Attach(ctx, client.Options{Socket: *socket, Name: "echo-client", Secret: *secret})
	if err != nil {
		log.Fatal(err)
	}
	defer app.Close()
	c, err := app.Dial(ctx, "tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	var in io.Reader = os.Stdin
	if flag.NArg() > 0 {
		in = strings.NewReader(strings.Join(flag.Args(), " ") + "\n")
	}
	go func() {
		io.Copy(c, in)
		c.(interface{ CloseWrite() error }).CloseWrite()
	}()
	if _, err := io.Copy(os.Stdout, c); err != nil {
		log.Fatal(err)
	}
}
