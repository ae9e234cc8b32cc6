package session

import (
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/wire"
)

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
}

// listener is a listening endpoint: in the namespace's local table (local
// scope), at a transport (global scope), or both.
type listener struct {
	handle uint64
	key    listenKey
	w      *worker
	local  bool               // in ns.listeners
	tl     *TransportListener // global scope
	tls    *tls.Config        // served by a TLS listener; nil: plaintext
	// pending: the transport is binding it (ns.mu released); it reserves
	// its key but takes no sessions yet
	pending bool
}

// session is one end of a session, held by one app worker. A cut-through
// session is two of them, peers of each other, over one fifo pair.
type session struct {
	handle  uint64
	w       *worker
	peer    *session
	seg     *segment
	pairOff int // offset of the fifo pair (freed when both ends are done)
	s2cOff  int // offset of the second fifo of the pair
	client  bool
	pending bool // accepted, waiting for the app's accept-reply
	done    bool
	flow    *Flow // carried by a transport (no peer, fifos in the app's own segment)
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
	s.seg.Close()
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

// request handles one decoded request of worker w (ns.mu held).
func (ns *namespace) request(w *worker, m wire.Msg) {
	switch m := m.(type) {
	case *wire.Listen:
		ns.listen(w, m)
	case *wire.Unlisten:
		l := w.listeners[m.Listener]
		if l == nil {
			w.send(&wire.UnlistenReply{Ctx: m.Ctx, Listener: m.Listener, Code: wire.ErrNoSession,
				Msg: wire.Msgf("worker %d has no listener %d", w.id, m.Listener)})
			return
		}
		ns.unlistenLocked(l)
		w.send(&wire.UnlistenReply{Ctx: m.Ctx, Listener: m.Listener})
	case *wire.Connect:
		ns.connect(w, m)
	case *wire.AcceptReply:
		s := w.sessions[m.Session]
		if s == nil || !s.pending {
			w.send(&wire.Reply{Req: wire.TAcceptReply, Handle: m.Session, Code: wire.ErrNoSession,
				Msg: wire.Msgf("no session %d awaiting accept on worker %d", m.Session, w.id)})
			return
		}
		s.pending = false
		if m.Code != wire.OK {
			ns.releaseLocked(s, true, fmt.Sprintf("app %s refused the session: %v", w.app.name, m.Code))
			w.send(&wire.Cleanup{Session: s.handle})
		}
	case *wire.Disconnect:
		ns.closeReq(w, m.Session, wire.TDisconnect, false)
	case *wire.Reset:
		ns.closeReq(w, m.Session, wire.TReset, true)
	case *wire.Shutdown:
		s := w.sessions[m.Session]
		if s == nil {
			w.send(&wire.Reply{Req: wire.TShutdown, Handle: m.Session, Code: wire.ErrNoSession,
				Msg: wire.Msgf("worker %d has no session %d", w.id, m.Session)})
			return
		}
		// The end of stream travels in the fifo itself; the engine only
		// acknowledges (and nudges a transport to look at the fifo).
		if f := s.flow; f != nil {
			f.poke()
		}
		w.send(&wire.Reply{Req: wire.TShutdown, Handle: m.Session})
	default:
		w.send(&wire.Reply{Req: 0, Code: wire.ErrInvalid, Msg: wire.Msgf("%v is not a queue request", m.Type())})
	}
}

func (ns *namespace) closeReq(w *worker, h uint64, req wire.Type, reset bool) {
	s := w.sessions[h]
	if s == nil {
		w.send(&wire.Reply{Req: req, Handle: h, Code: wire.ErrNoSession, Msg: wire.Msgf("worker %d has no session %d", w.id, h)})
		return
	}
	reason := ""
	if reset {
		reason = "connection reset by peer app " + w.app.name
	}
	ns.releaseLocked(s, reset, reason)
	w.send(&wire.Cleanup{Session: h})
}

// releaseLocked ends one side of a session. The peer is told (reset or
// disconnected); the fifo pair is freed once both sides are done.
func (ns *namespace) releaseLocked(s *session, reset bool, reason string) {
	if s.done {
		return
	}
	s.done = true
	delete(ns.sessions, s.handle)
	delete(s.w.sessions, s.handle)
	s.w.app.nsessions--
	ns.stats.sessionsClosed++
	if f := s.flow; f != nil {
		f.appDoneLocked(reset)
		return
	}
	if p := s.peer; p != nil && !p.done {
		if ns.stopping {
			return // the apps keep the session (see namespace.stopping)
		}
		if reset {
			ns.stats.resets++
			p.w.send(&wire.ResetEvt{Session: p.handle, Code: wire.ErrReset, Msg: wire.Truncate(reason, wire.MaxMessageLen)})
		} else {
			p.w.send(&wire.Disconnected{Session: p.handle})
		}
		return
	}
	if s.seg != nil {
		written := pairBytes(s)
		ns.stats.bytes += written
		s.seg.free(s.pairOff, written)
		s.seg.sessions--
		if s.seg.sessions == 0 && (s.seg.orphan || s.seg.a.dead || s.seg.b.dead) {
			ns.dropCT(s.seg)
		}
	}
}

func (ns *namespace) unlistenLocked(l *listener) {
	if l.local && ns.listeners[l.key] == l {
		delete(ns.listeners, l.key)
	}
	if _, ok := ns.handles[l.handle]; ok {
		l.w.app.nlisten--
		ns.portDel(l)
	}
	delete(ns.handles, l.handle)
	delete(l.w.listeners, l.handle)
	if l.tl != nil {
		l.tl.closeLocked()
	}
}

// portKey groups the listeners of one host on one port, for bind
// conflicts.
type portKey struct {
	proto uint8
	host  string
	port  uint16
}

func portKeyOf(k listenKey) portKey { return portKey{k.proto, k.host, k.port} }

// portAdd registers l in the port index (a listener, or an address a
// listener reserves while it is being bound).
func (ns *namespace) portAdd(l *listener) {
	pk := portKeyOf(l.key)
	ns.ports[pk] = append(ns.ports[pk], l)
}

// portDel removes l from the port index.
func (ns *namespace) portDel(l *listener) {
	pk := portKeyOf(l.key)
	ls := ns.ports[pk]
	for i, x := range ls {
		if x == l {
			ls = append(ls[:i], ls[i+1:]...)
			break
		}
	}
	if len(ls) == 0 {
		delete(ns.ports, pk)
	} else {
		ns.ports[pk] = ls
	}
}

// bindConflict returns a listener (other than self) of k's host and port
// whose address overlaps k's, as Linux judges a bind: the same address, or
// a wildcard of the family (0.0.0.0 covers every IPv4 address; [::], dual
// stack, covers every address) on either side.
func (ns *namespace) bindConflict(k listenKey, self *listener) *listener {
	for _, l := range ns.ports[portKeyOf(k)] {
		if l != self && addrsOverlap(l.key.ip, k.ip) {
			return l
		}
	}
	return nil
}

func addrsOverlap(a, b netip.Addr) bool {
	switch {
	case a == b:
		return true
	case (a.Is6() && a.IsUnspecified()) || (b.Is6() && b.IsUnspecified()):
		return true
	case a.Is4() && b.Is4():
		return a.IsUnspecified() || b.IsUnspecified()
	}
	return false
}

// privilegedPort says whether listening on port needs the privilege of
// binding ports below 1024.
func privilegedPort(port uint16) bool { return port != 0 && port < 1024 }

func (a *app) privilegedPortError(port uint16) string {
	// the queue event's text holds 128 bytes: the README says the rest
	return fmt.Sprintf("app %s may not listen on port %d: ports below 1024 need NET_BIND_SERVICE in its pod (standalone: --privileged-ports)",
		a.name, port)
}

func (ns *namespace) listen(w *worker, m *wire.Listen) {
	fail := func(code wire.Code, format string, args ...any) {
		w.send(&wire.Bound{Ctx: m.Ctx, Code: code, Msg: wire.Msgf(format, args...)})
	}
	a := w.app
	ip := m.Addr.IP.Unmap()
	if ip.Is6() && ip.Zone() != "" {
		ip = ip.WithZone("")
	}
	switch m.Addr.Proto {
	case wire.UDP:
		ns.listenPacket(w, m, netip.AddrPortFrom(ip, m.Addr.Port), fail)
		return
	case wire.TCP:
	default:
		fail(wire.ErrInvalid, "unknown protocol %d", m.Addr.Proto)
		return
	}
	st, _ := ns.transport().(StreamListener)
	local := a.scope&scopeLocal != 0
	global := a.scope&scopeGlobal != 0 && st != nil
	if !local && !global {
		fail(wire.ErrNoTransport, "app %s listens in global scope only, and no transport of this engine listens", a.name)
		return
	}
	if privilegedPort(m.Addr.Port) && !a.privPorts {
		fail(wire.ErrDenied, "%s", a.privilegedPortError(m.Addr.Port))
		return
	}
	if a.nlisten >= ns.cfg.MaxListenersPerApp {
		fail(wire.ErrQuota, "app %s reached maxListenersPerApp (%d) of app namespace %s", a.name, ns.cfg.MaxListenersPerApp, ns.key)
		return
	}
	// counted from here: another worker of the app may listen while a
	// transport binds this one without ns.mu
	a.nlisten++
	counted := true // dropped on failure, until committed or handed to the completion
	defer func() {
		if counted {
			a.nlisten--
		}
	}()
	key := listenKey{proto: uint8(m.Addr.Proto), host: a.host, ip: ip, port: m.Addr.Port}
	if key.port == 0 && !global {
		p, ok := ns.freePort(key)
		if !ok {
			fail(wire.ErrAddrInUse, "no free port for %s", ip)
			return
		}
		key.port = p
	}
	var l *listener // the new listener, once created
	inUse := func() bool {
		o := ns.bindConflict(key, l)
		switch {
		case o == nil:
			return false
		case o.key.ip == key.ip:
			fail(wire.ErrAddrInUse, "%s is already listened on by app %s in app namespace %s",
				netip.AddrPortFrom(ip, key.port), o.w.app.name, ns.key)
		default:
			fail(wire.ErrAddrInUse, "%s is in use: app %s listens on %s (a wildcard address covers it)",
				netip.AddrPortFrom(ip, key.port), o.w.app.name, netip.AddrPortFrom(o.key.ip, o.key.port))
		}
		return true
	}
	if key.port != 0 && inUse() {
		return
	}
	srvTLS, code, msg := a.tlsServer(m.TLS)
	if code != wire.OK {
		fail(code, "%s", msg)
		return
	}
	l = &listener{handle: ns.handle(), key: key, w: w, local: local, tls: srvTLS}
	if !global {
		counted = false
		ns.commitListen(l, m.Ctx)
		return
	}
	// The transport binds in the app's network namespace (setns, bind:
	// system calls that may take long), so it runs without ns.mu and off
	// the shard. A specific local key is reserved meanwhile (pending:
	// conflicts see it, connects do not); the worker's later requests
	// wait, as it serves them in order.
	reserved := key.port != 0
	if reserved {
		l.pending = true
		if local {
			ns.listeners[key] = l
		}
		ns.portAdd(l)
	}
	unreserve := func() {
		if !reserved {
			return
		}
		if ns.listeners[key] == l {
			delete(ns.listeners, key)
		}
		ns.portDel(l)
	}
	tl := &TransportListener{ns: ns, l: l, app: a.name, tls: srvTLS, closed: make(chan struct{})}
	req := ListenRequest{Namespace: ns.key, App: a.name, Host: a.host, Local: netip.AddrPortFrom(ip, key.port), Listener: tl}
	var bound netip.AddrPort
	counted = false // the completion's now
	ns.async(w, func() { bound, code, msg = st.Listen(req) }, func() {
		unreserve()
		l.pending = false
		switch {
		case w.dead || ns.removed:
			// reaped meanwhile: nobody to tell, stop the transport's listener
			tl.closeLocked()
		case code != wire.OK:
			fail(code, "%s", msg)
		default:
			l.tl = tl
			if key.port == 0 {
				key.port = bound.Port()
				l.key = key
			}
			if inUse() {
				tl.closeLocked()
				break
			}
			ns.commitListen(l, m.Ctx)
			return
		}
		a.nlisten--
	})
}

// commitListen makes l a listener of its worker and answers the listen
// (its count in the app's nlisten is taken already).
func (ns *namespace) commitListen(l *listener, ctx uint64) {
	w, key := l.w, l.key
	if l.local {
		ns.listeners[key] = l
	}
	ns.handles[l.handle] = l
	w.listeners[l.handle] = l
	ns.portAdd(l)
	w.send(&wire.Bound{Ctx: ctx, Listener: l.handle, Local: wire.Addr{Proto: wire.TCP, IP: key.ip, Port: key.port}})
}

func (ns *namespace) freePort(k listenKey) (uint16, bool) {
	for i := 0; i <= ephemeralHi-ephemeralLo; i++ {
		p := ns.nextEphemeral()
		k.port = p
		if ns.bindConflict(k, nil) == nil {
			return p, true
		}
	}
	return 0, false
}

func (ns *namespace) nextEphemeral() uint16 {
	p := ns.ephemeral
	ns.ephemeral++
	if ns.ephemeral > ephemeralHi {
		ns.ephemeral = ephemeralLo
	}
	return p
}

// appListener finds the listener a redirect to the named app takes: the
// app of that name in the connecting app's host if there is one, else the
// one that attached first (names are unique per host, and a later app
// cannot displace an earlier one); its listener on port if it has one, else
// its first (lowest handle).
func (ns *namespace) appListener(name string, port uint16, from string) *listener {
	better := func(x, y *app) bool {
		if (x.host == from) != (y.host == from) {
			return x.host == from
		}
		return x.id < y.id
	}
	var target *app
	for _, a := range ns.apps {
		if !a.dead && !a.leaving && a.name == name && (target == nil || better(a, target)) {
			target = a
		}
	}
	if target == nil {
		return nil
	}
	var best *listener
	for _, w := range target.workers {
		for _, l := range w.listeners {
			if l.key.port == port {
				return l
			}
			if best == nil || l.handle < best.handle {
				best = l
			}
		}
	}
	return best
}

// lookupListener finds the local listener for a connect of an app of host
// from to dst: the host owning dst (from itself for loopback; the
// transport's answer otherwise), then its listener on the exact address,
// the unspecified address of the family, or [::] (dual stack). Without a
// transport every address is the app's own host's.
func (ns *namespace) lookupListener(proto wire.Proto, dst netip.AddrPort, from string) *listener {
	ip := dst.Addr().Unmap()
	host := from
	if t := ns.transport(); t != nil && !ip.IsLoopback() {
		h, ok := t.Host(ns.key, ip)
		if !ok {
			return nil
		}
		host = h
	}
	k := listenKey{proto: uint8(proto), host: host, ip: ip, port: dst.Port()}
	if l := ns.listeners[k]; l != nil && !l.pending {
		return l
	}
	if ip.Is4() {
		k.ip = netip.IPv4Unspecified()
		if l := ns.listeners[k]; l != nil && !l.pending {
			return l
		}
	}
	k.ip = netip.IPv6Unspecified()
	if l := ns.listeners[k]; l != nil && !l.pending {
		return l
	}
	return nil
}

// transport is the engine's transport if it carries this namespace.
func (ns *namespace) transport() Transport {
	t := ns.e.cfg.Transport
	if r, ok := t.(NamespaceRouter); ok && !r.Serves(ns.key) {
		return nil
	}
	return t
}

// sourceAddr is the local address of a cut-through session of app a to
// dst: the address of a's host in dst's family when the transport knows it
// (what a kernel socket in the pod would get), else dst's own address
// (loopback-style, as within one host).
func (ns *namespace) sourceAddr(a *app, dst netip.Addr) netip.Addr {
	if ha, ok := ns.transport().(HostAddresser); ok && !dst.IsLoopback() {
		if src, ok := ha.HostAddr(ns.key, a.host, dst); ok {
			return src
		}
	}
	return dst
}

func (ns *namespace) connect(w *worker, m *wire.Connect) {
	a := w.app
	cfg := ns.cfg
	fail := func(code wire.Code, format string, args ...any) {
		if code == wire.ErrRefused {
			ns.stats.connectsRefused++
		}
		w.send(&wire.Connected{Ctx: m.Ctx, Code: code, Msg: wire.Msgf(format, args...), Remote: m.Remote})
	}
	if m.Remote.Proto != wire.TCP {
		fail(wire.ErrInvalid, "connect is for tcp sessions; udp goes through a datagram socket (ListenPacket)")
		return
	}
	if a.nsessions >= cfg.MaxSessionsPerApp {
		fail(wire.ErrQuota, "app %s reached maxSessionsPerApp (%d) of app namespace %s", a.name, cfg.MaxSessionsPerApp, ns.key)
		return
	}
	dst := netip.AddrPortFrom(m.Remote.IP.Unmap(), m.Remote.Port)
	if dst.Addr().IsUnspecified() {
		if dst.Addr().Is4() {
			dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), dst.Port())
		} else {
			dst = netip.AddrPortFrom(netip.IPv6Loopback(), dst.Port())
		}
	}
	local := netip.AddrPortFrom(ns.sourceAddr(a, dst.Addr()), ns.nextEphemeral())
	var l *listener
	if r := ns.e.cfg.Rules; r != nil {
		v := r.Lookup(RuleQuery{Namespace: ns.key, App: a.name, Scope: LocalScope, Dir: Connect, Proto: wire.TCP, Local: local, Remote: dst})
		switch v.Action {
		case Deny:
			fail(wire.ErrDenied, "connect to %s denied by SessionRule %s", dst, v.Rule)
			return
		case Redirect:
			switch {
			case v.App != "":
				if l = ns.appListener(v.App, dst.Port(), a.host); l == nil {
					fail(wire.ErrRefused, "connection refused: SessionRule %s redirects to app %s, which does not listen", v.Rule, v.App)
					return
				}
				dst = netip.AddrPortFrom(dst.Addr(), l.key.port)
			case v.To.IsValid():
				dst = v.To
				local = netip.AddrPortFrom(ns.sourceAddr(a, dst.Addr()), local.Port())
			}
		}
	}
	if l == nil {
		l = ns.lookupListener(wire.TCP, dst, a.host)
	}
	if t := ns.transport(); l == nil && t != nil {
		// The session would leave through the transport: the namespace's
		// global-scope rules decide too.
		if r := ns.e.cfg.Rules; r != nil {
			v := r.Lookup(RuleQuery{Namespace: ns.key, App: a.name, Scope: GlobalScope, Dir: Connect, Proto: wire.TCP, Remote: dst})
			switch {
			case v.Action == Deny:
				fail(wire.ErrDenied, "connect to %s denied by SessionRule %s", dst, v.Rule)
				return
			case v.Action == Redirect && v.App != "":
				if l = ns.appListener(v.App, dst.Port(), a.host); l == nil {
					fail(wire.ErrRefused, "connection refused: SessionRule %s redirects to app %s, which does not listen", v.Rule, v.App)
					return
				}
				dst = netip.AddrPortFrom(dst.Addr(), l.key.port)
			}
		}
		if l == nil {
			ns.transportConnect(t, w, m, dst, fail)
			return
		}
	}
	if l == nil {
		if ns.transport() == nil && !dst.Addr().IsLoopback() {
			fail(wire.ErrRefused, "connection refused: nothing listens on %s in app namespace %s, and no transport is configured for remote addresses", dst, ns.key)
			return
		}
		fail(wire.ErrRefused, "connection refused: nothing listens on %s in app namespace %s", dst, ns.key)
		return
	}
	// The kernel never sees this session: refuse it as the hosts' network
	// would (NetworkPolicy drops, the dialler times out), before anything
	// about the listener can show.
	if v, judged := ns.checkPeer(a, l, dst); judged && !v.Allowed {
		ns.drops.log(ns.e.logf, "app namespace %s: connect of app %s to %s dropped by network policy: %s", ns.key, a.name, dst, v.Reason)
		ns.dropConnect(w, m, fmt.Sprintf("connect to %s timed out: %s", dst, v.Reason))
		return
	}
	srv := l.w
	if srv.app.nsessions >= cfg.MaxSessionsPerApp {
		fail(wire.ErrQuota, "listening app %s reached maxSessionsPerApp (%d) of app namespace %s", srv.app.name, cfg.MaxSessionsPerApp, ns.key)
		return
	}
	if r := ns.e.cfg.Rules; r != nil {
		v := r.Lookup(RuleQuery{Namespace: ns.key, App: srv.app.name, Scope: LocalScope, Dir: Accept, Proto: wire.TCP, Local: dst, Remote: local})
		if v.Action == Deny {
			fail(wire.ErrDenied, "session to %s denied by SessionRule %s", dst, v.Rule)
			return
		}
	}
	if m.TLS != 0 || l.tls != nil {
		tc, code, msg := ns.tlsClient(a, m.TLS, dst)
		if code != wire.OK {
			fail(code, "%s", msg)
			return
		}
		srvTLS, name := l.tls, srv.app.name
		if tc == nil || srvTLS == nil {
			// a mismatch: refused at once, no handshake
			code, msg = localTLS(tc, srvTLS, name)
			fail(code, "%s", msg)
			return
		}
		// the handshake is milliseconds of CPU (or a timeout): not under
		// ns.mu, not on the shard
		ns.async(w, func() { code, msg = localTLS(tc, srvTLS, name) }, func() {
			if w.dead {
				return
			}
			if code == wire.OK && (ns.handles[l.handle] != l || srv.dead) {
				code, msg = wire.ErrRefused, fmt.Sprintf("connection refused: the listener on %s closed during the TLS handshake", dst)
			}
			if code == wire.OK && (a.nsessions >= cfg.MaxSessionsPerApp || srv.app.nsessions >= cfg.MaxSessionsPerApp) {
				code, msg = wire.ErrQuota, fmt.Sprintf("maxSessionsPerApp (%d) of app namespace %s reached during the TLS handshake", cfg.MaxSessionsPerApp, ns.key)
			}
			if code != wire.OK {
				fail(code, "%s", msg)
				return
			}
			ns.connectLocal(w, m, l, local, dst, fail)
		})
		return
	}
	ns.connectLocal(w, m, l, local, dst, fail)
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
