package netstack

import (
	"errors"
	"io"
	"net/netip"
	"sync"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/transport/stream"
	"github.com/hoststack/hoststack/engine/wire"
)

// A loop moves the bytes of plain TCP sessions between the stack's
// endpoints and the apps' fifos from one goroutine, for any number of
// sessions: the endpoint's waiter queue (a waiter entry whose callback is
// the session itself) and the app's kicks (session.Flow.Notify) queue a
// session, and the loop serves what is queued. A session costs no
// goroutine or stack of its own; the stack still copies its segments
// straight into the rx fifo and out of the tx fifo.
type loop struct {
	t    *Transport
	wake chan struct{} // cap 1: something was queued

	mu     sync.Mutex
	queued []*nflow
	stop   bool

	// loop-only
	drains stream.Drains // closed by their apps, draining
	done   chan struct{}
}

// nflow is one session of a loop.
type nflow struct {
	l     *loop
	f     *session.Flow
	ep    tcpip.Endpoint
	wq    *waiter.Queue
	entry waiter.Entry
	peer  netip.AddrPort

	queued bool // under l.mu

	// loop-only
	w         fifoWriter
	r         ringReader
	rxDone    bool // end of stream handed to the app, or it reads no more
	txDone    bool // the app's end of stream sent
	appClosed bool
	ended     bool
	trimmed   time.Time // when the rx fifo's walked-past pages were last given back
}

// serveBudget bounds the rounds one serve makes, so a session whose peer
// and app keep up forever does not starve the loop's others: past it, the
// session queues itself again.
const serveBudget = 16

func newLoop(t *Transport) *loop {
	l := &loop{t: t, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go l.run()
	return l
}

// add serves f over ep from now on; the loop finishes f (and closes or
// aborts ep) when the session ends.
func (l *loop) add(f *session.Flow, ep tcpip.Endpoint, wq *waiter.Queue, peer netip.AddrPort) {
	nf := &nflow{l: l, f: f, ep: ep, wq: wq, peer: peer, trimmed: time.Now()}
	nf.w.f = f.Rx
	nf.entry.Init(nf, waiter.ReadableEvents|waiter.WritableEvents|waiter.EventHUp|waiter.EventErr)
	wq.EventRegister(&nf.entry)
	f.Notify(nf.kick)
	nf.kick() // events and kicks may have come before the registrations
}

// NotifyEvent implements waiter.EventListener: the stack has news for the
// endpoint. It runs with the waiter queue locked: it only queues.
func (nf *nflow) NotifyEvent(waiter.EventMask) { nf.kick() }

// kick queues the session for the loop; it never blocks.
func (nf *nflow) kick() {
	l := nf.l
	l.mu.Lock()
	if nf.queued || l.stop {
		l.mu.Unlock()
		return
	}
	nf.queued = true
	l.queued = append(l.queued, nf)
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

func (l *loop) run() {
	defer close(l.done)
	var batch []*nflow
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var set time.Time // the timer's deadline: the first drain's end
	for {
		if deadline := l.drains.Next(); !deadline.Equal(set) {
			timer.Stop()
			if !deadline.IsZero() {
				timer.Reset(time.Until(deadline))
			}
			set = deadline
		}
		select {
		case <-l.wake:
		case <-timer.C:
			set = time.Time{}
		}
		l.mu.Lock()
		if l.stop {
			l.mu.Unlock()
			return
		}
		batch, l.queued = l.queued, batch[:0]
		for _, nf := range batch {
			nf.queued = false
		}
		l.mu.Unlock()
		for _, nf := range batch {
			nf.serve()
		}
		clear(batch)
		if l.drains.Len() > 0 {
			l.drains.Expire(time.Now())
		}
	}
}

// close stops the loop once every session ended (Transport.Close).
func (l *loop) close() {
	l.mu.Lock()
	l.stop = true
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	<-l.done
}

// serve does what can be done now in both directions, following the fifo
// waiting-flag protocol, and ends the session once both directions ended
// or at the first failure.
func (nf *nflow) serve() {
	if nf.ended {
		return
	}
	f, ep := nf.f, nf.ep
	if !nf.appClosed {
		select {
		case <-f.AppClosed():
			nf.appClosed = true
			if f.AppReset() {
				ep.Abort() // the peer sees the app's reset
				nf.end(wire.OK, "")
				return
			}
			// The app closed: it reads no more; what it wrote drains.
			nf.rxDone = true
			nf.l.drains.Add(nf, time.Now().Add(nf.l.t.opts.CloseTimeout))
		default:
		}
	}
	rx, tx := f.Rx, f.Tx
	if !nf.rxDone {
		if err := stream.TrimIfDue(rx, &nf.trimmed); err != nil {
			nf.finish(wire.ErrReset, "netstack: rx fifo: "+err.Error())
			return
		}
	}
	for round := 0; ; round++ {
		if round == serveBudget {
			nf.kick() // more later, after the loop's other sessions
			return
		}
		progress := false
		// stack → app: the endpoint writes its segments straight into the
		// rx fifo, as much as fits.
		if !nf.rxDone {
			free, err := rx.Free()
			switch {
			case errors.Is(err, shm.ErrClosed) || rx.ReadClosed():
				nf.rxDone = true // the app reads no more
			case err != nil:
				nf.finish(wire.ErrReset, "netstack: rx fifo: "+err.Error())
				return
			case free == 0:
				rx.SetWriterWaiting()
				if n, _ := rx.Free(); n > 0 {
					progress = true
				}
			default:
				res, terr := ep.Read(&tcpip.LimitedWriter{W: &nf.w, N: int64(free)}, tcpip.ReadOptions{})
				if res.Count > 0 {
					progress = true
					if rx.TakeReaderWaiting() {
						f.WakeApp()
					}
				}
				switch terr.(type) {
				case nil, *tcpip.ErrWouldBlock:
				case *tcpip.ErrClosedForReceive:
					rx.CloseWrite()
					f.WakeApp()
					nf.rxDone = true
				default:
					nf.finish(wire.ErrReset, resetMessage(terr, nf.peer))
					return
				}
			}
		}
		// app → stack: the endpoint copies from the tx fifo into its send
		// buffer, as much as it takes.
		if !nf.txDone {
			a, b, err := tx.Peek()
			switch {
			case len(a)+len(b) > 0:
				nf.r.reset(a, b)
				n, terr := ep.Write(&nf.r, tcpip.WriteOptions{})
				if n > 0 {
					progress = true
					if cerr := tx.Consume(int(n)); cerr != nil {
						nf.finish(wire.ErrReset, "netstack: tx fifo: "+cerr.Error())
						return
					}
					if tx.TakeWriterWaiting() {
						f.WakeApp()
					}
				}
				switch terr.(type) {
				case nil, *tcpip.ErrWouldBlock:
				default:
					nf.finish(wire.ErrReset, resetMessage(terr, nf.peer))
					return
				}
			case err == io.EOF:
				ep.Shutdown(tcpip.ShutdownWrite)
				nf.txDone = true
				progress = true
			case err != nil:
				nf.finish(wire.ErrReset, "netstack: tx fifo: "+err.Error())
				return
			case nf.appClosed && !tx.WriteClosed():
				// released without closing its fifo for writing (not a
				// reset either): nothing more will come; the peer gets a
				// reset, not a clean end of stream
				ep.Abort()
				nf.end(wire.OK, "")
				return
			default:
				tx.SetReaderWaiting()
				if n, _ := tx.Len(); n > 0 || tx.WriteClosed() {
					progress = true
				}
			}
		}
		if nf.txDone && nf.rxDone {
			nf.finish(wire.OK, "")
			return
		}
		if !progress {
			return // the stack's events and the app's kicks resume it
		}
	}
}

// Ended and Expire make an nflow stream.Draining.
func (nf *nflow) Ended() bool { return nf.ended }
func (nf *nflow) Expire() {
	nf.finish(wire.ErrReset, "netstack: the app's last bytes did not leave in time")
}

// finish closes the endpoint (aborts it on a failure) and ends the
// session.
func (nf *nflow) finish(code wire.Code, msg string) {
	if code == wire.OK {
		nf.ep.Close()
	} else {
		nf.ep.Abort()
	}
	nf.end(code, msg)
}

// end releases the session: the waiter entry, the flow, and its place in
// the transport's count (Close waits for it).
func (nf *nflow) end(code wire.Code, msg string) {
	nf.ended = true
	nf.wq.EventUnregister(&nf.entry)
	nf.f.Finish(code, msg)
	nf.l.t.flows.Done()
}
