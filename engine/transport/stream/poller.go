package stream

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/wire"
)

// Poller moves the bytes of plain TCP sessions between their sockets and
// the apps' fifos from one event loop: epoll on the sockets (edge
// triggered) and on an eventfd the flows' kicks write. A session costs no
// goroutine, stack or buffer: its socket is read straight into the rx fifo
// and written straight from the tx fifo (readv/sendmsg over the ring's two
// pieces). Pump is the same protocol over a net.Conn, for TLS.
//
// Each flow is served only by the loop, so its state needs no lock; the
// loop never blocks but in epoll_wait.
type Poller struct {
	name         string
	closeTimeout time.Duration

	ep  *shm.Epoll // the sockets and efd
	efd int        // eventfd: a flow was kicked or added

	load atomic.Int32 // sessions served (Add to end), for placement (Load)

	mu     sync.Mutex
	queued []*pflow // to serve at the loop's next round (kicks, new flows)
	// busy: the loop is handling events and has not yet taken queued, so a
	// kick needs no eventfd write (a ring's kicks come from the loop itself)
	busy bool

	// bells are the app doorbells the loop watches (WatchBell), by their
	// epoll keys: negative, unlike the sockets' descriptors
	bellMu   sync.Mutex
	bells    map[int32]*pbell
	nextBell int32

	// loop-only
	flows  map[int32]*pflow // by socket descriptor
	drains Drains           // closed by their apps, draining
}

// pbell is a doorbell the loop watches: ring runs after each ring.
type pbell struct {
	fd   int
	ring func()
}

// pflow is one session of a Poller.
type pflow struct {
	p    *Poller
	f    *session.Flow
	fd   int
	peer netip.AddrPort

	queued bool // under p.mu

	// loop-only
	rxDone, txDone bool // socket end of stream / app stopped reading; shut down for writing
	// rxStalled: the last read found the socket empty (EAGAIN), so only the
	// socket's next edge can bring data: a kick (the app's progress on any
	// of its sessions) skips the read system call
	rxStalled bool
	appClosed bool
	ended     bool
	trimmed   time.Time
}

// serveBudget bounds the reads (and the writes) one serve makes, so that a
// session whose peer and app keep up forever does not starve the others of
// its poller: past it, the session queues itself again.
const serveBudget = 16

// NewPoller starts a poller; name is the transport's, for messages, and
// closeTimeout bounds how long what an app wrote before closing may take to
// leave (then the socket is reset).
func NewPoller(name string, closeTimeout time.Duration) (*Poller, error) {
	ep, err := shm.NewEpoll()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	efd, err := shm.NewEventFD()
	if err != nil {
		ep.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if err := ep.Add(efd, unix.EPOLLIN, int32(efd)); err != nil {
		ep.Close()
		unix.Close(efd)
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p := &Poller{name: name, closeTimeout: closeTimeout, ep: ep, efd: efd, flows: map[int32]*pflow{}, bells: map[int32]*pbell{}}
	go p.loop()
	return p, nil
}

// Add serves f over fd, a connected non-blocking TCP socket that the poller
// owns from now on (it closes it when the session ends, then calls
// f.Finish). Never blocks.
func (p *Poller) Add(f *session.Flow, fd int, peer netip.AddrPort) {
	p.load.Add(1)
	pf := &pflow{p: p, f: f, fd: fd, peer: peer, trimmed: time.Now()}
	f.Notify(pf.kick)
	pf.kick() // registers it, and looks at the fifos (a kick may have come before Notify)
}

// kick queues the flow for the loop. It runs under the engine's locks:
// only the poller's own lock and an eventfd write.
func (pf *pflow) kick() {
	p := pf.p
	p.mu.Lock()
	if pf.queued {
		p.mu.Unlock()
		return
	}
	pf.queued = true
	first := len(p.queued) == 0 && !p.busy
	p.queued = append(p.queued, pf)
	p.mu.Unlock()
	if first {
		_ = shm.Signal(p.efd)
	}
}

// loop waits for the epoll set parked in Go's netpoller (shm.Epoll), so
// a poller holds no OS thread while its sessions are idle.
func (p *Poller) loop() {
	events := make([]unix.EpollEvent, 128)
	var batch []*pflow
	for {
		n, err := p.ep.Wait(events, p.drains.Next())
		if err != nil && !errors.Is(err, shm.ErrDeadline) {
			// only a programming error (a closed epoll descriptor) gets here
			panic(fmt.Sprintf("%s: waiting for the epoll set: %v", p.name, err))
		}
		p.mu.Lock()
		p.busy = true
		p.mu.Unlock()
		for _, ev := range events[:max(n, 0)] {
			if ev.Fd == int32(p.efd) {
				_ = shm.DrainEventFD(p.efd)
				continue
			}
			if ev.Fd < 0 {
				p.rung(ev.Fd)
				continue
			}
			if pf := p.flows[ev.Fd]; pf != nil {
				pf.serve(true)
			}
		}
		p.mu.Lock()
		p.busy = false
		batch, p.queued = p.queued, batch[:0]
		for _, pf := range batch {
			pf.queued = false
		}
		p.mu.Unlock()
		for _, pf := range batch {
			if !pf.ended {
				if _, ok := p.flows[int32(pf.fd)]; !ok {
					p.register(pf)
				}
				pf.serve(false)
			}
		}
		clear(batch)
		if p.drains.Len() > 0 {
			p.drains.Expire(time.Now())
		}
	}
}

// Load is the number of sessions the poller serves.
func (p *Poller) Load() int { return int(p.load.Load()) }

// WatchBell has the loop watch fd, a doorbell end (readable when rung),
// drain it and call ring after each ring: the flows ring kicks are then
// served by this loop without a hand-off (see session.BellWatcher). After
// unwatch returns the loop no longer touches fd; ring may still run once.
func (p *Poller) WatchBell(fd int, ring func()) (unwatch func(), err error) {
	p.bellMu.Lock()
	p.nextBell--
	if p.nextBell >= 0 {
		p.nextBell = -1 // wrapped, after 2^31 watches
	}
	key := p.nextBell
	p.bells[key] = &pbell{fd: fd, ring: ring}
	p.bellMu.Unlock()
	unwatch = func() {
		p.bellMu.Lock()
		defer p.bellMu.Unlock()
		if _, ok := p.bells[key]; ok {
			delete(p.bells, key)
			_ = p.ep.Del(fd)
		}
	}
	if err := p.ep.Add(fd, unix.EPOLLIN, key); err != nil {
		unwatch()
		return nil, fmt.Errorf("%s: %w", p.name, err)
	}
	return unwatch, nil
}

// rung takes one ring of the bell under key (more keep it readable: the
// next wait looks again) and calls its ring. The drain is under bellMu, so
// an unwatch that returned has no drain to come on a descriptor the engine
// may have closed and reused.
func (p *Poller) rung(key int32) {
	p.bellMu.Lock()
	b := p.bells[key]
	if b != nil {
		_ = shm.DrainBell(b.fd)
	}
	p.bellMu.Unlock()
	if b != nil {
		b.ring()
	}
}

func (p *Poller) register(pf *pflow) {
	if err := p.ep.Add(pf.fd, unix.EPOLLIN|unix.EPOLLOUT|unix.EPOLLRDHUP|unix.EPOLLET, int32(pf.fd)); err != nil {
		pf.end(true, err)
		return
	}
	p.flows[int32(pf.fd)] = pf
}

// serve does what can be done now in both directions, then ends the
// session once both are done (or at the first failure). sock: the socket
// signalled (else a kick: the app moved, or the session queued itself).
func (pf *pflow) serve(sock bool) {
	if pf.ended {
		return
	}
	f := pf.f
	if !pf.appClosed {
		select {
		case <-f.AppClosed():
			pf.appClosed = true
			if f.AppReset() {
				pf.end(true, nil)
				return
			}
			// it reads no more; what it wrote drains, within closeTimeout
			pf.rxDone = true
			pf.p.drains.Add(pf, time.Now().Add(pf.p.closeTimeout))
		default:
		}
	}
	if !pf.rxDone && (sock || !pf.rxStalled) {
		if err := pf.toApp(); err != nil {
			pf.end(true, err)
			return
		}
	}
	if !pf.txDone {
		stop, err := pf.fromApp()
		if err != nil || stop {
			pf.end(true, err)
			return
		}
	}
	if pf.rxDone && pf.txDone {
		pf.end(false, nil)
	}
}

// toApp reads the socket into the rx fifo until the socket has nothing more
// (EAGAIN: the next data is a new edge) or the fifo is full (then the app's
// kick resumes).
func (pf *pflow) toApp() error {
	f, rx := pf.f, pf.f.Rx
	pf.rxStalled = false
	if err := TrimIfDue(rx, &pf.trimmed); err != nil {
		return err
	}
	for i := 0; ; i++ {
		if i == serveBudget {
			pf.kick() // more later, after the other sessions
			return nil
		}
		if rx.ReadClosed() {
			pf.rxDone = true // the app reads no more
			return nil
		}
		a, b, err := rx.Reserve()
		if err != nil {
			return err
		}
		if len(a) == 0 {
			rx.SetWriterWaiting()
			if free, err := rx.Free(); err == nil && free == 0 && !rx.ReadClosed() {
				return nil
			}
			continue
		}
		bufs := [][]byte{a, b}
		if len(b) == 0 {
			bufs = bufs[:1]
		}
		n, err := unix.Readv(pf.fd, bufs)
		if n > 0 {
			if err := rx.Commit(n); err != nil {
				return err
			}
			if rx.TakeReaderWaiting() {
				f.WakeApp()
			}
		}
		switch {
		case err == unix.EINTR:
		case err == unix.EAGAIN:
			pf.rxStalled = true
			return nil
		case err != nil:
			return err
		case n == 0:
			rx.CloseWrite()
			f.WakeApp()
			pf.rxDone = true
			return nil
		}
		// A short read is no sign of EAGAIN: the read that takes the last
		// data before a FIN also takes the FIN's edge; only the next read
		// says end of stream.
	}
}

// fromApp writes the tx fifo to the socket until it is empty (then the
// app's kick resumes), the socket is full (EPOLLOUT resumes) or the app
// closed the fifo (then the socket is shut down for writing). stop: the app
// released the session without closing its fifo.
func (pf *pflow) fromApp() (stop bool, err error) {
	f, tx := pf.f, pf.f.Tx
	for i := 0; ; i++ {
		if i == serveBudget {
			pf.kick() // more later, after the other sessions
			return false, nil
		}
		a, b, err := tx.Peek()
		if len(a) > 0 {
			bufs := [][]byte{a, b}
			if len(b) == 0 {
				bufs = bufs[:1]
			}
			n, werr := unix.SendmsgBuffers(pf.fd, bufs, nil, nil, unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT)
			if n > 0 {
				if cerr := tx.Consume(n); cerr != nil {
					return false, cerr
				}
				if tx.TakeWriterWaiting() {
					f.WakeApp()
				}
			}
			switch {
			case werr == unix.EINTR:
			case werr == unix.EAGAIN:
				return false, nil
			case werr != nil:
				return false, werr
			}
			continue
		}
		if err == io.EOF {
			if serr := unix.Shutdown(pf.fd, unix.SHUT_WR); serr != nil && serr != unix.ENOTCONN {
				return false, serr
			}
			pf.txDone = true
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if pf.appClosed && !tx.WriteClosed() {
			return true, nil
		}
		tx.SetReaderWaiting()
		if n, lerr := tx.Len(); lerr == nil && n == 0 && !tx.WriteClosed() {
			return false, nil
		}
	}
}

// Ended and Expire make a pflow Draining: its app's last bytes did not
// leave in time.
func (pf *pflow) Ended() bool { return pf.ended }
func (pf *pflow) Expire()     { pf.end(true, nil) }

// end closes the socket (with a reset when abort) and finishes the flow:
// err resets the app's session with what went wrong.
func (pf *pflow) end(abort bool, err error) {
	pf.ended = true
	p := pf.p
	p.load.Add(-1)
	if p.flows[int32(pf.fd)] == pf {
		delete(p.flows, int32(pf.fd))
		_ = p.ep.Del(pf.fd)
	}
	if abort {
		_ = unix.SetsockoptLinger(pf.fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	}
	unix.Close(pf.fd)
	if err != nil && !errors.Is(err, errStopped) {
		pf.f.Finish(wire.ErrReset, resetMessage(err, pf.peer, p.name))
		return
	}
	pf.f.Finish(wire.OK, "")
}
