package echotest

import (
	"fmt"
	"io"
	"net"
	"time"
)

// QuietGivesPagesBack checks that a transport gives back the pages of an
// app's rx fifo that a burst walked over, once the session has been quiet
// for a while (shm.TrimAfter) and moves again: the peer (accepted on ln,
// a kernel TCP listener) sends burst bytes, which the app reads through
// its session (dial), then a byte every 100 ms; resident reports the
// memory behind the app's fifo segments, polled for up to 15 s until it
// is below a quarter of what the burst left.
func QuietGivesPagesBack(ln net.Listener, dial func(addr string) (net.Conn, error), burst int, resident func() int64) error {
	stop := make(chan struct{})
	defer close(stop)
	sent := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			sent <- err
			return
		}
		defer c.Close()
		if _, err := c.Write(make([]byte, burst)); err != nil {
			sent <- err
			return
		}
		sent <- nil
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if _, err := c.Write([]byte{1}); err != nil {
					return
				}
			}
		}
	}()
	c, err := dial(ln.Addr().String())
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(c, make([]byte, burst)); err != nil {
		return fmt.Errorf("reading the burst: %w", err)
	}
	if err := <-sent; err != nil {
		return fmt.Errorf("peer: %w", err)
	}
	after := resident()
	if after < int64(burst)/4 {
		return fmt.Errorf("%d bytes resident after a burst of %d: the check cannot tell a trim from nothing", after, burst)
	}
	deadline := time.Now().Add(15 * time.Second)
	b := make([]byte, 1)
	for {
		if now := resident(); now < after/4 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d bytes still resident 15 s after the burst (%d right after it): the quiet session's rx pages were not given back", resident(), after)
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return fmt.Errorf("reading a trickle byte: %w", err)
		}
	}
}
