// Package stream moves a transport session's bytes between the app's fifos
// and the network, following the fifo waiting-flag protocol, until both
// directions ended, either side failed, or the app released the session.
// Poller serves plain kernel TCP sockets from a few event loops (no
// goroutine per session); Pump serves any net.Conn (a TLS connection, a
// userspace stack's connection) with one goroutine per direction.
package stream

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/wire"
)

// Conn is what the pump needs of a connection: a net.Conn that can
// half-close (TCP, TLS).
type Conn interface {
	net.Conn
	CloseWrite() error
}

// Options configure Pump.
type Options struct {
	// CloseTimeout bounds how long what the app wrote before closing may
	// take to leave; default 30s.
	CloseTimeout time.Duration
	// Name is the transport, for messages ("kernel transport").
	Name string
	// Abort, if set, makes the coming Close a reset (SO_LINGER 0).
	Abort func()
}

var errStopped = errors.New("stopped")

// Pump moves bytes both ways until both directions ended, either side
// failed, or the app released the session; then it finishes the flow.
func Pump(f *session.Flow, c Conn, peer netip.AddrPort, o Options) {
	if o.CloseTimeout <= 0 {
		o.CloseTimeout = 30 * time.Second
	}
	stop := make(chan struct{})
	var stopOnce sync.Once
	halt := func(reset bool) {
		stopOnce.Do(func() {
			close(stop)
			if reset && o.Abort != nil {
				o.Abort()
			}
			c.Close()
		})
	}
	// One kick channel per direction: a wake-up must reach both. The loop
	// below fans the flow's kicks out (no goroutine of its own for that).
	kr, kw := make(chan struct{}, 1), make(chan struct{}, 1)
	type result struct {
		toApp bool
		err   error
	}
	done := make(chan result, 2)
	go func() { done <- result{true, toApp(f, c, kr, stop)} }()
	go func() { done <- result{false, fromApp(f, c, kw, stop)} }()
	var first error
	appClosed := f.AppClosed()
	var drain <-chan time.Time
	for pending := 2; pending > 0; {
		select {
		case <-f.Kick():
			for _, k := range []chan struct{}{kr, kw} {
				select {
				case k <- struct{}{}:
				default:
				}
			}
		case r := <-done:
			pending--
			if r.err != nil && first == nil {
				if !errors.Is(r.err, errStopped) {
					first = r.err
				}
				halt(true)
			}
		case <-appClosed:
			appClosed = nil
			if f.AppReset() {
				halt(true)
				break
			}
			// the app closed: it reads no more; what it wrote drains
			_ = c.SetReadDeadline(time.Unix(1, 0))
			timer := time.NewTimer(o.CloseTimeout)
			defer timer.Stop()
			drain = timer.C
		case <-drain:
			halt(true)
		}
	}
	halt(false)
	if first != nil {
		f.Finish(wire.ErrReset, resetMessage(first, peer, o.Name))
		return
	}
	f.Finish(wire.OK, "")
}

func resetMessage(err error, peer netip.AddrPort, name string) string {
	if errors.Is(err, unix.ECONNRESET) || errors.Is(err, unix.EPIPE) {
		return fmt.Sprintf("connection reset by %s (%s)", peer, name)
	}
	return fmt.Sprintf("%s: session with %s: %v", name, peer, err)
}

// toApp reads connection data straight into the app's rx fifo (no buffer
// of its own: a session costs no private memory for this direction) until
// the socket's end of stream (then the fifo is closed for writing) or the
// app stops reading.
func toApp(f *session.Flow, c Conn, kick, stop <-chan struct{}) error {
	rx := f.Rx
	trimmed := time.Now()
	for {
		if rx.ReadClosed() {
			return nil
		}
		if err := TrimIfDue(rx, &trimmed); err != nil {
			return err
		}
		space, _, err := rx.Reserve()
		if err != nil {
			return err
		}
		if len(space) == 0 {
			rx.SetWriterWaiting()
			if free, err := rx.Free(); err == nil && free == 0 && !rx.ReadClosed() {
				select {
				case <-kick:
				case <-stop:
					return errStopped
				case <-f.AppClosed():
					if !rx.ReadClosed() {
						return errStopped // released without closing the fifo
					}
				}
			}
			continue
		}
		// The part up to the ring's end; the wrapped rest on the next round.
		n, rerr := c.Read(space)
		if n > 0 {
			if err := rx.Commit(n); err != nil {
				return err
			}
			if rx.TakeReaderWaiting() {
				f.WakeApp()
			}
		}
		if rerr == io.EOF {
			rx.CloseWrite()
			f.WakeApp()
			return nil
		}
		if rerr != nil {
			select {
			case <-stop:
				return errStopped
			default:
			}
			if rx.ReadClosed() {
				return nil // the app closed; the read deadline ended the read
			}
			return rerr
		}
	}
}

// TrimIfDue gives back the pages the rx ring walked past (shm.Fifo.Trim)
// once shm.TrimAfter passed since the last time (*last): only from the
// fifo's producer (Pump's toApp, a Poller's, a userspace stack's loop that
// writes the rx fifo). A session that went quiet
// keeps what its last burst touched until it moves again or closes (then
// the engine punches its extent).
func TrimIfDue(rx *shm.Fifo, last *time.Time) error {
	if !rx.Written() || time.Since(*last) < shm.TrimAfter {
		return nil
	}
	if _, err := rx.Trim(); err != nil {
		return err
	}
	*last = time.Now()
	return nil
}

// fromApp copies the app's tx fifo to the socket until the app closes it
// for writing (then the socket is shut down for writing).
func fromApp(f *session.Flow, c Conn, kick, stop <-chan struct{}) error {
	tx := f.Tx
	for {
		a, b, err := tx.Peek()
		if len(a) > 0 {
			n := 0
			var werr error
			for _, p := range [][]byte{a, b} {
				if len(p) == 0 || werr != nil {
					continue
				}
				var k int
				k, werr = c.Write(p)
				n += k
			}
			if cerr := tx.Consume(n); cerr != nil && werr == nil {
				werr = cerr
			}
			if tx.TakeWriterWaiting() {
				f.WakeApp()
			}
			if werr != nil {
				select {
				case <-stop:
					return errStopped
				default:
				}
				return werr
			}
			continue
		}
		if err == io.EOF {
			return c.CloseWrite()
		}
		if err != nil {
			return err
		}
		tx.SetReaderWaiting()
		if n, lerr := tx.Len(); lerr == nil && n == 0 && !tx.WriteClosed() {
			select {
			case <-kick:
			case <-stop:
				return errStopped
			case <-f.AppClosed():
				if f.AppReset() || !tx.WriteClosed() {
					return errStopped
				}
			}
		}
	}
}
