package session

import (
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/wire"
)

// Flow is the engine side of a session a transport carries: the app holds
// the other end of its two fifos, which live in the app's own segment.
//
// The transport writes Rx and reads Tx, following the fifo waiting-flag
// protocol: after making progress on a fifo whose peer waits (TakeReaderWaiting
// on Rx, TakeWriterWaiting on Tx) it calls WakeApp; before sleeping it sets
// its own waiting flag, re-checks, then waits on Kick (the app signals it
// after progress), AppClosed or its own stop condition.
//
// The transport completes the connect with Connected, and ends its side with
// Finish exactly once (also when the connect failed). The fifos stay mapped
// until both the app and the transport are done with them. None of the
// methods blocks on the app.
type Flow struct {
	Rx *shm.Fifo // the transport writes, the app reads
	Tx *shm.Fifo // the app writes, the transport reads

	ns      *namespace
	s       *session
	ctx     uint64
	remote  wire.Addr
	rxOff   int
	txOff   int
	seg     *segment
	appWake int // a duplicate of the app worker's wake eventfd

	kick     chan struct{}
	closed   chan struct{}
	appReset atomic.Bool

	// under ns.mu
	connected bool
	appDone   bool
	finished  bool
}

// WakeApp signals the app worker that owns the session (its event loop then
// re-checks the waiting Read and Write calls).
func (f *Flow) WakeApp() { _ = shm.Signal(f.appWake) }

// Kick receives after the app signalled progress on one of its transport
// fifos (possibly of another session of the same app: re-check).
func (f *Flow) Kick() <-chan struct{} { return f.kick }

// AppClosed is closed when the app released the session: closed it
// (AppReset false: it wrote its last bytes to Tx and closed it for writing),
// reset it, or went away.
func (f *Flow) AppClosed() <-chan struct{} { return f.closed }

// AppReset reports whether the app's release was an abort (reset, death).
func (f *Flow) AppReset() bool { return f.appReset.Load() }

// Connected completes the connect: the app gets its connected event with
// the fifos. It returns false when the app is gone already; the transport
// then stops and calls Finish.
func (f *Flow) Connected(local netip.AddrPort) bool {
	ns := f.ns
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if f.finished || f.appDone || f.connected {
		return false
	}
	f.connected = true
	s := f.s
	s.local = wire.Addr{Proto: wire.TCP, IP: local.Addr(), Port: local.Port()}
	s.w.send(&wire.Connected{Ctx: f.ctx, Session: s.handle, Local: s.local, Remote: s.remote,
		Fifos: wire.FifoPair{Segment: f.seg.handle, RxOff: uint64(f.rxOff), TxOff: uint64(f.txOff),
			RxCap: uint32(f.Rx.Cap()), TxCap: uint32(f.Tx.Cap())}})
	return true
}

// Finish ends the transport's side; the transport must not touch the fifos
// afterwards. Before Connected, code (wire.ErrReset when OK) and msg fail
// the app's connect. After it, wire.OK tells the app the session ended
// (disconnected; what the transport wrote to Rx stays readable), any other
// code resets it with msg.
func (f *Flow) Finish(code wire.Code, msg string) {
	ns := f.ns
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if f.finished {
		return
	}
	f.finished = true
	unix.Close(f.appWake)
	f.appWake = -1
	s := f.s
	switch {
	case f.appDone:
		f.freeLocked()
	case !f.connected:
		if code == wire.OK {
			code = wire.ErrReset
		}
		if code == wire.ErrRefused {
			ns.stats.connectsRefused++
		}
		s.w.send(&wire.Connected{Ctx: f.ctx, Code: code, Msg: wire.Truncate(msg, wire.MaxMessageLen), Remote: f.remote})
		ns.releaseLocked(s, false, "") // frees: the app never saw the session
	case code == wire.OK:
		s.w.send(&wire.Disconnected{Session: s.handle})
	default:
		ns.stats.resets++
		s.w.send(&wire.ResetEvt{Session: s.handle, Code: code, Msg: wire.Truncate(msg, wire.MaxMessageLen)})
	}
}

// appDoneLocked is the app side's release (from releaseLocked).
func (f *Flow) appDoneLocked(reset bool) {
	if f.appDone {
		return
	}
	f.appDone = true
	f.appReset.Store(reset)
	close(f.closed)
	if f.finished {
		f.freeLocked()
	}
}

func (f *Flow) freeLocked() {
	a := f.s.w.app
	a.flowMu.Lock()
	delete(a.flows, f)
	a.flowMu.Unlock()
	seg := f.seg
	f.ns.stats.bytes += fifoBytes(seg, f.rxOff, f.txOff)
	seg.alloc.Free(f.rxOff)
	seg.sessions--
	if seg.sessions == 0 && seg.orphan {
		f.ns.dropSegment(seg)
	}
}

// transportWakeLocked makes sure the app mapped its own segment as a fifo
// segment with a wake eventfd the engine watches: the app signals it after
// progress on a transport fifo whose waiting flag is set, and the engine
// kicks the flows of the app.
func (ns *namespace) transportWakeLocked(w *worker) error {
	a := w.app
	if a.twake != nil {
		return nil
	}
	fd, err := shm.NewEventFD()
	if err != nil {
		return err
	}
	if err := a.sendSock(&wire.AddSegment{Segment: a.own.handle, Size: uint64(a.own.seg.Size()), Worker: w.id,
		HasPeerWake: true}, []int{a.own.seg.FD(), fd}); err != nil {
		unix.Close(fd)
		return err
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("hs-twake-%d", a.id))
	a.twake = f
	go a.kicker(f)
	return nil
}

// kicker forwards the app's wake-ups of its transport fifos to the flows.
func (a *app) kicker(f *os.File) {
	var b [8]byte
	for {
		if _, err := f.Read(b[:]); err != nil {
			return
		}
		a.flowMu.Lock()
		for fl := range a.flows {
			select {
			case fl.kick <- struct{}{}:
			default:
			}
		}
		a.flowMu.Unlock()
	}
}

// flowState is kept per app for its transport sessions.
type flowState struct {
	flowMu sync.Mutex
	flows  map[*Flow]struct{}
	twake  *os.File
}

// transportConnect hands a connect to the transport: the fifo pair is
// allocated in the app's own segment and the session registered (so a reap
// reaches the transport) before the transport is called.
func (ns *namespace) transportConnect(t Transport, w *worker, m *wire.Connect, dst netip.AddrPort,
	fail func(code wire.Code, format string, args ...any)) {
	a := w.app
	if a.own == nil {
		fail(wire.ErrShutdown, "app %s is detaching", a.name)
		return
	}
	if err := ns.transportWakeLocked(w); err != nil {
		fail(wire.ErrInternal, "cannot pass the fifo segment to app %s: %v", a.name, err)
		return
	}
	rxCap, txCap := a.rxFifo, a.txFifo
	fpRx, fpTx := shm.FifoFootprint(rxCap), shm.FifoFootprint(txCap)
	seg := a.own
	off, err := seg.alloc.Alloc(fpRx + fpTx)
	if err != nil {
		fail(wire.ErrQuota, "no room for a fifo pair of %d bytes in app %s's segment (segmentSize %d of app namespace %s)",
			fpRx+fpTx, a.name, ns.cfg.SegmentSize, ns.key)
		return
	}
	rx, err := shm.InitFifo(seg.seg, off, rxCap)
	if err == nil {
		var tx *shm.Fifo
		tx, err = shm.InitFifo(seg.seg, off+fpRx, txCap)
		if err == nil {
			wake, derr := unix.FcntlInt(uintptr(w.wakeFD), unix.F_DUPFD_CLOEXEC, 0)
			if derr != nil {
				err = derr
			} else {
				ns.startFlow(t, w, m, dst, seg, off, fpRx, rx, tx, wake, fail)
				return
			}
		}
	}
	seg.alloc.Free(off)
	fail(wire.ErrInternal, "fifo init: %v", err)
}

func (ns *namespace) startFlow(t Transport, w *worker, m *wire.Connect, dst netip.AddrPort, seg *segment, off, fpRx int,
	rx, tx *shm.Fifo, wake int, fail func(code wire.Code, format string, args ...any)) {
	a := w.app
	ra := wire.Addr{Proto: wire.TCP, IP: dst.Addr(), Port: dst.Port()}
	s := &session{handle: ns.handle(), w: w, pairOff: -1, s2cOff: -1, client: true, remote: ra}
	f := &Flow{Rx: rx, Tx: tx, ns: ns, s: s, ctx: m.Ctx, remote: ra, rxOff: off, txOff: off + fpRx, seg: seg,
		appWake: wake, kick: make(chan struct{}, 1), closed: make(chan struct{})}
	s.flow = f
	seg.sessions++
	ns.sessions[s.handle] = s
	w.sessions[s.handle] = s
	a.nsessions++
	ns.stats.sessionsOpened++
	a.flowMu.Lock()
	if a.flows == nil {
		a.flows = map[*Flow]struct{}{}
	}
	a.flows[f] = struct{}{}
	a.flowMu.Unlock()
	code, msg := t.Connect(ConnectRequest{Namespace: ns.key, App: a.name, Remote: ra, Flow: f})
	if code == wire.OK {
		return
	}
	// refused synchronously: undo without events (the app never saw it)
	f.finished = true
	unix.Close(wake)
	f.appWake = -1
	ns.stats.sessionsOpened--
	ns.releaseLocked(s, false, "")
	ns.stats.sessionsClosed--
	fail(code, "%s", msg)
}
