package session

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/wire"
)

const (
	codeShutdown = wire.ErrShutdown
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
	// nameFree is closed when the app's name is free again: it is leaving
	// (detached, or its socket closed) or reaped (freeName, under ns.mu)
	nameFree chan struct{}
	raw      interface {
		Control(func(uintptr)) error
		Write(func(uintptr) bool) error
	}
	codec     wire.Codec    // the wire version agreed at attach
	v2OwnSent bool          // a version-2 app was sent its own segment (legacy.go)
	v2TBell   int           // a version-2 app's transport doorbell end, passed with its segments (legacy.go)
	cred      *unix.Ucred   // recorded for audit
	sock      *AttachSocket // the socket it attached through (per-pod sockets: the pod)
	host      string        // the socket's host
	privPorts bool          // may listen on ports below 1024 (the socket's allowance)
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
	ndropping int        // connects a PeerPolicy refused, waiting to time out
	nlisten   int        // listeners (stream), against maxListenersPerApp
	accepts   uint64     // sessions handed to its workers (accept.go)
	tsegs     []*segment // transport segments added on demand (besides own)
	leaving   bool       // detached or its socket closed: being reaped
	dead      bool
	sockMu    sync.Mutex
	flowState // transport sessions
}

func (e *Engine) handleConn(s *AttachSocket, c *net.UnixConn) {
	pendingDone := false
	defer func() {
		if !pendingDone {
			s.pending.Add(-1)
		}
	}()
	raw, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return
	}
	a := &app{conn: c, raw: raw, sock: s, workers: map[uint32]*worker{}, v2TBell: -1, nameFree: make(chan struct{})}
	if err := raw.Control(func(fd uintptr) {
		a.cred, _ = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		c.Close()
		return
	}
	buf := make([]byte, wire.SocketMsgMax+1)
	oob := make([]byte, unix.CmsgSpace(4*wire.MaxFDs))
	_ = c.SetReadDeadline(time.Now().Add(e.attachTimeout()))
	// Until a version is agreed, answers go out in the app's version when
	// this engine speaks it, else in the one nearest to it.
	a.codec = wire.Codec{V: wire.MinVersion}
	at, err := readAttach(c, buf, oob)
	if buf[0] > wire.Version {
		a.codec = wire.Current
	} else if wire.Supported(buf[0]) {
		a.codec = wire.Codec{V: buf[0]}
	}
	if err != nil {
		var we *wire.Error
		var ve *wire.VersionError
		switch {
		case errors.As(err, &ve):
			a.sendSock(&wire.AttachReply{Code: wire.ErrVersion, Msg: wire.Msgf("app speaks wire version %d; this engine speaks versions %d to %d", ve.Peer, wire.MinVersion, wire.Version),
				EngineVersion: wire.Version}, nil)
		case errors.As(err, &we):
			a.sendSock(&wire.AttachReply{Code: wire.ErrInvalid, Msg: wire.Msgf("bad attach message: %s", we.Reason), EngineVersion: wire.Version}, nil)
		}
		c.Close()
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	v, ok := wire.Negotiate(at.MinVersion, at.MaxVersion)
	if !ok {
		a.sendSock(&wire.AttachReply{Code: wire.ErrVersion, Msg: wire.Msgf("app speaks wire versions %d to %d; this engine speaks versions %d to %d", at.MinVersion, at.MaxVersion, wire.MinVersion, wire.Version),
			EngineVersion: wire.Version}, nil)
		c.Close()
		return
	}
	a.codec = wire.Codec{V: v}
	key, allowed := s.allows(at.Namespace)
	ns := e.ns(key)
	if !allowed || ns == nil {
		msg := wire.Msgf("app namespace %q is not served by this attach socket", at.Namespace)
		if allowed {
			msg = wire.Msgf("app namespace %q does not exist on this node", key)
		}
		a.sendSock(&wire.AttachReply{Code: wire.ErrNoNamespace, Msg: msg, EngineVersion: a.codec.V}, nil)
		c.Close()
		return
	}
	if gone := ns.nameHolderGone(a, at.Name); gone != nil {
		// The app holding the name has exited (a restarted process, a
		// replaced container) but the engine has not read its socket's end
		// yet: wait for that (it frees the name at once) rather than
		// refuse the name.
		t := time.NewTimer(nameReapWait)
		select {
		case <-gone:
		case <-t.C:
		}
		t.Stop()
	}
	ok = ns.attach(a, at)
	s.pending.Add(-1)
	pendingDone = true
	if !ok {
		c.Close()
		return
	}
	// serve the socket until the app detaches or dies
	for {
		m, err := readMsg(c, buf, oob, a.codec)
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

// readAttach reads the first message of an app, which must be an Attach of
// any version (wire.DecodeAttach).
func readAttach(c *net.UnixConn, buf, oob []byte) (*wire.Attach, error) {
	n, err := readRaw(c, buf, oob)
	if err != nil {
		return nil, err
	}
	return wire.DecodeAttach(buf[:n])
}

// readMsg reads one attach-socket message of the attachment's version.
func readMsg(c *net.UnixConn, buf, oob []byte, codec wire.Codec) (wire.Msg, error) {
	n, err := readRaw(c, buf, oob)
	if err != nil {
		return nil, err
	}
	return codec.Decode(buf[:n])
}

// readRaw reads one attach-socket message into buf; fds the app sends are
// closed (the engine never accepts descriptors from apps).
func readRaw(c *net.UnixConn, buf, oob []byte) (int, error) {
	buf[0] = 0
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
		return 0, err
	}
	if n == 0 {
		return 0, errors.New("eof")
	}
	if flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0 || n > wire.SocketMsgMax {
		return 0, &wire.Error{Reason: "attach-socket message too long"}
	}
	return n, nil
}

// sendSock writes one message (and fds) without ever blocking: a full socket
// buffer means the app does not read its socket, which is its problem.
func (a *app) sendSock(m wire.Msg, fds []int) error {
	var b [wire.SocketMsgMax]byte
	n, err := a.codec.Encode(b[:], m)
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
		a.sendSock(&wire.AttachReply{Code: code, Msg: wire.Msgf(format, args...), EngineVersion: a.codec.V}, nil)
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
	host := ns.hostOf(a)
	// An app is known by its name within its host (its pod): a second
	// attach under a name in use is refused, so no app can take another's
	// redirected sessions by claiming its name there.
	if at.Name != "" {
		if o := ns.appNamed(host, at.Name); o != nil {
			return fail(wire.ErrAddrInUse, "app name %q is taken in app namespace %s%s (app id %d): names are unique per host",
				at.Name, ns.key, hostDesc(host), o.id)
		}
	}
	if err := ns.e.reserveApp(); err != nil {
		return fail(wire.ErrQuota, "%v", err)
	}
	a.ns = ns
	a.id = ns.e.nextApp.Add(1)
	a.name = at.Name
	for i := 0; a.name == "" || (at.Name == "" && ns.appNamed(host, a.name) != nil); i++ {
		a.name = fmt.Sprintf("app-%d", a.id)
		if i > 0 {
			a.name = fmt.Sprintf("app-%d-%d", a.id, i)
		}
	}
	a.host = host
	a.privPorts = a.sock.privPorts
	a.scope = scopeOf(at.Flags)
	a.rxFifo = clampFifo(int(at.RxFifoSize), cfg.RxFifoSize)
	a.txFifo = clampFifo(int(at.TxFifoSize), cfg.TxFifoSize)
	own, err := ns.newSegment(fmt.Sprintf("hs-app-%d", a.id), cfg.SegmentSize)
	if err != nil {
		ns.e.releaseApp()
		return fail(wire.ErrInternal, "cannot create fifo segment: %v", err)
	}
	a.own = own
	a.nsegs = 1
	w, err := ns.newWorker(a)
	if err != nil {
		ns.dropSegment(own)
		ns.e.releaseApp()
		var qe *quotaError
		if errors.As(err, &qe) {
			return fail(wire.ErrQuota, "%v", err)
		}
		return fail(wire.ErrInternal, "cannot create worker queues: %v", err)
	}
	reply := &wire.AttachReply{
		Code: wire.OK, EngineVersion: a.codec.V, AppID: a.id, Worker: w.info,
		Segment: own.handle, SegmentSize: uint64(own.seg.Size()),
		RxFifoSize: uint32(a.rxFifo), TxFifoSize: uint32(a.txFifo), MaxSessions: uint32(cfg.MaxSessionsPerApp),
	}
	fds, err := w.workerFDs()
	if err == nil {
		err = a.sendSock(reply, append(fds, own.seg.FD()))
	}
	w.closeAppFDs()
	if err != nil {
		w.dead = true
		w.release() // never served: no shard holds its descriptors
		ns.dropSegment(own)
		ns.e.releaseApp()
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
	ns.e.logf("session: app %s (id %d, pid %d, uid %d) attached to %s through %s, wire version %d", a.name, a.id, pid, uid, ns.key, a.sock.Path(), a.codec.V)
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

// constEq compares secrets in time independent of their contents and
// lengths: it compares fixed-size digests.
func constEq(a, b string) bool {
	da, db := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(da[:], db[:]) == 1
}

// appNamed is the live app called name in host, or nil.
// nameReapWait bounds how long an attach waits for the reap of a gone app
// that holds the name it asks for.
const nameReapWait = 2 * time.Second

// nameHolderGone returns, when name is held by an app whose attach socket
// the other side has closed (its process exited) but whose reader has not
// seen it yet, a channel closed when the name is free; nil otherwise
// (free, or held by a live app).
func (ns *namespace) nameHolderGone(a *app, name string) <-chan struct{} {
	if name == "" {
		return nil
	}
	ns.mu.Lock()
	o := ns.appNamed(ns.hostOf(a), name)
	ns.mu.Unlock()
	if o == nil || !peerHungUp(o.raw) {
		return nil
	}
	return o.nameFree
}

// freeName tells attaches waiting for the name that it is free (under
// ns.mu; idempotent).
func (a *app) freeName() {
	select {
	case <-a.nameFree:
	default:
		close(a.nameFree)
	}
}

// peerHungUp reports whether the other end of an attach socket is closed,
// without reading from it (its reader goroutine may be draining it).
func peerHungUp(raw interface{ Control(func(uintptr)) error }) bool {
	hup := false
	_ = raw.Control(func(fd uintptr) {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLRDHUP}}
		if n, err := unix.Poll(pfd, 0); err == nil && n > 0 {
			hup = pfd[0].Revents&(unix.POLLRDHUP|unix.POLLHUP) != 0
		}
	})
	return hup
}

// hostOf is the host an attaching app belongs to: its attach socket's pod,
// or none when the namespace shares one network (under ns.mu).
func (ns *namespace) hostOf(a *app) string {
	if ns.cfg.SharedNetwork {
		return ""
	}
	return a.sock.host
}

func (ns *namespace) appNamed(host, name string) *app {
	for _, o := range ns.apps {
		if !o.dead && !o.leaving && o.host == host && o.name == name {
			return o
		}
	}
	return nil
}

// hostDesc names a host for messages: " on host H", or "" for the node.
func hostDesc(host string) string {
	if host == "" {
		return ""
	}
	return " on host " + host
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
				Msg: wire.Msgf("app %s reached maxWorkersPerApp (%d) of app namespace %s", a.name, ns.cfg.MaxWorkersPerApp, ns.key)}, nil)
			return false
		}
		w, err := ns.newWorker(a)
		if err != nil {
			var qe *quotaError
			if errors.As(err, &qe) {
				a.sendSock(&wire.WorkerAddReply{Ctx: m.Ctx, Code: wire.ErrQuota, Msg: wire.Msgf("%v", err)}, nil)
				return false
			}
			a.sendSock(&wire.WorkerAddReply{Ctx: m.Ctx, Code: wire.ErrInternal, Msg: wire.Msgf("cannot create worker: %v", err)}, nil)
			return false
		}
		fds, err := w.workerFDs()
		if err == nil {
			err = a.sendSock(&wire.WorkerAddReply{Ctx: m.Ctx, Worker: w.info}, fds)
		}
		w.closeAppFDs()
		if err != nil {
			w.dead = true
			w.release() // never served: no shard holds its descriptors
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
	// Its name is free at once: a restarted process of the pod may take it
	// while the requests of the old one drain.
	a.leaving = true
	a.freeName()
	var drained []chan struct{}
	for _, w := range a.workers {
		if w.drainDone == nil {
			w.drainDone = make(chan struct{})
			w.drainLeft = w.rq.Slots()
			w.poke()
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

// reapLocked releases everything the app holds: its sessions (peers see a
// reset carrying reason), listeners, workers, segments. Idempotent.
func (ns *namespace) reapLocked(a *app, reason string) {
	if a.dead || a.ns == nil {
		return
	}
	a.dead = true
	a.freeName()
	for _, w := range a.workers {
		ns.reapWorkerLocked(w, reason)
	}
	a.workers = map[uint32]*worker{}
	a.closeV2App()
	if a.own != nil {
		if a.own.sessions > 0 {
			// transports still use fifos in it: the last Finish drops it
			a.own.orphan = true
		} else {
			ns.dropSegment(a.own)
		}
		a.own = nil
	}
	for _, s := range a.tsegs {
		if s.sessions > 0 {
			s.orphan = true // the last Finish drops it
		} else {
			ns.dropSegment(s)
		}
	}
	a.tsegs = nil
	delete(ns.apps, a.id)
	ns.e.releaseApp()
	ns.stats.appsReaped++
	// close the socket so the app's reader (if alive) sees the end
	go a.conn.Close()
}
