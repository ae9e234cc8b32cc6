package session

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/wire"
)

// Cut-through: fifo segments, and the sessions whose fifo pair lives in a
// segment of the two app workers involved, which the engine sets up and
// then leaves to them.

// segment is a fifo segment the engine created: an app's own segment, or a
// cut-through segment shared by exactly two app workers (a and b; a == b when
// an app connects to itself).
type segment struct {
	handle   uint64
	seg      *shm.Segment
	alloc    *shm.Allocator
	a, b     *worker
	owner    *app     // a transport segment added on demand for this app
	sessions int      // fifo pairs allocated in it
	orphan   bool     // a worker of the pair is gone: drop it once empty
	relays   []uint64 // rings relayed to a version-2 worker (legacy.go)
	// pins: statistics snapshots reading it outside ns.mu; a segment
	// dropped meanwhile (gone) is unmapped by the last unpin
	pins int
	gone bool
}

// openPair is a cut-through fifo pair not freed yet, and its client end
// (whose pairIdx is its place in ns.openPairs).
type openPair struct {
	pairRead
	client *session
}

// dropOpenPair takes s's pair out of ns.openPairs (either end).
func (ns *namespace) dropOpenPair(s *session) {
	c := s
	if !c.client {
		c = s.peer
	}
	i, last := c.pairIdx, int32(len(ns.openPairs)-1)
	if i < 0 || i > last || ns.openPairs[i].client != c {
		return
	}
	ns.openPairs[i] = ns.openPairs[last]
	ns.openPairs[i].client.pairIdx = i
	ns.openPairs[last] = openPair{}
	ns.openPairs = ns.openPairs[:last]
	c.pairIdx = -1
}

func (ns *namespace) newSegment(name string, size int) (*segment, error) {
	seg, err := shm.CreateSegment(name, size)
	if err != nil {
		return nil, err
	}
	s := &segment{handle: ns.handle(), seg: seg, alloc: shm.NewAllocator(seg.Size())}
	ns.segs[s.handle] = s
	return s, nil
}

// free returns a fifo pair's extent, and its memory when data went through
// it (written bytes is what the pair's tails say; an app that lies only
// keeps its own pages resident until the extent is reused or the segment
// dropped).
func (s *segment) free(off int, written uint64) {
	n := s.alloc.Release(off)
	if n > 0 && written > 0 {
		// Best effort: an error leaves the pages as they were before.
		_ = s.seg.Punch(off, n)
	}
}

func (ns *namespace) dropSegment(s *segment) {
	ns.dropRelays(s)
	delete(ns.segs, s.handle)
	s.gone = true
	if s.pins > 0 {
		return
	}
	s.seg.Close()
}

// unpinLocked ends a snapshot's read of s (under ns.mu).
func (s *segment) unpinLocked() {
	s.pins--
	if s.pins == 0 && s.gone {
		s.seg.Close()
	}
}

// dropCT removes an empty cut-through segment: the workers that are still
// alive are told to unmap it.
func (ns *namespace) dropCT(s *segment) {
	k := [2]*worker{s.a, s.b}
	segs := ns.pairs[k]
	for i, x := range segs {
		if x == s {
			segs = append(segs[:i], segs[i+1:]...)
			break
		}
	}
	if len(segs) == 0 {
		delete(ns.pairs, k)
	} else {
		ns.pairs[k] = segs
	}
	s.a.app.nsegs--
	if s.b.app != s.a.app {
		s.b.app.nsegs--
	}
	for _, w := range []*worker{s.a, s.b} {
		if !w.dead {
			w.send(&wire.DelSegment{Segment: s.handle})
		}
		if s.a == s.b {
			break
		}
	}
	ns.dropSegment(s)
}

// connectLocal completes a cut-through connect of w to listener l: the
// fifo pair, the accepted event to the listener, the connected event.
func (ns *namespace) connectLocal(w *worker, m *wire.Connect, l *listener, local, dst netip.AddrPort, fail func(code wire.Code, format string, args ...any)) {
	a, srv := w.app, l.w
	c2s, s2c := a.txFifo, a.rxFifo
	fp1, fp2 := shm.FifoFootprint(c2s), shm.FifoFootprint(s2c)
	// the listening app's worker that takes the session (accept.go)
	srv, seg, off, code, msg := ns.allocPairAccepting(w, l.acceptWorker(), l, fp1+fp2)
	if code != wire.OK {
		fail(code, "%s", msg)
		return
	}
	if err := shm.FormatFifo(seg.seg, off, c2s); err != nil {
		seg.alloc.Free(off)
		fail(wire.ErrInternal, "fifo init: %v", err)
		return
	}
	if err := shm.FormatFifo(seg.seg, off+fp1, s2c); err != nil {
		seg.alloc.Free(off)
		fail(wire.ErrInternal, "fifo init: %v", err)
		return
	}
	seg.sessions++
	la := wire.Addr{Proto: wire.TCP, IP: local.Addr(), Port: local.Port()}
	ra := wire.Addr{Proto: wire.TCP, IP: dst.Addr(), Port: dst.Port()}
	cs := &session{handle: ns.handle(), w: w, seg: seg, pairOff: off, s2cOff: off + fp1, client: true}
	ss := &session{handle: ns.handle(), w: srv, seg: seg, pairOff: off, s2cOff: off + fp1, pending: true}
	cs.peer, ss.peer = ss, cs
	// The listener learns about it through its event queue; when that is
	// full the event waits in the worker's backlog (delivered in order by
	// the flusher), but a connect storm never grows the backlog past one
	// queue's worth: then the connect is refused, like a full listen
	// backlog, and the listener is not punished.
	if len(srv.backlog) >= srv.evq.Slots() {
		seg.alloc.Free(off)
		seg.sessions--
		fail(wire.ErrQueueFull, "listening app %s is not keeping up: its event queue (%d slots, queueSlots of app namespace %s) and backlog are full",
			srv.app.name, srv.evq.Slots(), ns.key)
		return
	}
	srv.send(&wire.Accepted{Listener: l.handle, Session: ss.handle, Local: ra, Remote: la,
		Fifos: wire.FifoPair{Segment: seg.handle, RxOff: uint64(off), TxOff: uint64(off + fp1), RxCap: uint32(c2s), TxCap: uint32(s2c)}})
	for _, s := range []*session{cs, ss} {
		ns.sessions[s.handle] = s
		s.w.sessions[s.handle] = s
		s.w.app.nsessions++
		ns.stats.sessionsOpened++
	}
	cs.pairIdx = int32(len(ns.openPairs))
	ns.openPairs = append(ns.openPairs, openPair{pairRead{seg, off, off + fp1}, cs})
	w.send(&wire.Connected{Ctx: m.Ctx, Session: cs.handle, Local: la, Remote: ra,
		Fifos: wire.FifoPair{Segment: seg.handle, RxOff: uint64(off + fp1), TxOff: uint64(off), RxCap: uint32(s2c), TxCap: uint32(c2s)}})
}

// allocPair finds room for a fifo pair in a cut-through segment of the two
// workers, creating (and announcing) a new segment when needed.
func (ns *namespace) allocPair(c, s *worker, n int) (*segment, int, wire.Code, string) {
	k := [2]*worker{c, s}
	if segs := ns.pairs[[2]*worker{s, c}]; len(segs) > 0 && c != s {
		k = [2]*worker{s, c}
	}
	for _, seg := range ns.pairs[k] {
		if off, err := seg.alloc.Alloc(n); err == nil {
			return seg, off, wire.OK, ""
		}
	}
	cfg := ns.cfg
	if n > cfg.SegmentSize {
		return nil, 0, wire.ErrQuota, fmt.Sprintf("fifo pair of %d bytes does not fit segmentSize %d of app namespace %s", n, cfg.SegmentSize, ns.key)
	}
	for _, a := range []*app{c.app, s.app} {
		if a.nsegs >= cfg.MaxSegmentsPerApp {
			return nil, 0, wire.ErrQuota, fmt.Sprintf("app %s reached maxSegmentsPerApp (%d) of app namespace %s (segmentSize %d)",
				a.name, cfg.MaxSegmentsPerApp, ns.key, cfg.SegmentSize)
		}
	}
	seg, err := ns.newSegment(fmt.Sprintf("hs-ct-%d-%d", c.app.id, s.app.id), cfg.SegmentSize)
	if err != nil {
		return nil, 0, wire.ErrInternal, fmt.Sprintf("cannot create cut-through segment: %v", err)
	}
	seg.a, seg.b = k[0], k[1]
	// Announce it to both apps before any event refers to it, each with its
	// end of a doorbell pair that is the segment's alone: each app rings the
	// other through it, and neither can read or stall the other's end (nor
	// its worker doorbell). The engine keeps no copy: cut-through wake-ups
	// do not involve it. A worker connecting to itself gets both ends.
	x, y, err := shm.NewDoorbell()
	if err != nil {
		ns.dropSegment(seg)
		return nil, 0, wire.ErrInternal, fmt.Sprintf("cannot create a doorbell: %v", err)
	}
	for _, pair := range [][2]*worker{{seg.a, seg.b}, {seg.b, seg.a}} {
		me, peer := pair[0], pair[1]
		ends, err := ns.ctEnds(seg, me, x, y)
		if err == nil {
			err = me.app.sendSock(&wire.AddSegment{Segment: seg.handle, Size: uint64(seg.seg.Size()), Worker: me.id,
				PeerApp: peer.app.id, PeerWorker: peer.id, HasPeerWake: true}, append([]int{seg.seg.FD()}, ends...))
		}
		if err != nil {
			unix.Close(x)
			unix.Close(y)
			ns.dropSegment(seg)
			return nil, 0, wire.ErrInternal, fmt.Sprintf("cannot pass segment to app %s: %v", me.app.name, err)
		}
		if seg.a == seg.b {
			break
		}
	}
	unix.Close(x)
	unix.Close(y)
	seg.a.app.nsegs++
	if seg.b.app != seg.a.app {
		seg.b.app.nsegs++
	}
	ns.pairs[k] = append(ns.pairs[k], seg)
	off, err := seg.alloc.Alloc(n)
	if err != nil {
		return nil, 0, wire.ErrInternal, "fresh segment too small"
	}
	return seg, off, wire.OK, ""
}

// pairBytes reads how many bytes went through a fifo pair: the free-running
// tail of each fifo (word 0 of the header in engine/shm's documented layout).
// The apps write these words, so the value is for statistics only.
func pairBytes(s *session) uint64 { return fifoBytes(s.seg, s.pairOff, s.s2cOff) }

func fifoBytes(seg *segment, offs ...int) uint64 {
	b := seg.seg.Bytes()
	var n uint64
	for _, off := range offs {
		if off >= 0 && off+8 <= len(b) {
			n += binary.LittleEndian.Uint64(b[off:])
		}
	}
	return n
}
