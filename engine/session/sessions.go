package session

import (
	"fmt"
	"net/netip"

	"github.com/hoststack/hoststack/engine/wire"
)

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
	// pairIdx: a cut-through client end's place in ns.openPairs
	pairIdx int32
	flow    *Flow // carried by a transport (no peer, fifos in the app's own segment)
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
		ns.dropOpenPair(s)
		written := pairBytes(s)
		ns.stats.bytes += written
		s.seg.free(s.pairOff, written)
		s.seg.sessions--
		if s.seg.sessions == 0 && (s.seg.orphan || s.seg.a.dead || s.seg.b.dead) {
			ns.dropCT(s.seg)
		}
	}
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
