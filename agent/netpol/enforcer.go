package netpol

import (
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"

	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/engine/wire"
)

// Enforcer is the engine's session.PeerPolicy: the current Table, swapped
// whole by Store (lookups never wait), and drop counters per app namespace
// and isolating policy. Until the first Store it allows everything.
type Enforcer struct {
	table atomic.Pointer[Table]

	mu    sync.Mutex
	drops map[DropKey]uint64
}

// DropKey labels a drop counter.
type DropKey struct {
	AppNamespace string
	Policy       string // an isolating NetworkPolicy (namespace/name), or Kind/name of an admin policy
	Direction    Direction
}

// Store makes t the table of new sessions.
func (e *Enforcer) Store(t *Table) { e.table.Store(t) }

// Table returns the current table (nil before the first Store).
func (e *Enforcer) Table() *Table { return e.table.Load() }

// CheckPeer implements session.PeerPolicy.
func (e *Enforcer) CheckPeer(q session.PeerQuery) session.PeerVerdict {
	t := e.table.Load()
	if t == nil {
		return session.PeerVerdict{Allowed: true}
	}
	proto := corev1.ProtocolTCP
	if q.Proto == wire.UDP {
		proto = corev1.ProtocolUDP
	}
	s := Session{SrcUID: q.SrcHost, DstUID: q.DstHost, Src: q.Src, Dst: q.Dst.Addr(), Proto: proto, Port: int32(q.Dst.Port())}
	d := t.Decide(s)
	if d.Allowed {
		return session.PeerVerdict{Allowed: true}
	}
	e.mu.Lock()
	if e.drops == nil {
		e.drops = map[DropKey]uint64{}
	}
	for _, p := range d.IsolatedBy {
		if d.Kind != KindNetworkPolicy {
			p = d.Kind + "/" + p // cluster-scoped: no namespace to tell them apart
		}
		e.drops[DropKey{AppNamespace: q.Namespace, Policy: p, Direction: d.Denied}]++
	}
	e.mu.Unlock()
	return session.PeerVerdict{Reason: d.Reason(s)}
}

// Drops returns a copy of the drop counters.
func (e *Enforcer) Drops() map[DropKey]uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[DropKey]uint64, len(e.drops))
	for k, v := range e.drops {
		out[k] = v
	}
	return out
}

// Retain drops the counters of app namespaces not in keep, and of
// policies the current table no longer has: the series end with what they
// describe.
func (e *Enforcer) Retain(keep map[string]bool) {
	t := e.table.Load()
	e.mu.Lock()
	defer e.mu.Unlock()
	for k := range e.drops {
		if !keep[k.AppNamespace] || (t != nil && !t.keys[k.Policy]) {
			delete(e.drops, k)
		}
	}
}
