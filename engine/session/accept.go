package session

import (
	"github.com/hoststack/hoststack/engine/wire"
)

// acceptWorker picks the worker of l's app that gets a new session of l:
// its event queue carries the accepted event and the session belongs to
// it. Apps of wire versions before VersionAcceptAnyWorker get every session
// on the worker that listened, as their client expects.
//
// The pick is the least loaded live worker by sessions held (accepted,
// pending and dialled), ties going to the worker picked least recently
// (round robin among equals). Least loaded rather than plain round robin:
// sessions of a server live for very different times (a keep-alive
// connection against a health check), and counting what each worker still
// holds evens out what it serves, where a rotation evens out only what it
// was given; a worker that falls behind (its sessions pile up unserved)
// gets fewer. It costs a look at each worker of the app, at most
// maxWorkersPerApp, under ns.mu. A worker being reaped or drained (its app
// detaching) is skipped, and one whose event queue is full (a backlog) is
// taken only when no other can take the session.
func (l *listener) acceptWorker() *worker {
	a := l.w.app
	if a.codec.V < wire.VersionAcceptAnyWorker || len(a.workers) < 2 {
		return l.w
	}
	var best *worker
	better := func(x, y *worker) bool {
		if bx, by := len(x.backlog) > 0, len(y.backlog) > 0; bx != by {
			return by
		}
		if nx, ny := len(x.sessions), len(y.sessions); nx != ny {
			return nx < ny
		}
		return x.acceptSeq < y.acceptSeq
	}
	for _, w := range a.workers {
		if !w.takesSessions() {
			continue
		}
		if best == nil || better(w, best) {
			best = w
		}
	}
	if best == nil {
		return l.w
	}
	a.accepts++
	best.acceptSeq = a.accepts
	return best
}

// allocPairAccepting finds room for a cut-through fifo pair of n bytes
// between the connecting worker c and a worker of the listening app,
// preferring srv (the acceptWorker pick). Spreading a listener's sessions
// means one cut-through segment per pair of workers; when the pick would
// need a segment that one of the two apps has no quota left for, the
// session goes to a worker of the listening app that shares a segment with
// c and has room in it, rather than being refused. It returns the worker
// that takes the session.
func (ns *namespace) allocPairAccepting(c, srv *worker, l *listener, n int) (*worker, *segment, int, wire.Code, string) {
	seg, off, code, msg := ns.allocPair(c, srv, n)
	if code != wire.ErrQuota {
		return srv, seg, off, code, msg
	}
	for _, w := range srv.app.workers {
		if w == srv || !w.takesSessions() || (w != l.w && srv.app.codec.V < wire.VersionAcceptAnyWorker) {
			continue
		}
		if seg, off, ok := ns.allocExisting(c, w, n); ok {
			return w, seg, off, wire.OK, ""
		}
	}
	return srv, nil, 0, code, msg
}

// allocExisting finds room for n bytes in a cut-through segment c and s
// share already; it never creates one.
func (ns *namespace) allocExisting(c, s *worker, n int) (*segment, int, bool) {
	for _, k := range [][2]*worker{{c, s}, {s, c}} {
		for _, seg := range ns.pairs[k] {
			if off, err := seg.alloc.Alloc(n); err == nil {
				return seg, off, true
			}
		}
		if c == s {
			break
		}
	}
	return nil, 0, false
}

// takesSessions reports whether w may be handed new sessions: not reaped,
// and its app not detaching (draining).
func (w *worker) takesSessions() bool { return !w.dead && w.drainDone == nil }
