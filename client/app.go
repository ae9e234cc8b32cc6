// Package client is the Go library hoststack apps link: it attaches to the
// node's session engine over its unix socket, maps the shared-memory segments
// the engine passes, and gives ordinary net.Listener and net.Conn values whose
// bytes move through lock-free fifos in that memory. No cgo.
//
//	app, err := client.Attach(ctx, client.Options{Name: "web"})
//	ln, err := app.Listen("tcp", ":8080")
//	c, err := app.Dial(ctx, "tcp", "10.0.0.1:8080")
//
// It imports only engine/shm and engine/wire.
package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/api/attach"
	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/wire"
)

// Environment variables the pod webhook injects (api/attach).
const (
	EnvSocket    = attach.EnvSocket
	EnvNamespace = attach.EnvAppNamespace
)

// Options configure Attach.
type Options struct {
	// Socket is the engine's attach socket; default $HOSTSTACK_SOCKET.
	Socket string
	// Name identifies the app in the engine's stats and errors.
	Name string
	// Namespace is the app namespace ("namespace/name"); default
	// $HOSTSTACK_APP_NAMESPACE, and empty lets the socket decide.
	Namespace string
	// Secret is the app namespace's shared secret, if it has one.
	Secret string
	// RxFifoSize and TxFifoSize request fifo capacities (rounded up to a
	// power of two, capped by the app namespace); 0 = the namespace default.
	RxFifoSize, TxFifoSize int
	// Workers is the number of engine workers (each with its own queues and
	// event loop); sessions are spread over them: dials round robin, and
	// the engine hands each accepted session of a listener to the least
	// loaded worker (an engine of wire version 3 or older, to the worker
	// that listened). Default 1.
	Workers int
	// Spin selects busy-polling: Read and Write never sleep on an eventfd
	// (lowest latency, burns a core per blocked call).
	Spin bool
	// SpinFor is how long a blocked Read/Write polls before sleeping in the
	// default mode; default 20µs, negative disables polling. A session's
	// direction whose polls keep finding nothing polls less often (the
	// next 1, 3, 7 ... 63 waits sleep at once) until a poll pays again.
	SpinFor time.Duration
	// Scope says where the app's listeners are reachable: by the other apps
	// of its AppNamespace on the node (cut-through), by the outside world
	// (the engine's transport listens in the pod's network namespace), or
	// both, the default.
	Scope Scope
	// NoReattach turns off re-attaching when the engine goes away (agent
	// restart or upgrade): the app then ends as it did before, every
	// session reset and Accept failing. By default the app attaches again
	// through the same socket (backing off from 10ms to 2s while it is
	// away), re-creates its listeners on their addresses, and dials wait for
	// the new attachment (bounded by their context); cut-through sessions
	// keep moving data meanwhile, sessions through the engine's transport
	// are reset.
	NoReattach bool
	// OnEngine, if set, is called when the app loses its engine (attached
	// false, err the reason) and when it has attached again and re-created
	// its listeners (attached true). From a goroutine of the client: do
	// not block in it.
	OnEngine func(attached bool, err error)
}

// Scope is where an app's listeners are reachable (VPP's attach scopes).
type Scope uint8

// Scopes.
const (
	// ScopeLocalAndGlobal: both; the default.
	ScopeLocalAndGlobal Scope = iota
	// ScopeLocal: only apps of the same AppNamespace on this node.
	ScopeLocal
	// ScopeGlobal: only through the transport (the outside world).
	ScopeGlobal
)

// Error is an error reported by the engine. It unwraps to the errno that the
// kernel would have used (ECONNREFUSED, ECONNRESET, ...), so errors.Is works
// as with kernel sockets; Msg says why in words (naming the limit, the rule,
// the app...).
type Error struct {
	Code  wire.Code
	Msg   string
	Errno syscall.Errno
}

func (e *Error) Error() string {
	if e.Msg != "" {
		return e.Msg
	}
	return e.Code.String()
}

// Unwrap returns the errno.
func (e *Error) Unwrap() error {
	if e.Errno == 0 {
		return nil
	}
	return e.Errno
}

func engineError(code wire.Code, msg string) *Error {
	e := &Error{Code: code, Msg: msg}
	switch code {
	case wire.ErrRefused, wire.ErrNoTransport:
		e.Errno = syscall.ECONNREFUSED
	case wire.ErrReset:
		e.Errno = syscall.ECONNRESET
	case wire.ErrAddrInUse:
		e.Errno = syscall.EADDRINUSE
	case wire.ErrDenied, wire.ErrAuth, wire.ErrNoNamespace:
		e.Errno = syscall.EACCES
	case wire.ErrQuota, wire.ErrQueueFull:
		e.Errno = syscall.ENOBUFS
	case wire.ErrInvalid, wire.ErrVersion:
		e.Errno = syscall.EINVAL
	case wire.ErrShutdown:
		e.Errno = syscall.ESHUTDOWN
	case wire.ErrNoSession, wire.ErrNoWorker:
		e.Errno = syscall.EBADF
	case wire.ErrTLS:
		e.Errno = syscall.EPROTO
	case wire.ErrTimeout:
		e.Errno = syscall.ETIMEDOUT
	default:
		e.Errno = syscall.EIO
	}
	if e.Msg == "" {
		e.Msg = code.String()
	}
	return e
}

// ErrAppClosed is returned by operations on a closed or detached App.
var ErrAppClosed = errors.New("hoststack: app detached")

// App is one attachment to the engine, renewed by itself when the engine
// restarts (see Options.NoReattach).
type App struct {
	opts    Options
	rr      atomic.Uint32
	ctx     atomic.Uint64
	spinFor time.Duration
	// trimAfter is how long a session's written tx pages stay before the
	// worker gives back those the fifo no longer holds (worker.trim)
	trimAfter time.Duration

	mu   sync.Mutex
	cond *sync.Cond
	// The current attachment: replaced as a whole by a re-attach.
	conn     *net.UnixConn
	codec    wire.Codec // the wire version agreed at attach
	id       uint32
	reply    wire.AttachReply
	workers  []*worker
	segs     map[uint64]*cseg
	sockWait map[uint64]chan sockReply
	tlsCtx   map[TLSConfig]uint32 // registered TLS contexts
	sockDone chan struct{}
	gen      uint64 // counts attachments; workers carry theirs
	// down says why there is no attachment while the app re-attaches; up
	// is closed once it is back.
	down error
	up   chan struct{}
	// orphans are workers of lost attachments that still serve cut-through
	// sessions (they need no engine); each retires with its last session.
	orphans   map[*worker]struct{}
	listeners map[*listener]struct{} // open listeners, re-created on re-attach
	// byHandle finds an open listener by attachment and handle for the
	// accepted events of every worker (the engine hands a listener's
	// sessions to any worker of the app, wire.VersionAcceptAnyWorker).
	byHandle  sync.Map // listenerKey → *listener
	gone      error    // why the app ended for good (closed, or the engine lost without re-attach)
	closed    bool
	closing   chan struct{}
	bg        sync.WaitGroup // the re-attach goroutine
	restoreMu sync.Mutex     // serialises restoreListeners
}

type sockReply struct {
	m   wire.Msg
	fds []int
}

// cseg is a segment mapped in this process. It is unmapped only once it is
// deleted (the engine's del-segment, or App.Close) and no reference is left:
// every session on it holds one until the engine released the session, and
// every zero-copy use (WriteTo, Peek until Consume) holds one while slices
// of it may be reachable.
type cseg struct {
	handle uint64
	seg    *shm.Segment
	// ring is our end of the doorbell shared with the peer worker of a
	// cut-through segment (-1: an own segment, whose sessions ring their
	// worker's transport doorbell); wait is the end our worker's loop
	// watches (the same end, or the second one when a worker is its own
	// peer); w is that worker.
	ring, wait int
	w          *worker
	refs       int
	deleted    bool
	closed     bool
}

// Attach connects to the engine and attaches.
func Attach(ctx context.Context, opts Options) (*App, error) {
	if opts.Socket == "" {
		opts.Socket = os.Getenv(EnvSocket)
	}
	if opts.Socket == "" {
		return nil, fmt.Errorf("hoststack: no attach socket: set Options.Socket or $%s", EnvSocket)
	}
	if opts.Namespace == "" {
		opts.Namespace = os.Getenv(EnvNamespace)
	}
	if opts.Workers <= 0 {
		opts.Workers = 1
	}
	switch opts.Scope {
	case ScopeLocalAndGlobal, ScopeLocal, ScopeGlobal:
	default:
		return nil, fmt.Errorf("hoststack: attach: unknown scope %d", opts.Scope)
	}
	a := &App{opts: opts, segs: map[uint64]*cseg{}, sockWait: map[uint64]chan sockReply{},
		orphans: map[*worker]struct{}{}, listeners: map[*listener]struct{}{}, closing: make(chan struct{})}
	a.cond = sync.NewCond(&a.mu)
	a.trimAfter = shm.TrimAfter
	a.spinFor = opts.SpinFor
	if a.spinFor == 0 {
		a.spinFor = 20 * time.Microsecond
	}
	if err := a.attach(ctx, true); err != nil {
		return nil, err
	}
	return a, nil
}

// attachMsg is the Attach of these options, written in version v.
func (a *App) attachMsg(v uint8) ([]byte, error) {
	opts := a.opts
	at := &wire.Attach{Name: wire.Truncate(opts.Name, wire.MaxNameLen), Namespace: opts.Namespace, Secret: opts.Secret,
		RxFifoSize: uint32(max(0, min(opts.RxFifoSize, 1<<30))), TxFifoSize: uint32(max(0, min(opts.TxFifoSize, 1<<30))),
		MinVersion: wire.MinVersion, MaxVersion: v}
	if opts.Spin {
		at.Flags |= wire.FlagSpin
	}
	switch opts.Scope {
	case ScopeLocal:
		at.Flags |= wire.FlagScopeLocal
	case ScopeGlobal:
		at.Flags |= wire.FlagScopeGlobal
	}
	var b [wire.SocketMsgMax]byte
	n, err := wire.Codec{V: v}.Encode(b[:], at)
	if err != nil {
		return nil, fmt.Errorf("hoststack: attach: %w", err)
	}
	return b[:n], nil
}

// handshake dials the attach socket and attaches in the newest wire version
// both sides speak: an engine one version older refuses the newest with
// ErrVersion naming its own, and is asked again in that one.
func (a *App) handshake(ctx context.Context) (*net.UnixConn, wire.Codec, *wire.AttachReply, []int, error) {
	v := uint8(wire.Version)
	for {
		uc, codec, rep, fds, err := a.handshakeV(ctx, v)
		if err != nil {
			return nil, codec, nil, nil, err
		}
		if rep.Code == wire.ErrVersion && rep.EngineVersion < v && wire.Supported(rep.EngineVersion) {
			uc.Close()
			v = rep.EngineVersion
			continue
		}
		if rep.Code != wire.OK {
			uc.Close()
			return nil, codec, nil, nil, fmt.Errorf("hoststack: attach to %s: %w", a.opts.Socket, engineError(rep.Code, rep.Msg))
		}
		if len(fds) != wire.AttachFDs {
			closeFDs(fds)
			uc.Close()
			return nil, codec, nil, nil, fmt.Errorf("hoststack: attach: got %d descriptors, want %d", len(fds), wire.AttachFDs)
		}
		return uc, codec, rep, fds, nil
	}
}

func (a *App) handshakeV(ctx context.Context, v uint8) (*net.UnixConn, wire.Codec, *wire.AttachReply, []int, error) {
	codec := wire.Codec{V: v}
	msg, err := a.attachMsg(v)
	if err != nil {
		return nil, codec, nil, nil, err
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unixpacket", a.opts.Socket)
	if err != nil {
		return nil, codec, nil, nil, fmt.Errorf("hoststack: attach socket %s: %w", a.opts.Socket, err)
	}
	uc := nc.(*net.UnixConn)
	if dl, ok := ctx.Deadline(); ok {
		_ = uc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = uc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := uc.Write(msg); err != nil {
		uc.Close()
		return nil, codec, nil, nil, fmt.Errorf("hoststack: attach: %w", err)
	}
	m, fds, rv, err := readSockAny(uc)
	if err != nil {
		uc.Close()
		if ctx.Err() != nil {
			return nil, codec, nil, nil, fmt.Errorf("hoststack: attach: %w", ctx.Err())
		}
		return nil, codec, nil, nil, fmt.Errorf("hoststack: attach: %w", err)
	}
	rep, ok := m.(*wire.AttachReply)
	if !ok {
		closeFDs(fds)
		uc.Close()
		return nil, codec, nil, nil, fmt.Errorf("hoststack: attach: engine answered %v", m.Type())
	}
	if rep.Code == wire.OK && (rv != rep.EngineVersion || rv > v) {
		closeFDs(fds)
		uc.Close()
		return nil, codec, nil, nil, fmt.Errorf("hoststack: attach: engine answered in wire version %d, agreeing on %d, to an app speaking %d to %d",
			rv, rep.EngineVersion, wire.MinVersion, v)
	}
	_ = uc.SetDeadline(time.Time{})
	return uc, wire.Codec{V: rv}, rep, fds, nil
}

// errLostAgain: a re-attachment was lost before it was complete; the new
// loss starts the next round.
var errLostAgain = errors.New("hoststack: the new attachment was lost while setting it up")

// attach attaches (the first time, or again after the engine was lost) and
// makes the new attachment the current one.
func (a *App) attach(ctx context.Context, first bool) error {
	uc, codec, rep, fds, err := a.handshake(ctx)
	if err != nil {
		return err
	}
	own, err := shm.OpenSegment(fds[3])
	if err != nil {
		closeFDs(fds[:3])
		uc.Close()
		return fmt.Errorf("hoststack: attach: fifo segment: %w", err)
	}
	w, err := a.newWorker(rep.Worker, fds[:3])
	if err != nil {
		own.Close()
		uc.Close()
		return fmt.Errorf("hoststack: attach: %w", err)
	}
	sockDone := make(chan struct{})
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		w.release()
		own.Close()
		uc.Close()
		return ErrAppClosed
	}
	a.conn, a.codec, a.id, a.reply = uc, codec, rep.AppID, *rep
	a.gen++
	w.gen, w.codec = a.gen, codec
	a.workers = []*worker{w}
	// the own segment carries transport sessions: no doorbell of its own
	a.segs = map[uint64]*cseg{rep.Segment: {handle: rep.Segment, seg: own, ring: -1, wait: -1}}
	a.sockWait = map[uint64]chan sockReply{}
	a.tlsCtx = nil
	a.sockDone = sockDone
	a.down = nil
	if a.up != nil {
		close(a.up)
		a.up = nil
	}
	a.cond.Broadcast()
	a.mu.Unlock()
	go a.readLoop(uc, sockDone)
	go w.loop()
	for n := 1; n < a.opts.Workers; n++ {
		if err := a.addWorker(ctx); err != nil {
			// the first attach fails as a whole; a re-attach starts over
			// (closing the socket makes readLoop report the loss)
			if first {
				a.Close()
				return err
			}
			uc.Close()
			return errLostAgain
		}
	}
	return nil
}

// ID returns the app id the engine assigned (a re-attach gets a new one).
func (a *App) ID() uint32 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.id
}

// WireVersion returns the wire version agreed with the engine.
func (a *App) WireVersion() uint8 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.codec.V
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// readSock reads one attach-socket message of the agreed version with its
// descriptors.
func readSock(c *net.UnixConn, codec wire.Codec) (wire.Msg, []int, error) {
	n, fds, err := readSockRaw(c)
	if err != nil {
		return nil, nil, err
	}
	m, err := codec.Decode(n)
	if err != nil {
		closeFDs(fds)
		return nil, nil, err
	}
	return m, fds, nil
}

// readSockAny reads the attach reply, in any version this side speaks.
func readSockAny(c *net.UnixConn) (wire.Msg, []int, uint8, error) {
	n, fds, err := readSockRaw(c)
	if err != nil {
		return nil, nil, 0, err
	}
	m, v, err := wire.DecodeAny(n)
	if err != nil {
		closeFDs(fds)
		return nil, nil, 0, err
	}
	return m, fds, v, nil
}

func readSockRaw(c *net.UnixConn) ([]byte, []int, error) {
	buf := make([]byte, wire.SocketMsgMax+1)
	oob := make([]byte, unix.CmsgSpace(4*wire.MaxFDs)+64)
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	var fds []int
	if oobn > 0 {
		cms, perr := unix.ParseSocketControlMessage(oob[:oobn])
		if perr == nil {
			for _, cm := range cms {
				if f, ferr := unix.ParseUnixRights(&cm); ferr == nil {
					fds = append(fds, f...)
				}
			}
		}
	}
	if err != nil {
		closeFDs(fds)
		return nil, nil, err
	}
	if n == 0 {
		closeFDs(fds)
		return nil, nil, errors.New("engine closed the attach socket")
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 || len(fds) > wire.MaxFDs {
		closeFDs(fds)
		return nil, nil, errors.New("oversized message on the attach socket")
	}
	for _, fd := range fds {
		unix.CloseOnExec(fd)
	}
	return buf[:n], fds, nil
}

// readLoop serves the attach socket of one attachment: segments, worker
// replies, notices.
func (a *App) readLoop(conn *net.UnixConn, sockDone chan struct{}) {
	defer close(sockDone)
	a.mu.Lock()
	codec := a.codec
	a.mu.Unlock()
	var why error
	for {
		m, fds, err := readSock(conn, codec)
		if err != nil {
			why = err
			break
		}
		switch m := m.(type) {
		case *wire.AddSegment:
			cs, err := a.addSegment(m, fds)
			if err != nil {
				why = err
				break
			}
			a.mu.Lock()
			if old := a.segs[m.Segment]; old != nil {
				// a hostile or confused engine: keep the first mapping
				a.mu.Unlock()
				cs.close()
				continue
			}
			a.segs[m.Segment] = cs
			a.cond.Broadcast()
			a.mu.Unlock()
			continue
		case *wire.WorkerAddReply:
			a.deliverSock(m.Ctx, m, fds)
			continue
		case *wire.WorkerDelReply:
			a.deliverSock(m.Ctx, m, fds)
			continue
		case *wire.TLSContextReply:
			a.deliverSock(m.Ctx, m, fds)
			continue
		case *wire.DetachReply:
			closeFDs(fds)
			why = ErrAppClosed
		case *wire.Notice:
			closeFDs(fds)
			why = engineError(m.Code, "engine: "+m.Msg)
			if m.Code == wire.OK {
				continue
			}
		default:
			closeFDs(fds)
			why = fmt.Errorf("unexpected %v on the attach socket", m.Type())
		}
		if why != nil {
			break
		}
	}
	a.lost(conn, why)
}

// lost ends the attachment whose socket is conn. Unless the app is
// closing or re-attaching is off, the app re-attaches in the background:
// sessions through the engine's transport end (the engine held their other
// end), cut-through sessions go on (their data and wake-ups pass between
// the two apps only), listeners are re-created on the new attachment.
func (a *App) lost(conn *net.UnixConn, why error) {
	a.mu.Lock()
	if a.conn != conn {
		a.mu.Unlock()
		return
	}
	for k, ch := range a.sockWait {
		close(ch)
		delete(a.sockWait, k)
	}
	reattach := !a.closed && !a.opts.NoReattach && why != ErrAppClosed
	ws := a.workers
	if !reattach {
		if a.gone == nil {
			a.gone = why
		}
		a.cond.Broadcast()
		a.mu.Unlock()
		// The engine is gone or we detached: every session is dead.
		for _, w := range ws {
			w.engineGone(a.goneErr())
		}
		a.notify(false, why)
		return
	}
	a.down = fmt.Errorf("hoststack: lost the engine (%v); re-attaching to %s", why, a.opts.Socket)
	a.up = make(chan struct{})
	segs := a.segs
	a.workers, a.segs, a.tlsCtx, a.sockWait = nil, map[uint64]*cseg{}, nil, map[uint64]chan sockReply{}
	for _, w := range ws {
		a.orphans[w] = struct{}{}
	}
	a.bg.Add(1)
	a.cond.Broadcast()
	a.mu.Unlock()
	conn.Close()
	// The old engine's segments are unmapped once no local session uses
	// them (the new engine's handles may repeat theirs: they left a.segs).
	for _, cs := range segs {
		a.mu.Lock()
		cs.deleted = true
		drop := cs.refs == 0 && !cs.closed
		if drop {
			cs.closed = true
		}
		a.mu.Unlock()
		if drop {
			cs.close()
		}
	}
	for _, w := range ws {
		w.engineLost(why)
	}
	a.notify(false, why)
	go a.reattach()
}

// reattach attaches again, backing off while the engine is away, until it
// succeeds or the app is closed; then it re-creates the listeners.
func (a *App) reattach() {
	defer a.bg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-a.closing:
			cancel()
		case <-ctx.Done():
		}
	}()
	delay := 10 * time.Millisecond
	for {
		t := time.NewTimer(delay/2 + time.Duration(rand.Int64N(int64(delay)))) // jittered: apps of a node do not stampede
		select {
		case <-a.closing:
			t.Stop()
			return
		case <-t.C:
		}
		actx, acancel := context.WithTimeout(ctx, 10*time.Second)
		err := a.attach(actx, false)
		acancel()
		if err == nil {
			break
		}
		if errors.Is(err, ErrAppClosed) || errors.Is(err, errLostAgain) {
			return
		}
		a.mu.Lock()
		if a.down != nil {
			a.down = fmt.Errorf("hoststack: re-attaching to %s: %w", a.opts.Socket, err)
		}
		a.mu.Unlock()
		delay = min(2*delay, 2*time.Second)
	}
	a.restoreListeners()
	a.notify(true, nil)
}

// notify calls Options.OnEngine, if set.
func (a *App) notify(attached bool, err error) {
	if f := a.opts.OnEngine; f != nil {
		f(attached, err)
	}
}

// restoreListeners listens again on the new attachment, on the addresses
// the listeners had (a port the engine picked is kept); a listener that
// cannot be re-created fails its Accept with the reason.
func (a *App) restoreListeners() {
	// one restorer at a time (an attachment lost while its listeners were
	// being re-created starts another round)
	a.restoreMu.Lock()
	defer a.restoreMu.Unlock()
	a.mu.Lock()
	ls := make([]*listener, 0, len(a.listeners))
	for l := range a.listeners {
		ls = append(ls, l)
	}
	a.mu.Unlock()
	for _, l := range ls {
		l.mu.Lock()
		cur := l.w.gen
		l.mu.Unlock()
		a.mu.Lock()
		done := cur == a.gen
		a.mu.Unlock()
		if done {
			continue // bound on the current attachment already
		}
		w, b, err := a.bind(context.Background(), wireAddr(l.addr), l.tls)
		if err != nil {
			l.fail(fmt.Errorf("re-creating the listener after the engine restarted: %w", err))
			continue
		}
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			_ = w.request(&wire.Unlisten{Listener: b.Listener})
			continue
		}
		a.byHandle.Delete(listenerKey{l.w.gen, l.h})
		l.w, l.h = w, b.Listener
		w.mu.Lock()
		w.listeners[l.h] = l
		w.mu.Unlock()
		a.byHandle.Store(listenerKey{w.gen, l.h}, l)
		l.mu.Unlock()
	}
}

// waitUp waits for an attachment (while the app re-attaches) and returns a
// worker of it.
func (a *App) waitUp(ctx context.Context) (*worker, error) {
	for {
		a.mu.Lock()
		if a.closed || a.gone != nil {
			err := a.gone
			a.mu.Unlock()
			if err == nil {
				err = ErrAppClosed
			}
			return nil, err
		}
		if a.down == nil && len(a.workers) > 0 {
			w := a.workers[int(a.rr.Add(1))%len(a.workers)]
			a.mu.Unlock()
			return w, nil
		}
		up, down := a.up, a.down
		a.mu.Unlock()
		if up == nil {
			return nil, down
		}
		select {
		case <-up:
		case <-a.closing:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: %w", down, ctx.Err())
		}
	}
}

// retireWorker stops an orphaned worker whose last session is gone.
func (a *App) retireWorker(w *worker) {
	a.mu.Lock()
	_, ok := a.orphans[w]
	delete(a.orphans, w)
	a.mu.Unlock()
	if ok {
		w.stopLoop()
		w.release()
	}
}

// addSegment maps an announced segment. Its fds: the memfd, then for a
// cut-through segment (HasPeerWake) our end of the segment's doorbell, or
// both ends when our worker is its own peer (ring the first, watch the
// second); an own segment comes alone.
func (a *App) addSegment(m *wire.AddSegment, fds []int) (*cseg, error) {
	okN := len(fds) == 1
	if m.HasPeerWake {
		okN = len(fds) == 2 || len(fds) == 3
	}
	if !okN {
		closeFDs(fds)
		return nil, fmt.Errorf("add-segment with %d descriptors (has doorbell: %v)", len(fds), m.HasPeerWake)
	}
	seg, err := shm.OpenSegment(fds[0])
	if err != nil {
		closeFDs(fds[1:])
		return nil, fmt.Errorf("add-segment: %w", err)
	}
	cs := &cseg{handle: m.Segment, seg: seg, ring: -1, wait: -1}
	if len(fds) == 1 {
		return cs, nil
	}
	cs.ring, cs.wait = fds[1], fds[len(fds)-1]
	a.mu.Lock()
	for _, w := range a.workers {
		if w.id == m.Worker {
			cs.w = w
		}
	}
	a.mu.Unlock()
	if cs.w == nil || cs.w.watch(cs.wait) != nil {
		// no such worker (a confused engine): sessions there cannot be woken
		cs.w = nil
		closeFDs(fds[1:])
		cs.ring, cs.wait = -1, -1
	}
	return cs, nil
}

func (a *App) goneErr() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.gone == nil {
		return ErrAppClosed
	}
	return a.gone
}

func (a *App) deliverSock(ctx uint64, m wire.Msg, fds []int) {
	a.mu.Lock()
	ch := a.sockWait[ctx]
	delete(a.sockWait, ctx)
	a.mu.Unlock()
	if ch == nil {
		closeFDs(fds)
		return
	}
	ch <- sockReply{m, fds}
}

// sockCall sends a request on the attach socket and waits for its reply.
func (a *App) sockCall(ctx context.Context, id uint64, m wire.Msg) (sockReply, error) {
	ch := make(chan sockReply, 1)
	a.mu.Lock()
	if a.gone != nil || a.closed {
		a.mu.Unlock()
		return sockReply{}, a.goneErr()
	}
	if a.down != nil {
		err := a.down
		a.mu.Unlock()
		return sockReply{}, err
	}
	a.sockWait[id] = ch
	conn, codec := a.conn, a.codec
	a.mu.Unlock()
	var b [wire.SocketMsgMax]byte
	n, err := codec.Encode(b[:], m)
	if err == nil {
		_, err = conn.Write(b[:n])
	}
	if err != nil {
		a.mu.Lock()
		delete(a.sockWait, id)
		a.mu.Unlock()
		return sockReply{}, err
	}
	select {
	case r, ok := <-ch:
		if !ok {
			a.mu.Lock()
			err := a.down
			a.mu.Unlock()
			if err == nil {
				err = a.goneErr()
			}
			return sockReply{}, err
		}
		return r, nil
	case <-ctx.Done():
		a.mu.Lock()
		delete(a.sockWait, id)
		a.mu.Unlock()
		return sockReply{}, ctx.Err()
	}
}

// TLSConfig asks the engine to terminate TLS for a listener or a connect
// (ListenTLS, DialTLS): the wire carries TLS, the app reads and writes
// plaintext. CertKeyPairs are named as "name" (of the app's Kubernetes
// namespace, the only ones it may use) or "namespace/name".
type TLSConfig struct {
	// CertKeyPair is what a listener serves, and the client certificate a
	// connect presents (optional there).
	CertKeyPair string
	// ServerName is what a connect verifies the server's certificate
	// against and sends as SNI; default: the address dialled.
	ServerName string
	// Trust names a CertKeyPair whose CA bundle (its Secret's ca.crt) a
	// connect trusts; default: the system roots.
	Trust string
}

// tlsContext registers cfg with the engine once and returns its handle.
func (a *App) tlsContext(ctx context.Context, cfg TLSConfig) (uint32, error) {
	a.mu.Lock()
	h, ok := a.tlsCtx[cfg]
	a.mu.Unlock()
	if ok {
		return h, nil
	}
	for _, s := range []string{cfg.CertKeyPair, cfg.ServerName, cfg.Trust} {
		if len(s) > wire.MaxTLSRef {
			return 0, fmt.Errorf("hoststack: tls: %q is longer than %d bytes", s, wire.MaxTLSRef)
		}
	}
	id := a.ctx.Add(1)
	r, err := a.sockCall(ctx, id, &wire.TLSContextAdd{Ctx: id, CertKeyPair: cfg.CertKeyPair, ServerName: cfg.ServerName, Trust: cfg.Trust})
	if err != nil {
		return 0, fmt.Errorf("hoststack: tls: %w", err)
	}
	closeFDs(r.fds)
	rep, ok := r.m.(*wire.TLSContextReply)
	if !ok {
		return 0, fmt.Errorf("hoststack: tls: unexpected %v", r.m.Type())
	}
	if rep.Code != wire.OK {
		return 0, engineError(rep.Code, rep.Msg)
	}
	a.mu.Lock()
	if a.tlsCtx == nil {
		a.tlsCtx = map[TLSConfig]uint32{}
	}
	a.tlsCtx[cfg] = rep.Handle
	a.mu.Unlock()
	return rep.Handle, nil
}

func (a *App) addWorker(ctx context.Context) error {
	id := a.ctx.Add(1)
	r, err := a.sockCall(ctx, id, &wire.WorkerAdd{Ctx: id})
	if err != nil {
		return fmt.Errorf("hoststack: add worker: %w", err)
	}
	rep := r.m.(*wire.WorkerAddReply)
	if rep.Code != wire.OK {
		closeFDs(r.fds)
		return fmt.Errorf("hoststack: add worker: %w", engineError(rep.Code, rep.Msg))
	}
	if len(r.fds) != wire.WorkerFDs {
		closeFDs(r.fds)
		return fmt.Errorf("hoststack: add worker: %d descriptors, want %d", len(r.fds), wire.WorkerFDs)
	}
	w, err := a.newWorker(rep.Worker, r.fds)
	if err != nil {
		return fmt.Errorf("hoststack: add worker: %w", err)
	}
	a.mu.Lock()
	if a.down != nil || a.closed || len(a.workers) == 0 {
		a.mu.Unlock()
		w.release()
		return fmt.Errorf("hoststack: add worker: the attachment was lost")
	}
	w.gen, w.codec = a.workers[0].gen, a.codec
	a.workers = append(a.workers, w)
	a.mu.Unlock()
	go w.loop()
	return nil
}

// segment returns a mapped segment, waiting for its add-segment message (the
// engine sends it on the socket before any event that refers to it). It
// takes a reference.
func (a *App) segment(w *worker, h uint64) (*cseg, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for {
		if w.gen != a.gen || a.down != nil {
			return nil, errors.New("hoststack: the attachment was lost")
		}
		if s := a.segs[h]; s != nil && !s.deleted {
			s.refs++
			return s, nil
		}
		if a.gone != nil {
			return nil, a.gone
		}
		a.cond.Wait()
	}
}

// pin takes a reference on a segment still mapped, for a zero-copy use;
// false once it is unmapped (the caller's session is gone then).
func (a *App) pin(s *cseg) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if s.closed {
		return false
	}
	s.refs++
	return true
}

func (a *App) unref(s *cseg) {
	a.mu.Lock()
	s.refs--
	drop := s.refs == 0 && s.deleted && !s.closed
	if drop {
		s.closed = true
		if a.segs[s.handle] == s {
			delete(a.segs, s.handle)
		}
	}
	a.mu.Unlock()
	if drop {
		s.close()
	}
}

func (a *App) delSegment(h uint64) {
	a.mu.Lock()
	s := a.segs[h]
	if s == nil {
		a.mu.Unlock()
		return
	}
	s.deleted = true
	drop := s.refs == 0 && !s.closed
	if drop {
		s.closed = true
		delete(a.segs, h)
	}
	a.mu.Unlock()
	if drop {
		s.close()
	}
}

// close unmaps the segment and releases its doorbell end(s). Called once,
// with no reference left.
func (s *cseg) close() {
	s.seg.Close()
	if s.ring >= 0 && s.ring != s.wait {
		unix.Close(s.ring)
	}
	if s.wait >= 0 {
		if s.w != nil {
			s.w.retire(s.wait) // the loop may be about to drain it
		} else {
			unix.Close(s.wait)
		}
	}
	s.ring, s.wait = -1, -1
}

// Close detaches: every listener and session of the app is closed (peers
// see their sessions end), the engine reaps what it held, and the shared
// memory is unmapped. It also stops re-attaching.
func (a *App) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	close(a.closing)
	a.mu.Unlock()
	a.bg.Wait() // no re-attach installs anything from now on
	a.mu.Lock()
	ws := append([]*worker(nil), a.workers...)
	orphans := make([]*worker, 0, len(a.orphans))
	for w := range a.orphans {
		orphans = append(orphans, w)
	}
	a.orphans = map[*worker]struct{}{}
	ls := make([]*listener, 0, len(a.listeners))
	for l := range a.listeners {
		ls = append(ls, l)
	}
	conn, sockDone, codec, attached := a.conn, a.sockDone, a.codec, a.down == nil
	a.mu.Unlock()
	for _, l := range ls {
		l.fail(ErrAppClosed)
	}
	// close local objects first: no goroutine may touch shared memory
	// once it is unmapped below
	for _, w := range append(ws, orphans...) {
		w.closeAll()
	}
	if attached {
		var b [64]byte
		n, _ := codec.Encode(b[:], &wire.Detach{})
		_, _ = conn.Write(b[:n])
		select {
		case <-sockDone:
		case <-time.After(5 * time.Second):
		}
		conn.Close()
		<-sockDone
	}
	for _, w := range append(ws, orphans...) {
		w.stopLoop()
	}
	// Sessions the loops created after the first pass (a dial answered
	// while closing) are closed too before their memory goes away.
	for _, w := range ws {
		w.closeAll()
	}
	// Unmap what nothing uses any more; a segment still pinned (an io.Copy
	// out of a session inside its writer, Peek'ed slices not yet consumed)
	// is unmapped by its last user.
	a.mu.Lock()
	var drop []*cseg
	for h, s := range a.segs {
		s.deleted = true
		if s.refs == 0 && !s.closed {
			s.closed = true
			drop = append(drop, s)
		}
		delete(a.segs, h)
	}
	a.mu.Unlock()
	for _, s := range drop {
		s.close()
	}
	for _, w := range append(ws, orphans...) {
		w.release()
	}
	return nil
}

// ---- addresses ----

func resolve(ctx context.Context, op, network, address string, listen bool) (*net.TCPAddr, error) {
	switch network {
	case "tcp", "tcp4", "tcp6", "udp", "udp4", "udp6":
	default:
		return nil, &net.OpError{Op: op, Net: network, Err: net.UnknownNetworkError(network)}
	}
	// An address and a numeric port (what dials mostly get) need no
	// resolver: it would allocate and look at more than the literal.
	if ap, err := netip.ParseAddrPort(address); err == nil {
		ip := ap.Addr()
		switch {
		case network == "tcp" || network == "udp",
			ip.Unmap().Is4() && (network == "tcp4" || network == "udp4"),
			ip.Is6() && !ip.Is4In6() && (network == "tcp6" || network == "udp6"):
			return &net.TCPAddr{IP: net.IP(ip.Unmap().AsSlice()), Port: int(ap.Port()), Zone: ip.Zone()}, nil
		}
	}
	host, port, err := net.SplitHostPort(address)
	if err != nil {
		return nil, &net.OpError{Op: op, Net: network, Err: err}
	}
	p, err := net.DefaultResolver.LookupPort(ctx, network, port)
	if err != nil {
		return nil, &net.OpError{Op: op, Net: network, Err: err}
	}
	if host == "" {
		var ip net.IP
		switch {
		case listen && (network == "tcp4" || network == "udp4"):
			ip = net.IPv4zero.To4()
		case listen:
			ip = net.IPv6unspecified
		case network == "tcp6" || network == "udp6":
			ip = net.IPv6loopback
		default:
			ip = net.IPv4(127, 0, 0, 1).To4()
		}
		return &net.TCPAddr{IP: ip, Port: p}, nil
	}
	ipnet := "ip"
	switch network {
	case "tcp4", "udp4":
		ipnet = "ip4"
	case "tcp6", "udp6":
		ipnet = "ip6"
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, ipnet, host)
	if err != nil {
		return nil, &net.OpError{Op: op, Net: network, Err: err}
	}
	if len(ips) == 0 {
		return nil, &net.OpError{Op: op, Net: network, Err: &net.AddrError{Err: "no suitable address", Addr: host}}
	}
	ip := ips[0]
	for _, x := range ips { // prefer IPv4 like the kernel path for "localhost"
		if x.Unmap().Is4() {
			ip = x
			break
		}
	}
	return &net.TCPAddr{IP: net.IP(ip.Unmap().AsSlice()), Port: p, Zone: ip.Zone()}, nil
}
