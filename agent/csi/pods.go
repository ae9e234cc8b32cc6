package csi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/hoststack/hoststack/api/attach"
	"github.com/hoststack/hoststack/engine/session"
)

// SocketName is the attach socket's file name inside a pod's volume (the
// pod webhook mounts the volume at attach.MountPath and sets
// attach.EnvSocket to attach.SocketPath).
const SocketName = attach.SocketFile

// PodRef identifies the pod a socket belongs to.
type PodRef struct {
	Namespace string
	Name      string
	UID       string
	// AppNamespace is the AppNamespace (a name in the pod's namespace) the
	// pod webhook chose for the pod, from the volume's
	// attach.VolumeAttrAppNamespace attribute: the socket admits only it.
	// Empty (a volume written by hand, the hostPath fallback): the oldest
	// of those selecting the pod that the node serves (the webhook's rule).
	AppNamespace string
}

// String returns "namespace/name (uid)", as logs and errors name a pod.
func (p PodRef) String() string { return p.Namespace + "/" + p.Name + " (uid " + p.UID + ")" }

// validate checks p can name a pod (and a directory, for the hostPath mode).
func (p PodRef) validate() error {
	if errs := validation.IsDNS1123Label(p.Namespace); len(errs) > 0 {
		return fmt.Errorf("pod namespace %q: %s", p.Namespace, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(p.Name); len(errs) > 0 {
		return fmt.Errorf("pod name %q: %s", p.Name, strings.Join(errs, "; "))
	}
	if p.UID == "" || strings.ContainsAny(p.UID, "/\x00") || len(p.UID) > 128 {
		return fmt.Errorf("pod uid %q is not a Kubernetes UID", p.UID)
	}
	if p.AppNamespace != "" {
		if errs := validation.IsDNS1123Subdomain(p.AppNamespace); len(errs) > 0 {
			return fmt.Errorf("volume attribute %s %q: %s", attach.VolumeAttrAppNamespace, p.AppNamespace, strings.Join(errs, "; "))
		}
	}
	return nil
}

// PodSockets serves per-pod attach sockets. The CSI node service and the
// hostPath fallback drive it; the agent implements it with EngineSockets.
type PodSockets interface {
	// Publish serves the pod's attach socket in dir (which exists) and
	// returns its path. Publishing the same pod in the same dir again
	// returns the same socket (and re-serves it if its file disappeared or
	// the pod's AppNamespaces changed). Errors wrap ErrNotSelected when no
	// AppNamespace selects the pod, ErrConflict when dir serves another pod.
	Publish(ctx context.Context, pod PodRef, dir string) (socketPath string, err error)
	// Unpublish stops serving the socket in dir and removes its file. A dir
	// that serves nothing is not an error. (Kubelet's NodeUnpublishVolume
	// names only the volume and its target path, not the pod.)
	Unpublish(ctx context.Context, dir string) error
}

// Resolver returns the keys ("namespace/name") of the AppNamespaces the
// pod's socket admits: the one chosen for the pod (PodRef.AppNamespace),
// if it selects the pod and is served on the node; the agent's pod cache
// and AppNamespace informers decide. None (and a nil error), or an error
// wrapping ErrNotSelected, means the pod may not attach.
type Resolver func(ctx context.Context, pod PodRef) (appNamespaces []string, err error)

var (
	// ErrNotSelected: no AppNamespace selects the pod.
	ErrNotSelected = errors.New("not selected by any AppNamespace")
	// ErrConflict: the directory already serves another pod.
	ErrConflict = errors.New("directory already serves another pod")
)

// PodAccess is what a pod's attach socket allows and who may open it.
type PodAccess struct {
	// PrivilegedPorts lets the pod's apps listen on ports below 1024 (a
	// container of the pod has NET_BIND_SERVICE).
	PrivilegedPorts bool
	// Mode, UID and GID of the socket file (session.SocketConfig); Mode 0
	// is 0600.
	Mode     os.FileMode
	UID, GID *int
}

// AccessFunc returns the PodAccess of a pod's socket.
type AccessFunc func(ctx context.Context, pod PodRef) (PodAccess, error)

// EngineSocketsOptions configures NewEngineSockets.
type EngineSocketsOptions struct {
	Engine  *session.Engine // required
	Resolve Resolver        // required
	// Access decides each socket's PodAccess; nil: mode 0600 owned by the
	// agent, no privileged ports.
	Access AccessFunc
	Log    *slog.Logger // nil: slog.Default()
	// ReapApps is called when a pod's socket is closed because the pod
	// left, to detach the apps that attached through it; nil means
	// (*session.AttachSocket).CloseAndReap, which tells each app why.
	ReapApps func(sock *session.AttachSocket, reason string) error
}

// EngineSockets serves per-pod attach sockets from a session engine. Safe for
// concurrent use.
type EngineSockets struct {
	engine  *session.Engine
	resolve Resolver
	access  AccessFunc
	reap    func(*session.AttachSocket, string) error
	log     *slog.Logger

	mu     sync.Mutex
	byDir  map[string]*podSocket
	closed bool
}

// podSocket is one served per-pod socket.
type podSocket struct {
	pod    PodRef
	dir    string
	path   string   // dir/session.sock
	keys   []string // AppNamespaces it allows
	access PodAccess
	sock   *session.AttachSocket
	dirf   *os.File // held while the socket was bound through /proc/self/fd
}

// NewEngineSockets returns an EngineSockets. Close it to close its sockets.
func NewEngineSockets(o EngineSocketsOptions) (*EngineSockets, error) {
	if o.Engine == nil || o.Resolve == nil {
		return nil, errors.New("csi: EngineSockets needs an engine and a resolver")
	}
	log := o.Log
	if log == nil {
		log = slog.Default()
	}
	reap := o.ReapApps
	if reap == nil {
		reap = (*session.AttachSocket).CloseAndReap
	}
	return &EngineSockets{engine: o.Engine, resolve: o.Resolve, access: o.Access, reap: reap, log: log, byDir: map[string]*podSocket{}}, nil
}

// Publish implements PodSockets.
func (s *EngineSockets) Publish(ctx context.Context, pod PodRef, dir string) (string, error) {
	if err := pod.validate(); err != nil {
		return "", err
	}
	dir = filepath.Clean(dir)
	keys, err := s.resolve(ctx, pod)
	if err != nil {
		return "", fmt.Errorf("resolving the AppNamespaces of pod %s: %w", pod, err)
	}
	if len(keys) == 0 {
		return "", fmt.Errorf("pod %s is %w on this node, so it may not attach (label the pod or fix the AppNamespace's podSelector; kubelet retries the mount)", pod, ErrNotSelected)
	}
	var access PodAccess
	if s.access != nil {
		if access, err = s.access(ctx, pod); err != nil {
			return "", fmt.Errorf("deciding the attach socket access of pod %s: %w", pod, err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return "", errors.New("csi: pod sockets closed (agent stopping)")
	}
	if cur := s.byDir[dir]; cur != nil {
		if cur.pod.UID != pod.UID {
			return "", fmt.Errorf("%s: %w %s (asked for %s)", dir, ErrConflict, cur.pod, pod)
		}
		if slices.Equal(cur.keys, keys) && cur.access.equal(access) && socketExists(cur.path) {
			return cur.path, nil
		}
		// its AppNamespaces changed (the apps attached to the others must
		// go), or its file disappeared (the apps are still the pod's)
		changed := !slices.Equal(cur.keys, keys)
		s.log.Info("re-serving pod attach socket", "pod", pod.String(), "path", cur.path, "appNamespaces", keys, "previous", cur.keys, "appNamespacesChanged", changed)
		delete(s.byDir, dir)
		s.closeLocked(cur, "its pod's AppNamespaces changed", changed)
	}
	ps, err := s.serve(pod, dir, keys, access)
	if err != nil {
		return "", err
	}
	s.byDir[dir] = ps
	s.log.Info("serving pod attach socket", "pod", pod.String(), "podNamespace", pod.Namespace, "podName", pod.Name, "podUID", pod.UID, "path", ps.path, "appNamespaces", keys,
		"mode", fmt.Sprintf("%04o", access.mode()), "uid", intOr(access.UID), "gid", intOr(access.GID), "privilegedPorts", access.PrivilegedPorts)
	return ps.path, nil
}

// Unpublish implements PodSockets.
func (s *EngineSockets) Unpublish(ctx context.Context, dir string) error {
	dir = filepath.Clean(dir)
	s.mu.Lock()
	cur := s.byDir[dir]
	if cur != nil {
		delete(s.byDir, dir)
		s.closeLocked(cur, "its volume was unpublished", true)
	}
	s.mu.Unlock()
	if cur != nil {
		s.log.Info("closed pod attach socket", "pod", cur.pod.String(), "podNamespace", cur.pod.Namespace, "podName", cur.pod.Name, "podUID", cur.pod.UID, "path", cur.path)
	}
	// a socket left by an earlier agent process (nothing serves it)
	return removeSocket(filepath.Join(dir, SocketName))
}

// ForgetPod closes every socket of the pod with this UID (the agent calls it
// when the pod is deleted; kubelet's unpublish then only removes the
// directory). It returns how many sockets it closed.
func (s *EngineSockets) ForgetPod(uid string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for dir, ps := range s.byDir {
		if ps.pod.UID == uid {
			delete(s.byDir, dir)
			s.closeLocked(ps, "its pod was deleted", true)
			s.log.Info("closed pod attach socket", "pod", ps.pod.String(), "path", ps.path, "reason", "pod deleted")
			n++
		}
	}
	return n
}

// Sockets returns the socket path of every served pod socket, by pod.
func (s *EngineSockets) Sockets() map[PodRef][]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := map[PodRef][]string{}
	for _, ps := range s.byDir {
		m[ps.pod] = append(m[ps.pod], ps.path)
	}
	return m
}

// Close closes every pod socket (their files go; the volume directories
// stay for kubelet to unpublish; attached apps are left to the engine's
// Close). Publish fails afterwards.
func (s *EngineSockets) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for dir, ps := range s.byDir {
		delete(s.byDir, dir)
		s.closeLocked(ps, "the agent is stopping", false)
	}
	return nil
}

// closeLocked closes a pod socket and, with reap, has the apps that
// attached through it reaped.
func (s *EngineSockets) closeLocked(ps *podSocket, reason string, reap bool) {
	_ = ps.sock.Close()
	if ps.dirf != nil {
		ps.dirf.Close()
	}
	if reap && s.reap != nil {
		if err := s.reap(ps.sock, "pod "+ps.pod.String()+": "+reason); err != nil {
			s.log.Warn("reaping the apps of a pod attach socket", "pod", ps.pod.String(), "path", ps.path, "err", err)
		}
	}
}

// serve listens on dir/session.sock. A unix socket address holds at most 107
// bytes and kubelet's volume paths
// (/var/lib/kubelet/pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount) are
// often longer: then the socket is bound through /proc/self/fd/<dir fd>,
// which stays open as long as the socket (the engine removes the file
// through that name on Close).
func (s *EngineSockets) serve(pod PodRef, dir string, keys []string, access PodAccess) (*podSocket, error) {
	path := filepath.Join(dir, SocketName)
	ps := &podSocket{pod: pod, dir: dir, path: path, keys: slices.Clone(keys), access: access}
	bind := path
	if len(path) > maxSocketPath {
		f, err := os.OpenFile(dir, os.O_RDONLY|oPath|oDirectory, 0)
		if err != nil {
			return nil, fmt.Errorf("opening pod %s volume directory: %w", pod, err)
		}
		ps.dirf = f
		bind = fmt.Sprintf("/proc/self/fd/%d/%s", f.Fd(), SocketName)
	}
	// The pod's UID is its host: its apps' wildcard listeners are its own,
	// and the transport opens their sockets in its network namespace.
	sock, err := s.engine.Serve(session.SocketConfig{Path: bind, Namespaces: keys, Host: pod.UID,
		PrivilegedPorts: access.PrivilegedPorts, Mode: access.mode(), UID: access.UID, GID: access.GID})
	if err != nil {
		if ps.dirf != nil {
			ps.dirf.Close()
		}
		return nil, fmt.Errorf("serving the attach socket of pod %s at %s: %w", pod, path, err)
	}
	ps.sock = sock
	return ps, nil
}

// maxSocketPath is the longest path a sockaddr_un holds with its NUL.
const maxSocketPath = 107

func socketExists(path string) bool {
	fi, err := os.Lstat(path)
	return err == nil && fi.Mode()&os.ModeSocket != 0
}

// removeSocket removes path if it is a socket; anything else is left alone.
func removeSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing stale socket: %w", err)
	}
	return nil
}

func (p PodAccess) mode() os.FileMode {
	if p.Mode == 0 {
		return 0o600
	}
	return p.Mode.Perm()
}

func (p PodAccess) equal(o PodAccess) bool {
	eq := func(a, b *int) bool { return (a == nil) == (b == nil) && (a == nil || *a == *b) }
	return p.PrivilegedPorts == o.PrivilegedPorts && p.mode() == o.mode() && eq(p.UID, o.UID) && eq(p.GID, o.GID)
}

func intOr(p *int) int {
	if p == nil {
		return -1
	}
	return *p
}
