package session

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/engine/wire"
)

// Attach sockets: the listening unix sockets apps attach through, and who
// may attach through which.

// AttachSocket is one listening SOCK_SEQPACKET unix socket. Which app
// namespaces may attach through it is a property of the socket: the socket
// of an app namespace allows only that one; a per-pod socket (later) allows
// the namespace its pod was admitted to.
type AttachSocket struct {
	e       *Engine
	path    string
	host    string
	ln      *net.UnixListener
	allowed []string
	// privPorts: apps attaching through it may listen on ports below 1024
	privPorts bool
	pending   atomic.Int32 // connections accepted, attach not decided yet
	// pendingLogged is when a pending refusal was last logged (unix ns)
	pendingLogged atomic.Int64
	once          sync.Once
	closed        atomic.Bool // no attach through it completes once set
	done          chan struct{}
}

// SocketConfig describes an attach socket.
type SocketConfig struct {
	// Path is the socket file.
	Path string
	// Namespaces are the app namespaces (keys "namespace/name") apps may
	// attach to through it; an Attach that names none gets the first.
	Namespaces []string
	// Host is the network host of every app attaching through it: a pod's
	// identity (its UID) for a per-pod socket, "" for the node. Listeners
	// on the unspecified address belong to their host, transports open
	// the apps' sockets in the host's network namespace.
	Host string
	// PrivilegedPorts lets the apps attaching through it listen on ports
	// 1-1023 (what CAP_NET_BIND_SERVICE allows a process); without it such
	// listens are refused (EACCES), as for an unprivileged process.
	PrivilegedPorts bool
	// Mode is the socket file's permission bits; 0 means 0600. Who can
	// connect to the socket is who can attach: keep it no wider than the
	// processes that should.
	Mode os.FileMode
	// UID and GID, when not nil, are the socket file's owner and group.
	UID, GID *int
}

// ServeAttach serves attaches for the node's host ("") through path.
func (e *Engine) ServeAttach(path string, namespaces ...string) (*AttachSocket, error) {
	cfg := SocketConfig{Path: path, Namespaces: namespaces, Mode: e.cfg.NodeSockets.Mode,
		UID: e.cfg.NodeSockets.UID, GID: e.cfg.NodeSockets.GID}
	if p := e.cfg.PrivilegedPorts; p != nil && len(namespaces) > 0 {
		cfg.PrivilegedPorts = true
		for _, k := range namespaces {
			cfg.PrivilegedPorts = cfg.PrivilegedPorts && p(k)
		}
	}
	return e.Serve(cfg)
}

// Serve listens on cfg.Path and serves attaches as cfg says.
func (e *Engine) Serve(cfg SocketConfig) (*AttachSocket, error) {
	path, namespaces := cfg.Path, cfg.Namespaces
	if len(namespaces) == 0 {
		return nil, errors.New("session: an attach socket must allow at least one app namespace")
	}
	ln, err := e.listenAttach(path, cfg)
	if err != nil {
		return nil, err
	}
	s := &AttachSocket{e: e, path: path, host: cfg.Host, privPorts: cfg.PrivilegedPorts, ln: ln, allowed: slices.Clone(namespaces), done: make(chan struct{})}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		ln.Close()
		return nil, errors.New("session: engine closed")
	}
	e.sockets[s] = struct{}{}
	e.mu.Unlock()
	e.wg.Add(1)
	go s.serve()
	return s, nil
}

// Path returns the socket's file name.
func (s *AttachSocket) Path() string { return s.path }

// CloseAndReap closes the socket and detaches every app that attached
// through it, telling each why (their peers see resets). A per-pod socket
// is the pod: when the pod goes, so do its apps.
func (s *AttachSocket) CloseAndReap(reason string) error {
	err := s.Close()
	s.e.mu.Lock()
	nss := make([]*namespace, 0, len(s.e.namespaces))
	for _, ns := range s.e.namespaces {
		nss = append(nss, ns)
	}
	s.e.mu.Unlock()
	for _, ns := range nss {
		ns.mu.Lock()
		for _, a := range ns.apps {
			if a.sock == s {
				a.notice(codeShutdown, reason)
				ns.reapLocked(a, reason)
			}
		}
		ns.mu.Unlock()
	}
	return err
}

// Close stops accepting attaches (attached apps stay) and removes the file.
func (s *AttachSocket) Close() error {
	s.once.Do(func() {
		s.closed.Store(true)
		s.ln.Close()
		_ = os.Remove(s.path)
		s.e.mu.Lock()
		delete(s.e.sockets, s)
		s.e.mu.Unlock()
	})
	<-s.done
	return nil
}

func (s *AttachSocket) serve() {
	defer s.e.wg.Done()
	defer close(s.done)
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			s.e.logf("session: attach socket %s: accept: %v", s.path, err)
			time.Sleep(10 * time.Millisecond) // e.g. EMFILE: do not spin
			continue
		}
		if int(s.pending.Add(1)) > s.e.cfg.Limits.MaxPendingAttaches {
			s.pending.Add(-1)
			s.refusePending(c)
			continue
		}
		go s.e.handleConn(s, c)
	}
}

// refusePending answers a connection over the socket's pending-attach cap
// with the reason, without reading it, and closes it.
func (s *AttachSocket) refusePending(c *net.UnixConn) {
	max := s.e.cfg.Limits.MaxPendingAttaches
	msg := wire.Msgf("attach socket %s: maxPendingAttaches (%d) reached: that many connections have not completed their attach; try again", s.path, max)
	// a per-socket limit (a pod crowding its own socket): logged (at most
	// once a second: a flood must not flood the log), not a node-wide
	// refusal
	if now := time.Now().UnixNano(); now-s.pendingLogged.Load() > int64(time.Second) {
		s.pendingLogged.Store(now)
		s.e.logf("session: %s", msg)
	}
	var b [wire.SocketMsgMax]byte
	if n, err := wire.Encode(b[:], &wire.AttachReply{Code: wire.ErrQuota, Msg: msg, EngineVersion: wire.Version}); err == nil {
		if raw, err := c.SyscallConn(); err == nil {
			_ = raw.Write(func(fd uintptr) bool {
				_ = unix.Sendmsg(int(fd), b[:n], nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
				return true
			})
		}
	}
	c.Close()
}

// listenAttach binds an attach socket under a temporary name in path's
// directory, gives it its mode and owner, and only then renames it to path:
// bound at path, it would take connects with the umask's mode until the
// chmod.
func (e *Engine) listenAttach(path string, cfg SocketConfig) (*net.UnixListener, error) {
	tmp := filepath.Join(filepath.Dir(path), fmt.Sprintf(".hs%d-%d", os.Getpid(), e.nextSock.Add(1)))
	_ = os.Remove(tmp)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Net: "unixpacket", Name: tmp})
	if err != nil {
		return nil, fmt.Errorf("session: attach socket: %w", err)
	}
	// Close removes path; Go would unlink the temporary name
	ln.SetUnlinkOnClose(false)
	err = setSocketAccess(tmp, cfg)
	if err == nil {
		if err = os.Rename(tmp, path); err != nil {
			err = fmt.Errorf("session: attach socket: %w", err)
		}
	}
	if err != nil {
		ln.Close()
		_ = os.Remove(tmp)
		return nil, err
	}
	return ln, nil
}

// setSocketAccess gives the socket file its mode and owner.
func setSocketAccess(path string, cfg SocketConfig) error {
	mode := cfg.Mode.Perm()
	if mode == 0 {
		mode = 0o600
	}
	if cfg.UID != nil || cfg.GID != nil {
		uid, gid := -1, -1
		if cfg.UID != nil {
			uid = *cfg.UID
		}
		if cfg.GID != nil {
			gid = *cfg.GID
		}
		if err := os.Lchown(path, uid, gid); err != nil {
			return fmt.Errorf("session: attach socket owner: %w", err)
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		return fmt.Errorf("session: attach socket mode: %w", err)
	}
	return nil
}

// allows resolves the namespace an Attach asks for through this socket.
func (s *AttachSocket) allows(name string) (string, bool) {
	if name == "" {
		return s.allowed[0], true
	}
	for _, k := range s.allowed {
		// "namespace/name", or just the AppNamespace name (as the pod
		// webhook may inject it) when the socket serves it
		if k == name || (!strings.Contains(name, "/") && strings.HasSuffix(k, "/"+name)) {
			return k, true
		}
	}
	return name, false
}
