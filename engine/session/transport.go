package session

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"syscall"

	"github.com/hoststack/hoststack/engine/wire"
)

// dropTransportSegLocked removes an empty transport segment added on
// demand: the app is told to unmap it and gets the slot back.
func (ns *namespace) dropTransportSegLocked(seg *segment) {
	a := seg.owner
	for i, x := range a.tsegs {
		if x == seg {
			a.tsegs = append(a.tsegs[:i], a.tsegs[i+1:]...)
			break
		}
	}
	a.nsegs--
	for _, w := range a.workers {
		if !w.dead {
			w.send(&wire.DelSegment{Segment: seg.handle})
			break
		}
	}
	ns.dropSegment(seg)
}

// transportAllocLocked finds room for a transport fifo pair of n bytes: in
// the app's own segment, then in the segments added for it, then in a new
// segment announced to the app (add-segment on its attach socket, before
// any event refers to it) while the app is below maxSegmentsPerApp.
func (ns *namespace) transportAllocLocked(w *worker, n int) (*segment, int, wire.Code, string) {
	a := w.app
	for _, seg := range append([]*segment{a.own}, a.tsegs...) {
		if off, err := seg.alloc.Alloc(n); err == nil {
			return seg, off, wire.OK, ""
		}
	}
	cfg := ns.cfg
	if n > cfg.SegmentSize {
		return nil, 0, wire.ErrQuota, fmt.Sprintf("fifo pair of %d bytes does not fit segmentSize %d of app namespace %s", n, cfg.SegmentSize, ns.key)
	}
	if a.nsegs >= cfg.MaxSegmentsPerApp {
		return nil, 0, wire.ErrQuota, fmt.Sprintf("app %s reached maxSegmentsPerApp (%d) of app namespace %s: no room for a fifo pair of %d bytes in its %d segments of segmentSize %d",
			a.name, cfg.MaxSegmentsPerApp, ns.key, n, a.nsegs, cfg.SegmentSize)
	}
	seg, err := ns.newSegment(fmt.Sprintf("hs-tr-%d-%d", a.id, len(a.tsegs)+1), cfg.SegmentSize)
	if err != nil {
		return nil, 0, wire.ErrInternal, fmt.Sprintf("cannot create a fifo segment for app %s: %v", a.name, err)
	}
	seg.owner = a
	if err := ns.announceTransportSegLocked(w, seg); err != nil {
		ns.dropSegment(seg)
		return nil, 0, wire.ErrInternal, fmt.Sprintf("cannot pass a fifo segment to app %s: %v", a.name, err)
	}
	a.tsegs = append(a.tsegs, seg)
	a.nsegs++
	off, err := seg.alloc.Alloc(n)
	if err != nil {
		return nil, 0, wire.ErrInternal, "fresh segment too small"
	}
	return seg, off, wire.OK, ""
}

// announceTransportSegLocked maps seg in the app as one more of its own
// segments: its transport sessions, served by the worker's transport
// doorbell (no peer doorbell comes with it).
func (ns *namespace) announceTransportSegLocked(w *worker, seg *segment) error {
	if a := w.app; a.legacy() {
		m, fds := a.v2TransportSeg(w, seg)
		return a.sendSock(m, fds)
	}
	return w.app.sendSock(&wire.AddSegment{Segment: seg.handle, Size: uint64(seg.seg.Size()), Worker: w.id},
		[]int{seg.seg.FD()})
}

// transportWakeLocked starts watching the worker's transport doorbell with
// its first transport session: the app rings its end after progress on a
// transport fifo whose waiting flag is set, and the flows the ring names
// are kicked (transportRung).
// A transport that serves flows from event loops (BellWatcher) watches it
// in the loop that serves the worker's flows; else the worker's kicker
// goroutine does. (Until then rings just wait in the socket.)
func (ns *namespace) transportWakeLocked(w *worker) error {
	if err := ns.v2OwnSegmentLocked(w); err != nil {
		return err
	}
	if w.kicked {
		return nil
	}
	w.kicked = true
	if bw, ok := ns.e.cfg.Transport.(BellWatcher); ok {
		var unwatch func()
		if err := w.tbellRaw.Control(func(fd uintptr) {
			unwatch = bw.WatchBell(ns.key, w.affinity(), int(fd), w.transportRung)
		}); err == nil && unwatch != nil {
			w.unwatch = unwatch
			return nil
		}
	}
	go w.kicker()
	return nil
}

// affinity is the key under which a BellWatcher serves the worker's flows
// and its transport doorbell in one loop (Flow.Affinity).
func (w *worker) affinity() uint64 { return uint64(w.app.id)<<32 | uint64(w.id) }

// kicker forwards the app's wake-ups of its transport fifos to the flows.
// It reads the engine's own end of the doorbell through Go's netpoller (the
// description is the engine's alone and stays non-blocking); it ends when
// the worker closes it.
func (w *worker) kicker() {
	var b [64]byte
	for {
		if _, err := w.tbell.Read(b[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) {
				continue // an empty datagram, or an error the app set on the pair (consumed)
			}
			return // closed by the worker
		}
		w.transportRung()
	}
}

// pokeFlows kicks all of the app's transport flows after a ring of one of
// its transport doorbells, for an app without event bits (older than wire
// version 5), and says how many. It never blocks.
func (a *app) pokeFlows() int {
	a.flowMu.Lock()
	defer a.flowMu.Unlock()
	for fl := range a.flows {
		fl.poke()
	}
	return len(a.flows)
}

// flowState is kept per app for its transport sessions.
type flowState struct {
	flowMu sync.Mutex
	flows  map[*Flow]struct{}
	// wakes holds, per worker with transport sessions, the engine's duplicate
	// of the worker's wake-up end (under ns.mu)
	wakes map[*worker]*wakeEnd
}

// transportConnect hands a connect to the transport.
func (ns *namespace) transportConnect(t Transport, w *worker, m *wire.Connect, dst netip.AddrPort,
	fail func(code wire.Code, format string, args ...any)) {
	a := w.app
	ra := wire.Addr{Proto: wire.TCP, IP: dst.Addr(), Port: dst.Port()}
	tc, code, msg := ns.tlsClient(a, m.TLS, dst)
	if code != wire.OK {
		fail(code, "%s", msg)
		return
	}
	f, code, msg := ns.newFlowLocked(w, m.Ctx, wire.Addr{}, ra)
	if code != wire.OK {
		fail(code, "%s", msg)
		return
	}
	f.s.client = true
	f.tlsClient = tc
	code, msg = t.Connect(ConnectRequest{Namespace: ns.key, App: a.name, Host: a.host, Remote: ra, Flow: f})
	if code == wire.OK {
		return
	}
	ns.dropFlowLocked(f) // refused synchronously: the app never saw it
	fail(code, "%s", msg)
}

// TransportListener is a listener's presence at a transport (global scope):
// the transport accepts sessions from the outside world and hands each to
// the app with Accept until Closed.
type TransportListener struct {
	ns     *namespace
	l      *listener
	app    string
	tls    *tls.Config
	closed chan struct{} // under ns.mu
	done   bool
}

// Closed is closed when the app's listener goes (unlisten, app detached or
// reaped, app namespace removed): the transport stops listening.
func (tl *TransportListener) Closed() <-chan struct{} { return tl.closed }

func (tl *TransportListener) closeLocked() {
	if !tl.done {
		tl.done = true
		close(tl.closed)
	}
}

// Accept hands a session the transport accepted (local: the address it
// arrived on, remote: the peer) to the app. On wire.OK the transport owns
// the returned flow exactly as after a connect's Flow.Connected (the app has
// its accepted event); otherwise the transport must refuse the peer (reset)
// and msg says why (a SessionRule deny, quotas, the listener gone).
func (tl *TransportListener) Accept(local, remote netip.AddrPort) (*Flow, wire.Code, string) {
	ns := tl.ns
	local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	if r := ns.e.cfg.Rules; r != nil {
		v := r.Lookup(RuleQuery{Namespace: ns.key, App: tl.app, Scope: GlobalScope, Dir: Accept, Proto: wire.TCP, Local: local, Remote: remote})
		if v.Action == Deny {
			ns.mu.Lock()
			ns.stats.connectsRefused++
			ns.mu.Unlock()
			return nil, wire.ErrDenied, fmt.Sprintf("session from %s to %s denied by SessionRule %s", remote, local, v.Rule)
		}
	}
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if tl.done {
		return nil, wire.ErrRefused, "the listener is closed"
	}
	if tl.l.tl != tl {
		// bound by the transport but not yet committed (the app has not
		// been told it listens): as if the peer came before the listen
		return nil, wire.ErrRefused, "the listener is not ready yet"
	}
	w := tl.l.acceptWorker() // accept.go
	if len(w.backlog) >= w.evq.Slots() {
		return nil, wire.ErrQueueFull, fmt.Sprintf("listening app %s is not keeping up: its event queue and backlog are full", w.app.name)
	}
	la := wire.Addr{Proto: wire.TCP, IP: local.Addr(), Port: local.Port()}
	ra := wire.Addr{Proto: wire.TCP, IP: remote.Addr(), Port: remote.Port()}
	f, code, msg := ns.newFlowLocked(w, 0, la, ra)
	if code != wire.OK {
		return nil, code, msg
	}
	f.connected = true
	f.s.pending = true
	w.send(&wire.Accepted{Listener: tl.l.handle, Session: f.s.handle, Local: la, Remote: ra, Fifos: f.fifos()})
	return f, wire.OK, ""
}

// listenPacket opens a datagram socket through the transport: a session
// whose fifos carry datagram records.
func (ns *namespace) listenPacket(w *worker, m *wire.Listen, local netip.AddrPort, fail func(code wire.Code, format string, args ...any)) {
	a := w.app
	if privilegedPort(local.Port()) && !a.privPorts {
		fail(wire.ErrDenied, "%s", a.privilegedPortError(local.Port()))
		return
	}
	pt, ok := ns.transport().(PacketTransport)
	if !ok {
		fail(wire.ErrNoTransport, "udp sockets are carried by a transport, and app namespace %s has none that carries udp", ns.key)
		return
	}
	if m.TLS != 0 {
		fail(wire.ErrInvalid, "TLS over UDP (DTLS) is not supported")
		return
	}

	la := wire.Addr{Proto: wire.UDP, IP: local.Addr(), Port: local.Port()}
	f, code, msg := ns.newFlowLocked(w, m.Ctx, la, wire.Addr{})
	if code != wire.OK {
		fail(code, "%s", msg)
		return
	}
	f.dgram = true
	f.connected = true
	// the transport binds in the app's network namespace: not under ns.mu,
	// not on the shard (the flow is registered, so a reap meanwhile reaches
	// it as AppClosed)
	req := PacketRequest{Namespace: ns.key, App: a.name, Host: a.host, Local: local, Flow: f}
	var bound netip.AddrPort
	ns.async(w, func() { bound, code, msg = pt.ListenPacket(req) }, func() {
		if code != wire.OK {
			ns.dropFlowLocked(f)
			fail(code, "%s", msg)
			return
		}
		if f.appDone {
			return // reaped meanwhile: the transport sees AppClosed and finishes
		}
		la := wire.Addr{Proto: wire.UDP, IP: bound.Addr().Unmap(), Port: bound.Port()}
		w.send(&wire.Bound{Ctx: m.Ctx, Local: la, Session: f.s.handle, Fifos: f.fifos()})
	})
}
