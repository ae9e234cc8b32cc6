package session

import (
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	enginetls "github.com/hoststack/hoststack/engine/tls"
)

// Config configures an Engine.
type Config struct {
	// RunDir holds the attach sockets AddNamespace creates (one per app
	// namespace, named "<namespace>_<name>.sock").
	RunDir string
	// Rules, when set, is consulted on every connect and accept.
	Rules Rules
	// Transport, when set, receives connects to non-local addresses.
	Transport Transport
	// PeerPolicy, when set, judges cut-through sessions between two hosts
	// (pods) as their network would (NetworkPolicy); a refused connect is
	// dropped: it fails with a timeout after PolicyDropDelay (0: the
	// default, 30s; negative: at once).
	PeerPolicy      PeerPolicy
	PolicyDropDelay time.Duration
	// TLS holds the CertKeyPairs apps may name in their TLS contexts; nil:
	// no TLS termination.
	TLS *enginetls.Store
	// Logf logs engine events; nil uses the standard logger.
	Logf func(format string, args ...any)
	// Limits are the node-wide caps; zero fields take the defaults.
	Limits Limits
	// NodeSockets is the access of the node's own attach sockets (those of
	// AddNamespace and ServeAttach): Mode (0: 0600), UID, GID.
	NodeSockets SocketConfig
	// PrivilegedPorts, when set, says whether apps attaching through a node
	// socket of the app namespace (key "namespace/name") may listen on
	// ports below 1024; nil: none may.
	PrivilegedPorts func(namespace string) bool
	// ShardSpin is how long a shard polls the queues of the workers it
	// just served before it sleeps (0: shm.DefaultSpin; negative: never).
	ShardSpin time.Duration
}

// Limits are node-wide caps on what all app namespaces together may hold.
// Workers share the engine's shards (a fixed number of threads), but each
// costs a queue segment and descriptors; MaxThreads guards the process
// (the Go runtime aborts it at 10,000 threads) against whatever else
// grows its threads.
type Limits struct {
	MaxApps    int // apps attached, all app namespaces
	MaxWorkers int // app workers, all apps
	// MaxThreads: no worker is added while the engine process has this
	// many OS threads (counted in /proc/self/task).
	MaxThreads int
	// MaxPendingAttaches bounds the connections of one attach socket that
	// have not completed their attach yet; more are refused at once.
	MaxPendingAttaches int
	// AttachTimeout is how long a connection may take to send its attach.
	AttachTimeout time.Duration
	// Shards is the number of engine shards, the goroutines (each sleeping
	// on an OS thread of its own) that serve the request queues of all app
	// workers together (shard.go); 0: GOMAXPROCS.
	Shards int
}

// Default node-wide limits.
const (
	DefaultNodeMaxApps        = 1024
	DefaultNodeMaxWorkers     = 2048
	DefaultNodeMaxThreads     = 4096
	DefaultMaxPendingAttaches = 64
	DefaultAttachTimeout      = 10 * time.Second
)

func (l Limits) withDefaults() Limits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.MaxApps, DefaultNodeMaxApps)
	def(&l.MaxWorkers, DefaultNodeMaxWorkers)
	def(&l.MaxThreads, DefaultNodeMaxThreads)
	def(&l.MaxPendingAttaches, DefaultMaxPendingAttaches)
	if l.AttachTimeout <= 0 {
		l.AttachTimeout = DefaultAttachTimeout
	}
	def(&l.Shards, runtime.GOMAXPROCS(0))
	return l
}

// Engine is the session engine of one node.
type Engine struct {
	cfg  Config
	logf func(string, ...any)

	mu         sync.Mutex
	namespaces map[string]*namespace
	sockets    map[*AttachSocket]struct{}
	closed     bool

	nextApp atomic.Uint32
	// nextSock names attach sockets while they are being set up
	nextSock atomic.Uint64
	// node-wide usage against cfg.Limits (reserved before creation)
	nApps, nWorkers atomic.Int64
	limitMu         sync.Mutex
	refusals        map[string]uint64 // node limit → refusals since start
	lastRefusal     string
	wg              sync.WaitGroup
	stop            chan struct{}
	kick            chan struct{} // an event went to a backlog: the flusher retries
	relays          relay         // cut-through rings for version-2 apps (legacy.go)

	shardMu       sync.Mutex
	shards        []*shard // started with the first worker
	shardsStopped bool
}

// New returns an engine. Call Close to stop it.
func New(cfg Config) (*Engine, error) {
	if cfg.RunDir != "" {
		if err := os.MkdirAll(cfg.RunDir, 0o755); err != nil {
			return nil, fmt.Errorf("session: run dir: %w", err)
		}
	}
	cfg.Limits = cfg.Limits.withDefaults()
	e := &Engine{
		cfg:        cfg,
		refusals:   map[string]uint64{},
		logf:       cfg.Logf,
		namespaces: map[string]*namespace{},
		sockets:    map[*AttachSocket]struct{}{},
		stop:       make(chan struct{}),
		kick:       make(chan struct{}, 1),
	}
	if e.logf == nil {
		e.logf = log.Printf
	}
	e.wg.Add(1)
	go e.flusher()
	return e, nil
}

// namespace is an app namespace at run time. Its mutex guards every table
// below it: all control operations of one namespace are serialised, and no
// operation ever blocks while holding it (queue sends, doorbell rings and
// socket writes are non-blocking on the engine's own descriptors; transport
// binds and TLS handshakes run without it, see namespace.async).
type namespace struct {
	e   *Engine
	key string

	mu      sync.Mutex
	cfg     NamespaceConfig
	removed bool
	// stopping: the engine itself stops (agent stop, restart, upgrade).
	// Cut-through sessions are then left to their two apps, which keep
	// them and re-attach to the next engine; only a namespace removal or
	// an app's own end resets them.
	stopping  bool
	drops     dropLog // policy drops, logged at most once a second
	apps      map[uint32]*app
	listeners map[listenKey]*listener
	handles   map[uint64]*listener    // listener handle → listener
	ports     map[portKey][]*listener // every listener by host and port (bind conflicts)
	sessions  map[uint64]*session
	segs      map[uint64]*segment
	pairs     map[[2]*worker][]*segment // cut-through segments of a worker pair
	nextH     uint64
	ephemeral uint16
	sock      *AttachSocket

	stats counters
	// reportedBytes is the last NamespaceStats.Bytes reported (a counter:
	// never less than before)
	reportedBytes uint64
	// openPairs are the cut-through fifo pairs not freed yet, for the
	// snapshots (cutthrough.go)
	openPairs []openPair
	// rings of the apps' transport doorbells, and the flows they kicked
	// (events.go): without event bits every flow of the app, per ring
	rings, kicks atomic.Uint64
}

type counters struct {
	sessionsOpened, sessionsClosed, connectsRefused, resets, appsAttached, appsReaped uint64
	bytes                                                                             uint64 // through freed fifo pairs
}

func (ns *namespace) handle() uint64 { ns.nextH++; return ns.nextH }

// AddNamespace registers an app namespace and starts its attach socket in
// RunDir; it returns the socket path.
func (e *Engine) AddNamespace(cfg NamespaceConfig) (string, error) {
	if err := cfg.Validate(); err != nil {
		return "", err
	}
	cfg = cfg.withDefaults()
	key := cfg.Key()
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return "", errors.New("session: engine closed")
	}
	if _, ok := e.namespaces[key]; ok {
		e.mu.Unlock()
		return "", fmt.Errorf("session: app namespace %s already exists", key)
	}
	ns := &namespace{
		e: e, key: key, cfg: cfg,
		apps:      map[uint32]*app{},
		listeners: map[listenKey]*listener{},
		handles:   map[uint64]*listener{},
		ports:     map[portKey][]*listener{},
		sessions:  map[uint64]*session{},
		segs:      map[uint64]*segment{},
		pairs:     map[[2]*worker][]*segment{},
		ephemeral: ephemeralLo,
	}
	e.namespaces[key] = ns
	e.mu.Unlock()
	if e.cfg.RunDir == "" {
		return "", nil
	}
	path := filepath.Join(e.cfg.RunDir, socketName(cfg))
	s, err := e.ServeAttach(path, key)
	if err != nil {
		e.mu.Lock()
		delete(e.namespaces, key)
		e.mu.Unlock()
		return "", err
	}
	ns.mu.Lock()
	ns.sock = s
	ns.mu.Unlock()
	return path, nil
}

func socketName(cfg NamespaceConfig) string {
	clean := func(s string) string {
		return strings.Map(func(r rune) rune {
			if r == '/' || r == 0 {
				return '_'
			}
			return r
		}, s)
	}
	return clean(cfg.Namespace) + "_" + clean(cfg.Name) + ".sock"
}

// UpdateNamespace replaces the sizing, limits and secret of an app
// namespace. Existing apps and sessions keep what they have; new attaches,
// segments and sessions use the new values. Lowered limits do not evict.
func (e *Engine) UpdateNamespace(cfg NamespaceConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg = cfg.withDefaults()
	ns := e.ns(cfg.Key())
	if ns == nil {
		return fmt.Errorf("session: no app namespace %s", cfg.Key())
	}
	ns.mu.Lock()
	ns.cfg = cfg
	ns.mu.Unlock()
	return nil
}

// RemoveNamespace tells every app of the namespace, reaps them (their peers
// see resets), and removes its attach socket.
func (e *Engine) RemoveNamespace(key string) error {
	e.mu.Lock()
	ns := e.namespaces[key]
	delete(e.namespaces, key)
	e.mu.Unlock()
	if ns == nil {
		return fmt.Errorf("session: no app namespace %s", key)
	}
	ns.shutdown("app namespace " + key + " was removed")
	return nil
}

func (ns *namespace) shutdown(reason string) {
	ns.mu.Lock()
	ns.removed = true
	s := ns.sock
	apps := make([]*app, 0, len(ns.apps))
	for _, a := range ns.apps {
		apps = append(apps, a)
	}
	for _, a := range apps {
		a.notice(codeShutdown, reason)
		ns.reapLocked(a, reason)
	}
	ns.mu.Unlock()
	if s != nil {
		s.Close()
	}
}

func (e *Engine) ns(key string) *namespace {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.namespaces[key]
}

// Namespaces returns the keys of the registered app namespaces.
func (e *Engine) Namespaces() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for k := range e.namespaces {
		out = append(out, k)
	}
	return out
}

// Close tells every app the engine is stopping, reaps everything, closes the
// attach sockets and removes their files. Cut-through sessions are not
// reset: their data path does not need the engine, and apps that re-attach
// (the client does by default) keep them across an agent restart.
func (e *Engine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	nss := e.namespaces
	e.namespaces = map[string]*namespace{}
	socks := e.sockets
	e.sockets = map[*AttachSocket]struct{}{}
	e.mu.Unlock()
	for _, ns := range nss {
		ns.mu.Lock()
		ns.stopping = true
		ns.mu.Unlock()
		ns.shutdown("session engine is shutting down")
	}
	for s := range socks {
		s.Close()
	}
	e.stopShards()
	close(e.stop)
	e.wg.Wait()
	e.relays.close()
	return nil
}

// flusher retries event deliveries that found an app's queue full. It
// sleeps until a backlog appears, then retries every 2 ms while any remains.
func (e *Engine) flusher() {
	defer e.wg.Done()
	t := time.NewTicker(2 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-e.kick:
		}
		for pending := true; pending; {
			select {
			case <-e.stop:
				return
			case <-t.C:
			}
			pending = false
			e.mu.Lock()
			nss := make([]*namespace, 0, len(e.namespaces))
			for _, ns := range e.namespaces {
				nss = append(nss, ns)
			}
			e.mu.Unlock()
			for _, ns := range nss {
				ns.mu.Lock()
				for _, a := range ns.apps {
					for _, w := range a.workers {
						if len(w.backlog) > 0 {
							w.flushLocked()
							pending = pending || len(w.backlog) > 0
						}
					}
				}
				ns.mu.Unlock()
			}
		}
	}
}

// NamespaceStats is what the engine reports per app namespace, for metrics
// and the node status.
type NamespaceStats struct {
	Namespace      string
	Apps           int
	Workers        int
	Listeners      int
	Sessions       int   // session ends held by apps (a cut-through session counts twice)
	Segments       int   // fifo segments mapped by the engine (apps' own + cut-through)
	SegmentBytes   int64 // address space of those segments (sparse: see SegmentResident)
	FifoBytesInUse int64 // bytes of segments allocated to fifos (address space)
	// SegmentResident is the memory behind the segments: the pages written
	// and not given back (fifo headers, data in flight, rings a stream
	// walked less than shm.TrimAfter ago).
	SegmentResident int64
	QueueBytes      int64 // bytes of the workers' queue segments
	// Bytes is the data moved through cut-through sessions, both directions,
	// closed and open (read from fifo indices the apps publish: statistics
	// only, a hostile app can inflate its own).
	Bytes           uint64
	SessionsOpened  uint64
	SessionsClosed  uint64
	ConnectsRefused uint64
	Resets          uint64
	AppsAttached    uint64
	AppsReaped      uint64
	// TransportRings counts the apps' rings of their transport doorbells,
	// TransportKicks the transport sessions they made the engine look at:
	// about one per ring with event bits (wire version 5), every transport
	// session of the app per ring without.
	TransportRings uint64
	TransportKicks uint64
}

// Stats returns a snapshot per app namespace.
func (e *Engine) Stats() []NamespaceStats {
	e.mu.Lock()
	nss := make([]*namespace, 0, len(e.namespaces))
	for _, ns := range e.namespaces {
		nss = append(nss, ns)
	}
	e.mu.Unlock()
	out := make([]NamespaceStats, 0, len(nss))
	for _, ns := range nss {
		out = append(out, ns.snapshot())
	}
	return out
}

// NamespaceStats returns the snapshot of one app namespace.
func (e *Engine) NamespaceStats(key string) (NamespaceStats, bool) {
	ns := e.ns(key)
	if ns == nil {
		return NamespaceStats{}, false
	}
	return ns.snapshot(), true
}

func (ns *namespace) snapshot() NamespaceStats {
	st, segs, pairs := ns.snapshotCounts()
	// Outside the lock, the segments pinned: two shared words per open
	// cut-through session (a cache and TLB miss each: 58 ms under the lock
	// at 100,000 sessions, every scrape) and a system call per segment.
	for _, p := range pairs {
		st.Bytes += fifoBytes(p.seg, p.a, p.b)
	}
	for _, s := range segs {
		if r, err := s.seg.Resident(); err == nil {
			st.SegmentResident += r
		}
	}
	ns.mu.Lock()
	for _, s := range segs {
		s.unpinLocked()
	}
	// A pair freed between the lock and the read may read as nothing (its
	// pages punched, or reused) while its bytes went to the closed count
	// after this snapshot took it: the total never goes back, it catches up
	// at a later snapshot.
	if st.Bytes < ns.reportedBytes {
		st.Bytes = ns.reportedBytes
	}
	ns.reportedBytes = st.Bytes
	ns.mu.Unlock()
	return st
}

// pairRead is an open cut-through session's fifo pair, whose indices a
// snapshot reads outside the namespace lock.
type pairRead struct {
	seg  *segment
	a, b int
}

// snapshotCounts takes the counts under ns.mu, and pins the segments whose
// memory the snapshot then reads without it.
func (ns *namespace) snapshotCounts() (NamespaceStats, []*segment, []pairRead) {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	st := NamespaceStats{
		Namespace: ns.key, Apps: len(ns.apps), Listeners: len(ns.handles), Sessions: len(ns.sessions),
		Segments: len(ns.segs), SessionsOpened: ns.stats.sessionsOpened, SessionsClosed: ns.stats.sessionsClosed,
		ConnectsRefused: ns.stats.connectsRefused, Resets: ns.stats.resets,
		AppsAttached: ns.stats.appsAttached, AppsReaped: ns.stats.appsReaped,
		TransportRings: ns.rings.Load(), TransportKicks: ns.kicks.Load(),
	}
	for _, a := range ns.apps {
		st.Workers += len(a.workers)
		for _, w := range a.workers {
			st.QueueBytes += int64(w.mq.Size())
		}
	}
	st.Bytes = ns.stats.bytes
	// a copy of the open pairs (the segments are few and hot: no session
	// is visited), without those of segments gone already
	pairs := make([]pairRead, 0, len(ns.openPairs))
	for _, p := range ns.openPairs {
		if !p.seg.gone {
			pairs = append(pairs, p.pairRead)
		}
	}
	segs := make([]*segment, 0, len(ns.segs))
	for _, s := range ns.segs {
		st.SegmentBytes += int64(s.seg.Size())
		st.FifoBytesInUse += int64(s.alloc.InUse())
		s.pins++
		segs = append(segs, s)
	}
	return st, segs, pairs
}

// ephemeral ports for cut-through connects and listens on port 0.
const (
	ephemeralLo = 32768
	ephemeralHi = 60999
)
