package client

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/wire"
)

// Conn is a session: a net.Conn over a pair of shared-memory fifos. Reads
// and writes do not enter the kernel unless the peer sleeps on the fifo
// (then one doorbell ring wakes it). Read, Write, Close, CloseWrite and the
// deadline setters may be called concurrently from different goroutines.
type Conn struct {
	// No padding at the ends: a Conn is 512 bytes, and Go's size classes
	// from 512 up are multiples of 64, so every Conn starts on a cache line
	// and shares none with its neighbours (often the peer's Conn of a
	// cut-through session in the same process). TestConnLayout keeps it so.
	w    *worker
	h    uint64
	seg  *cseg
	ring int32 // the doorbell end that wakes the peer (see newConn)
	key  int32 // the descriptor whose ring wakes this session (worker.waiters)
	// The fifo handles, embedded (no allocations of their own): rx is used
	// by the reading side, tx by the writing side; the pad keeps a reader's
	// index updates off the writer's line.
	rx shm.Fifo
	_  [64]byte
	tx shm.Fifo
	// the addresses as *net.TCPAddr, made on first use from local and
	// remote (most sessions never ask)
	laddr, raddr atomic.Pointer[net.TCPAddr]
	udp          *net.UDPAddr // set for the session under a PacketConn

	rmu, wmu sync.Mutex // one reader, one writer at a time; Close takes both
	closeMu  sync.Mutex // serialises Close
	// the deadlines, made by the first Set*Deadline (most sessions never
	// set one)
	rdl, wdl atomic.Pointer[deadline]
	// the Read and the Write blocked on the worker, if any (under w.mu):
	// Close and a first deadline wake exactly them
	rwait, wwait *waiter

	closed     atomic.Bool
	abort      atomic.Bool // SetLinger(0): Close resets
	wshut      atomic.Bool
	peerClosed atomic.Bool
	resetErr   atomic.Pointer[Error]

	mu       sync.Mutex
	refused  bool
	released bool // engine sent cleanup
	sentBye  bool

	peekPin bool // Peek holds a segment reference until Consume (under rmu)
	// trimDue (under wmu): tx was written since its pages were last given
	// back, and this Conn is on its worker's trim list (see worker.trim)
	trimDue bool
	// rspin, wspin: the Read's (under rmu) and the Write's (under wmu)
	// poll before sleeping
	rspin, wspin spinner
	// ev: a transport session's bit in its worker's event bits (wire
	// FifoPair.Event), set before ringing the transport doorbell
	ev uint32
	// cold, and last
	local, remote wire.Addr
}

var _ net.Conn = (*Conn)(nil)

// ringPeer wakes the other side after progress on a fifo whose waiting
// flag was set: the peer app of a cut-through session, or the engine for a
// transport session, which first gets the session's event bit (so the
// engine serves this session, not every one of the worker).
func (c *Conn) ringPeer() {
	if c.seg.ring < 0 {
		c.w.setEvent(c.ev)
	}
	_ = shm.Ring(int(c.ring))
}

func (c *Conn) opErr(op string, err error) error {
	if c.udp != nil {
		return &net.OpError{Op: op, Net: "udp", Source: c.udp, Err: err}
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.addr(&c.laddr, c.local), Addr: c.addr(&c.raddr, c.remote), Err: err}
}

func (c *Conn) setReset(e *Error) {
	c.resetErr.CompareAndSwap(nil, e)
	c.w.wakeAll()
}

// LocalAddr returns the local address (*net.TCPAddr).
func (c *Conn) LocalAddr() net.Addr { return c.addr(&c.laddr, c.local) }

// addr returns the *net.TCPAddr of a, made once into p.
func (c *Conn) addr(p *atomic.Pointer[net.TCPAddr], a wire.Addr) *net.TCPAddr {
	if t := p.Load(); t != nil {
		return t
	}
	t := tcpAddr(a)
	if p.CompareAndSwap(nil, t) {
		return t
	}
	return p.Load()
}

// RemoteAddr returns the peer's address (*net.TCPAddr).
func (c *Conn) RemoteAddr() net.Addr { return c.addr(&c.raddr, c.remote) }

// SetDeadline sets both deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	c.setDeadline(&c.rdl, &c.rwait, t)
	c.setDeadline(&c.wdl, &c.wwait, t)
	return nil
}

// SetReadDeadline sets the read deadline; it also wakes a blocked Read.
func (c *Conn) SetReadDeadline(t time.Time) error { c.setDeadline(&c.rdl, &c.rwait, t); return nil }

// SetWriteDeadline sets the write deadline; it also wakes a blocked Write.
func (c *Conn) SetWriteDeadline(t time.Time) error { c.setDeadline(&c.wdl, &c.wwait, t); return nil }

// setDeadline sets the deadline in p, making it on first use: then the call
// blocked in wait (slot), which could not select on it, is woken to retry.
func (c *Conn) setDeadline(p *atomic.Pointer[deadline], slot **waiter, t time.Time) {
	d := p.Load()
	if d == nil {
		if t.IsZero() {
			return
		}
		made := p.CompareAndSwap(nil, new(deadline))
		p.Load().set(t)
		if made {
			c.wake(slot)
		}
		return
	}
	d.set(t)
}

// wake wakes the call blocked in slot (c.rwait or c.wwait), if any.
func (c *Conn) wake(slot **waiter) {
	w := c.w
	w.mu.Lock()
	if wt := *slot; wt != nil {
		w.wakeLocked(wt)
	}
	w.mu.Unlock()
}

// readErr reports why no read can proceed, nil if it may.
func (c *Conn) readErr() error {
	if c.closed.Load() {
		return c.opErr("read", net.ErrClosed)
	}
	if e := c.resetErr.Load(); e != nil {
		return c.opErr("read", e)
	}
	if c.rdl.Load().expired() {
		return c.opErr("read", os.ErrDeadlineExceeded)
	}
	return nil
}

func (c *Conn) writeErr() error {
	if c.closed.Load() {
		return c.opErr("write", net.ErrClosed)
	}
	if e := c.resetErr.Load(); e != nil {
		return c.opErr("write", e)
	}
	if c.wshut.Load() {
		return c.opErr("write", syscall.EPIPE)
	}
	if c.peerClosed.Load() || (c.w.orphan.Load() && c.tx.ReadClosed()) {
		// without an engine to say so, the peer's close is seen in the fifo
		return c.opErr("write", &Error{Code: wire.ErrReset, Msg: "peer closed the session: broken pipe", Errno: syscall.EPIPE})
	}
	if c.wdl.Load().expired() {
		return c.opErr("write", os.ErrDeadlineExceeded)
	}
	return nil
}

// Read reads what the fifo holds, waiting for at least one byte.
func (c *Conn) Read(p []byte) (int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for {
		if err := c.readErr(); err != nil {
			return 0, err
		}
		if len(p) == 0 {
			return 0, nil
		}
		n, err := c.rx.Read(p)
		if n > 0 {
			if c.rx.TakeWriterWaiting() {
				c.ringPeer()
			}
			return n, nil
		}
		if err == io.EOF {
			return 0, io.EOF
		}
		if err != nil {
			return 0, c.opErr("read", err)
		}
		if err := c.waitReadable(); err != nil {
			return 0, err
		}
	}
}

// readable: data, end of stream, or a state change to report.
func (c *Conn) readable() bool {
	if c.closed.Load() || c.resetErr.Load() != nil || c.rx.WriteClosed() {
		return true
	}
	n, err := c.rx.Len()
	return n > 0 || err != nil
}

func (c *Conn) writable() bool {
	// wshut: a Write that CloseWrite's wake-up did not find (it was still
	// spinning) returns EPIPE at once rather than wait for room
	if c.closed.Load() || c.wshut.Load() || c.resetErr.Load() != nil || c.peerClosed.Load() || (c.w.orphan.Load() && c.tx.ReadClosed()) {
		return true
	}
	n, err := c.tx.Free()
	return n > 0 || err != nil
}

func (c *Conn) waitReadable() error {
	return c.wait(&c.rdl, &c.rwait, &c.rspin, c.readable, c.rx.SetReaderWaiting, c.rx.ClearReaderWaiting)
}

func (c *Conn) waitWritable() error {
	return c.wait(&c.wdl, &c.wwait, &c.wspin, c.writable, c.tx.SetWriterWaiting, c.tx.ClearWriterWaiting)
}

// spinner adapts how long a blocked call of one direction polls before it
// sleeps (under that direction's lock, rmu or wmu). A poll that ends
// empty-handed makes the next 2^misses-1 waits (up to 63) sleep at once; a
// poll that succeeds, or a sleep shorter than SpinFor (a poll would have
// caught it), polls again from the next wait. A session whose peer answers
// within SpinFor (cut-through) keeps the sub-microsecond path; one whose
// peer answers later (a transport session's network round trip, a busy
// node) stops burning the core its peer and the engine need: measured, a
// 64 B round trip through the kernel transport took 64 µs with a 20 µs poll
// before every sleep and 45 µs without.
type spinner struct {
	misses uint8 // polls in a row that found nothing, up to spinMissMax
	skip   uint8 // waits left to sleep without polling
}

const spinMissMax = 6

// polls reports whether this wait polls first.
func (sp *spinner) polls() bool {
	if sp.skip > 0 {
		sp.skip--
		return false
	}
	return true
}

// missed records a poll that found nothing.
func (sp *spinner) missed() {
	if sp.misses < spinMissMax {
		sp.misses++
	}
	sp.skip = 1<<sp.misses - 1
}

// paid records a wait a poll caught, or would have.
func (sp *spinner) paid() { sp.misses, sp.skip = 0, 0 }

// wait polls cond for a while (or forever in spin mode), then sleeps: it
// registers with the worker's event loop, announces itself in the fifo's
// waiting flag so the peer signals the worker's eventfd, re-checks, and
// blocks until the loop sees cond, the deadline passes or the conn closes.
// It returns nil to retry the operation; errors are reported by the caller's
// next check. slot is where Close (and a first deadline) find the call; sp
// adapts the poll (spinner).
func (c *Conn) wait(dl *atomic.Pointer[deadline], slot **waiter, sp *spinner, cond func() bool, set func(), clear func() bool) error {
	a := c.w.app
	polled := false
	if a.opts.Spin || (a.spinFor > 0 && sp.polls()) {
		polled = true
		start := time.Now()
		for i := 0; ; i++ {
			if cond() || dl.Load().expired() {
				sp.paid()
				return nil
			}
			if i&63 == 63 {
				if !a.opts.Spin && time.Since(start) > a.spinFor {
					break
				}
				if a.opts.Spin && i&4095 == 4095 {
					// a long spin: give the CPU to other threads (the
					// peer may be waiting for this core)
					unix.RawSyscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
				} else {
					runtime.Gosched()
				}
			}
		}
	}
	w := c.w
	wt := &waiter{key: int(c.key), ready: cond, arm: set, ch: make(chan struct{})}
	w.mu.Lock()
	if w.dead != nil && !w.orphan.Load() {
		w.mu.Unlock()
		return nil
	}
	set()
	if cond() {
		clear()
		w.mu.Unlock()
		return nil
	}
	w.addWaiterLocked(wt)
	*slot = wt
	w.mu.Unlock()
	var slept time.Time
	if a.spinFor > 0 {
		slept = time.Now()
	}
	// Loaded after registering: a deadline made later wakes wt (setDeadline).
	select {
	case <-wt.ch:
	case <-dl.Load().wait():
	}
	if a.spinFor > 0 {
		if time.Since(slept) < a.spinFor {
			sp.paid()
		} else if polled {
			sp.missed()
		}
	}
	w.mu.Lock()
	w.dropWaiterLocked(wt)
	if *slot == wt {
		*slot = nil
	}
	w.mu.Unlock()
	return nil
}

// Write writes all of p unless an error or the deadline stops it.
func (c *Conn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wrote()
	total := 0
	for {
		if total == len(p) && total > 0 {
			// done: a peer that closed right after reading this must
			// not turn a completed write into an error
			return total, nil
		}
		if err := c.writeErr(); err != nil {
			return total, err
		}
		if total == len(p) {
			return total, nil
		}
		n, err := c.tx.Write(p[total:])
		if n > 0 {
			total += n
			if c.tx.TakeReaderWaiting() {
				c.ringPeer()
			}
			continue
		}
		if err != nil {
			return total, c.opErr("write", err)
		}
		if err := c.waitWritable(); err != nil {
			return total, err
		}
	}
}

// WriteBuffers writes the buffers in order, gathering straight into the fifo.
func (c *Conn) WriteBuffers(bufs [][]byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wrote()
	total := 0
	for {
		for len(bufs) > 0 && len(bufs[0]) == 0 {
			bufs = bufs[1:]
		}
		if len(bufs) == 0 && total > 0 {
			return total, nil
		}
		if err := c.writeErr(); err != nil {
			return total, err
		}
		if len(bufs) == 0 {
			return total, nil
		}
		n, err := c.tx.WriteVec(bufs)
		if n > 0 {
			total += n
			for n > 0 {
				k := min(n, len(bufs[0]))
				bufs[0] = bufs[0][k:]
				n -= k
				if len(bufs[0]) == 0 {
					bufs = bufs[1:]
				}
			}
			if c.tx.TakeReaderWaiting() {
				c.ringPeer()
			}
			continue
		}
		if err != nil {
			return total, c.opErr("write", err)
		}
		if err := c.waitWritable(); err != nil {
			return total, err
		}
	}
}

// wrote notes (under wmu) that tx pages may be in use beyond what the fifo
// holds: the worker gives them back once the Conn has been quiet for a
// while. Once per trim period per Conn; the write path pays a branch.
func (c *Conn) wrote() {
	if !c.trimDue {
		c.trimDue = true
		c.w.trimLater(c)
	}
}

// trimTx gives back the pages of tx's free space (shm.Fifo.Trim, producer
// side, hence under wmu). False when it should be tried again later: a
// writer holds wmu, or the peer had not read everything yet (the pages of
// what it reads later are free too, and no write may come to note them).
func (c *Conn) trimTx() bool {
	if !c.wmu.TryLock() {
		return false
	}
	defer c.wmu.Unlock()
	if !c.trimDue || c.closed.Load() {
		return true
	}
	// the segment may be unmapped under a session the engine released
	if !c.w.app.pin(c.seg) {
		return true
	}
	_, err := c.tx.Trim() // a corrupt fifo reports on the next Write
	c.w.app.unref(c.seg)
	c.trimDue = err == nil && c.tx.Written()
	return !c.trimDue
}

// Peek is the zero-copy read: it waits for data (honouring the read
// deadline) and returns the readable bytes as up to two slices aliasing the
// shared fifo. Their content is valid until Consume, Close or the next Peek;
// the peer can scribble on them, so validate what you parse. The memory
// itself stays mapped until Consume (call it also after Close), even if the
// app is closed meanwhile: touching the slices never faults. Use from a
// single reading goroutine; io.EOF at end of stream.
func (c *Conn) Peek() (a, b []byte, err error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	for {
		if err := c.readErr(); err != nil {
			return nil, nil, err
		}
		a, b, err := c.rx.Peek()
		if len(a) > 0 || err != nil {
			if err != nil && err != io.EOF {
				err = c.opErr("read", err)
			}
			if len(a) > 0 && !c.peekPin {
				if !c.w.app.pin(c.seg) {
					return nil, nil, c.opErr("read", net.ErrClosed)
				}
				c.peekPin = true
			}
			return a, b, err
		}
		if err := c.waitReadable(); err != nil {
			return nil, nil, err
		}
	}
}

// Consume commits n bytes returned by Peek and lets their memory go.
func (c *Conn) Consume(n int) error {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.peekPin {
		c.peekPin = false
		defer c.w.app.unref(c.seg)
	}
	if err := c.readErr(); err != nil {
		return err
	}
	if err := c.rx.Consume(n); err != nil {
		return c.opErr("read", err)
	}
	if c.rx.TakeWriterWaiting() {
		c.ringPeer()
	}
	return nil
}

// WriteTo copies the session's data to w straight out of the shared fifo
// (no intermediate buffer) until end of stream; io.Copy uses it. w.Write
// runs without the Conn's locks, so a Close (or App.Close) may happen while
// it reads the fifo: the segment stays mapped until WriteTo returns.
func (c *Conn) WriteTo(w io.Writer) (int64, error) {
	if !c.w.app.pin(c.seg) {
		return 0, c.opErr("read", net.ErrClosed)
	}
	defer c.w.app.unref(c.seg)
	var total int64
	for {
		a, b, err := c.Peek()
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
		n := 0
		for _, p := range [][]byte{a, b} {
			if len(p) == 0 {
				continue
			}
			k, werr := w.Write(p)
			n += k
			if werr != nil {
				total += int64(n)
				_ = c.Consume(n)
				return total, werr
			}
		}
		total += int64(n)
		if err := c.Consume(n); err != nil {
			return total, err
		}
	}
}

// SetLinger(0) makes Close abort the session (the peer sees a reset)
// instead of ending it gracefully; other values restore the default.
func (c *Conn) SetLinger(sec int) error {
	c.abort.Store(sec == 0)
	return nil
}

// SetNoDelay is accepted for compatibility with *net.TCPConn; writes are
// never delayed.
func (c *Conn) SetNoDelay(bool) error { return nil }

// SetKeepAlive is accepted for compatibility; the engine knows when a peer
// dies, so no keep-alive probes exist.
func (c *Conn) SetKeepAlive(bool) error { return nil }

// SetKeepAlivePeriod is accepted for compatibility (see SetKeepAlive).
func (c *Conn) SetKeepAlivePeriod(time.Duration) error { return nil }

// CloseWrite half-closes: the peer reads the remaining data then io.EOF;
// this side can still read.
func (c *Conn) CloseWrite() error {
	if c.closed.Load() {
		return c.opErr("close", net.ErrClosed)
	}
	c.wshut.Store(true)
	c.wake(&c.wwait) // a blocked Write reports EPIPE
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.closed.Load() {
		return c.opErr("close", net.ErrClosed)
	}
	if c.resetErr.Load() == nil {
		c.tx.CloseWrite()
		if c.tx.TakeReaderWaiting() {
			c.ringPeer()
		}
	}
	_ = c.w.request(&wire.Shutdown{Session: c.h})
	return nil
}

// CloseRead tells the peer this side reads no more (a hint).
func (c *Conn) CloseRead() error {
	if c.closed.Load() {
		return c.opErr("close", net.ErrClosed)
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.closed.Load() {
		return c.opErr("close", net.ErrClosed)
	}
	c.rx.CloseRead()
	return nil
}

// Close closes the session: blocked calls return net.ErrClosed, the peer
// reads the remaining data then io.EOF, and the engine releases the fifos.
func (c *Conn) Close() error {
	// A second Close waits for the first to finish: App.Close relies on
	// every Close having returned before it unmaps the segments.
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	if !c.closed.CompareAndSwap(false, true) {
		return c.opErr("close", net.ErrClosed)
	}
	// blocked calls see closed: wake them (one registering later sees it
	// in its check under the worker's lock)
	c.wake(&c.rwait)
	c.wake(&c.wwait)
	c.rmu.Lock()
	c.wmu.Lock()
	reset := c.resetErr.Load() != nil
	if !reset && !c.abort.Load() {
		c.tx.CloseWrite()
		if c.tx.TakeReaderWaiting() {
			c.ringPeer()
		}
		c.rx.CloseRead()
		// a peer blocked writing into a full fifo learns of it too (with
		// no engine to tell it, after a restart)
		if c.rx.TakeWriterWaiting() {
			c.ringPeer()
		}
	}
	c.wmu.Unlock()
	c.rmu.Unlock()
	c.mu.Lock()
	send := !c.released && !c.sentBye
	c.sentBye = true
	c.mu.Unlock()
	if send && c.w.deadErr() == nil {
		if c.abort.Load() {
			_ = c.w.request(&wire.Reset{Session: c.h})
		} else {
			_ = c.w.request(&wire.Disconnect{Session: c.h})
		}
	}
	if c.w.deadErr() != nil {
		c.cleanup()
	}
	return nil
}

// cleanup drops the segment reference once the engine released the session
// (or the attachment is gone).
func (c *Conn) cleanup() {
	c.mu.Lock()
	if c.released {
		c.mu.Unlock()
		return
	}
	c.released = true
	c.mu.Unlock()
	c.w.app.unref(c.seg)
	// after the unref: the segment's doorbell end leaves the worker's loop
	// before an orphaned worker retires
	if c.w.orphan.Load() {
		c.w.dropSession(c)
	}
}

// ---- deadlines ----

// deadline is a resettable timer exposing a channel closed when it passes.
type deadline struct {
	mu     sync.Mutex
	gen    uint64
	timer  *time.Timer
	ch     chan struct{}
	fired  bool
	firedA atomic.Bool // fired, readable without the lock (hot path)
}

// chLocked is the channel closed when the deadline passes, made on first
// use: most sessions never wait on a deadline (a connect+accept+close
// would make four channels for nothing).
func (d *deadline) chLocked() chan struct{} {
	if d.ch == nil {
		d.ch = make(chan struct{})
	}
	return d.ch
}

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gen++
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	if d.fired {
		d.ch = nil
		d.fired = false
		d.firedA.Store(false)
	}
	if t.IsZero() {
		return
	}
	dur := time.Until(t)
	if dur <= 0 {
		close(d.chLocked())
		d.fired = true
		d.firedA.Store(true)
		return
	}
	gen := d.gen
	d.timer = time.AfterFunc(dur, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.gen == gen && !d.fired {
			close(d.chLocked())
			d.fired = true
			d.firedA.Store(true)
		}
	})
}

// wait is the channel closed when d passes; nil (never ready) for no deadline.
func (d *deadline) wait() <-chan struct{} {
	if d == nil {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.chLocked()
}

func (d *deadline) expired() bool { return d != nil && d.firedA.Load() }

// ---- dial and listen ----

// Dial connects to address ("host:port") over network "tcp", "tcp4" or
// "tcp6". A listener of the same app namespace on this node gets a
// cut-through session; any other address goes through the engine's
// transport when it has one (the kernel transport opens the socket in the
// pod's network namespace). Nothing listening is ECONNREFUSED; a session
// rule's deny is EACCES naming the rule.
func (a *App) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	return a.dial(ctx, network, address, nil)
}

// DialTLS dials like Dial, and the engine speaks TLS with the server: the
// app reads and writes plaintext. cfg.ServerName (default: the address
// dialled) is verified against cfg.Trust's CA bundle or the system roots;
// cfg.CertKeyPair, if set, is the client certificate. A failed handshake
// is an error wrapping EPROTO that says why.
func (a *App) DialTLS(ctx context.Context, network, address string, cfg TLSConfig) (net.Conn, error) {
	return a.dial(ctx, network, address, &cfg)
}

func (a *App) dial(ctx context.Context, network, address string, tc *TLSConfig) (net.Conn, error) {
	if a.isClosed() {
		return nil, &net.OpError{Op: "dial", Net: network, Err: ErrAppClosed}
	}
	if !isTCP(network) {
		return nil, &net.OpError{Op: "dial", Net: network, Err: net.UnknownNetworkError(network + " (udp goes through App.ListenPacket)")}
	}
	raddr, err := resolve(ctx, "dial", network, address, false)
	if err != nil {
		return nil, err
	}
	ra := wireAddr(raddr)
	// While the app re-attaches (its engine restarts), a dial waits for
	// the new attachment, as long as its context allows.
	w, err := a.waitUp(ctx)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = os.ErrDeadlineExceeded
		}
		return nil, &net.OpError{Op: "dial", Net: network, Addr: raddr, Err: err}
	}
	var th uint32
	if tc != nil {
		if th, err = a.tlsContext(ctx, *tc); err != nil {
			return nil, &net.OpError{Op: "dial", Net: network, Addr: raddr, Err: err}
		}
	}
	id := a.ctx.Add(1)
	r, err := w.call(ctx, id, &wire.Connect{Ctx: id, Remote: ra, TLS: th})
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = os.ErrDeadlineExceeded
		}
		return nil, &net.OpError{Op: "dial", Net: network, Addr: raddr, Err: err}
	}
	switch r := r.(type) {
	case *connResult:
		if a.isClosed() {
			r.c.Close()
			return nil, &net.OpError{Op: "dial", Net: network, Addr: raddr, Err: ErrAppClosed}
		}
		return r.c, nil
	case *wire.Connected:
		return nil, &net.OpError{Op: "dial", Net: network, Addr: raddr, Err: engineError(r.Code, r.Msg)}
	}
	return nil, &net.OpError{Op: "dial", Net: network, Addr: raddr, Err: errors.New("unexpected reply")}
}

func (a *App) isClosed() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.closed || a.gone != nil
}

func isTCP(network string) bool { return network == "tcp" || network == "tcp4" || network == "tcp6" }

func wireAddr(t *net.TCPAddr) wire.Addr {
	ap := t.AddrPort()
	return wire.Addr{Proto: wire.TCP, IP: ap.Addr().Unmap(), Port: ap.Port()}
}

// Listen listens on address over "tcp", "tcp4" or "tcp6". An empty host
// listens on the unspecified address ("tcp4": 0.0.0.0, else [::], which
// also matches IPv4 destinations); port 0 picks a free port.
func (a *App) Listen(network, address string) (net.Listener, error) {
	return a.listen(network, address, nil)
}

// ListenTLS listens like Listen, and the engine terminates TLS with
// cfg.CertKeyPair (of the app's own Kubernetes namespace) for every
// session: the app reads and writes plaintext; peers that fail the
// handshake never reach Accept. Rotating the CertKeyPair's Secret changes
// the certificate of new handshakes; open sessions carry on.
func (a *App) ListenTLS(network, address string, cfg TLSConfig) (net.Listener, error) {
	return a.listen(network, address, &cfg)
}

func (a *App) listen(network, address string, tc *TLSConfig) (net.Listener, error) {
	if a.isClosed() {
		return nil, &net.OpError{Op: "listen", Net: network, Err: ErrAppClosed}
	}
	if !isTCP(network) {
		return nil, &net.OpError{Op: "listen", Net: network, Err: net.UnknownNetworkError(network + " (udp goes through App.ListenPacket)")}
	}
	laddr, err := resolve(context.Background(), "listen", network, address, true)
	if err != nil {
		return nil, err
	}
	// While the app re-attaches, a listen waits for the new attachment
	// (up to listenWait).
	ctx, cancel := context.WithTimeout(context.Background(), listenWait)
	defer cancel()
	w, b, err := a.bind(ctx, wireAddr(laddr), tc)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Addr: laddr, Err: err}
	}
	l := &listener{w: w, h: b.Listener, addr: tcpAddr(b.Local), tls: tc, ch: make(chan *Conn, 4096), done: make(chan struct{})}
	a.mu.Lock()
	if w.gen != a.gen || a.down != nil {
		a.mu.Unlock()
		return nil, &net.OpError{Op: "listen", Net: network, Addr: laddr, Err: errors.New("hoststack: the engine was lost while listening; try again")}
	}
	a.listeners[l] = struct{}{}
	a.mu.Unlock()
	w.mu.Lock()
	w.listeners[l.h] = l
	w.mu.Unlock()
	a.byHandle.Store(listenerKey{w.gen, l.h}, l)
	return l, nil
}

// listenerKey names a listener of one attachment: handles of different
// attachments (engines) may repeat.
type listenerKey struct{ gen, h uint64 }

// listenWait bounds how long Listen waits for a re-attachment.
const listenWait = 10 * time.Second

// bind asks the engine for a listener on addr (with TLS when tc is set).
func (a *App) bind(ctx context.Context, addr wire.Addr, tc *TLSConfig) (*worker, *wire.Bound, error) {
	w, err := a.waitUp(ctx)
	if err != nil {
		return nil, nil, err
	}
	var th uint32
	if tc != nil {
		if th, err = a.tlsContext(ctx, *tc); err != nil {
			return nil, nil, err
		}
	}
	id := a.ctx.Add(1)
	r, err := w.call(ctx, id, &wire.Listen{Ctx: id, Addr: addr, TLS: th})
	if err != nil {
		return nil, nil, err
	}
	b, ok := r.(*wire.Bound)
	if !ok {
		return nil, nil, errors.New("unexpected reply")
	}
	if b.Code != wire.OK {
		return nil, nil, engineError(b.Code, b.Msg)
	}
	return w, b, nil
}

// listener is the net.Listener of the client.
type listener struct {
	addr *net.TCPAddr
	tls  *TLSConfig // re-created with it after a re-attach
	ch   chan *Conn

	mu     sync.Mutex
	w      *worker // the worker and handle of the current attachment
	h      uint64
	done   chan struct{}
	err    error
	closed bool
}

func (l *listener) push(c *Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	select {
	case l.ch <- c:
		return true
	default:
		return false
	}
}

// Accept waits for the next session.
func (l *listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	default:
	}
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		l.mu.Lock()
		err := l.err
		l.mu.Unlock()
		return nil, &net.OpError{Op: "accept", Net: "tcp", Addr: l.addr, Err: err}
	}
}

// fail closes the listener locally with err (no engine round trip).
func (l *listener) fail(err error) bool {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return false
	}
	l.closed = true
	l.err = err
	close(l.done)
	w, h := l.w, l.h
	l.mu.Unlock()
	w.mu.Lock()
	if w.listeners[h] == l {
		delete(w.listeners, h)
	}
	w.mu.Unlock()
	w.app.byHandle.CompareAndDelete(listenerKey{w.gen, h}, l)
	w.app.mu.Lock()
	delete(w.app.listeners, l)
	w.app.mu.Unlock()
	for {
		select {
		case c := <-l.ch:
			c.Close()
		default:
			return true
		}
	}
}

// Close stops listening; queued sessions are closed.
func (l *listener) Close() error {
	if !l.fail(net.ErrClosed) {
		return &net.OpError{Op: "close", Net: "tcp", Addr: l.addr, Err: net.ErrClosed}
	}
	l.mu.Lock()
	w, h := l.w, l.h
	l.mu.Unlock()
	if w.deadErr() != nil {
		return nil
	}
	id := w.app.ctx.Add(1)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := w.call(ctx, id, &wire.Unlisten{Ctx: id, Listener: h})
	if err != nil {
		return &net.OpError{Op: "close", Net: "tcp", Addr: l.addr, Err: err}
	}
	if u, ok := r.(*wire.UnlistenReply); ok && u.Code != wire.OK {
		return &net.OpError{Op: "close", Net: "tcp", Addr: l.addr, Err: engineError(u.Code, u.Msg)}
	}
	return nil
}

// Addr returns the listening address (*net.TCPAddr), with the port the
// engine picked for port 0.
func (l *listener) Addr() net.Addr { return l.addr }
