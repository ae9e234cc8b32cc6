package csi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/hoststack/hoststack/internal/version"
)

// Default paths, as kubelet expects them.
const (
	DefaultCSISocket   = "/var/lib/kubelet/plugins/" + DriverName + "/csi.sock"
	DefaultRegistryDir = "/var/lib/kubelet/plugins_registry"
)

// Options configures a Server. Zero fields take the defaults.
type Options struct {
	NodeName string     // required: the NodeGetInfo node ID
	Pods     PodSockets // required: serves the per-pod sockets

	DriverName string // default DriverName
	Version    string // GetPluginInfo vendor version; default version.Version
	CSISocket  string // default DefaultCSISocket
	// RegistryDir is kubelet's plugin registry; the registration socket is
	// <RegistryDir>/<driver>-reg.sock. Default DefaultRegistryDir.
	RegistryDir string
	// KubeletEndpoint is the CSI socket's path as kubelet sees it (when the
	// agent's mount of it differs); default CSISocket.
	KubeletEndpoint string
	Log             *slog.Logger // nil: slog.Default()
	// OnRegistration, if set, is called with every registration outcome
	// kubelet reports: nil when registered, an error wrapping
	// ErrRegistration when kubelet refused the plugin.
	OnRegistration func(error)
	// StopTimeout bounds Stop's wait for in-flight calls; default 10s.
	StopTimeout time.Duration
}

// Server serves the CSI Identity and Node services and kubelet's plugin
// registration service on their unix sockets.
type Server struct {
	o   Options
	log *slog.Logger

	mu      sync.Mutex
	started bool
	stopped bool
	servers []*grpc.Server
	paths   []string
	wg      sync.WaitGroup
	stop    sync.Once
	done    chan struct{}
}

// NewServer checks o and returns a Server; Start serves it.
func NewServer(o Options) (*Server, error) {
	if o.NodeName == "" {
		return nil, errors.New("csi: Options.NodeName is required")
	}
	if o.Pods == nil {
		return nil, errors.New("csi: Options.Pods is required")
	}
	if o.DriverName == "" {
		o.DriverName = DriverName
	}
	if o.Version == "" {
		o.Version = version.Version
	}
	if o.CSISocket == "" {
		o.CSISocket = DefaultCSISocket
	}
	if o.RegistryDir == "" {
		o.RegistryDir = DefaultRegistryDir
	}
	if o.KubeletEndpoint == "" {
		o.KubeletEndpoint = o.CSISocket
	}
	if o.StopTimeout <= 0 {
		o.StopTimeout = 10 * time.Second
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	return &Server{o: o, log: o.Log.With("driver", o.DriverName), done: make(chan struct{})}, nil
}

// CSISocket returns the CSI socket's path.
func (s *Server) CSISocket() string { return s.o.CSISocket }

// RegistrationSocket returns the plugin-registration socket's path.
func (s *Server) RegistrationSocket() string {
	return filepath.Join(s.o.RegistryDir, s.o.DriverName+"-reg.sock")
}

// Start serves the CSI socket, then the registration socket (kubelet checks
// the CSI endpoint as soon as it sees the registration socket). It returns
// once both listen; the Server stops when ctx ends or Stop is called.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started || s.stopped {
		return errors.New("csi: server already started or stopped")
	}
	s.started = true

	csiSrv := grpc.NewServer(grpc.UnaryInterceptor(s.logCalls))
	csi.RegisterIdentityServer(csiSrv, &identity{name: s.o.DriverName, version: s.o.Version})
	csi.RegisterNodeServer(csiSrv, &node{driver: s.o.DriverName, nodeName: s.o.NodeName, pods: s.o.Pods, log: s.log})
	if err := s.serveLocked(csiSrv, s.o.CSISocket, "CSI"); err != nil {
		return err
	}
	regSrv := grpc.NewServer()
	registerapi.RegisterRegistrationServer(regSrv, &registration{
		name: s.o.DriverName, endpoint: s.o.KubeletEndpoint, log: s.log, notify: s.o.OnRegistration,
	})
	if err := s.serveLocked(regSrv, s.RegistrationSocket(), "plugin registration"); err != nil {
		s.stopLocked()
		return err
	}
	go func() {
		select {
		case <-ctx.Done():
			s.Stop()
		case <-s.done:
		}
	}()
	return nil
}

func (s *Server) serveLocked(srv *grpc.Server, path, what string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return fmt.Errorf("csi: %s socket directory: %w", what, err)
	}
	if err := removeSocket(path); err != nil {
		return fmt.Errorf("csi: %s socket %s: %w", what, path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("csi: %s socket: %w", what, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("csi: %s socket mode: %w", what, err)
	}
	s.servers = append(s.servers, srv)
	s.paths = append(s.paths, path)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			s.log.Error("gRPC server stopped", "socket", path, "err", err)
		}
	}()
	s.log.Info("serving", "service", what, "socket", path)
	return nil
}

// Stop stops serving: the registration socket first (kubelet deregisters
// the plugin when its socket goes), then the CSI socket after in-flight
// calls finish (at most StopTimeout). The pod sockets stay: they belong to
// Options.Pods. Safe to call more than once and concurrently.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
}

func (s *Server) stopLocked() {
	s.stop.Do(func() {
		s.stopped = true
		close(s.done)
		for i := len(s.servers) - 1; i >= 0; i-- {
			srv := s.servers[i]
			stopped := make(chan struct{})
			go func() { srv.GracefulStop(); close(stopped) }()
			select {
			case <-stopped:
			case <-time.After(s.o.StopTimeout):
				srv.Stop()
				<-stopped
			}
		}
		s.wg.Wait()
		for _, p := range s.paths {
			_ = removeSocket(p)
		}
		s.log.Info("stopped")
	})
}

// logCalls logs every CSI call with its outcome.
func (s *Server) logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	st := status.Convert(err)
	lvl := slog.LevelDebug
	if err != nil {
		lvl = slog.LevelWarn
	}
	s.log.Log(ctx, lvl, "CSI call", "method", info.FullMethod, "code", st.Code().String(), "msg", st.Message(), "took", time.Since(start))
	return resp, err
}
