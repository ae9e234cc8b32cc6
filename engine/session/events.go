package session

import (
	"sync"
	"sync/atomic"

	"github.com/hoststack/hoststack/engine/shm"
)

// Transport events (wire version 5, see the wire package doc): a worker's
// transport sessions each get a bit in the worker's two sets of event
// bits. The app sets it in the first before ringing the transport
// doorbell, so a ring kicks the sessions that moved and not every session
// of the app; the engine sets it in the second before ringing the worker
// doorbell (Flow.WakeApp), so the app's worker re-checks the calls blocked
// on those sessions only. An app of an older version has no bits: its rings
// kick all of its transport flows (app.pokeFlows), and the engine's wake
// all of its blocked calls.

// events is a worker's side of its transport event bits.
type events struct {
	mu   sync.Mutex
	bits *shm.EventBits // the app's, in the worker's queue segment; nil once released
	rx   *shm.EventBits // the engine's (the app drains them); nil once released
	// flows by bit; grown as bits are handed out (bit 0 is shared: never
	// in flows)
	flows []*Flow
	free  []uint32 // bits given back, handed out again first
	// shared are the flows that got no bit of their own (all were taken):
	// bit 0 kicks them all
	shared map[*Flow]struct{}
}

// eventBitsFor is the size of a worker's event bits for maxSessions
// transport sessions (an app's can all be on one worker) plus the shared
// bit 0, in whole words.
func eventBitsFor(maxSessions int) int {
	return min((maxSessions+1+63)/64*64, shm.EventBitsMax)
}

// attach gives f a bit of its own, or the shared one when none is left.
func (ev *events) attach(f *Flow) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if n := len(ev.free); n > 0 {
		f.ev, ev.free = ev.free[n-1], ev.free[:n-1]
		ev.flows[f.ev] = f
		return
	}
	if len(ev.flows) == 0 {
		ev.flows = append(ev.flows, nil) // bit 0 is the shared one
	}
	if ev.bits != nil && len(ev.flows) < ev.bits.Len() {
		f.ev = uint32(len(ev.flows))
		ev.flows = append(ev.flows, f)
		return
	}
	f.ev = 0
	if ev.shared == nil {
		ev.shared = map[*Flow]struct{}{}
	}
	ev.shared[f] = struct{}{}
}

// detach takes f's bit back. The app may still set it (late, or lying):
// that kicks the bit's next flow once, which then finds nothing to do.
func (ev *events) detach(f *Flow) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if f.ev == 0 {
		delete(ev.shared, f)
		return
	}
	ev.flows[f.ev] = nil
	ev.free = append(ev.free, f.ev)
}

// ring kicks the flows whose bits the app set, and counts what it kicked.
// Nothing read from the bits is trusted: a bit names at most a flow of this
// worker.
func (ev *events) ring(kicks *atomic.Uint64) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	if ev.bits == nil {
		return // the worker is gone: its queue segment with the bits
	}
	n := 0
	ev.bits.Drain(func(i int) {
		if i == 0 {
			for f := range ev.shared {
				f.poke()
				n++
			}
			return
		}
		if i < len(ev.flows) {
			if f := ev.flows[i]; f != nil {
				f.poke()
				n++
			}
		}
	})
	kicks.Add(uint64(n))
}

// release stops using the bits before the queue segment is unmapped; a
// ring that comes later finds nothing.
func (ev *events) release() {
	ev.mu.Lock()
	ev.bits, ev.rx = nil, nil
	ev.mu.Unlock()
}

// wake marks bit in the app's set before the engine rings the worker
// doorbell for a session's progress.
func (ev *events) wake(bit uint32) {
	ev.mu.Lock()
	if ev.rx != nil {
		ev.rx.Set(int(bit))
	}
	ev.mu.Unlock()
}

// transportRung is what a ring of the worker's transport doorbell does:
// the kicker goroutine or the transport's BellWatcher loop calls it.
func (w *worker) transportRung() {
	ns := w.app.ns
	ns.rings.Add(1)
	if w.ev != nil {
		w.ev.ring(&ns.kicks)
		return
	}
	ns.kicks.Add(uint64(w.app.pokeFlows()))
}
