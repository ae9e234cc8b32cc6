package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// ServerConfig configures the agent's CNI socket.
type ServerConfig struct {
	// Socket is the unix socket path (default DefaultSocket).
	Socket string
	// PendingDir is where the plugin queues ADDs and DELs it could not
	// deliver (default DefaultPendingDir).
	PendingDir string
	// PendingInterval is how often the pending directory is applied while
	// serving (default 5s): an ADD that timed out against a busy agent
	// is queued although the agent never restarts.
	PendingInterval time.Duration
	// Status, when set, decides the answer to STATUS: an error makes the
	// plugin report "plugin not available" (CNI code 50) with its text.
	Status func() error
	// Log receives one line per change and per problem (default slog.Default()).
	Log *slog.Logger
}

// Server answers the plugin on the CNI socket and keeps reg up to date.
type Server struct {
	reg *Registry
	cfg ServerConfig
	log *slog.Logger

	mu   sync.Mutex
	srv  *http.Server
	done chan struct{}
	stop chan struct{}

	// pmu orders applying the pending directory against DELs and GCs
	// that make a queued ADD stale.
	pmu sync.Mutex
}

// NewServer returns a server that records attachments in reg.
func NewServer(reg *Registry, cfg ServerConfig) *Server {
	if cfg.Socket == "" {
		cfg.Socket = DefaultSocket
	}
	if cfg.PendingDir == "" {
		cfg.PendingDir = DefaultPendingDir
	}
	if cfg.PendingInterval <= 0 {
		cfg.PendingInterval = 5 * time.Second
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	return &Server{reg: reg, cfg: cfg, log: log.With("component", "cni")}
}

// Start applies the ADDs and DELs queued while the agent was away, then
// listens on the socket (replacing a stale one) and serves until Close.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return errors.New("cni server already started")
	}
	// Not fatal: the queue is applied again while serving, and an agent
	// that cannot start stops nothing but itself.
	if err := s.ProcessPending(); err != nil {
		s.log.Error("applying queued cni requests", "err", err)
	}
	if err := os.MkdirAll(filepath.Dir(s.cfg.Socket), 0o755); err != nil {
		return fmt.Errorf("cni socket dir: %w", err)
	}
	if fi, err := os.Lstat(s.cfg.Socket); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return fmt.Errorf("cni socket %s exists and is not a socket", s.cfg.Socket)
		}
		if err := os.Remove(s.cfg.Socket); err != nil {
			return fmt.Errorf("remove stale cni socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", s.cfg.Socket)
	if err != nil {
		return fmt.Errorf("cni socket: %w", err)
	}
	if err := os.Chmod(s.cfg.Socket, 0o600); err != nil {
		_ = ln.Close()
		return fmt.Errorf("cni socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PathAdd, s.handle(s.add))
	mux.HandleFunc("POST "+PathDel, s.handle(s.del))
	mux.HandleFunc("POST "+PathCheck, s.handle(s.check))
	mux.HandleFunc("POST "+PathGC, s.handle(s.gc))
	mux.HandleFunc("GET "+PathStatus, s.status)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, &ErrorBody{Code: CodeInternal, Msg: "hoststack agent: unsupported protocol request", Details: r.Method + " " + r.URL.Path})
	})
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	s.done = make(chan struct{})
	s.stop = make(chan struct{})
	served := make(chan struct{})
	go func(srv *http.Server) {
		defer close(served)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("cni socket stopped", "err", err)
		}
	}(s.srv)
	go func(stop, done chan struct{}) {
		defer close(done)
		t := time.NewTicker(s.cfg.PendingInterval)
		defer t.Stop()
		for {
			select {
			case <-stop:
				<-served
				return
			case <-t.C:
				if err := s.ProcessPending(); err != nil {
					s.log.Error("applying queued cni requests", "err", err)
				}
			}
		}
	}(s.stop, s.done)
	s.log.Info("cni socket listening", "socket", s.cfg.Socket, "attachments", len(s.reg.List()))
	return nil
}

// Close stops serving (in-flight requests finish) and removes the socket.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	close(s.stop)
	<-s.done
	s.srv = nil
	if rerr := os.Remove(s.cfg.Socket); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) && err == nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("close cni socket: %w", err)
	}
	return nil
}

// PendingFileName is the name of the queued DEL of attachment k in the
// pending directory (':' appears in neither a container ID nor an ifname).
func PendingFileName(k AttachmentKey) string {
	return k.ContainerID + ":" + k.IfName + ".json"
}

// PendingAddFileName is the name of the queued ADD of attachment k.
func PendingAddFileName(k AttachmentKey) string {
	return k.ContainerID + ":" + k.IfName + ".add.json"
}

// ValidKey reports whether k can name an attachment and a pending file.
func ValidKey(k AttachmentKey) bool {
	ok := func(s string) bool {
		return s != "" && !strings.HasPrefix(s, ".") && !strings.ContainsAny(s, "/:\x00")
	}
	return ok(k.ContainerID) && ok(k.IfName)
}

type pendingRecord struct {
	path string
	req  Request
}

// ProcessPending applies and deletes every ADD and DEL queued in the
// pending directory, oldest first, so an ADD and a DEL of one attachment
// end as the runtime left it. A queued ADD records the attachment as added
// when it was queued, unless one added later is known; a queued DEL
// removes the attachment only if it was added before the DEL was queued.
// An unreadable file is logged and deleted: keeping it would retry it
// forever.
func (s *Server) ProcessPending() error {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	ents, err := os.ReadDir(s.cfg.PendingDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cni pending dir: %w", err)
	}
	var recs []pendingRecord
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".json") || !e.Type().IsRegular() {
			continue
		}
		path := filepath.Join(s.cfg.PendingDir, name)
		data, err := readLimited(path, 1<<20)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("queued cni request: %w", err)
		}
		r := pendingRecord{path: path}
		err = json.Unmarshal(data, &r.req)
		switch {
		case err == nil && !ValidKey(r.req.AttachmentKey):
			err = errors.New("no valid containerID and ifname")
		case err == nil && r.req.Command == "":
			r.req.Command = CommandDel
		case err == nil && r.req.Command == CommandAdd && r.req.Netns == "":
			err = errors.New("queued ADD without a netns")
		case err == nil && r.req.Command != CommandAdd && r.req.Command != CommandDel:
			err = fmt.Errorf("unknown command %q", r.req.Command)
		}
		if err != nil {
			s.log.Warn("dropping unreadable queued cni request", "file", path, "err", err)
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("remove queued cni request: %w", err)
			}
			continue
		}
		recs = append(recs, r)
	}
	slices.SortStableFunc(recs, func(a, b pendingRecord) int { return a.req.QueuedAt.Compare(b.req.QueuedAt) })
	for _, r := range recs {
		req := &r.req
		switch req.Command {
		case CommandAdd:
			a := attachmentOf(req, req.QueuedAt)
			if err := s.reg.putUnlessNewer(a); err != nil {
				return fmt.Errorf("queued cni ADD %s: %w", filepath.Base(r.path), err)
			}
			s.log.Info("applied queued cni ADD", "attachment", a.String(), "pod", a.Pod.Namespace+"/"+a.Pod.Name, "uid", a.Pod.UID, "queuedAt", req.QueuedAt)
		case CommandDel:
			if err := s.reg.Delete(req.AttachmentKey, req.QueuedAt); err != nil {
				return fmt.Errorf("queued cni DEL %s: %w", filepath.Base(r.path), err)
			}
			s.log.Info("applied queued cni DEL", "attachment", req.AttachmentKey.String(), "queuedAt", req.QueuedAt)
		}
		if err := os.Remove(r.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove queued cni request: %w", err)
		}
	}
	return nil
}

func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	return data, nil
}

// dropQueuedAdd removes a queued ADD of k that a DEL taken now makes stale.
func (s *Server) dropQueuedAdd(k AttachmentKey) {
	if !ValidKey(k) {
		return
	}
	path := filepath.Join(s.cfg.PendingDir, PendingAddFileName(k))
	if err := os.Remove(path); err == nil {
		s.log.Info("dropped queued cni ADD: its DEL came", "attachment", k.String())
	} else if !errors.Is(err, fs.ErrNotExist) {
		s.log.Warn("removing queued cni ADD", "file", path, "err", err)
	}
}

func attachmentOf(req *Request, added time.Time) Attachment {
	return Attachment{
		AttachmentKey: req.AttachmentKey,
		Network:       req.Network,
		Pod:           req.Pod,
		Netns:         req.Netns,
		Interfaces:    req.Interfaces,
		IPs:           req.IPs,
		Added:         added.UTC(),
	}
}

func (s *Server) handle(fn func(*Request) *ErrorBody) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req Request
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
		if err := dec.Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, &ErrorBody{Code: CodeDecodingFailure, Msg: "hoststack agent: bad request", Details: err.Error()})
			return
		}
		if eb := fn(&req); eb != nil {
			writeError(w, http.StatusConflict, eb)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, "{}\n")
	}
}

func needKey(req *Request) *ErrorBody {
	if !ValidKey(req.AttachmentKey) {
		return &ErrorBody{Code: CodeDecodingFailure, Msg: "hoststack agent: request lacks a valid containerID or ifname"}
	}
	return nil
}

func (s *Server) add(req *Request) *ErrorBody {
	if eb := needKey(req); eb != nil {
		return eb
	}
	if req.Netns == "" {
		return &ErrorBody{Code: CodeDecodingFailure, Msg: "hoststack agent: ADD lacks the netns path"}
	}
	a := attachmentOf(req, time.Now())
	if err := s.reg.Put(a); err != nil {
		s.log.Error("cni ADD not recorded", "attachment", a.String(), "err", err)
		return &ErrorBody{Code: CodeTryAgainLater, Msg: "hoststack agent: cannot record the attachment", Details: err.Error()}
	}
	s.log.Info("cni ADD", "attachment", a.String(), "pod", a.Pod.Namespace+"/"+a.Pod.Name, "uid", a.Pod.UID, "netns", a.Netns, "ips", len(a.IPs))
	return nil
}

func (s *Server) del(req *Request) *ErrorBody {
	if eb := needKey(req); eb != nil {
		return eb
	}
	s.pmu.Lock()
	defer s.pmu.Unlock()
	s.dropQueuedAdd(req.AttachmentKey)
	if err := s.reg.Delete(req.AttachmentKey, time.Time{}); err != nil {
		s.log.Error("cni DEL not recorded", "attachment", req.AttachmentKey.String(), "err", err)
		return &ErrorBody{Code: CodeTryAgainLater, Msg: "hoststack agent: cannot record the DEL", Details: err.Error()}
	}
	s.log.Info("cni DEL", "attachment", req.AttachmentKey.String())
	return nil
}

func (s *Server) check(req *Request) *ErrorBody {
	if eb := needKey(req); eb != nil {
		return eb
	}
	a, ok := s.reg.Get(req.AttachmentKey)
	if !ok {
		return &ErrorBody{Code: CodeUnknownContainer, Msg: "hoststack agent: unknown attachment", Details: req.AttachmentKey.String()}
	}
	if req.Netns != "" && req.Netns != a.Netns {
		return &ErrorBody{Code: CodeInternal, Msg: "hoststack agent: attachment recorded with another netns", Details: fmt.Sprintf("recorded %s, runtime says %s", a.Netns, req.Netns)}
	}
	return nil
}

func (s *Server) gc(req *Request) *ErrorBody {
	// Queued ADDs first, so GC judges them as well.
	if err := s.ProcessPending(); err != nil {
		s.log.Error("applying queued cni requests before GC", "err", err)
	}
	removed, err := s.reg.Retain(req.Network, req.ValidAttachments)
	if err != nil {
		s.log.Error("cni GC failed", "network", req.Network, "err", err)
		return &ErrorBody{Code: CodeTryAgainLater, Msg: "hoststack agent: GC failed", Details: err.Error()}
	}
	s.log.Info("cni GC", "network", req.Network, "valid", len(req.ValidAttachments), "removed", removed)
	return nil
}

func (s *Server) status(w http.ResponseWriter, _ *http.Request) {
	if s.cfg.Status != nil {
		if err := s.cfg.Status(); err != nil {
			writeError(w, http.StatusServiceUnavailable, &ErrorBody{Code: CodePluginNotAvailable, Msg: "plugin not available", Details: err.Error()})
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = io.WriteString(w, "{}\n")
}

func writeError(w http.ResponseWriter, code int, eb *ErrorBody) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(eb)
}
