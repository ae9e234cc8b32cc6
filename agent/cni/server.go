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
	"strings"
	"sync"
	"time"
)

// ServerConfig configures the agent's CNI socket.
type ServerConfig struct {
	// Socket is the unix socket path (default DefaultSocket).
	Socket string
	// PendingDir is where the plugin queues DELs it could not deliver
	// (default DefaultPendingDir).
	PendingDir string
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
}

// NewServer returns a server that records attachments in reg.
func NewServer(reg *Registry, cfg ServerConfig) *Server {
	if cfg.Socket == "" {
		cfg.Socket = DefaultSocket
	}
	if cfg.PendingDir == "" {
		cfg.PendingDir = DefaultPendingDir
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	return &Server{reg: reg, cfg: cfg, log: log.With("component", "cni")}
}

// Start applies the DELs queued while the agent was away, then listens on
// the socket (replacing a stale one) and serves until Close.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return errors.New("cni server already started")
	}
	if err := s.ProcessPending(); err != nil {
		return err
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
	go func(srv *http.Server, done chan struct{}) {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("cni socket stopped", "err", err)
		}
	}(s.srv, s.done)
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

// ProcessPending applies and deletes every DEL queued in the pending
// directory. A queued DEL removes the attachment only if it was added
// before the DEL was queued (a newer ADD of the same key survives). An
// unreadable file is logged and deleted: keeping it would retry it forever.
func (s *Server) ProcessPending() error {
	ents, err := os.ReadDir(s.cfg.PendingDir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("cni pending dir: %w", err)
	}
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".json") || !e.Type().IsRegular() {
			continue
		}
		path := filepath.Join(s.cfg.PendingDir, name)
		data, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("queued cni DEL: %w", err)
		}
		var req Request
		if err := json.Unmarshal(data, &req); err != nil || req.ContainerID == "" || req.IfName == "" {
			s.log.Warn("dropping unreadable queued cni DEL", "file", path, "err", err)
		} else {
			if err := s.reg.Delete(req.AttachmentKey, req.QueuedAt); err != nil {
				return fmt.Errorf("queued cni DEL %s: %w", name, err)
			}
			s.log.Info("applied queued cni DEL", "attachment", req.AttachmentKey.String(), "queuedAt", req.QueuedAt)
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove queued cni DEL: %w", err)
		}
	}
	return nil
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
	if req.ContainerID == "" || req.IfName == "" {
		return &ErrorBody{Code: CodeDecodingFailure, Msg: "hoststack agent: request lacks containerID or ifname"}
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
	a := Attachment{
		AttachmentKey: req.AttachmentKey,
		Network:       req.Network,
		Pod:           req.Pod,
		Netns:         req.Netns,
		Interfaces:    req.Interfaces,
		IPs:           req.IPs,
		Added:         time.Now().UTC(),
	}
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
