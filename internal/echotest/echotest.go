// Package echotest is the echo server and client check the transport and
// agent tests share: sessions echoed to their end of stream, messages
// checked byte for byte; and the transports' shared checks of a session
// that cannot drain (UndrainableClose) and of a quiet session's pages
// (QuietGivesPagesBack).
package echotest

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"time"
)

// Serve echoes every session of ln until its end of stream (then
// half-closes) and reports each peer's address; it returns when ln closes.
// Up to 64 unread peers are kept; later ones are not reported.
func Serve(ln net.Listener) <-chan net.Addr {
	peers := make(chan net.Addr, 64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			select {
			case peers <- c.RemoteAddr():
			default:
			}
			go func() {
				defer c.Close()
				// Wrapped so io.Copy cannot splice: splice's pipe pool
				// would show in tests that count descriptors.
				_, _ = io.Copy(struct{ io.Writer }{c}, struct{ io.Reader }{c})
				if cw, ok := c.(interface{ CloseWrite() error }); ok {
					_ = cw.CloseWrite()
				}
			}()
		}
	}()
	return peers
}

// RoundTrip writes msg on c, half-closes, reads to the end of stream and
// checks it got msg back; the whole exchange must end within limit. It
// closes c.
func RoundTrip(c net.Conn, msg []byte, limit time.Duration) error {
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(limit)); err != nil {
		return err
	}
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(msg)
		if err == nil {
			err = c.(interface{ CloseWrite() error }).CloseWrite()
		}
		werr <- err
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("read after %d bytes: %w", len(got), err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo: %d bytes back of %d, or different", len(got), len(msg))
	}
	return nil
}
