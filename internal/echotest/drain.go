package echotest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"
)

// UndrainableClose checks what a transport does with a session its app
// closes while the peer reads nothing: once the transport's close timeout
// passed, the session is reset (the peer reads ECONNRESET, not a clean end
// of stream) and its fifos released (released reports that, polled for up
// to 10 s). ln is the peer's listener (a kernel TCP one: its receive
// buffer is made small, so a peer that does not read closes its window for
// good); dial opens the app's session to it.
func UndrainableClose(ln net.Listener, dial func(addr string) (net.Conn, error), released func() bool) error {
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		return fmt.Errorf("listener %T is not TCP", ln)
	}
	rc, err := tl.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) }); err != nil || serr != nil {
		return fmt.Errorf("SO_RCVBUF: %v, %v", err, serr)
	}
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	c, err := dial(ln.Addr().String())
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	srv := <-accepted
	if srv == nil {
		return errors.New("accept failed")
	}
	defer srv.Close()
	// Fill the fifo and the transport's send buffers: writes stop
	// succeeding.
	buf := make([]byte, 64<<10)
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	written := 0
	for {
		n, err := c.Write(buf)
		written += n
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				return fmt.Errorf("write: %w", err)
			}
			break
		}
	}
	if err := c.Close(); err != nil {
		return fmt.Errorf("close: %w", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !released() {
		if time.Now().After(deadline) {
			return fmt.Errorf("the session's fifos are still held 10s after the app closed it (%d bytes written)", written)
		}
		time.Sleep(10 * time.Millisecond)
	}
	_ = srv.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.Copy(io.Discard, srv)
	if !errors.Is(err, syscall.ECONNRESET) {
		return fmt.Errorf("peer read %d of %d bytes then %v, want ECONNRESET (the undrainable session reset)", got, written, err)
	}
	return nil
}
