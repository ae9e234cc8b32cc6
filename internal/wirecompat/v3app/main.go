// Command v3app is an app built against the frozen client of wire version 3
// (internal/wirecompat/v3, generated): the compatibility tests run it against
// today's engine. It speaks on stdout in lines:
//
//	v3app serve SOCKET ADDR WORKERS N   attaches with WORKERS workers,
//	                                    listens, prints "ready <addr>",
//	                                    then serves N sessions one after
//	                                    the other: echoes a line back and
//	                                    closes; prints "served N" at the end
//
// A version-3 client takes a listener's sessions only on the worker that
// listened: the engine must not spread them over its other workers.
package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	client "github.com/hoststack/hoststack/internal/wirecompat/v3/client"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "v3app:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 5 || args[0] != "serve" {
		return fmt.Errorf("usage: v3app serve SOCKET ADDR WORKERS N")
	}
	workers, err := strconv.Atoi(args[3])
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(args[4])
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	app, err := client.Attach(ctx, client.Options{Socket: args[1], Name: "v3app-" + args[0], Workers: workers})
	if err != nil {
		return err
	}
	defer app.Close()
	ln, err := app.Listen("tcp", args[2])
	if err != nil {
		return err
	}
	fmt.Printf("ready %s\n", ln.Addr())
	for i := 0; i < n; i++ {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return fmt.Errorf("session %d: read: %w", i, err)
		}
		if _, err := c.Write([]byte(line)); err != nil {
			return fmt.Errorf("session %d: write: %w", i, err)
		}
		c.Close()
	}
	fmt.Printf("served %d\n", n)
	return nil
}
