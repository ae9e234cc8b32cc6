package client

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/wire"
)

// worker is one engine worker of the app: a queue pair, doorbells and an
// event loop goroutine (blocking its OS thread in epoll_wait, not parked in
// the netpoller as the engine's loops are) that drains the event queue and
// wakes the Read/Write calls blocked on this worker's sessions.
//
// Why not the netpoller (shm.Epoll): the app's own goroutines poll their
// fifos with runtime.Gosched between looks, which keeps the run queues
// non-empty, and Go consults the netpoller only when they are empty (or
// every 10 ms). Measured with the apps in one process, 4 runs each: with
// this loop parked, 64 B cut-through streams ran at 1.04-1.09 GB/s
// instead of 1.49-1.57, and 1 KiB and 64 KiB streams collapsed (1.6 and
// 12-15 GB/s) in 3 of 12 runs. A thread asleep in epoll_wait is woken by
// the kernel directly.
type worker struct {
	app   *App
	gen   uint64     // the attachment it belongs to
	codec wire.Codec // that attachment's wire version
	id    uint32
	mq    *shm.Segment
	evq   *shm.Queue
	rq    *shm.Queue
	// bell is our end of the worker's doorbell with the engine: the engine
	// rings it (events, transport progress), we ring it for requests.
	bell int
	// tbell is our end of the worker's transport doorbell: rung after
	// progress on a transport fifo whose waiting flag the engine set.
	tbell int
	// ep is the loop's epoll set: intr, bell and the doorbell end of every
	// cut-through segment serving this worker (added by the socket reader).
	ep   int
	intr int // a private eventfd: stopLoop and bell removals wake the loop
	// sleeping is this loop's flag in the worker's control line: set before
	// sleeping so the engine rings the doorbell for new events
	sleeping *atomic.Uint64
	// ev and rxev are the worker's two sets of transport event bits in the
	// queue segment (wire version 5; nil before): a transport session's
	// Conn sets its bit in ev before ringing tbell; the engine sets it in
	// rxev before ringing bell, and the loop re-checks the calls blocked
	// on the sessions named there (evConns, by bit; under mu). evMu keeps
	// release from unmapping ev under a ringing Conn.
	evMu    sync.RWMutex
	ev      *shm.EventBits
	rxev    *shm.EventBits // the loop's alone
	evBits  uint32         // their number, for good
	evConns []*Conn

	reqMu  sync.Mutex // the request queue has one producer at a time
	reqBuf [wire.QueueMsgMax]byte

	mu        sync.Mutex
	pending   map[uint64]chan any
	sessions  map[uint64]*Conn
	listeners map[uint64]*listener
	// waiters holds the blocked calls by the descriptor whose ring wakes
	// them (a cut-through segment's doorbell end, or bell for sessions of
	// the engine's transports), so a ring re-checks only the calls it can
	// concern, not every blocked call of the worker.
	waiters map[int]map[*waiter]struct{}
	checked uint64 // blocked calls re-checked after rings (tests)
	dead    error
	// orphan: its engine is gone but it still serves cut-through sessions
	// (App.lost); it retires with the last of them
	orphan atomic.Bool
	// retired are doorbell ends removed from ep that the loop closes before
	// it waits again: it may still hold a ready event naming one, and a
	// closed fd number can be reused by anything
	retired  []int
	loopDone bool // the loop exited: retired ends are closed at once

	// trimMu guards trimList, the Conns written since their tx pages were
	// last given back; a timer (trimTimer, armed while the list is not
	// empty) gives them back after App.trimAfter.
	trimMu    sync.Mutex
	trimList  []*Conn
	trimTimer *time.Timer

	// awaiting counts calls waiting for their answer: while there are,
	// the loop polls its queue briefly before sleeping (see loop)
	awaiting atomic.Int32

	stop atomic.Bool
	done chan struct{}
}

// waiter is a Read or Write blocked on a fifo; the event loop checks its
// condition after each wake-up.
type waiter struct {
	key   int         // the descriptor whose ring wakes it (worker.waiters)
	ready func() bool // called with worker.mu held, the waiting goroutine parked
	arm   func()      // sets the fifo's waiting flag again
	ch    chan struct{}
}

func (a *App) newWorker(info wire.WorkerInfo, fds []int) (*worker, error) {
	mq, err := shm.OpenSegment(fds[0])
	if err != nil {
		closeFDs(fds[1:])
		return nil, fmt.Errorf("queue segment: %w", err)
	}
	w := &worker{app: a, id: info.ID, mq: mq, bell: fds[1], tbell: fds[2], ep: -1, intr: -1,
		pending: map[uint64]chan any{}, sessions: map[uint64]*Conn{},
		listeners: map[uint64]*listener{}, waiters: map[int]map[*waiter]struct{}{}, done: make(chan struct{})}
	if w.intr, err = shm.NewEventFD(); err != nil {
		w.release()
		return nil, err
	}
	if w.ep, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		w.release()
		return nil, fmt.Errorf("epoll: %w", err)
	}
	for _, fd := range []int{w.intr, w.bell} {
		if err := w.watch(fd); err != nil {
			w.release()
			return nil, err
		}
	}
	if info.EvqOff > uint64(mq.Size()) || info.ReqOff > uint64(mq.Size()) {
		w.release()
		return nil, errors.New("queue offsets outside the queue segment")
	}
	if w.evq, err = shm.OpenQueue(mq, int(info.EvqOff), int(info.EvqSlots), w.bell); err != nil {
		w.release()
		return nil, fmt.Errorf("event queue: %w", err)
	}
	if w.rq, err = shm.OpenQueue(mq, int(info.ReqOff), int(info.ReqSlots), w.bell); err != nil {
		w.release()
		return nil, fmt.Errorf("request queue: %w", err)
	}
	if info.CtlOff > uint64(mq.Size()) {
		w.release()
		return nil, errors.New("control line outside the queue segment")
	}
	if w.sleeping, err = wire.Word(mq.Bytes(), int(info.CtlOff)+wire.CtlSleeping); err != nil {
		w.release()
		return nil, err
	}
	if info.EvBits > 0 {
		if info.EvOff > uint64(mq.Size()) {
			w.release()
			return nil, errors.New("event bits outside the queue segment")
		}
		if w.ev, err = shm.OpenEventBits(mq.Bytes(), int(info.EvOff), int(info.EvBits)); err != nil {
			w.release()
			return nil, fmt.Errorf("event bits: %w", err)
		}
		if w.rxev, err = shm.OpenEventBits(mq.Bytes(), int(info.EvOff)+shm.EventBitsSize(int(info.EvBits)), int(info.EvBits)); err != nil {
			w.release()
			return nil, fmt.Errorf("event bits: %w", err)
		}
		w.evBits = info.EvBits
	}
	return w, nil
}

// setEvent marks a transport session's event bit before its ring.
func (w *worker) setEvent(bit uint32) {
	w.evMu.RLock()
	if w.ev != nil {
		w.ev.Set(int(bit))
	}
	w.evMu.RUnlock()
}

func (w *worker) release() {
	w.trimMu.Lock()
	if w.trimTimer != nil {
		w.trimTimer.Stop()
	}
	w.trimList = nil
	w.trimMu.Unlock()
	w.evMu.Lock()
	w.ev = nil
	w.evMu.Unlock()
	w.mu.Lock()
	w.rxev = nil // the loop has stopped
	w.mu.Unlock()
	w.mq.Close()
	for _, fd := range []int{w.bell, w.tbell, w.ep, w.intr} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

// watch adds a doorbell end (or intr) to the loop's epoll set. Level
// triggered: an end rung before it was added wakes the loop at once.
func (w *worker) watch(fd int) error {
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
	if err := unix.EpollCtl(w.ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		return fmt.Errorf("epoll add: %w", err)
	}
	return nil
}

// retire removes a cut-through doorbell end from the loop's set and has the
// loop close it (at once when the loop has exited).
func (w *worker) retire(fd int) {
	w.mu.Lock()
	if w.loopDone {
		w.mu.Unlock()
		unix.Close(fd)
		return
	}
	_ = unix.EpollCtl(w.ep, unix.EPOLL_CTL_DEL, fd, nil)
	w.retired = append(w.retired, fd)
	w.mu.Unlock()
	_ = shm.Signal(w.intr)
}

// closeRetired closes the ends retired since the last wait (loop only).
func (w *worker) closeRetired() {
	w.mu.Lock()
	fds := w.retired
	w.retired = nil
	w.mu.Unlock()
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// loop is the worker's event loop.
func (w *worker) loop() {
	// Not LockOSThread: a goroutine blocked in poll(2) keeps its thread
	// anyway, and an unlocked loop can yield its P to the goroutines it
	// just woke (below) instead of leaving them queued behind a P that
	// sits in a syscall until sysmon retakes it.
	defer close(w.done)
	defer func() {
		w.mu.Lock()
		w.loopDone = true
		w.mu.Unlock()
		w.closeRetired()
	}()
	buf := make([]byte, shm.MsgSize)
	var events [16]unix.EpollEvent
	var rung []int // the descriptors the last wait found rung
	armed := false
	// While a call waits for its answer (a dial's connected, a listen's
	// bound), the engine is working on it and answers within microseconds:
	// the loop polls for up to SpinFor before it sleeps, which spares the
	// engine a doorbell ring and this loop a sleep and wake-up (a system
	// call each and a context switch, most of a connect's cost). Only then:
	// an idle loop sleeps at once, as its events may be far off.
	spinFor := w.app.spinFor
	var spinUntil time.Time
	for !w.stop.Load() {
		progress := false
		for {
			n, err := w.evq.TryRecv(buf)
			if err != nil {
				w.engineGone(fmt.Errorf("event queue of worker %d: %w", w.id, err))
				return
			}
			if n == 0 {
				break
			}
			progress = true
			m, err := w.codec.Decode(buf[:n])
			if err != nil {
				continue // a malformed event: ignore it, never trust it
			}
			w.dispatch(m)
		}
		if len(rung) > 0 && w.checkWaiters(rung) {
			progress = true
		}
		rung = rung[:0]
		if progress {
			if armed {
				w.sleeping.Store(0)
				armed = false
			}
			spinUntil = time.Time{}
			// let the goroutines just readied run now, on this P
			runtime.Gosched()
			continue
		}
		if spinFor > 0 && w.awaiting.Load() > 0 {
			now := time.Now()
			if spinUntil.IsZero() {
				spinUntil = now.Add(spinFor)
			}
			if now.Before(spinUntil) {
				runtime.Gosched()
				continue
			}
		}
		if !armed {
			// Announce the sleep, then look once more: an event queued
			// before the engine could see the flag did not signal.
			w.sleeping.Store(1)
			armed = true
			continue
		}
		// The engine rings the worker doorbell for events queued while the
		// flag is set, and fifo peers ring their doorbell after making
		// progress on a fifo whose waiting flag is set, so a wake-up after
		// the checks above is not lost: the ring stays pending in our end.
		w.closeRetired()
		n, err := unix.EpollWait(w.ep, events[:], -1)
		if err != nil && err != unix.EINTR {
			w.engineGone(fmt.Errorf("worker %d: epoll_wait: %w", w.id, err))
			return
		}
		for _, ev := range events[:max(n, 0)] {
			if int(ev.Fd) == w.intr {
				_ = shm.DrainEventFD(w.intr)
			} else {
				_ = shm.DrainBell(int(ev.Fd))
			}
			rung = append(rung, int(ev.Fd))
		}
		w.sleeping.Store(0)
		armed = false
	}
}

func (w *worker) stopLoop() {
	w.stop.Store(true)
	_ = shm.Signal(w.intr)
	<-w.done
}

// checkWaiters wakes the blocked calls whose condition holds among those the
// rung descriptors concern (intr, rung by the client itself, concerns all).
func (w *worker) checkWaiters(rung []int) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	woke := false
	for _, fd := range rung {
		if fd == w.intr {
			for key := range w.waiters {
				woke = w.checkSetLocked(key) || woke
			}
			return woke
		}
	}
	for _, fd := range rung {
		if fd == w.bell && w.rxev != nil {
			woke = w.checkEventsLocked() || woke
			continue
		}
		woke = w.checkSetLocked(fd) || woke
	}
	return woke
}

// checkSetLocked wakes the ready calls among those rung through key.
func (w *worker) checkSetLocked(key int) bool {
	set := w.waiters[key]
	woke := false
	for wt := range set {
		woke = w.checkOneLocked(set, wt) || woke
	}
	if len(set) == 0 {
		delete(w.waiters, key)
	}
	return woke
}

// checkOneLocked wakes wt, one of set, if its call can go on.
func (w *worker) checkOneLocked(set map[*waiter]struct{}, wt *waiter) bool {
	w.checked++
	if !wt.ready() {
		// The wake-up may have been for progress the waiter had already
		// seen (the peer's flag check-and-clear can lag behind its index
		// update), and it consumed the flag: set it again and re-check, or
		// the next progress would not signal.
		wt.arm()
		if !wt.ready() {
			return false
		}
	}
	delete(set, wt)
	close(wt.ch)
	return true
}

// checkConnLocked wakes the ready calls blocked on c.
func (w *worker) checkConnLocked(c *Conn) bool {
	key := int(c.key)
	set := w.waiters[key]
	woke := false
	for _, wt := range [2]*waiter{c.rwait, c.wwait} {
		if _, ok := set[wt]; ok {
			woke = w.checkOneLocked(set, wt) || woke
		}
	}
	if len(set) == 0 {
		delete(w.waiters, key)
	}
	return woke
}

// checkEventsLocked wakes the ready calls blocked on the transport
// sessions the engine named in rxev before ringing bell; bit 0 names every
// session without a bit of its own.
func (w *worker) checkEventsLocked() bool {
	woke, all := false, false
	w.rxev.Drain(func(i int) {
		switch {
		case i == 0:
			all = true
		case i < len(w.evConns):
			if c := w.evConns[i]; c != nil {
				woke = w.checkConnLocked(c) || woke
			}
		}
	})
	if all {
		woke = w.checkSetLocked(w.bell) || woke
	}
	return woke
}

// addWaiterLocked and dropWaiterLocked keep w.waiters (under w.mu).
func (w *worker) addWaiterLocked(wt *waiter) {
	set := w.waiters[wt.key]
	if set == nil {
		set = map[*waiter]struct{}{}
		w.waiters[wt.key] = set
	}
	set[wt] = struct{}{}
}

// wakeLocked wakes wt now if it is still waiting (under w.mu).
func (w *worker) wakeLocked(wt *waiter) {
	set := w.waiters[wt.key]
	if _, ok := set[wt]; !ok {
		return
	}
	delete(set, wt)
	if len(set) == 0 {
		delete(w.waiters, wt.key)
	}
	close(wt.ch)
}

func (w *worker) dropWaiterLocked(wt *waiter) {
	if set := w.waiters[wt.key]; set != nil {
		delete(set, wt)
		if len(set) == 0 {
			delete(w.waiters, wt.key)
		}
	}
}

// engineGone fails everything of this worker: the attachment ended.
func (w *worker) engineGone(why error) {
	w.mu.Lock()
	if w.dead == nil {
		w.dead = why
	}
	pend := w.pending
	w.pending = map[uint64]chan any{}
	conns := make([]*Conn, 0, len(w.sessions))
	for _, c := range w.sessions {
		conns = append(conns, c)
	}
	ls := make([]*listener, 0, len(w.listeners))
	for _, l := range w.listeners {
		ls = append(ls, l)
	}
	w.mu.Unlock()
	for _, ch := range pend {
		close(ch)
	}
	for _, c := range conns {
		c.setReset(engineError(wire.ErrReset, "session ended: "+why.Error()))
	}
	for _, l := range ls {
		l.fail(why)
	}
	w.wakeAll()
}

// engineLost is engineGone for an app that re-attaches: pending requests
// fail and sessions through the engine's transport are reset (the engine
// held their other end), but cut-through sessions go on: their fifos and
// the peer's wake-up descriptor are the two apps' own. Listeners are left
// to App.restoreListeners. The worker retires with its last session.
func (w *worker) engineLost(why error) {
	w.mu.Lock()
	if w.dead == nil {
		w.dead = why
	}
	w.orphan.Store(true)
	pend := w.pending
	w.pending = map[uint64]chan any{}
	var reset []*Conn
	for _, c := range w.sessions {
		if c.seg.ring < 0 || c.udp != nil {
			reset = append(reset, c)
		}
	}
	w.listeners = map[uint64]*listener{}
	empty := len(w.sessions) == 0
	w.mu.Unlock()
	for _, ch := range pend {
		close(ch)
	}
	for _, c := range reset {
		c.setReset(engineError(wire.ErrReset, "session ended: the engine restarted (it held the session's other end): "+why.Error()))
	}
	w.wakeAll()
	if empty {
		go w.app.retireWorker(w)
	}
}

// trimLater puts c on the trim list (c.trimDue was just set, under c.wmu).
func (w *worker) trimLater(c *Conn) {
	w.trimMu.Lock()
	defer w.trimMu.Unlock()
	w.trimList = append(w.trimList, c)
	if w.trimTimer == nil {
		w.trimTimer = time.AfterFunc(w.app.trimAfter, w.trim)
	} else if len(w.trimList) == 1 {
		w.trimTimer.Reset(w.app.trimAfter)
	}
}

// trim gives back the tx pages of the Conns on the trim list: a fifo's ring
// is walked by its indices, so a session that stays open keeps every page
// it ever wrote (up to its capacity) until its producer returns them. The
// Conns a writer holds stay on the list for the next round.
func (w *worker) trim() {
	w.trimMu.Lock()
	list := w.trimList
	w.trimList = nil
	w.trimMu.Unlock()
	var busy []*Conn
	for _, c := range list {
		if !c.trimTx() {
			busy = append(busy, c)
		}
	}
	if len(busy) == 0 || w.stop.Load() {
		return
	}
	w.trimMu.Lock()
	w.trimList = append(w.trimList, busy...)
	w.trimTimer.Reset(w.app.trimAfter)
	w.trimMu.Unlock()
}

// dropSession forgets a session released without the engine (its worker
// lost the engine); an orphan worker retires with its last one.
func (w *worker) dropSession(c *Conn) {
	w.mu.Lock()
	if w.sessions[c.h] == c {
		delete(w.sessions, c.h)
	}
	empty := len(w.sessions) == 0
	w.mu.Unlock()
	if empty && w.orphan.Load() {
		go w.app.retireWorker(w)
	}
}

func (w *worker) wakeAll() {
	w.mu.Lock()
	for _, set := range w.waiters {
		for wt := range set {
			close(wt.ch)
		}
	}
	clear(w.waiters)
	w.mu.Unlock()
}

// closeAll closes every session and listener locally (App.Close).
func (w *worker) closeAll() {
	w.mu.Lock()
	conns := make([]*Conn, 0, len(w.sessions))
	for _, c := range w.sessions {
		conns = append(conns, c)
	}
	ls := make([]*listener, 0, len(w.listeners))
	for _, l := range w.listeners {
		ls = append(ls, l)
	}
	w.mu.Unlock()
	for _, l := range ls {
		l.fail(ErrAppClosed)
	}
	for _, c := range conns {
		c.Close()
	}
}

// request sends one request to the engine. A full request queue means the
// engine is momentarily behind: retry briefly.
func (w *worker) request(m wire.Msg) error {
	if w.orphan.Load() {
		return w.deadErr()
	}
	var deadline time.Time
	for i := 0; ; i++ {
		// encoded into the worker's buffer (under reqMu): a buffer of
		// our own would be allocated per request, as it escapes
		w.reqMu.Lock()
		n, err := w.codec.Encode(w.reqBuf[:], m)
		if err == nil {
			err = w.rq.Send(w.reqBuf[:n])
		}
		w.reqMu.Unlock()
		if err != shm.ErrQueueFull {
			return err
		}
		if w.deadErr() != nil {
			return w.deadErr()
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(5 * time.Second)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("engine request queue full for 5s (%d slots)", w.rq.Slots())
		}
		if i < 100 {
			runtime.Gosched()
		} else {
			time.Sleep(50 * time.Microsecond) // back-off, not synchronisation
		}
	}
}

func (w *worker) deadErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.dead
}

// call sends a request carrying ctx id and waits for the event answering it.
func (w *worker) call(ctx context.Context, id uint64, m wire.Msg) (any, error) {
	ch := make(chan any, 1)
	w.mu.Lock()
	if w.dead != nil {
		err := w.dead
		w.mu.Unlock()
		return nil, err
	}
	w.pending[id] = ch
	w.mu.Unlock()
	w.awaiting.Add(1)
	defer w.awaiting.Add(-1)
	if err := w.request(m); err != nil {
		w.mu.Lock()
		delete(w.pending, id)
		w.mu.Unlock()
		return nil, err
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return nil, w.deadErr()
		}
		return r, nil
	case <-ctx.Done():
		w.mu.Lock()
		_, still := w.pending[id]
		delete(w.pending, id)
		w.mu.Unlock()
		if !still { // the answer raced in: take it so nothing leaks
			if r, ok := <-ch; ok {
				return r, nil
			}
		}
		return nil, ctx.Err()
	}
}

func (w *worker) deliver(id uint64, m any) bool {
	w.mu.Lock()
	ch := w.pending[id]
	delete(w.pending, id)
	w.mu.Unlock()
	if ch == nil {
		return false
	}
	ch <- m
	return true
}

func (w *worker) conn(h uint64) *Conn {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sessions[h]
}

// dispatch handles one event (event loop goroutine).
func (w *worker) dispatch(m wire.Msg) {
	switch m := m.(type) {
	case *wire.Connected:
		if m.Code != wire.OK || w.orphan.Load() {
			w.deliver(m.Ctx, m)
			return
		}
		c, err := w.newConn(m.Session, m.Fifos, m.Local, m.Remote)
		if err != nil {
			_ = w.request(&wire.Reset{Session: m.Session})
			w.deliver(m.Ctx, &wire.Connected{Ctx: m.Ctx, Code: wire.ErrInternal, Msg: err.Error()})
			return
		}
		m.Session = 0
		w.mu.Lock()
		ch := w.pending[m.Ctx]
		delete(w.pending, m.Ctx)
		w.mu.Unlock()
		if ch == nil { // the dial was abandoned
			c.Close()
			return
		}
		ch <- &connResult{c}
	case *wire.Accepted:
		if w.orphan.Load() {
			return // left in the queue by the engine that is gone
		}
		// The listener may be another worker's: the engine spreads a
		// listener's sessions over the app's workers, and this worker owns
		// the session (its requests go through our queue).
		var l *listener
		if x, ok := w.app.byHandle.Load(listenerKey{w.gen, m.Listener}); ok {
			l = x.(*listener)
		}
		if l == nil {
			_ = w.request(&wire.AcceptReply{Session: m.Session, Code: wire.ErrRefused})
			return
		}
		c, err := w.newConn(m.Session, m.Fifos, m.Local, m.Remote)
		if err != nil {
			_ = w.request(&wire.AcceptReply{Session: m.Session, Code: wire.ErrInternal})
			return
		}
		if !l.push(c) {
			c.mu.Lock()
			c.refused = true
			c.mu.Unlock()
			_ = w.request(&wire.AcceptReply{Session: m.Session, Code: wire.ErrRefused})
			return
		}
		// Accepting is the default: an accept-reply is sent only to refuse,
		// which saves a request per session.
	case *wire.Bound:
		w.deliver(m.Ctx, m)
	case *wire.UnlistenReply:
		w.deliver(m.Ctx, m)
	case *wire.Disconnected:
		if c := w.conn(m.Session); c != nil {
			c.peerClosed.Store(true)
			// its blocked calls see the end of stream now (its own: not
			// every call blocked on the same descriptor)
			w.mu.Lock()
			w.checkConnLocked(c)
			w.mu.Unlock()
		}
	case *wire.ResetEvt:
		if c := w.conn(m.Session); c != nil {
			c.setReset(engineError(m.Code, m.Msg))
		}
	case *wire.Cleanup:
		w.mu.Lock()
		c := w.sessions[m.Session]
		delete(w.sessions, m.Session)
		if c != nil && c.ev > 0 && int(c.ev) < len(w.evConns) && w.evConns[c.ev] == c {
			w.evConns[c.ev] = nil
		}
		w.mu.Unlock()
		if c != nil {
			c.cleanup()
		}
	case *wire.DelSegment:
		w.app.delSegment(m.Segment)
	case *wire.Reply:
		if m.Ctx != 0 {
			w.deliver(m.Ctx, m)
		}
	case *wire.Migrated:
		// one worker per session today; nothing to move
	}
}

// connResult is delivered to Dial in place of a successful Connected.
type connResult struct{ c *Conn }

func (w *worker) newConn(h uint64, f wire.FifoPair, local, remote wire.Addr) (*Conn, error) {
	seg, err := w.app.segment(w, f.Segment)
	if err != nil {
		return nil, err
	}
	ring := seg.ring
	if ring < 0 {
		// a transport session: the engine's flows watch the transport doorbell
		ring = w.tbell
	}
	// Rings for a cut-through session come on its segment's doorbell end,
	// for a transport session on the worker's doorbell.
	key := seg.wait
	if key < 0 {
		key = w.bell
	}
	c := &Conn{w: w, h: h, seg: seg, ring: int32(ring), key: int32(key), local: local, remote: remote}
	if seg.ring < 0 && f.Event < w.evBits {
		c.ev = f.Event
	}
	if err := c.rx.Open(seg.seg, int(min(f.RxOff, 1<<62)), int(f.RxCap)); err != nil {
		w.app.unref(seg)
		return nil, fmt.Errorf("rx fifo: %w", err)
	}
	if err := c.tx.Open(seg.seg, int(min(f.TxOff, 1<<62)), int(f.TxCap)); err != nil {
		w.app.unref(seg)
		return nil, fmt.Errorf("tx fifo: %w", err)
	}
	w.mu.Lock()
	w.sessions[h] = c
	if c.ev > 0 {
		// the engine names it by this bit from now on (bit 0 names the
		// sessions without one: all calls blocked on bell)
		if int(c.ev) >= len(w.evConns) {
			w.evConns = append(w.evConns, make([]*Conn, int(c.ev)+1-len(w.evConns))...)
		}
		w.evConns[c.ev] = c
	}
	w.mu.Unlock()
	return c, nil
}

func tcpAddr(a wire.Addr) *net.TCPAddr {
	if !a.IP.IsValid() {
		return &net.TCPAddr{}
	}
	return net.TCPAddrFromAddrPort(netip.AddrPortFrom(a.IP.Unmap(), a.Port))
}
