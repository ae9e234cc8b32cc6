package session

import (
	"crypto/tls"
	"fmt"
	"net/netip"

	"github.com/hoststack/hoststack/engine/wire"
)

// Listeners: the namespace's local listener table (by host, address and
// port), bind conflicts, ephemeral ports, and the lookup a connect makes.

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

// listenKey identifies a listener in the local table: a host's listeners on
// the unspecified address are that host's alone, so two pods may both
// listen on :8080.
type listenKey struct {
	proto uint8
	host  string
	ip    netip.Addr
	port  uint16
}
