package session

import (
	"crypto/tls"
	"fmt"
	"net/netip"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/wire"
)

// Flow: the engine side of a session that a transport carries, and what a
// transport may call on it.

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

	ns        *namespace
	s         *session
	app       string // for rule lookups without the lock
	dgram     bool   // a datagram socket: records, Permit per datagram
	tlsClient *tls.Config
	ctx       uint64
	remote    wire.Addr
	rxOff     int
	txOff     int
	seg       *segment
	wake      *wakeEnd // the app worker's wake-up end, shared with its other flows
	ev        uint32   // its bit in the worker's event bits (events.go)

	// kick is made by the first Kick: a transport that serves its flows
	// from event loops (Notify) never asks, and its sessions carry no
	// channel
	kick     atomic.Pointer[chan struct{}]
	closed   chan struct{}
	appReset atomic.Bool
	// notify, when set (Notify), replaces kick and also reports AppClosed:
	// for a transport that serves its flows from an event loop, not from a
	// goroutine per flow blocked on the channels
	notify atomic.Pointer[func()]

	// under ns.mu
	connected bool
	appDone   bool
	finished  bool
}

// WakeApp rings the doorbell of the app worker that owns the session (its
// event loop then re-checks the Read and Write calls waiting on this
// session: its event bit names it). It never blocks: the engine rings its
// own end of the doorbell.
func (f *Flow) WakeApp() {
	if ev := f.wake.w.ev; ev != nil {
		ev.wake(f.ev)
	}
	if f.wake.pipe {
		_ = writeWake(f.wake.fd)
		return
	}
	_ = shm.Ring(f.wake.fd)
}

// Affinity names the app worker the session belongs to: a BellWatcher
// serves the flows of one worker in the loop that watches its doorbell
// (WatchBell's affinity), so a ring kicks them without another hand-off.
func (f *Flow) Affinity() uint64 { return f.wake.w.affinity() }

// Kick receives after the app signalled progress on one of its transport
// fifos (possibly of another session of the same app: re-check). Its first
// receive comes at once: kicks that came before the first call are not
// kept, so the caller looks at the fifos once more.
func (f *Flow) Kick() <-chan struct{} {
	if c := f.kick.Load(); c != nil {
		return *c
	}
	c := make(chan struct{}, 1)
	c <- struct{}{}
	if !f.kick.CompareAndSwap(nil, &c) {
		return *f.kick.Load()
	}
	return c
}

// Notify makes the engine call fn instead of sending on Kick, and also once
// the app released the session (AppClosed is closed then). fn must not
// block or call into the engine: it runs under the engine's locks. A kick
// may have come before Notify: the caller looks at the fifos afterwards.
func (f *Flow) Notify(fn func()) { f.notify.Store(&fn) }

// poke is a kick: to the notify function, or on the channel.
func (f *Flow) poke() {
	if fn := f.notify.Load(); fn != nil {
		(*fn)()
		return
	}
	if c := f.kick.Load(); c != nil {
		select {
		case *c <- struct{}{}:
		default:
		}
	}
}

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
	la := wire.Addr{Proto: wire.TCP, IP: local.Addr().Unmap(), Port: local.Port()}
	s.w.send(&wire.Connected{Ctx: f.ctx, Session: s.handle, Local: la, Remote: f.remote, Fifos: f.fifos()})
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
	f.wake.releaseLocked()
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
	if fn := f.notify.Load(); fn != nil {
		(*fn)()
	}
	if f.finished {
		f.freeLocked()
	}
}

func (f *Flow) freeLocked() {
	if ev := f.s.w.ev; ev != nil {
		ev.detach(f)
	} else {
		a := f.s.w.app
		a.flowMu.Lock()
		delete(a.flows, f)
		a.flowMu.Unlock()
	}
	seg := f.seg
	written := fifoBytes(seg, f.rxOff, f.txOff)
	f.ns.stats.bytes += written
	seg.free(f.rxOff, written)
	seg.sessions--
	switch {
	case seg.sessions > 0:
	case seg.orphan:
		f.ns.dropSegment(seg)
	case seg.owner != nil:
		f.ns.dropTransportSegLocked(seg)
	}
}

// wakeEnd is a duplicate of the engine's end of an app worker's doorbell
// (or of a version-2 app's wake pipe), shared by the worker's transport
// flows: they may outlive the worker's own descriptors (the transport
// finishes later), so they hold this copy, never a description the app
// holds. One descriptor per worker, not per session; refs and close under
// ns.mu.
type wakeEnd struct {
	w    *worker
	fd   int
	pipe bool
	refs int
}

// wakeEndLocked returns w's shared wake-up end with a reference taken.
func (a *app) wakeEndLocked(w *worker) (*wakeEnd, error) {
	if we := a.wakes[w]; we != nil {
		we.refs++
		return we, nil
	}
	fd, pipe, err := w.appWakeFD()
	if err != nil {
		return nil, err
	}
	if a.wakes == nil {
		a.wakes = map[*worker]*wakeEnd{}
	}
	we := &wakeEnd{w: w, fd: fd, pipe: pipe, refs: 1}
	a.wakes[w] = we
	return we, nil
}

// releaseLocked drops a flow's reference; the last one closes the end.
func (we *wakeEnd) releaseLocked() {
	if we == nil || we.refs == 0 {
		return
	}
	if we.refs--; we.refs > 0 {
		return
	}
	unix.Close(we.fd)
	if a := we.w.app; a.wakes[we.w] == we {
		delete(a.wakes, we.w)
	}
}

// newFlowLocked creates a transport session of worker w: its fifo pair in
// the app's own segment and its registration, so a reap reaches the
// transport. ctx is the app's request that the session answers (0 for an
// accepted one).
func (ns *namespace) newFlowLocked(w *worker, ctx uint64, local, remote wire.Addr) (*Flow, wire.Code, string) {
	a := w.app
	if a.own == nil || a.dead || w.dead {
		return nil, wire.ErrShutdown, fmt.Sprintf("app %s is detaching", a.name)
	}
	if a.nsessions >= ns.cfg.MaxSessionsPerApp {
		return nil, wire.ErrQuota, fmt.Sprintf("app %s reached maxSessionsPerApp (%d) of app namespace %s", a.name, ns.cfg.MaxSessionsPerApp, ns.key)
	}
	if err := ns.transportWakeLocked(w); err != nil {
		return nil, wire.ErrInternal, fmt.Sprintf("cannot pass the fifo segment to app %s: %v", a.name, err)
	}
	rxCap, txCap := a.rxFifo, a.txFifo
	fpRx, fpTx := shm.FifoFootprint(rxCap), shm.FifoFootprint(txCap)
	seg, off, code, msg := ns.transportAllocLocked(w, fpRx+fpTx)
	if code != wire.OK {
		return nil, code, msg
	}
	fail := func(err error) (*Flow, wire.Code, string) {
		seg.alloc.Free(off)
		if seg.sessions == 0 && seg.owner != nil {
			ns.dropTransportSegLocked(seg)
		}
		return nil, wire.ErrInternal, fmt.Sprintf("fifo init: %v", err)
	}
	rx, err := shm.InitFifo(seg.seg, off, rxCap)
	if err != nil {
		return fail(err)
	}
	tx, err := shm.InitFifo(seg.seg, off+fpRx, txCap)
	if err != nil {
		return fail(err)
	}
	wake, err := a.wakeEndLocked(w)
	if err != nil {
		return fail(err)
	}
	s := &session{handle: ns.handle(), w: w, pairOff: -1, s2cOff: -1}
	f := &Flow{Rx: rx, Tx: tx, ns: ns, s: s, app: a.name, ctx: ctx, remote: remote, rxOff: off, txOff: off + fpRx, seg: seg,
		wake: wake, closed: make(chan struct{})}
	s.flow = f
	seg.sessions++
	ns.sessions[s.handle] = s
	w.sessions[s.handle] = s
	a.nsessions++
	ns.stats.sessionsOpened++
	if w.ev != nil {
		w.ev.attach(f)
	} else {
		a.flowMu.Lock()
		if a.flows == nil {
			a.flows = map[*Flow]struct{}{}
		}
		a.flows[f] = struct{}{}
		a.flowMu.Unlock()
	}
	return f, wire.OK, ""
}

// dropFlowLocked undoes newFlowLocked for a flow no transport took and no
// app saw: no events.
func (ns *namespace) dropFlowLocked(f *Flow) {
	f.finished = true
	f.wake.releaseLocked()
	if f.appDone {
		// the app released it already (reaped while the transport was
		// asked without ns.mu): only the fifos are left to free
		f.freeLocked()
		return
	}
	ns.stats.sessionsOpened--
	ns.releaseLocked(f.s, false, "")
	ns.stats.sessionsClosed--
}

func (f *Flow) fifos() wire.FifoPair {
	return wire.FifoPair{Segment: f.seg.handle, RxOff: uint64(f.rxOff), TxOff: uint64(f.txOff),
		RxCap: uint32(f.Rx.Cap()), TxCap: uint32(f.Tx.Cap()), Event: f.ev}
}

// Permit reports whether a datagram socket bound to local may send to
// (Connect) or receive from (Accept) remote: the app namespace's local then
// global SessionRules. A deny names the rule. Lock-free (rule tables are
// swapped whole); safe from any goroutine.
func (f *Flow) Permit(dir Direction, local, remote netip.AddrPort) (bool, string) {
	r := f.ns.e.cfg.Rules
	if r == nil {
		return true, ""
	}
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	if local.Addr().IsUnspecified() && remote.Addr().Is4() {
		// a dual-stack socket on [::] talking IPv4: match it as 0.0.0.0
		local = netip.AddrPortFrom(netip.IPv4Unspecified(), local.Port())
	}
	for _, sc := range []Scope{LocalScope, GlobalScope} {
		if sc == LocalScope && dir == Accept {
			continue
		}
		v := r.Lookup(RuleQuery{Namespace: f.ns.key, App: f.app, Scope: sc, Dir: dir, Proto: wire.UDP, Local: local, Remote: remote})
		if v.Action == Deny {
			return false, v.Rule
		}
	}
	return true, ""
}
