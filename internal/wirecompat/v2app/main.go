// Command v2app is an app built against the frozen client of wire version 2
// (internal/wirecompat/v2, generated): the compatibility tests run it against
// today's engine. It speaks on stdout in lines:
//
//	v2app serve SOCKET ADDR     listens, prints "ready <addr>", then for one
//	                            session reads to EOF and answers the SHA-256
//	                            of what it read (hex, one line)
//	v2app send SOCKET ADDR N    dials, writes N pseudo-random bytes, half-
//	                            closes, prints "sent <hex>" (its own digest)
//	                            and "got <hex>" (the server's answer)
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"time"

	client "github.com/hoststack/hoststack/internal/wirecompat/v2/client"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "v2app:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) < 3 {
		return fmt.Errorf("usage: v2app serve SOCKET ADDR | send SOCKET ADDR BYTES")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	app, err := client.Attach(ctx, client.Options{Socket: args[1], Name: "v2app-" + args[0]})
	if err != nil {
		return err
	}
	defer app.Close()
	switch args[0] {
	case "serve":
		ln, err := app.Listen("tcp", args[2])
		if err != nil {
			return err
		}
		fmt.Printf("ready %s\n", ln.Addr())
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		h := sha256.New()
		if _, err := io.Copy(h, c); err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if _, err := fmt.Fprintf(c, "%x\n", h.Sum(nil)); err != nil {
			return err
		}
		return c.Close()
	case "send":
		if len(args) < 4 {
			return fmt.Errorf("send needs a byte count")
		}
		n, err := strconv.ParseInt(args[3], 10, 64)
		if err != nil {
			return err
		}
		c, err := app.Dial(ctx, "tcp", args[2])
		if err != nil {
			return err
		}
		defer c.Close()
		h := sha256.New()
		r := io.LimitReader(rand.NewChaCha8([32]byte{2}), n)
		if _, err := io.Copy(io.MultiWriter(c, h), r); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
			return err
		}
		fmt.Printf("sent %s\n", hex.EncodeToString(h.Sum(nil)))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return fmt.Errorf("read the digest: %w", err)
		}
		fmt.Printf("got %s", line)
		return nil
	}
	return fmt.Errorf("unknown mode %q", args[0])
}
