package session

import (
	"fmt"
	"os"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/wire"
)

// worker is one app worker: its queue segment, queues and doorbells; an
// engine shard serves its request queue (shard.go).
type worker struct {
	app *app
	id  uint32
	mq  *shm.Segment
	evq *shm.Queue // engine → app
	rq  *shm.Queue // app → engine
	// bell is the engine's end of the worker's doorbell: the engine rings it
	// to wake the app's event loop (events, transport progress) and waits on
	// it for requests. The app holds the other end, its own description.
	bell int
	// tbell is the engine's end of the worker's transport doorbell: the app
	// rings its end after progress on a transport fifo whose waiting flag is
	// set; the transport's loop (BellWatcher) or the kicker goroutine, from
	// the first transport session on, kicks the flows it names
	// (transportRung).
	tbell    *os.File
	tbellRaw syscall.RawConn // its descriptor, without File.Fd's switch to blocking
	kicked   bool
	// unwatch stops the transport's BellWatcher watching tbell (nil: a
	// kicker goroutine reads it); called before tbell is closed
	unwatch func()
	// ev: the transport event bits of a version-5 app's worker (events.go);
	// nil for older apps
	ev *events
	// appFDs are the app's ends until they are passed (closed right after:
	// the engine never keeps a description the app holds)
	appFDs [2]int
	// v2TBell is a version-2 app's transport doorbell end until its own
	// segment is announced; v2Wake the engine's write end of its wake pipe,
	// v2AppWake the app's until passed (legacy.go); -1 otherwise
	v2TBell, v2Wake, v2AppWake int
	// sleeping is the app loop's flag in the worker's control line (shared,
	// written by the app: only ever decides whether to signal)
	sleeping *atomic.Uint64
	info     wire.WorkerInfo

	sessions  map[uint64]*session
	listeners map[uint64]*listener
	acceptSeq uint64 // app.accepts when it last took a session (accept.go)
	backlog   [][]byte
	dead      bool
	drainDone chan struct{} // set by reapGracefully; closed by its shard once drained
	drained   bool
	drainLeft int  // requests a graceful drain may still serve
	parked    bool // an asynchronous request is under way: later ones wait (namespace.async)

	// shard serves the request queue (assigned at creation); queued is
	// under shard.mu, the rest belongs to the shard's goroutine
	shard      *shard
	queued     bool
	key        uint32 // in the shard's epoll set
	registered bool   // in the shard's epoll set
	active     bool   // polled by the shard, waiting flag clear
	look       bool   // the shard is to serve it even with an empty queue
	released   bool   // descriptors closed
}

// newWorker creates a worker's queue segment, queues and doorbells; the
// app's ends wait in w.appFDs until passed.
func (ns *namespace) newWorker(a *app) (*worker, error) {
	if err := ns.e.reserveWorker(); err != nil {
		return nil, err
	}
	slots := ns.cfg.QueueSlots
	qfp := shm.QueueFootprint(slots)
	size := 2*qfp + wire.CtlSize
	evOff, evBits := size, 0
	if a.codec.V >= wire.VersionEvents {
		evBits = eventBitsFor(ns.cfg.MaxSessionsPerApp)
		size += 2 * shm.EventBitsSize(evBits) // the app's set, then the engine's
	}
	seg, err := shm.CreateSegment(fmt.Sprintf("hs-mq-%d-%d", a.id, a.nextWrk), size)
	if err != nil {
		ns.e.releaseWorker()
		return nil, err
	}
	w := &worker{app: a, id: a.nextWrk, mq: seg, bell: -1, appFDs: [2]int{-1, -1}, v2TBell: -1, v2Wake: -1, v2AppWake: -1,
		sessions: map[uint64]*session{}, listeners: map[uint64]*listener{}}
	tbell := -1
	fail := func(err error) (*worker, error) {
		if w.shard != nil {
			w.shard.load.Add(-1)
		}
		for _, fd := range []int{w.bell, tbell} {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
		w.closeAppFDs()
		seg.Close()
		ns.e.releaseWorker()
		return nil, err
	}
	if w.bell, w.appFDs[0], err = shm.NewDoorbell(); err != nil {
		return fail(err)
	}
	if tbell, w.appFDs[1], err = shm.NewDoorbell(); err != nil {
		return fail(err)
	}
	if w.evq, err = shm.InitQueue(seg, 0, slots, w.bell); err != nil {
		return fail(err)
	}
	if w.rq, err = shm.InitQueue(seg, qfp, slots, w.bell); err != nil {
		return fail(err)
	}
	if w.shard, err = ns.e.shardFor(); err != nil {
		return fail(err)
	}
	if w.sleeping, err = wire.Word(seg.Bytes(), 2*qfp+wire.CtlSleeping); err != nil {
		return fail(err)
	}
	w.sleeping.Store(0)
	if evBits > 0 {
		bits, err := shm.FormatEventBits(seg, evOff, evBits)
		if err != nil {
			return fail(err)
		}
		rx, err := shm.FormatEventBits(seg, evOff+shm.EventBitsSize(evBits), evBits)
		if err != nil {
			return fail(err)
		}
		w.ev = &events{bits: bits, rx: rx}
	}
	a.nextWrk++
	// the engine's own end: non-blocking for good, so Go's netpoller serves
	// the kicker without a thread
	w.tbell = os.NewFile(uintptr(tbell), fmt.Sprintf("hs-tbell-%d-%d", a.id, w.id))
	if w.tbellRaw, err = w.tbell.SyscallConn(); err != nil {
		w.tbell.Close()
		tbell = -1
		return fail(err)
	}
	w.info = wire.WorkerInfo{ID: w.id, MQSize: uint64(seg.Size()), EvqOff: 0, EvqSlots: uint32(slots),
		ReqOff: uint64(qfp), ReqSlots: uint32(slots), CtlOff: uint64(2 * qfp)}
	if w.ev != nil {
		w.info.EvOff, w.info.EvBits = uint64(evOff), uint32(evBits)
	}
	return w, nil
}

// startWorker hands the worker to its shard, which serves its requests
// from now on.
func (ns *namespace) startWorker(w *worker) {
	w.shard.post(w)
}

// closeAppFDs closes the engine's copies of the app's doorbell ends once
// they were passed (or could not be).
func (w *worker) closeAppFDs() {
	for i, fd := range w.appFDs {
		if fd >= 0 {
			unix.Close(fd)
			w.appFDs[i] = -1
		}
	}
	if w.v2AppWake >= 0 {
		unix.Close(w.v2AppWake)
		w.v2AppWake = -1
	}
}

// stopLocked stops serving the worker: its shard releases the queue
// segment and doorbells once it sees it dead.
func (w *worker) stopLocked() {
	if w.dead {
		return
	}
	w.dead = true
	w.poke()
}

// release closes the worker's descriptors and queue segment (by its
// shard, or at once when it was never started). Closing our own ends never
// blocks; the kicker's Read returns.
func (w *worker) release() {
	if w.unwatch != nil {
		w.unwatch() // the watcher lets go of the descriptor before it closes
		w.unwatch = nil
	}
	if w.ev != nil {
		w.ev.release() // a ring still under way must not read the unmapped bits
	}
	w.tbell.Close()
	w.closeV2()
	unix.Close(w.bell)
	w.mq.Close()
	if w.shard != nil {
		w.shard.load.Add(-1)
	}
	w.app.ns.e.releaseWorker()
}

// send queues an event for the app worker without blocking. When the queue
// is full the event waits in a bounded backlog retried by the flusher; an app
// that lets the backlog overflow is detached with a notice naming the queue.
func (w *worker) send(m wire.Msg) {
	if w.dead {
		return
	}
	var b [wire.QueueMsgMax]byte
	n, err := w.app.codec.Encode(b[:], m)
	if err != nil {
		w.app.ns.e.logf("session: encode %v: %v", m.Type(), err)
		return
	}
	if len(w.backlog) > 0 {
		w.flushLocked()
	}
	if len(w.backlog) == 0 && w.trySend(b[:n]) {
		return
	}
	if len(w.backlog) >= maxBacklogFactor*w.evq.Slots() {
		a := w.app
		a.notice(wire.ErrQueueFull, fmt.Sprintf("app %s worker %d does not consume its event queue (%d slots, queueSlots of app namespace %s) and is detached",
			a.name, w.id, w.evq.Slots(), a.ns.key))
		a.ns.reapLocked(a, "app "+a.name+" stopped consuming its event queue")
		return
	}
	w.backlog = append(w.backlog, append([]byte(nil), b[:n]...))
	select {
	case w.app.ns.e.kick <- struct{}{}:
	default:
	}
}

// trySend sends without backlog; false when the queue is full. The doorbell
// is rung only when the app's event loop announced it sleeps (wire's control
// line; the loop also serves fifo wake-ups, so the queue's own waiting flag
// is not used). Ringing never blocks, whatever the app does to its end.
func (w *worker) trySend(msg []byte) bool {
	if err := w.evq.Send(msg); err != nil {
		return false
	}
	if w.sleeping.Load() != 0 && w.sleeping.Swap(0) != 0 {
		w.wakeApp()
	}
	return true
}

func (w *worker) flushLocked() {
	i := 0
	for ; i < len(w.backlog); i++ {
		if !w.trySend(w.backlog[i]) {
			break
		}
	}
	w.backlog = append(w.backlog[:0], w.backlog[i:]...)
}

// drainLocked processes what is left in the request queue (bounded: a
// detaching app cannot keep the engine busy), for reapGracefully; by the
// worker's shard. A request that parks the worker interrupts the drain,
// which goes on when the worker is posted back.
func (w *worker) drainLocked(buf []byte) {
	ns := w.app.ns
	for ; w.drainLeft > 0 && !w.dead && !w.parked; w.drainLeft-- {
		n, err := w.rq.TryRecv(buf)
		if n == 0 || err != nil {
			break
		}
		if m, err := w.app.codec.Decode(buf[:n]); err == nil {
			ns.request(w, m)
		}
	}
	if w.parked && !w.dead {
		return
	}
	close(w.drainDone)
	w.drained = true
}

// reapWorkerLocked resets the worker's sessions, removes its listeners and
// stops it.
func (ns *namespace) reapWorkerLocked(w *worker, reason string) {
	for _, l := range w.listeners {
		ns.unlistenLocked(l)
	}
	for _, s := range w.sessions {
		ns.releaseLocked(s, true, reason)
	}
	w.stopLocked()
	// cut-through segments of this worker that no session uses any more
	var empty []*segment
	for k, segs := range ns.pairs {
		if k[0] != w && k[1] != w {
			continue
		}
		for _, s := range segs {
			if s.sessions == 0 {
				empty = append(empty, s)
			} else {
				s.orphan = true
			}
		}
	}
	for _, s := range empty {
		ns.dropCT(s)
	}
	w.backlog = nil
}
