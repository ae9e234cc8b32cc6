package session

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/wire"
)

const (
	codeShutdown = wire.ErrShutdown
	// attachTimeout bounds how long a connection may take to send Attach.
	attachTimeout = 10 * time.Second
	// maxBacklog bounds the events waiting for room in one worker's queue;
	// past it the app is not consuming its events at all and is detached.
	maxBacklogFactor = 4
)

// app is one attachment: one attach-socket connection.
type app struct {
	ns   *namespace
	id   uint32
	name string
	conn *net.UnixConn
	raw  interface {
		Control(func(uintptr)) error
		Write(func(uintptr) bool) error
	}
	cred      *unix.Ucred   // recorded for audit
	sock      *AttachSocket // the socket it attached through (per-pod sockets: the pod)
	host      string        // the socket's host
	scope     scope         // where its listeners are reachable
	tls       map[uint32]*tlsContext
	nextTLS   uint32
	rxFifo    int
	txFifo    int
	workers   map[uint32]*worker
	nextWrk   uint32
	own       *segment // the app's own fifo segment (for transports)
	nsegs     int      // segments this app has mapped (own + cut-through)
	nsessions int
	dead      bool
	sockMu    sync.Mutex
	flowState // transport sessions
}

// worker is one app worker: its queue segment, queues and eventfds, and the
// goroutine serving its request queue.
type worker struct {
	app    *app
	id     uint32
	mq     *shm.Segment
	evq    *shm.Queue // engine → app
	rq     *shm.Queue // app → engine
	wakeFD int        // the app waits on it; the engine and cut-through peers signal it
	engFD  int        // the engine waits on it; the app signals it
	// sleeping is the app loop's flag in the worker's control line (shared,
	// written by the app: only ever decides whether to signal)
	sleeping *atomic.Uint64
	info     wire.WorkerInfo

	sessions  map[uint64]*session
	listeners map[uint64]*listener
	backlog   [][]byte
	dead      bool
	drainDone chan struct{} // set by reapGracefully; closed by serve once drained
	drained   bool
	done      chan struct{}
}

func (e *Engine) handleConn(s *AttachSocket, c *net.UnixConn) {
	raw, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return
	}
	a := &app{conn: c, raw: raw, sock: s, workers: map[uint32]*worker{}}
	if err := raw.Control(func(fd uintptr) {
		a.cred, _ = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		c.Close()
		return
	}
	buf := make([]byte, wire.SocketMsgMax+1)
	oob := make([]byte, unix.CmsgSpace(4*wire.MaxFDs))
	_ = c.SetReadDeadline(time.Now().Add(attachTimeout))
	m, err := readMsg(c, buf, oob)
	if err != nil {
		var we *wire.Error
		if errors.As(err, &we) {
			code := wire.ErrInvalid
			if n := len(buf); n > 0 && buf[0] != wire.Version {
				code = wire.ErrVersion
			}
			a.sendSock(&wire.AttachReply{Code: code, Msg: wire.Msgf("bad attach message (engine speaks wire version %d): %s", wire.Version, we.Reason), EngineVersion: wire.Version}, nil)
		}
		c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	at, ok := m.(*wire.Attach)
	if !ok {
		a.sendSock(&wire.AttachReply{Code: wire.ErrInvalid, Msg: wire.Msgf("expected attach, got %v", m.Type()), EngineVersion: wire.Version}, nil)
		c.Close()
		return
	}
	key, allowed := s.allows(at.Namespace)
	ns := e.ns(key)
	if !allowed || ns == nil {
		msg := wire.Msgf("app namespace %q is not served by this attach socket", at.Namespace)
		if allowed {
			msg = wire.Msgf("app namespace %q does not exist on this node", key)
		}
		a.sendSock(&wire.AttachReply{Code: wire.ErrNoNamespace, Msg: msg, EngineVersion: wire.Version}, nil)
		c.Close()
		return
	}
	if !ns.attach(a, at) {
		c.Close()
		return
	}
	// serve the socket until the app detaches or dies
	for {
		m, err := readMsg(c, buf, oob)
		if err != nil {
			var we *wire.Error
			if errors.As(err, &we) {
				ns.mu.Lock()
				a.notice(wire.ErrInvalid, "bad message on attach socket: "+we.Reason)
				ns.reapLocked(a, "app sent a malformed attach-socket message")
				ns.mu.Unlock()
				break
			}
			ns.reapGracefully(a, "app "+a.name+" closed its attach socket (exited or killed)", false)
			break
		}
		if _, ok := m.(*wire.Detach); ok {
			ns.reapGracefully(a, "app "+a.name+" detached", true)
			break
		}
		ns.mu.Lock()
		stop := ns.sockRequest(a, m)
		ns.mu.Unlock()
		if stop {
			break
		}
	}
	c.Close()
}

// readMsg reads one attach-socket message; fds the app sends are closed
// (the engine never accepts descriptors from apps).
func readMsg(c *net.UnixConn, buf, oob []byte) (wire.Msg, error) {
	n, oobn, flags, _, err := c.ReadMsgUnix(buf, oob)
	if oobn > 0 {
		if cms, perr := unix.ParseSocketControlMessage(oob[:oobn]); perr == nil {
			for _, cm := range cms {
				if fds, ferr := unix.ParseUnixRights(&cm); ferr == nil {
					for _, fd := range fds {
						unix.Close(fd)
					}
				}
			}
		}
	}
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, errors.New("eof")
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 || n > wire.SocketMsgMax {
		return nil, &wire.Error{Reason: "attach-socket message too long"}
	}
	return wire.Decode(buf[:n])
}

// sendSock writes one message (and fds) without ever blocking: a full socket
// buffer means the app does not read its socket, which is its problem.
func (a *app) sendSock(m wire.Msg, fds []int) error {
	var b [wire.SocketMsgMax]byte
	n, err := wire.Encode(b[:], m)
	if err != nil {
		return err
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	a.sockMu.Lock()
	defer a.sockMu.Unlock()
	var serr error
	werr := a.raw.Write(func(fd uintptr) bool {
		for {
			serr = unix.Sendmsg(int(fd), b[:n], oob, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
			if serr != unix.EINTR {
				return true
			}
		}
	})
	if werr != nil {
		return werr
	}
	if serr == unix.EAGAIN {
		return fmt.Errorf("app %q does not read its attach socket (send buffer full)", a.name)
	}
	return serr
}

func (a *app) notice(code wire.Code, msg string) {
	_ = a.sendSock(&wire.Notice{Code: code, Msg: wire.Truncate(msg, wire.MaxMessageLen)}, nil)
}

// attach validates an Attach and sets the app up. Called without ns.mu.
func (ns *namespace) attach(a *app, at *wire.Attach) bool {
	fail := func(code wire.Code, format string, args ...any) bool {
		a.sendSock(&wire.AttachReply{Code: code, Msg: wire.Msgf(format, args...), EngineVersion: wire.Version}, nil)
		return false
	}
	ns.mu.Lock()
	defer ns.mu.Unlock()
	cfg := ns.cfg
	if ns.removed {
		return fail(wire.ErrNoNamespace, "app namespace %s is being removed", ns.key)
	}
	// Checked under ns.mu, which CloseAndReap takes after closing: an attach
	// either completes before the reap (and is reaped) or is refused here.
	if a.sock.closed.Load() {
		return fail(wire.ErrShutdown, "attach socket %s was closed", a.sock.Path())
	}
	if cfg.Secret != "" && !constEq(at.Secret, cfg.Secret) {
		if at.Secret == "" {
			return fail(wire.ErrAuth, "app namespace %s requires a secret and none was given", ns.key)
		}
		return fail(wire.ErrAuth, "wrong secret for app namespace %s", ns.key)
	}
	if len(ns.apps) >= cfg.MaxApps {
		return fail(wire.ErrQuota, "app namespace %s: maxApps (%d) reached", ns.key, cfg.MaxApps)
	}
	a.ns = ns
	a.id = ns.e.nextApp.Add(1)
	a.name = at.Name
	if a.name == "" {
		a.name = fmt.Sprintf("app-%d", a.id)
	}
	a.host = a.sock.host
	if cfg.SharedNetwork {
		a.host = ""
	}
	a.scope = scopeOf(at.Flags)
	a.rxFifo = clampFifo(int(at.RxFifoSize), cfg.RxFifoSize)
	a.txFifo = clampFifo(int(at.TxFifoSize), cfg.TxFifoSize)
	own, err := ns.newSegment(fmt.Sprintf("hs-app-%d", a.id), cfg.SegmentSize)
	if err != nil {
		return fail(wire.ErrInternal, "cannot create fifo segment: %v", err)
	}
	a.own = own
	a.nsegs = 1
	w, err := ns.newWorker(a)
	if err != nil {
		ns.dropSegment(own)
		return fail(wire.ErrInternal, "cannot create worker queues: %v", err)
	}
	reply := &wire.AttachReply{
		Code: wire.OK, EngineVersion: wire.Version, AppID: a.id, Worker: w.info,
		Segment: own.handle, SegmentSize: uint64(own.seg.Size()),
		RxFifoSize: uint32(a.rxFifo), TxFifoSize: uint32(a.txFifo), MaxSessions: uint32(cfg.MaxSessionsPerApp),
	}
	if err := a.sendSock(reply, []int{w.mq.FD(), w.wakeFD, w.engFD, own.seg.FD()}); err != nil {
		w.stopLocked()
		go w.serve() // returns at once (stopped) and releases the worker's fds
		ns.dropSegment(own)
		return false
	}
	ns.apps[a.id] = a
	a.workers[w.id] = w
	ns.stats.appsAttached++
	ns.startWorker(w)
	pid, uid := int32(-1), uint32(0)
	if a.cred != nil {
		pid, uid = a.cred.Pid, a.cred.Uid
	}
	ns.e.logf("session: app %s (id %d, pid %d, uid %d) attached to %s through %s", a.name, a.id, pid, uid, ns.key, a.sock.Path())
	return true
}

// scope is where an app's listeners are reachable.
type scope uint8

const (
	scopeLocal  scope = 1 << iota // the namespace's table: cut-through
	scopeGlobal                   // the transport: the outside world
)

func scopeOf(flags uint64) scope {
	var s scope
	if flags&wire.FlagScopeLocal != 0 {
		s |= scopeLocal
	}
	if flags&wire.FlagScopeGlobal != 0 {
		s |= scopeGlobal
	}
	if s == 0 {
		s = scopeLocal | scopeGlobal
	}
	return s
}

func constEq(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	var v byte
	for i := 0; i < len(a); i++ {
		v |= a[i] ^ b[i]
	}
	return v == 0
}

// clampFifo rounds a requested capacity up to a power of two within
// [MinFifoCapacity, max]; 0 means max.
func clampFifo(req, max int) int {
	if req <= 0 || req >= max {
		return max
	}
	c := shm.MinFifoCapacity
	for c < req {
		c <<= 1
	}
	return c
}

// newWorker creates a worker's queue segment, queues and eventfds.
func (ns *namespace) newWorker(a *app) (*worker, error) {
	slots := ns.cfg.QueueSlots
	qfp := shm.QueueFootprint(slots)
	seg, err := shm.CreateSegment(fmt.Sprintf("hs-mq-%d-%d", a.id, a.nextWrk), 2*qfp+wire.CtlSize)
	if err != nil {
		return nil, err
	}
	w := &worker{app: a, id: a.nextWrk, mq: seg, wakeFD: -1, engFD: -1,
		sessions: map[uint64]*session{}, listeners: map[uint64]*listener{}, done: make(chan struct{})}
	fail := func(err error) (*worker, error) {
		if w.wakeFD >= 0 {
			unix.Close(w.wakeFD)
		}
		if w.engFD >= 0 {
			unix.Close(w.engFD)
		}
		seg.Close()
		return nil, err
	}
	if w.wakeFD, err = shm.NewEventFD(); err != nil {
		return fail(err)
	}
	if w.engFD, err = shm.NewEventFD(); err != nil {
		return fail(err)
	}
	if w.evq, err = shm.InitQueue(seg, 0, slots, w.wakeFD); err != nil {
		return fail(err)
	}
	if w.rq, err = shm.InitQueue(seg, qfp, slots, w.engFD); err != nil {
		return fail(err)
	}
	if w.sleeping, err = wire.Word(seg.Bytes(), 2*qfp+wire.CtlSleeping); err != nil {
		return fail(err)
	}
	w.sleeping.Store(0)
	a.nextWrk++
	w.info = wire.WorkerInfo{ID: w.id, MQSize: uint64(seg.Size()), EvqOff: 0, EvqSlots: uint32(slots),
		ReqOff: uint64(qfp), ReqSlots: uint32(slots), CtlOff: uint64(2 * qfp)}
	return w, nil
}

func (ns *namespace) startWorker(w *worker) {
	go w.serve()
}

// stopLocked stops the worker's goroutine; it releases the queue segment and
// eventfds when it exits.
func (w *worker) stopLocked() {
	if w.dead {
		return
	}
	w.dead = true
	if w.rq != nil {
		_ = w.rq.Wake()
	}
}

// serve is the worker's request loop: it blocks on the request queue (spin,
// then poll(2) on its own thread) and handles each request under the
// namespace lock.
func (w *worker) serve() {
	defer close(w.done)
	defer func() {
		unix.Close(w.wakeFD)
		unix.Close(w.engFD)
		w.mq.Close()
	}()
	ns := w.app.ns
	buf := make([]byte, shm.MsgSize)
	for {
		n, err := w.rq.Recv(buf, time.Time{})
		ns.mu.Lock()
		if w.dead {
			ns.mu.Unlock()
			return
		}
		switch {
		case errors.Is(err, shm.ErrInterrupted):
			if w.drainDone != nil && !w.drained {
				w.drainLocked(buf)
			}
		case err != nil:
			w.app.notice(wire.ErrInvalid, fmt.Sprintf("worker %d request queue: %v", w.id, err))
			ns.reapLocked(w.app, fmt.Sprintf("app %s corrupted its request queue", w.app.name))
		default:
			m, derr := wire.Decode(buf[:n])
			if derr != nil {
				w.send(&wire.Reply{Code: wire.ErrInvalid, Msg: wire.Truncate(derr.Error(), wire.MaxMessageLen)})
			} else {
				ns.request(w, m)
			}
		}
		ns.mu.Unlock()
	}
}

// send queues an event for the app worker without blocking. When the queue
// is full the event waits in a bounded backlog retried by the flusher; an app
// that lets the backlog overflow is detached with a notice naming the queue.
func (w *worker) send(m wire.Msg) {
	if w.dead {
		return
	}
	var b [wire.QueueMsgMax]byte
	n, err := wire.Encode(b[:], m)
	if err != nil {
		w.app.ns.e.logf("session: encode %v: %v", m.Type(), err)
		return
	}
	if len(w.backlog) > 0 {
		w.flushLocked()
	}
	if len(w.backlog) == 0 && w.trySend(b[:n]) {
		return
	}
	if len(w.backlog) >= maxBacklogFactor*w.evq.Slots() {
		a := w.app
		a.notice(wire.ErrQueueFull, fmt.Sprintf("app %s worker %d does not consume its event queue (%d slots, queueSlots of app namespace %s) and is detached",
			a.name, w.id, w.evq.Slots(), a.ns.key))
		a.ns.reapLocked(a, "app "+a.name+" stopped consuming its event queue")
		return
	}
	w.backlog = append(w.backlog, append([]byte(nil), b[:n]...))
	select {
	case w.app.ns.e.kick <- struct{}{}:
	default:
	}
}

// trySend sends without backlog; false when the queue is full. The wake
// eventfd is written only when the app's event loop announced it sleeps
// (wire's control line; the loop shares the eventfd with cut-through
// wake-ups, so the queue's own waiting flag is not used).
func (w *worker) trySend(msg []byte) bool {
	if err := w.evq.Send(msg); err != nil {
		return false
	}
	if w.sleeping.Load() != 0 && w.sleeping.Swap(0) != 0 {
		_ = shm.Signal(w.wakeFD)
	}
	return true
}

func (w *worker) flushLocked() {
	i := 0
	for ; i < len(w.backlog); i++ {
		if !w.trySend(w.backlog[i]) {
			break
		}
	}
	w.backlog = append(w.backlog[:0], w.backlog[i:]...)
}

// sockRequest handles an attach-socket message of an attached app; true
// ends the conversation.
func (ns *namespace) sockRequest(a *app, m wire.Msg) bool {
	if a.dead {
		return true
	}
	switch m := m.(type) {
	case *wire.WorkerAdd:
		if len(a.workers) >= ns.cfg.MaxWorkersPerApp {
			a.sendSock(&wire.WorkerAddReply{Ctx: m.Ctx, Code: wire.ErrQuota,
				Msg: wire.Msgf("app namespace %s: maxWorkersPerApp (%d) reached", ns.key, ns.cfg.MaxWorkersPerApp)}, nil)
			return false
		}
		w, err := ns.newWorker(a)
		if err != nil {
			a.sendSock(&wire.WorkerAddReply{Ctx: m.Ctx, Code: wire.ErrInternal, Msg: wire.Msgf("cannot create worker: %v", err)}, nil)
			return false
		}
		if err := a.sendSock(&wire.WorkerAddReply{Ctx: m.Ctx, Worker: w.info}, []int{w.mq.FD(), w.wakeFD, w.engFD}); err != nil {
			w.stopLocked()
			go w.serve() // releases its resources at once (dead)
			return false
		}
		a.workers[w.id] = w
		ns.startWorker(w)
	case *wire.TLSContextAdd:
		ns.addTLSContext(a, m)
	case *wire.WorkerDel:
		w := a.workers[m.Worker]
		if w == nil || m.Worker == 0 {
			a.sendSock(&wire.WorkerDelReply{Ctx: m.Ctx, Code: wire.ErrNoWorker, Msg: wire.Msgf("app %s has no removable worker %d", a.name, m.Worker)}, nil)
			return false
		}
		ns.reapWorkerLocked(w, fmt.Sprintf("worker %d of app %s was removed", w.id, a.name))
		delete(a.workers, w.id)
		a.sendSock(&wire.WorkerDelReply{Ctx: m.Ctx}, nil)
	default:
		a.sendSock(&wire.Notice{Code: wire.ErrInvalid, Msg: wire.Msgf("%v is not an attach-socket request", m.Type())}, nil)
	}
	return false
}

// reapGracefully reaps an app that detached or whose socket closed: the
// requests it queued before going away (the disconnects of a process that
// closed its sessions and exited) are processed first, so its peers see the
// end of stream rather than a reset; what it left open is then reset.
func (ns *namespace) reapGracefully(a *app, reason string, detach bool) {
	ns.mu.Lock()
	if a.dead {
		ns.mu.Unlock()
		return
	}
	var drained []chan struct{}
	for _, w := range a.workers {
		if w.drainDone == nil {
			w.drainDone = make(chan struct{})
			_ = w.rq.Wake()
		}
		drained = append(drained, w.drainDone)
	}
	ns.mu.Unlock()
	timeout := time.NewTimer(2 * time.Second)
	defer timeout.Stop()
	for _, ch := range drained {
		select {
		case <-ch:
		case <-timeout.C:
		}
	}
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if detach && !a.dead {
		a.sendSock(&wire.DetachReply{}, nil)
	}
	ns.reapLocked(a, reason)
}

// drainLocked processes what is left in the request queue (bounded: a
// detaching app cannot keep the engine busy), for reapGracefully.
func (w *worker) drainLocked(buf []byte) {
	ns := w.app.ns
	for i := 0; i < w.rq.Slots() && !w.dead; i++ {
		n, err := w.rq.TryRecv(buf)
		if n == 0 || err != nil {
			break
		}
		if m, err := wire.Decode(buf[:n]); err == nil {
			ns.request(w, m)
		}
	}
	close(w.drainDone)
	w.drained = true
}

// reapLocked releases everything the app holds: its sessions (peers see a
// reset carrying reason), listeners, workers, segments. Idempotent.
func (ns *namespace) reapLocked(a *app, reason string) {
	if a.dead || a.ns == nil {
		return
	}
	a.dead = true
	for _, w := range a.workers {
		ns.reapWorkerLocked(w, reason)
	}
	a.workers = map[uint32]*worker{}
	if a.own != nil {
		if a.own.sessions > 0 {
			// transports still use fifos in it: the last Finish drops it
			a.own.orphan = true
		} else {
			ns.dropSegment(a.own)
		}
		a.own = nil
	}
	if a.twake != nil {
		a.twake.Close()
	}
	delete(ns.apps, a.id)
	ns.stats.appsReaped++
	// close the socket so the app's reader (if alive) sees the end
	go a.conn.Close()
}

// reapWorkerLocked resets the worker's sessions, removes its listeners and
// stops it.
func (ns *namespace) reapWorkerLocked(w *worker, reason string) {
	for _, l := range w.listeners {
		ns.unlistenLocked(l)
	}
	for _, s := range w.sessions {
		ns.releaseLocked(s, true, reason)
	}
	w.stopLocked()
	// cut-through segments of this worker that no session uses any more
	var empty []*segment
	for k, segs := range ns.pairs {
		if k[0] != w && k[1] != w {
			continue
		}
		for _, s := range segs {
			if s.sessions == 0 {
				empty = append(empty, s)
			} else {
				s.orphan = true
			}
		}
	}
	for _, s := range empty {
		ns.dropCT(s)
	}
	w.backlog = nil
}
