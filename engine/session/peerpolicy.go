package session

import (
	"net/netip"
	"time"

	"github.com/hoststack/hoststack/engine/wire"
)

// PeerQuery is a session between two hosts (pods) of the node that the
// kernel will never see: a cut-through connect that found a listener of
// another host. Src is the connecting host's address, Dst the listening
// host's address and the listener's port, both of the family of the
// address dialled (Src is invalid when the transport knows no such
// address of the connecting host).
type PeerQuery struct {
	Namespace string // NamespaceConfig.Key()
	Proto     wire.Proto
	SrcHost   string
	Src       netip.Addr
	DstHost   string
	Dst       netip.AddrPort
}

// PeerVerdict is a PeerPolicy's answer. A refused session carries Reason
// (which policy isolated which pod, and that none allowed the session) for
// the engine's log line and the error the app sees.
type PeerVerdict struct {
	Allowed bool
	Reason  string
}

// PeerPolicy is the seam for the cluster's network policy (NetworkPolicy in
// Kubernetes mode): it judges sessions that bypass the hosts' network
// namespaces as the network of those namespaces would. Same contract as
// Rules: called with the namespace lock held, fast, lock-free for readers,
// never calling back into the engine.
type PeerPolicy interface {
	CheckPeer(q PeerQuery) PeerVerdict
}

// DefaultPolicyDropDelay is Config.PolicyDropDelay when zero: the kernel
// transport's default handshake timeout.
const DefaultPolicyDropDelay = 30 * time.Second

// checkPeer asks the policy about a cut-through session from app a to the
// listener l on dst. Sessions within one host (a pod talking to itself) and
// sessions of the node's own host ("", standalone apps and shared-network
// app namespaces) are not judged: a pod cannot isolate itself from its own
// loopback, and NetworkPolicy does not select host-network endpoints.
func (ns *namespace) checkPeer(a *app, l *listener, dst netip.AddrPort) (PeerVerdict, bool) {
	p := ns.e.cfg.PeerPolicy
	srv := l.w.app
	if p == nil || a.host == "" || srv.host == "" || a.host == srv.host {
		return PeerVerdict{Allowed: true}, false
	}
	// Both hosts' addresses of the session's family, as the network
	// would see them: the listener's (after a redirect the session goes to
	// a host other than the one owning the address dialled, and that host
	// receives it), and the connecting host's. An address the transport
	// does not know stays invalid: no address-based rule can allow it.
	to, from := dst.Addr(), netip.Addr{}
	if ha, ok := ns.transport().(HostAddresser); ok {
		if addr, ok := ha.HostAddr(ns.key, srv.host, to); ok {
			to = addr
		}
		if addr, ok := ha.HostAddr(ns.key, a.host, to); ok {
			from = addr
		}
	}
	return p.CheckPeer(PeerQuery{Namespace: ns.key, Proto: wire.TCP, SrcHost: a.host, Src: from,
		DstHost: srv.host, Dst: netip.AddrPortFrom(to, dst.Port())}), true
}

// dropConnect answers a connect the policy refused as a network that drops
// the SYN does: nothing now, a timeout after the drop delay. Each app may
// have at most maxSessionsPerApp such connects waiting; past that they time
// out at once, so dropped connects cost a bounded number of timers.
func (ns *namespace) dropConnect(w *worker, m *wire.Connect, msg string) {
	a := w.app
	reply := func() {
		w.send(&wire.Connected{Ctx: m.Ctx, Code: wire.ErrTimeout, Msg: wire.Truncate(msg, wire.MaxMessageLen), Remote: m.Remote})
	}
	d := ns.e.cfg.PolicyDropDelay
	if d == 0 {
		d = DefaultPolicyDropDelay
	}
	if d < 0 || a.ndropping >= ns.cfg.MaxSessionsPerApp {
		reply()
		return
	}
	a.ndropping++
	time.AfterFunc(d, func() {
		ns.mu.Lock()
		defer ns.mu.Unlock()
		a.ndropping--
		if !w.dead && !a.dead {
			reply()
		}
	})
}

// dropLog rate-limits the drop log line of a namespace: an app dialling
// in a loop must not flood the agent's log. The first drop of each second
// is logged with the count of those left out since the previous line.
type dropLog struct {
	last       time.Time
	suppressed int
}

func (d *dropLog) log(logf func(string, ...any), format string, args ...any) {
	now := time.Now()
	if now.Sub(d.last) < time.Second {
		d.suppressed++
		return
	}
	if d.suppressed > 0 {
		format += " (%d more dropped since the previous line)"
		args = append(args, d.suppressed)
	}
	d.last, d.suppressed = now, 0
	logf(format, args...)
}
