// Command v4app is an app built against the frozen client of wire version 4
// (internal/wirecompat/v4, generated): the compatibility tests run it against
// today's engine. It speaks on stdout in lines:
//
//	v4app echo SOCKET ADDR N ROUNDS   attaches, dials N sessions to ADDR
//	                                  (an echo server reached through the
//	                                  engine's transport), makes ROUNDS
//	                                  round trips on the first while the
//	                                  others sit idle, then one on each;
//	                                  prints "done N ROUNDS"
//
// A version-4 client has no transport event bits: it rings the transport
// doorbell without naming the session, and the engine must serve it all
// the same (by looking at every transport session of the app).
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"

	client "github.com/hoststack/hoststack/internal/wirecompat/v4/client"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "v4app:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 5 || args[0] != "echo" {
		return fmt.Errorf("usage: v4app echo SOCKET ADDR N ROUNDS")
	}
	n, err := strconv.Atoi(args[3])
	if err != nil {
		return err
	}
	rounds, err := strconv.Atoi(args[4])
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	app, err := client.Attach(ctx, client.Options{Socket: args[1], Name: "v4app-" + args[0]})
	if err != nil {
		return err
	}
	defer app.Close()
	conns := make([]net.Conn, n)
	for i := range conns {
		if conns[i], err = app.Dial(ctx, "tcp", args[2]); err != nil {
			return fmt.Errorf("session %d: %w", i, err)
		}
		defer conns[i].Close()
	}
	echo := func(c net.Conn, msg string) error {
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.WriteString(c, msg); err != nil {
			return err
		}
		b := make([]byte, len(msg))
		if _, err := io.ReadFull(c, b); err != nil {
			return err
		}
		if string(b) != msg {
			return fmt.Errorf("echoed %q, want %q", b, msg)
		}
		return nil
	}
	for r := range rounds {
		if err := echo(conns[0], fmt.Sprintf("round %d", r)); err != nil {
			return fmt.Errorf("session 0, round %d: %w", r, err)
		}
	}
	for i, c := range conns {
		if err := echo(c, fmt.Sprintf("session %d", i)); err != nil {
			return fmt.Errorf("session %d: %w", i, err)
		}
	}
	fmt.Printf("done %d %d\n", n, rounds)
	return nil
}
