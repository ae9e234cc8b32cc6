// Package mux routes each app namespace's sessions to its own transport: the
// kernel transport for PodNetwork namespaces, a userspace stack on a node
// interface for Interface ones. It is the engine's one Transport; namespaces
// without a transport are reported through session.NamespaceRouter, so the
// engine treats them as having none.
package mux

import (
	"fmt"
	"net/netip"
	"sync/atomic"

	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/engine/wire"
)

// Mux is a session.Transport that dispatches on the app namespace. The
// routing table is swapped whole (Set), so lookups on the session paths take
// no lock.
type Mux struct {
	table atomic.Pointer[Table]
}

// Table maps app namespace keys to transports; Default serves the others
// (nil: none). A key mapped to nil has no transport, whatever Default is.
type Table struct {
	ByNamespace map[string]session.Transport
	Default     session.Transport
}

var (
	_ session.Transport       = (*Mux)(nil)
	_ session.StreamListener  = (*Mux)(nil)
	_ session.PacketTransport = (*Mux)(nil)
	_ session.HostAddresser   = (*Mux)(nil)
	_ session.NamespaceRouter = (*Mux)(nil)
)

// Set installs a routing table (copied: the caller may keep changing its
// map). Sessions already carried stay with the transport that took them.
func (m *Mux) Set(t Table) {
	c := Table{ByNamespace: make(map[string]session.Transport, len(t.ByNamespace)), Default: t.Default}
	for k, v := range t.ByNamespace {
		c.ByNamespace[k] = v
	}
	m.table.Store(&c)
}

// For returns the transport of a namespace, nil when it has none.
func (m *Mux) For(namespace string) session.Transport {
	t := m.table.Load()
	if t == nil {
		return nil
	}
	if tr, ok := t.ByNamespace[namespace]; ok {
		return tr
	}
	return t.Default
}

// Name returns "mux".
func (m *Mux) Name() string { return "mux" }

// Serves reports whether the namespace has a transport.
func (m *Mux) Serves(namespace string) bool { return m.For(namespace) != nil }

// Host asks the namespace's transport.
func (m *Mux) Host(namespace string, addr netip.Addr) (string, bool) {
	if t := m.For(namespace); t != nil {
		return t.Host(namespace, addr)
	}
	return "", false
}

// HostAddr asks the namespace's transport, if it knows host addresses.
func (m *Mux) HostAddr(namespace, host string, like netip.Addr) (netip.Addr, bool) {
	if t, ok := m.For(namespace).(session.HostAddresser); ok {
		return t.HostAddr(namespace, host, like)
	}
	return netip.Addr{}, false
}

// Connect hands the connect to the namespace's transport.
func (m *Mux) Connect(req session.ConnectRequest) (wire.Code, string) {
	t := m.For(req.Namespace)
	if t == nil {
		return wire.ErrNoTransport, fmt.Sprintf("app namespace %s has no transport to the outside world", req.Namespace)
	}
	return t.Connect(req)
}

// Listen hands the listener to the namespace's transport.
func (m *Mux) Listen(req session.ListenRequest) (netip.AddrPort, wire.Code, string) {
	t, ok := m.For(req.Namespace).(session.StreamListener)
	if !ok {
		return netip.AddrPort{}, wire.ErrNoTransport, fmt.Sprintf("the transport of app namespace %s does not listen", req.Namespace)
	}
	return t.Listen(req)
}

// ListenPacket hands the UDP socket to the namespace's transport.
func (m *Mux) ListenPacket(req session.PacketRequest) (netip.AddrPort, wire.Code, string) {
	t, ok := m.For(req.Namespace).(session.PacketTransport)
	if !ok {
		return netip.AddrPort{}, wire.ErrNoTransport, fmt.Sprintf("udp sockets are carried by a transport, and app namespace %s has none that carries udp", req.Namespace)
	}
	return t.ListenPacket(req)
}

// WatchBell forwards to the namespace's transport if it watches doorbells
// (session.BellWatcher).
func (m *Mux) WatchBell(namespace string, affinity uint64, fd int, ring func()) func() {
	if bw, ok := m.For(namespace).(session.BellWatcher); ok {
		return bw.WatchBell(namespace, affinity, fd, ring)
	}
	return nil
}
