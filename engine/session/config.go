// Package session is hoststack's session engine: the registry of app
// namespaces, the attach sockets apps connect to, the apps and their workers,
// the listener and session tables, cut-through sessions between apps of the
// same app namespace, and the reaper that releases everything a detached or
// dead app held. It imports nothing from Kubernetes: the agent renders its
// custom resources into the plain structs of this file.
package session

import (
	"fmt"
	"math/bits"
	"net/netip"

	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/wire"
)

// NamespaceConfig is one app namespace as the engine enforces it: what a
// render step produces from an AppNamespace object. Zero sizes and limits
// take the defaults below.
type NamespaceConfig struct {
	Namespace string // Kubernetes namespace (or any grouping in standalone mode)
	Name      string // AppNamespace name
	Secret    string // optional; when set, Attach must present it

	SegmentSize       int // bytes of each fifo segment (per app, and per cut-through worker pair)
	RxFifoSize        int // default (and maximum) fifo capacities; powers of two
	TxFifoSize        int
	QueueSlots        int // slots of each worker's event and request queues
	MaxSegmentsPerApp int // segments an app may have mapped, its own one included
	MaxApps           int
	MaxSessionsPerApp int
	MaxWorkersPerApp  int
	// MaxListenersPerApp bounds an app's stream listeners (each global one
	// also costs a kernel socket and a goroutine at the transport).
	MaxListenersPerApp int

	// SharedNetwork says the namespace's apps share one network identity
	// (a userspace stack's addresses, Interface mode): whatever socket they
	// attached through, they all belong to the node's host "".
	SharedNetwork bool
}

// Defaults for zero fields of NamespaceConfig.
const (
	DefaultSegmentSize        = 32 << 20
	DefaultFifoSize           = 64 << 10
	DefaultQueueSlots         = 1024
	DefaultMaxSegmentsPerApp  = 16
	DefaultMaxApps            = 256
	DefaultMaxSessionsPerApp  = 4096
	DefaultMaxWorkersPerApp   = 16
	DefaultMaxListenersPerApp = 64
)

// Key returns "namespace/name", the identifier of the app namespace.
func (c NamespaceConfig) Key() string { return c.Namespace + "/" + c.Name }

func (c NamespaceConfig) withDefaults() NamespaceConfig {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.SegmentSize, DefaultSegmentSize)
	def(&c.RxFifoSize, DefaultFifoSize)
	def(&c.TxFifoSize, DefaultFifoSize)
	def(&c.QueueSlots, DefaultQueueSlots)
	def(&c.MaxSegmentsPerApp, DefaultMaxSegmentsPerApp)
	def(&c.MaxApps, DefaultMaxApps)
	def(&c.MaxSessionsPerApp, DefaultMaxSessionsPerApp)
	def(&c.MaxWorkersPerApp, DefaultMaxWorkersPerApp)
	def(&c.MaxListenersPerApp, DefaultMaxListenersPerApp)
	return c
}

// Validate reports the first problem of c (after defaults), naming the field.
func (c NamespaceConfig) Validate() error {
	c = c.withDefaults()
	pow2 := func(v int) bool { return v > 0 && bits.OnesCount(uint(v)) == 1 }
	switch {
	case c.Namespace == "" || c.Name == "":
		return fmt.Errorf("namespace and name are required")
	case len(c.Key()) > wire.MaxNamespaceLen:
		return fmt.Errorf("%q: namespace/name longer than %d bytes", c.Key(), wire.MaxNamespaceLen)
	case len(c.Secret) > wire.MaxSecretLen:
		return fmt.Errorf("%s: secret longer than %d bytes", c.Key(), wire.MaxSecretLen)
	case c.SegmentSize < 0 || c.RxFifoSize < 0 || c.TxFifoSize < 0 || c.QueueSlots < 0 ||
		c.MaxSegmentsPerApp < 0 || c.MaxApps < 0 || c.MaxSessionsPerApp < 0 || c.MaxWorkersPerApp < 0 || c.MaxListenersPerApp < 0:
		return fmt.Errorf("%s: sizes and limits must not be negative", c.Key())
	case !pow2(c.RxFifoSize) || c.RxFifoSize < shm.MinFifoCapacity:
		return fmt.Errorf("%s: rxFIFOSize %d must be a power of two >= %d", c.Key(), c.RxFifoSize, shm.MinFifoCapacity)
	case !pow2(c.TxFifoSize) || c.TxFifoSize < shm.MinFifoCapacity:
		return fmt.Errorf("%s: txFIFOSize %d must be a power of two >= %d", c.Key(), c.TxFifoSize, shm.MinFifoCapacity)
	case !pow2(c.QueueSlots) || c.QueueSlots > shm.MaxQueueSlot:
		return fmt.Errorf("%s: queueSlots %d must be a power of two <= %d", c.Key(), c.QueueSlots, shm.MaxQueueSlot)
	case shm.FifoFootprint(c.RxFifoSize)+shm.FifoFootprint(c.TxFifoSize) > c.SegmentSize:
		return fmt.Errorf("%s: segmentSize %d cannot hold one fifo pair (rx %d + tx %d)", c.Key(), c.SegmentSize, c.RxFifoSize, c.TxFifoSize)
	case c.MaxSegmentsPerApp < 2:
		return fmt.Errorf("%s: maxSegmentsPerApp %d must be at least 2 (the app's own segment and one cut-through segment)", c.Key(), c.MaxSegmentsPerApp)
	}
	return nil
}

// Direction tells a rule lookup which side of a session asks.
type Direction int

// Directions.
const (
	Connect Direction = iota // an app connects to Remote
	Accept                   // a listener is about to accept a session from Remote
)

// Action is a rule verdict.
type Action int

// Actions.
const (
	Allow Action = iota
	Deny
	Redirect
)

// Scope says which rule tables a lookup consults.
type Scope int

// Scopes, as in the SessionRule API.
const (
	// LocalScope: sessions between apps of the app namespace (cut-through).
	LocalScope Scope = iota
	// GlobalScope: sessions through a transport to the outside world.
	GlobalScope
)

// RuleQuery is what a session rule lookup sees.
type RuleQuery struct {
	Namespace string // NamespaceConfig.Key()
	App       string // name of the app asking
	Scope     Scope
	Dir       Direction
	Proto     wire.Proto
	Local     netip.AddrPort // may be invalid for a connect not yet bound
	Remote    netip.AddrPort
}

// Verdict is the result of a rule lookup. Rule names the rule that decided,
// for the error the app sees ("denied by SessionRule X").
type Verdict struct {
	Action Action
	Rule   string
	// Redirect targets (Connect only): App names an app of the namespace
	// (its listener on the destination port, else its first listener); To
	// is an address. App wins when both are set.
	App string
	To  netip.AddrPort
}

// Rules is the seam for engine/rules: called on every connect and accept,
// with no engine lock that the implementation could deadlock on (it must not
// call back into the engine). Implementations must be fast and lock-free for
// readers (whole-table swaps).
type Rules interface {
	Lookup(q RuleQuery) Verdict
}

// ConnectRequest is a connect the engine hands to a transport because no
// local listener matches.
type ConnectRequest struct {
	Namespace string
	App       string
	// Host is the network host the app lives in: the Host of the attach
	// socket it came through (a pod), "" for the node itself. A transport
	// opens the session's socket there.
	Host   string
	Remote wire.Addr
	// Flow is the session's engine side: its fifo pair, already allocated
	// in the app's own segment, and the callbacks that complete and end the
	// session. A transport that returns wire.OK from Connect owns the flow
	// and must end it with Flow.Finish (from another goroutine); one that
	// returns an error code must not touch it.
	Flow *Flow
}

// Transport is the seam for engine/transport/*: sessions to the outside
// world. Its methods are called with the namespace lock held: they must not
// block for long or call back into the engine before returning.
//
// Connect returns wire.OK to take the session (completing it later through
// req.Flow), or a wire code and message when it cannot even start (the
// engine refuses the connect).
type Transport interface {
	Name() string
	// Host says which network host of this node owns addr for the app
	// namespace: a pod's Host, or "" for the node itself; ok is false when
	// addr belongs to no host here. A connect to an owned address looks for
	// a listener of that host first (cut-through); anything else leaves
	// through the transport.
	Host(namespace string, addr netip.Addr) (host string, ok bool)
	Connect(req ConnectRequest) (wire.Code, string)
}

// BellWatcher is implemented by transports that serve their flows from
// event loops (the kernel transport's pollers): the engine hands them each
// app worker's transport doorbell, and the loop that serves the worker's
// flows (Flow.Affinity == affinity) watches it, so an app's ring reaches
// the loop directly instead of through a goroutine that pokes it: one
// wake-up less between an app's write and its bytes leaving.
//
// WatchBell watches fd (the engine's end of the doorbell: readable when
// rung, the watcher drains it with shm.DrainBell) and calls ring after
// rings; ring never blocks. It returns nil when it cannot watch (the
// engine then reads the doorbell itself). After unwatch returns the
// watcher no longer touches fd (the engine closes it next); ring may still
// run once.
type BellWatcher interface {
	WatchBell(namespace string, affinity uint64, fd int, ring func()) (unwatch func())
}

// HostAddresser is implemented by transports that know the addresses of the
// hosts: a cut-through session then gets the connecting app's host address
// of the destination's family as its local address, as a kernel socket in
// that host would.
type HostAddresser interface {
	HostAddr(namespace, host string, like netip.Addr) (netip.Addr, bool)
}

// NamespaceRouter is implemented by transports that carry only some app
// namespaces (a mux of per-namespace transports): for the others the engine
// behaves as if it had no transport.
type NamespaceRouter interface {
	Serves(namespace string) bool
}

// ListenRequest asks a transport to listen for an app's listener in global
// scope (see StreamListener).
type ListenRequest struct {
	Namespace string
	App       string
	Host      string
	// Local is the address to listen on; port 0 lets the transport pick.
	Local netip.AddrPort
	// Listener hands the sessions the transport accepts to the app, and
	// tells the transport when the app's listener goes.
	Listener *TransportListener
}

// StreamListener is implemented by transports that accept TCP sessions from
// the outside world for listeners in global scope. Listen binds
// synchronously (so the app's listen fails when the address is taken) and
// returns the bound address; it accepts in the background until
// req.Listener.Closed().
type StreamListener interface {
	Listen(req ListenRequest) (netip.AddrPort, wire.Code, string)
}

// PacketRequest asks a transport for a datagram (UDP) socket; Flow carries
// datagram records both ways (wire.DgramHeader) and the transport asks
// Flow.Permit before passing each datagram.
type PacketRequest struct {
	Namespace string
	App       string
	Host      string
	Local     netip.AddrPort
	Flow      *Flow
}

// PacketTransport is implemented by transports that carry UDP. ListenPacket
// binds synchronously and returns the bound address; on wire.OK the
// transport owns the flow (Finish ends it), otherwise it must not touch it.
type PacketTransport interface {
	ListenPacket(req PacketRequest) (netip.AddrPort, wire.Code, string)
}
