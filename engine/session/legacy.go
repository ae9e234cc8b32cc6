package session

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/wire"
)

// Apps of wire version 2 (built against the previous client) expect
// eventfds: they wait on their worker's wake descriptor, write its engine
// descriptor for requests, write the descriptor an add-segment carries to
// wake a transport or a cut-through peer, and wait on nothing else. They
// read and write 8 bytes at a time, which a doorbell end also takes (one
// datagram each), so such an app gets doorbell ends in the same places:
//
//   - worker descriptors: as its wake descriptor a pipe it holds open for
//     reading and writing (its own description: it writes it to stop its
//     own event loop, as it did its eventfd), which the engine writes
//     through a write-only, non-blocking description of its own; as its
//     engine descriptor its end of the worker doorbell;
//   - its own segment: announced with an add-segment before its first
//     transport session, carrying its end of the worker's transport
//     doorbell (version 3 passes that end with the worker);
//   - a cut-through segment: its end of the segment's doorbell, to ring
//     the peer. Its peer's rings arrive on that end, which the app never
//     waits on: the engine keeps a copy of the end and relays each ring to
//     the app's worker doorbell (the relay below). Reads of that copy are
//     MSG_DONTWAIT and happen on no lock, so whatever the app does to the
//     description it stalls only its own wake-ups.

// legacy reports whether the app speaks wire version 2.
func (a *app) legacy() bool { return a.codec.V < 3 }

// workerFDs returns the descriptors passed with a worker (attach reply or
// worker-add reply): the app's ends in the places its version expects. For
// a version-2 app the transport doorbell end stays with the engine until
// the add-segment of the own segment (v2TBell), and the wake pipe is made.
// closeAppFDs releases the engine's copies of what was passed.
func (w *worker) workerFDs() ([]int, error) {
	if !w.app.legacy() {
		return []int{w.mq.FD(), w.appFDs[0], w.appFDs[1]}, nil
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, fmt.Errorf("wake pipe: %w", err)
	}
	// the app's description: read and write, opened anew (not shared with
	// the engine's write end)
	rw, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", p[0]), unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	unix.Close(p[0])
	if err != nil {
		unix.Close(p[1])
		return nil, fmt.Errorf("wake pipe: %w", err)
	}
	w.v2Wake, w.v2AppWake = p[1], rw
	w.v2TBell, w.appFDs[1] = w.appFDs[1], -1
	return []int{w.mq.FD(), rw, w.appFDs[0]}, nil
}

// closeV2 releases what workerFDs kept for a version-2 app.
func (w *worker) closeV2() {
	for _, fd := range []*int{&w.v2TBell, &w.v2Wake, &w.v2AppWake} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
}

// wakeApp wakes the app's event loop: the worker doorbell, or a
// version-2 app's wake pipe.
func (w *worker) wakeApp() {
	if w.v2Wake >= 0 {
		_ = writeWake(w.v2Wake)
		return
	}
	_ = shm.Ring(w.bell)
}

// appWakeFD is what a transport flow of w wakes the app with (a duplicate:
// the flow outlives the worker's descriptors), and whether it is a pipe.
func (w *worker) appWakeFD() (int, bool, error) {
	src, pipe := w.bell, false
	if w.v2Wake >= 0 {
		src, pipe = w.v2Wake, true
	}
	fd, err := unix.FcntlInt(uintptr(src), unix.F_DUPFD_CLOEXEC, 0)
	return fd, pipe, err
}

var wakeBytes = [8]byte{1}

// writeWake writes 8 bytes to the engine's own non-blocking write end of
// a wake pipe; a full pipe already means "wake up".
func writeWake(fd int) error {
	for {
		_, err := unix.Write(fd, wakeBytes[:])
		switch err {
		case nil, unix.EAGAIN:
			return nil
		case unix.EINTR:
			continue
		}
		return err
	}
}

// v2OwnSegmentLocked announces the app's own segment to a version-2 app
// with the transport doorbell end of worker w, once, before its first
// transport session (the app maps only announced segments; every transport
// session of the app rings that end, and the kicker of w kicks all the
// app's flows).
func (ns *namespace) v2OwnSegmentLocked(w *worker) error {
	a := w.app
	if !a.legacy() || a.v2OwnSent {
		return nil
	}
	if w.v2TBell < 0 {
		return fmt.Errorf("worker %d has no transport doorbell left to pass", w.id)
	}
	err := a.sendSock(&wire.AddSegment{Segment: a.own.handle, Size: uint64(a.own.seg.Size()), Worker: w.id, HasPeerWake: true},
		[]int{a.own.seg.FD(), w.v2TBell})
	if err != nil {
		return err
	}
	// kept to announce the segments added on demand the same way; the
	// engine only ever passes it on
	a.v2TBell, w.v2TBell = w.v2TBell, -1
	a.v2OwnSent = true
	return nil
}

// v2TransportSeg is the add-segment of a transport segment added on demand
// for a version-2 app: with the transport doorbell end it rings, as it
// expects of every segment its transport sessions use.
func (a *app) v2TransportSeg(w *worker, seg *segment) (wire.Msg, []int) {
	return &wire.AddSegment{Segment: seg.handle, Size: uint64(seg.seg.Size()), Worker: w.id, HasPeerWake: true},
		[]int{seg.seg.FD(), a.v2TBell}
}

// closeV2App releases what a version-2 app kept (reap).
func (a *app) closeV2App() {
	if a.v2TBell >= 0 {
		unix.Close(a.v2TBell)
		a.v2TBell = -1
	}
}

// ctEnds returns the doorbell ends of a new cut-through segment that go to
// worker me (x is seg.a's end, y seg.b's), and registers the relays a
// version-2 worker needs. The caller closes x and y after passing them.
func (ns *namespace) ctEnds(seg *segment, me *worker, x, y int) ([]int, error) {
	mine, other := x, y
	if me == seg.b {
		mine, other = y, x
	}
	if !me.app.legacy() {
		if seg.a == seg.b {
			return []int{x, y}, nil
		}
		return []int{mine}, nil
	}
	// A version-2 app rings mine; the rings for it arrive on mine (from
	// the peer) or, connected to itself, on the other end, which the
	// engine watches for it.
	watch := mine
	if seg.a == seg.b {
		watch = other
	}
	id, err := ns.e.relay().add(watch, me.v2Wake)
	if err != nil {
		return nil, err
	}
	seg.relays = append(seg.relays, id)
	return []int{mine}, nil
}

// dropRelays ends the relays of a segment being dropped.
func (ns *namespace) dropRelays(seg *segment) {
	for _, id := range seg.relays {
		ns.e.relay().remove(id)
	}
	seg.relays = nil
}

// relay forwards rings from doorbell ends to worker doorbells, for
// version-2 apps (see above). One goroutine waits in epoll_wait on its own
// thread for all of them; it takes no lock of the engine.
type relay struct {
	once sync.Once
	err  error
	ep   int
	stop int // eventfd: Close wakes the loop

	mu      sync.Mutex
	next    uint64
	entries map[uint64]relayEntry
	closed  bool
	done    chan struct{}
}

// relayEntry holds the engine's own copies: of the end rings arrive on,
// and of the engine's write end of the target worker's wake pipe (so a
// worker that goes away never leaves a closed or reused descriptor number
// here).
type relayEntry struct{ src, dst int }

func (e *Engine) relay() *relay { return &e.relays }

func (r *relay) start() error {
	r.once.Do(func() {
		r.entries = map[uint64]relayEntry{}
		r.done = make(chan struct{})
		if r.ep, r.err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); r.err != nil {
			r.err = fmt.Errorf("relay epoll: %w", r.err)
			close(r.done)
			return
		}
		if r.stop, r.err = shm.NewEventFD(); r.err != nil {
			unix.Close(r.ep)
			close(r.done)
			return
		}
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: 0} // id 0: stop
		if r.err = unix.EpollCtl(r.ep, unix.EPOLL_CTL_ADD, r.stop, &ev); r.err != nil {
			unix.Close(r.ep)
			unix.Close(r.stop)
			close(r.done)
			return
		}
		r.next = 1
		go r.loop()
	})
	return r.err
}

// add relays rings arriving on src to the wake pipe whose engine end is
// dst; both are duplicated (the caller keeps its descriptors).
func (r *relay) add(src, dst int) (uint64, error) {
	if err := r.start(); err != nil {
		return 0, err
	}
	s, err := unix.FcntlInt(uintptr(src), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("relay: %w", err)
	}
	d, err := unix.FcntlInt(uintptr(dst), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		unix.Close(s)
		return 0, fmt.Errorf("relay: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || r.next > 1<<31-1 {
		unix.Close(s)
		unix.Close(d)
		return 0, fmt.Errorf("relay closed")
	}
	id := r.next
	r.next++
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(id)}
	if err := unix.EpollCtl(r.ep, unix.EPOLL_CTL_ADD, s, &ev); err != nil {
		unix.Close(s)
		unix.Close(d)
		return 0, fmt.Errorf("relay epoll add: %w", err)
	}
	r.entries[id] = relayEntry{src: s, dst: d}
	return id, nil
}

// remove ends a relay. A ready event the loop still holds names the id,
// which is gone from the table by then: it is ignored.
func (r *relay) remove(id uint64) {
	r.mu.Lock()
	en, ok := r.entries[id]
	delete(r.entries, id)
	r.mu.Unlock()
	if !ok {
		return
	}
	_ = unix.EpollCtl(r.ep, unix.EPOLL_CTL_DEL, en.src, nil)
	unix.Close(en.src)
	unix.Close(en.dst)
}

func (r *relay) loop() {
	defer close(r.done)
	var evs [32]unix.EpollEvent
	for {
		n, err := unix.EpollWait(r.ep, evs[:], -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return
		}
		for _, ev := range evs[:n] {
			id := uint64(ev.Fd)
			if id == 0 {
				return
			}
			// Drain and ring under r.mu, so remove cannot close the
			// descriptors under us; both calls are MSG_DONTWAIT.
			r.mu.Lock()
			if en, ok := r.entries[id]; ok {
				_ = shm.DrainBell(en.src)
				_ = writeWake(en.dst)
			}
			r.mu.Unlock()
		}
	}
}

// close stops the relay and releases every entry.
func (r *relay) close() {
	r.mu.Lock()
	started := r.entries != nil && r.err == nil
	r.closed = true
	entries := r.entries
	r.entries = map[uint64]relayEntry{}
	r.mu.Unlock()
	if !started {
		return
	}
	_ = shm.Signal(r.stop)
	<-r.done
	for _, en := range entries {
		unix.Close(en.src)
		unix.Close(en.dst)
	}
	unix.Close(r.ep)
	unix.Close(r.stop)
}
