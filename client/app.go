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
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/wire"
)

// Environment variables the pod webhook injects.
const (
	EnvSocket    = "HOSTSTACK_SOCKET"
	EnvNamespace = "HOSTSTACK_APP_NAMESPACE"
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
	// event loop); sessions are spread over them. Default 1.
	Workers int
	// Spin selects busy-polling: Read and Write never sleep on an eventfd
	// (lowest latency, burns a core per blocked call).
	Spin bool
	// SpinFor is how long a blocked Read/Write polls before sleeping in the
	// default mode; default 20µs, negative disables polling.
	SpinFor time.Duration
	// Scope says where the app's listeners are reachable: by the other apps
	// of its AppNamespace on the node (cut-through), by the outside world
	// (the engine's transport listens in the pod's network namespace), or
	// both, the default.
	Scope Scope
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

// App is one attachment to the engine.
type App struct {
	opts    Options
	conn    *net.UnixConn
	id      uint32
	reply   wire.AttachReply
	own     *shm.Segment
	workers []*worker
	rr      atomic.Uint32
	ctx     atomic.Uint64
	spinFor time.Duration

	mu       sync.Mutex
	cond     *sync.Cond
	segs     map[uint64]*cseg
	sockWait map[uint64]chan sockReply
	tlsCtx   map[TLSConfig]uint32 // registered TLS contexts
	detached chan struct{}
	gone     error // why the attachment ended (socket closed, notice)
	closed   bool
	sockDone chan struct{}
	closing  chan struct{}
}

type sockReply struct {
	m   wire.Msg
	fds []int
}

// cseg is a segment mapped in this process.
type cseg struct {
	handle   uint64
	seg      *shm.Segment
	peerWake int
	refs     int
	deleted  bool
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
	at := &wire.Attach{Name: wire.Truncate(opts.Name, wire.MaxNameLen), Namespace: opts.Namespace, Secret: opts.Secret,
		RxFifoSize: uint32(max(0, min(opts.RxFifoSize, 1<<30))), TxFifoSize: uint32(max(0, min(opts.TxFifoSize, 1<<30)))}
	if opts.Spin {
		at.Flags |= wire.FlagSpin
	}
	switch opts.Scope {
	case ScopeLocalAndGlobal:
	case ScopeLocal:
		at.Flags |= wire.FlagScopeLocal
	case ScopeGlobal:
		at.Flags |= wire.FlagScopeGlobal
	default:
		return nil, fmt.Errorf("hoststack: attach: unknown scope %d", opts.Scope)
	}
	var b [wire.SocketMsgMax]byte
	n, err := wire.Encode(b[:], at)
	if err != nil {
		return nil, fmt.Errorf("hoststack: attach: %w", err)
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unixpacket", opts.Socket)
	if err != nil {
		return nil, fmt.Errorf("hoststack: attach socket %s: %w", opts.Socket, err)
	}
	uc := nc.(*net.UnixConn)
	if dl, ok := ctx.Deadline(); ok {
		_ = uc.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = uc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := uc.Write(b[:n]); err != nil {
		uc.Close()
		return nil, fmt.Errorf("hoststack: attach: %w", err)
	}
	m, fds, err := readSock(uc)
	if err != nil {
		uc.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("hoststack: attach: %w", ctx.Err())
		}
		return nil, fmt.Errorf("hoststack: attach: %w", err)
	}
	rep, ok := m.(*wire.AttachReply)
	if !ok {
		closeFDs(fds)
		uc.Close()
		return nil, fmt.Errorf("hoststack: attach: engine answered %v", m.Type())
	}
	if rep.Code != wire.OK {
		closeFDs(fds)
		uc.Close()
		return nil, fmt.Errorf("hoststack: attach to %s: %w", opts.Socket, engineError(rep.Code, rep.Msg))
	}
	if len(fds) != wire.AttachFDs {
		closeFDs(fds)
		uc.Close()
		return nil, fmt.Errorf("hoststack: attach: got %d descriptors, want %d", len(fds), wire.AttachFDs)
	}
	_ = uc.SetDeadline(time.Time{})
	a := &App{opts: opts, conn: uc, id: rep.AppID, reply: *rep, segs: map[uint64]*cseg{},
		sockWait: map[uint64]chan sockReply{}, sockDone: make(chan struct{}), closing: make(chan struct{})}
	a.cond = sync.NewCond(&a.mu)
	a.spinFor = opts.SpinFor
	if a.spinFor == 0 {
		a.spinFor = 20 * time.Microsecond
	}
	own, err := shm.OpenSegment(fds[3])
	if err != nil {
		closeFDs(fds[:3])
		uc.Close()
		return nil, fmt.Errorf("hoststack: attach: fifo segment: %w", err)
	}
	a.own = own
	w, err := a.newWorker(rep.Worker, fds[:3])
	if err != nil {
		own.Close()
		uc.Close()
		return nil, fmt.Errorf("hoststack: attach: %w", err)
	}
	a.workers = append(a.workers, w)
	go a.readLoop()
	go w.loop()
	for len(a.workers) < opts.Workers {
		if err := a.addWorker(ctx); err != nil {
			a.Close()
			return nil, err
		}
	}
	return a, nil
}

// ID returns the app id the engine assigned.
func (a *App) ID() uint32 { return a.id }

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// readSock reads one attach-socket message with its descriptors.
func readSock(c *net.UnixConn) (wire.Msg, []int, error) {
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
	m, err := wire.Decode(buf[:n])
	if err != nil {
		closeFDs(fds)
		return nil, nil, err
	}
	return m, fds, nil
}

// readLoop serves the attach socket: segments, worker replies, notices.
func (a *App) readLoop() {
	defer close(a.sockDone)
	var why error
	for {
		m, fds, err := readSock(a.conn)
		if err != nil {
			why = err
			break
		}
		switch m := m.(type) {
		case *wire.AddSegment:
			want := 1
			if m.HasPeerWake {
				want = 2
			}
			if len(fds) != want {
				closeFDs(fds)
				why = fmt.Errorf("add-segment with %d descriptors, want %d", len(fds), want)
				break
			}
			seg, err := shm.OpenSegment(fds[0])
			if err != nil {
				closeFDs(fds[1:])
				why = fmt.Errorf("add-segment: %w", err)
				break
			}
			cs := &cseg{handle: m.Segment, seg: seg, peerWake: -1}
			if m.HasPeerWake {
				cs.peerWake = fds[1]
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
	a.mu.Lock()
	if a.gone == nil {
		a.gone = why
	}
	for k, ch := range a.sockWait {
		close(ch)
		delete(a.sockWait, k)
	}
	a.cond.Broadcast()
	a.mu.Unlock()
	// The engine is gone or we detached: every session is dead.
	for _, w := range a.workers {
		w.engineGone(a.goneErr())
	}
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
	if a.gone != nil {
		a.mu.Unlock()
		return sockReply{}, a.goneErr()
	}
	a.sockWait[id] = ch
	a.mu.Unlock()
	var b [wire.SocketMsgMax]byte
	n, err := wire.Encode(b[:], m)
	if err == nil {
		_, err = a.conn.Write(b[:n])
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
			return sockReply{}, a.goneErr()
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
	a.workers = append(a.workers, w)
	a.mu.Unlock()
	go w.loop()
	return nil
}

// segment returns a mapped segment, waiting for its add-segment message (the
// engine sends it on the socket before any event that refers to it). It
// takes a reference.
func (a *App) segment(h uint64) (*cseg, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for {
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

func (a *App) unref(s *cseg) {
	a.mu.Lock()
	s.refs--
	drop := s.refs == 0 && s.deleted
	if drop {
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
	drop := s.refs == 0
	if drop {
		delete(a.segs, h)
	}
	a.mu.Unlock()
	if drop {
		s.close()
	}
}

func (s *cseg) close() {
	s.seg.Close()
	if s.peerWake >= 0 {
		unix.Close(s.peerWake)
		s.peerWake = -1
	}
}

func (a *App) pick() *worker {
	a.mu.Lock()
	ws := a.workers
	a.mu.Unlock()
	return ws[int(a.rr.Add(1))%len(ws)]
}

// Close detaches: every listener and session of the app is closed (peers
// see their sessions end), the engine reaps what it held, and the shared
// memory is unmapped.
func (a *App) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	close(a.closing)
	ws := append([]*worker(nil), a.workers...)
	a.mu.Unlock()
	// close local objects first: no goroutine may touch shared memory
	// once it is unmapped below
	for _, w := range ws {
		w.closeAll()
	}
	var b [64]byte
	n, _ := wire.Encode(b[:], &wire.Detach{})
	_, _ = a.conn.Write(b[:n])
	select {
	case <-a.sockDone:
	case <-time.After(5 * time.Second):
	}
	a.conn.Close()
	<-a.sockDone
	for _, w := range ws {
		w.stopLoop()
	}
	// Sessions the loops created after the first pass (a dial answered
	// while closing) are closed too before their memory goes away.
	for _, w := range ws {
		w.closeAll()
	}
	a.mu.Lock()
	segs := a.segs
	a.segs = map[uint64]*cseg{}
	a.mu.Unlock()
	for _, s := range segs {
		s.close()
	}
	a.own.Close()
	for _, w := range ws {
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
