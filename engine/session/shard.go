package session

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/wire"
)

// Engine shards serve the request queues of every app worker. A shard is
// a goroutine with an epoll set holding the engine's doorbell ends of the
// workers assigned to it; it sleeps in epoll_wait, which takes one OS
// thread. A fixed number of shards (about one per core) serves any number
// of apps and workers, where a goroutine blocked in poll(2) per worker made
// the engine's thread count follow the apps (the Go runtime aborts at
// 10,000 threads).
//
// Not parked in the netpoller (shm.Epoll), as the transport's loops are:
// measured with apps in the engine's process, parked shards made the
// cut-through streams bistable (64 KiB writes at 2.6-14 GB/s in some runs
// instead of 30-40; 4 of 12 runs): Go consults the netpoller only when a
// P runs out of work, and goroutines polling with runtime.Gosched never
// let it. Apps are other processes on a node, but the bench and tests run
// them in ours.
//
// When a worker's doorbell rings the shard serves the worker's queue in a
// batch (at most shardBatch requests, for fairness between workers) under
// one acquisition of the namespace lock, and keeps the worker "active":
// until spin passes without work it polls the active workers' queues
// directly with their waiting flags clear (yielding to other goroutines
// between rounds), so an app sending requests back to back does not ring.
// Then it sets the active workers' waiting flags, re-checks their queues
// (a request sent before a flag was visible rang nothing), and sleeps.
//
// Nothing that may block runs on a shard: a request that needs a blocking
// step (a transport binding in the app's network namespace, a TLS
// handshake) parks its worker and runs that step on a goroutine of its own
// (namespace.async); the worker's later requests wait in its queue, in
// order, until the completion posts the worker back to its shard.
//
// Everything else that concerns a worker's queue from outside (its start,
// its stop, a graceful detach's drain, the end of a parked request) posts
// the worker to its shard, which looks at it under the namespace lock.
// Only the shard reads a worker's request queue and closes its
// descriptors (after removing them from its epoll set).

// shardBatch bounds the requests of one worker served in a row.
const shardBatch = 32

// shardEpollEvery: while spinning, a shard polls its active workers'
// queues on every round but its epoll set (the rings of the others) only
// on every shardEpollEvery-th: a system call per round made polling cost
// more than the work it found.
const shardEpollEvery = 16

// shardWakeKey is the epoll key of the shard's own eventfd; workers have
// keys from 1.
const shardWakeKey = 0

type shard struct {
	e    *Engine
	id   int
	ep   int // epoll set
	wake int // eventfd (this process's own): post and stop ring it while the shard sleeps
	spin time.Duration
	load atomic.Int32 // workers assigned, for least-loaded placement

	mu     sync.Mutex
	posted []*worker // workers to look at (worker.queued)
	stop   bool
	// hasPosted and sleeping form the wake-up protocol of post: the shard
	// sets sleeping, then re-checks hasPosted; post sets hasPosted, then
	// signals if sleeping.
	hasPosted atomic.Bool
	sleeping  atomic.Bool

	// the shard's goroutine only
	byKey   map[uint32]*worker
	nextKey uint32
	active  []*worker
	done    chan struct{}
}

// shardFor assigns a new worker to the least loaded shard, starting the
// shards on first use.
func (e *Engine) shardFor() (*shard, error) {
	e.shardMu.Lock()
	defer e.shardMu.Unlock()
	if e.shardsStopped {
		return nil, errors.New("session engine is shutting down")
	}
	if e.shards == nil {
		n := e.cfg.Limits.Shards
		spin := e.cfg.ShardSpin
		if spin == 0 {
			spin = shm.DefaultSpin
		}
		var shards []*shard
		for i := 0; i < n; i++ {
			s, err := newShard(e, i, max(spin, 0))
			if err != nil {
				for _, s := range shards {
					s.close()
				}
				return nil, err
			}
			shards = append(shards, s)
		}
		for _, s := range shards {
			go s.run()
		}
		e.shards = shards
	}
	best := e.shards[0]
	for _, s := range e.shards[1:] {
		if s.load.Load() < best.load.Load() {
			best = s
		}
	}
	best.load.Add(1)
	return best, nil
}

// stopShards stops the shards once every worker was stopped (Close): the
// dead workers posted to them are released first.
func (e *Engine) stopShards() {
	e.shardMu.Lock()
	shards := e.shards
	e.shardsStopped = true
	e.shardMu.Unlock()
	for _, s := range shards {
		s.mu.Lock()
		s.stop = true
		s.hasPosted.Store(true)
		s.mu.Unlock()
		_ = shm.Signal(s.wake)
		<-s.done
	}
}

func newShard(e *Engine, id int, spin time.Duration) (*shard, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("session: engine shard epoll: %w", err)
	}
	wake, err := shm.NewEventFD()
	if err != nil {
		unix.Close(ep)
		return nil, fmt.Errorf("session: engine shard: %w", err)
	}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, wake, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: shardWakeKey}); err != nil {
		unix.Close(ep)
		unix.Close(wake)
		return nil, fmt.Errorf("session: engine shard epoll: %w", err)
	}
	return &shard{e: e, id: id, ep: ep, wake: wake, spin: spin, byKey: map[uint32]*worker{}, nextKey: shardWakeKey + 1, done: make(chan struct{})}, nil
}

func (s *shard) close() {
	unix.Close(s.ep)
	unix.Close(s.wake)
}

// post makes the shard look at w soon (under ns.mu or not; never blocks).
func (s *shard) post(w *worker) {
	s.mu.Lock()
	if s.stop {
		s.mu.Unlock()
		return
	}
	if !w.queued {
		w.queued = true
		s.posted = append(s.posted, w)
	}
	s.hasPosted.Store(true)
	s.mu.Unlock()
	if s.sleeping.Load() {
		_ = shm.Signal(s.wake)
	}
}

// poke posts the worker to its shard (started workers).
func (w *worker) poke() {
	if w.shard != nil {
		w.shard.post(w)
	}
}

func (s *shard) run() {
	// Not locked to its thread: sleeping in epoll_wait takes a thread of
	// its own anyway (so the shards bound the engine's threads either way),
	// and a locked goroutine's every wake-up is a hand-off to that thread,
	// and its every Gosched one more: measured, that cut the connect rate
	// 2-4x on 2 cores (bench -only connect). Locked only as it ends, so
	// that the runtime ends the thread with it (Close).
	defer runtime.LockOSThread()
	defer close(s.done)
	defer s.close()
	evs := make([]unix.EpollEvent, 128)
	buf := make([]byte, shm.MsgSize)
	last := time.Now() // when work was last found
	for iter := 0; ; iter++ {
		spinning := s.spin > 0 && time.Since(last) < s.spin
		timeout, slept := 0, false
		if !spinning {
			if s.armActive() {
				last = time.Now()
				spinning = true
			} else {
				slept = true
				s.sleeping.Store(true)
				if !s.hasPosted.Load() {
					timeout = -1
				}
			}
		}
		if !spinning || iter%shardEpollEvery == 0 {
			n, err := unix.EpollWait(s.ep, evs, timeout)
			if slept {
				s.sleeping.Store(false)
			}
			if err != nil && !errors.Is(err, unix.EINTR) {
				// only a bug makes epoll_wait fail on our own set: say so, and
				// do not spin on it
				s.e.logf("session: engine shard %d: epoll_wait: %v", s.id, err)
				time.Sleep(10 * time.Millisecond)
				continue
			}
			for _, ev := range evs[:max(n, 0)] {
				key := uint32(ev.Fd)
				if key == shardWakeKey {
					_ = shm.DrainEventFD(s.wake)
					continue
				}
				if w := s.byKey[key]; w != nil {
					// one ring taken (more keep the end readable: the next
					// epoll_wait looks again)
					_ = shm.DrainBell(w.bell)
					s.activate(w)
				}
			}
		}
		if s.hasPosted.Load() {
			if s.takePosted() {
				s.shutdown(buf)
				return
			}
		}
		if s.serveActive(buf) {
			last = time.Now()
		} else if spinning {
			// let the apps' goroutines run: on 2 cores a shard that holds
			// its P while polling starves the very apps it waits for
			runtime.Gosched()
		}
	}
}

// takePosted registers and activates the posted workers; true when the
// shard is to stop.
func (s *shard) takePosted() bool {
	s.mu.Lock()
	posted := s.posted
	s.posted = nil
	for _, w := range posted {
		w.queued = false
	}
	s.hasPosted.Store(false)
	stop := s.stop
	s.mu.Unlock()
	for _, w := range posted {
		if w.released {
			continue
		}
		if !w.registered {
			w.key = s.nextKey
			s.nextKey++
			if s.nextKey == shardWakeKey {
				s.nextKey++
			}
			if err := unix.EpollCtl(s.ep, unix.EPOLL_CTL_ADD, w.bell, &unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(w.key)}); err != nil {
				s.failWorker(w, fmt.Sprintf("engine shard %d cannot watch its doorbell: %v", s.id, err))
				continue
			}
			w.registered = true
			s.byKey[w.key] = w
		}
		s.activate(w)
	}
	return stop
}

// failWorker detaches the app of a worker the shard cannot serve.
func (s *shard) failWorker(w *worker, why string) {
	ns := w.app.ns
	ns.mu.Lock()
	w.app.notice(wire.ErrInternal, why)
	ns.reapLocked(w.app, fmt.Sprintf("app %s: %s", w.app.name, why))
	ns.mu.Unlock()
	s.release(w)
}

// activate makes w polled (and served once) until the shard next sleeps.
func (s *shard) activate(w *worker) {
	w.look = true
	if !w.active {
		w.active = true
		w.rq.DisarmWake()
		s.active = append(s.active, w)
	}
}

// serveActive serves every active worker with work, holding a namespace's
// lock across consecutive workers of the namespace; it drops those that
// were released or parked. True when there was work.
func (s *shard) serveActive(buf []byte) bool {
	worked := false
	var held *namespace
	var gone []*worker
	keep := s.active[:0]
	for _, w := range s.active {
		if w.released {
			w.active = false
			continue
		}
		if !w.look && !w.rq.Pending() {
			keep = append(keep, w)
			continue
		}
		w.look = false
		worked = true
		if ns := w.app.ns; ns != held {
			if held != nil {
				held.mu.Unlock()
			}
			ns.mu.Lock()
			held = ns
		}
		switch s.serveLocked(w, buf) {
		case served:
			keep = append(keep, w)
		case parked:
			w.active = false
		case stopped:
			w.active = false
			gone = append(gone, w)
		}
	}
	if held != nil {
		held.mu.Unlock()
	}
	clear(s.active[len(keep):])
	s.active = keep
	for _, w := range gone {
		s.release(w)
	}
	return worked
}

// armActive sets the waiting flags of the active workers before the shard
// sleeps and re-checks their queues: true when one has a request after all
// (the shard then goes on polling).
func (s *shard) armActive() bool {
	for _, w := range s.active {
		if !w.released {
			w.rq.ArmWake()
		}
	}
	for _, w := range s.active {
		if !w.released && w.rq.Pending() {
			return true
		}
	}
	for _, w := range s.active {
		w.active = false
	}
	clear(s.active)
	s.active = s.active[:0]
	return false
}

// serve is serveLocked with the namespace lock taken for it, releasing a
// stopped worker after.
func (s *shard) serve(w *worker, buf []byte) {
	if w.released {
		return
	}
	ns := w.app.ns
	ns.mu.Lock()
	st := s.serveLocked(w, buf)
	ns.mu.Unlock()
	if st == stopped {
		s.release(w)
	}
}

// What serveLocked left a worker as.
const (
	served  = iota // still to be polled
	parked         // an asynchronous request is under way: its completion posts it back
	stopped        // dead: to be released (without ns.mu)
)

// serveLocked handles what w has for the shard (ns.mu held): its stop, its
// graceful drain, then a batch of its requests.
func (s *shard) serveLocked(w *worker, buf []byte) int {
	ns := w.app.ns
	if !w.dead && !w.parked && w.drainDone != nil && !w.drained {
		w.drainLocked(buf)
	}
	for i := 0; i < shardBatch && !w.dead && !w.parked; i++ {
		n, err := w.rq.TryRecv(buf)
		if err != nil {
			w.app.notice(wire.ErrInvalid, fmt.Sprintf("worker %d request queue: %v", w.id, err))
			ns.reapLocked(w.app, fmt.Sprintf("app %s corrupted its request queue", w.app.name))
			break
		}
		if n == 0 {
			break
		}
		m, derr := w.app.codec.Decode(buf[:n])
		if derr != nil {
			w.send(&wire.Reply{Code: wire.ErrInvalid, Msg: wire.Truncate(derr.Error(), wire.MaxMessageLen)})
			continue
		}
		ns.request(w, m)
	}
	switch {
	case w.dead:
		if w.drainDone != nil && !w.drained {
			close(w.drainDone) // nothing left to drain: the reaper need not wait
			w.drained = true
		}
		return stopped
	case w.parked:
		return parked
	}
	return served
}

// release takes a stopped worker out of the epoll set and closes its
// descriptors and queue segment.
func (s *shard) release(w *worker) {
	if w.released {
		return
	}
	w.released = true
	if w.registered {
		_ = unix.EpollCtl(s.ep, unix.EPOLL_CTL_DEL, w.bell, nil)
		delete(s.byKey, w.key)
		w.registered = false
	}
	w.release()
}

// shutdown releases the stopped workers still registered (Close stops the
// shards after stopping every worker).
func (s *shard) shutdown(buf []byte) {
	for _, w := range s.byKey {
		s.serve(w, buf)
	}
}

// async runs blocking without ns.mu on a goroutine of its own, then
// complete under ns.mu (the caller holds ns.mu). The worker is parked
// meanwhile: its shard serves its other workers, and its own later
// requests wait in its queue, so they are still served in order. complete
// re-checks what the blocking step's duration may have changed (the
// worker stopped, the namespace removed).
func (ns *namespace) async(w *worker, blocking, complete func()) {
	w.parked = true
	go func() {
		blocking()
		ns.mu.Lock()
		w.parked = false
		complete()
		ns.mu.Unlock()
		w.poke()
	}()
}
