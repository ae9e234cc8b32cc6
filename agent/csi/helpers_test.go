package csi_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	csispec "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/hoststack/hoststack/agent/csi"
	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/session"
)

// The two AppNamespaces of every test engine.
var (
	webNS   = session.NamespaceConfig{Namespace: "team", Name: "web", SegmentSize: 1 << 20, RxFifoSize: 4096, TxFifoSize: 4096, QueueSlots: 16}
	batchNS = session.NamespaceConfig{Namespace: "team", Name: "batch", SegmentSize: 1 << 20, RxFifoSize: 4096, TxFifoSize: 4096, QueueSlots: 16}
)

// Pods the test resolver knows: web is selected by team/web, batch by
// team/batch, lonely by nothing.
var (
	webPod    = csi.PodRef{Namespace: "team", Name: "web-0", UID: "11111111-1111-1111-1111-111111111111"}
	batchPod  = csi.PodRef{Namespace: "team", Name: "batch-0", UID: "22222222-2222-2222-2222-222222222222"}
	lonelyPod = csi.PodRef{Namespace: "team", Name: "lonely", UID: "33333333-3333-3333-3333-333333333333"}
)

// logBuf collects a component's logs; printed when the test fails.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// resolver is the test's stand-in for the agent's pod cache: a table the
// test edits.
type resolver struct {
	mu  sync.Mutex
	sel map[string][]string // pod UID → AppNamespace keys
}

func (r *resolver) resolve(_ context.Context, p csi.PodRef) ([]string, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sel[p.UID], nil
}

func (r *resolver) set(uid string, keys ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sel[uid] = keys
}

// reapCall is one call of the EngineSockets.ReapApps hook.
type reapCall struct {
	path, reason string
}

// env is a real engine, EngineSockets over it, and a Server on real unix
// sockets with gRPC clients.
type env struct {
	t       *testing.T
	dir     string // short temporary directory
	engine  *session.Engine
	res     *resolver
	sockets *csi.EngineSockets
	srv     *csi.Server
	logs    *logBuf
	node    csispec.NodeClient
	ident   csispec.IdentityClient
	regs    chan error // OnRegistration outcomes

	reapMu sync.Mutex
	reaps  []reapCall
}

func shortDir(t *testing.T) string {
	t.Helper()
	// t.TempDir names can exceed what a sockaddr_un holds
	dir, err := os.MkdirTemp("", "hscsi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func newEngine(t *testing.T, dir string, logs *logBuf) *session.Engine {
	t.Helper()
	lg := slog.New(slog.NewTextHandler(logs, nil))
	e, err := session.New(session.Config{RunDir: filepath.Join(dir, "run"), Logf: func(f string, a ...any) { lg.Info("engine", "msg", strings.TrimSpace(fmt.Sprintf(f, a...))) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	if err := os.MkdirAll(filepath.Join(dir, "run"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []session.NamespaceConfig{webNS, batchNS} {
		if _, err := e.AddNamespace(ns); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func newEnv(t *testing.T) *env {
	t.Helper()
	t.Setenv(client.EnvNamespace, "")
	t.Setenv(client.EnvSocket, "")
	ev := &env{t: t, dir: shortDir(t), logs: &logBuf{}, regs: make(chan error, 4),
		res: &resolver{sel: map[string][]string{webPod.UID: {webNS.Key()}, batchPod.UID: {batchNS.Key()}}}}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", ev.logs)
		}
	})
	ev.engine = newEngine(t, ev.dir, ev.logs)
	log := slog.New(slog.NewTextHandler(ev.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var err error
	ev.sockets, err = csi.NewEngineSockets(csi.EngineSocketsOptions{
		Engine: ev.engine, Resolve: ev.res.resolve, Log: log,
		ReapApps: func(s *session.AttachSocket, reason string) error {
			ev.reapMu.Lock()
			ev.reaps = append(ev.reaps, reapCall{s.Path(), reason})
			ev.reapMu.Unlock()
			return s.CloseAndReap(reason) // what the default does
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ev.sockets.Close() })
	ev.srv, err = csi.NewServer(csi.Options{
		NodeName:       "node-a",
		Pods:           ev.sockets,
		Version:        "v0.test",
		CSISocket:      filepath.Join(ev.dir, "plugins", csi.DriverName, "csi.sock"),
		RegistryDir:    filepath.Join(ev.dir, "plugins_registry"),
		Log:            log,
		OnRegistration: func(err error) { ev.regs <- err },
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := ev.srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ev.srv.Stop)
	conn := dial(t, ev.srv.CSISocket())
	ev.node = csispec.NewNodeClient(conn)
	ev.ident = csispec.NewIdentityClient(conn)
	return ev
}

func dial(t *testing.T, path string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// target is where kubelet would publish a volume of the pod.
func (ev *env) target(pod csi.PodRef, vol string) string {
	return filepath.Join(ev.dir, "pods", pod.UID[:8], vol, "mount")
}

// publishReq is the request kubelet sends for an inline ephemeral volume.
func publishReq(pod csi.PodRef, target string) *csispec.NodePublishVolumeRequest {
	return &csispec.NodePublishVolumeRequest{
		VolumeId:   "csi-" + pod.UID,
		TargetPath: target,
		VolumeCapability: &csispec.VolumeCapability{
			AccessType: &csispec.VolumeCapability_Mount{Mount: &csispec.VolumeCapability_MountVolume{}},
			AccessMode: &csispec.VolumeCapability_AccessMode{Mode: csispec.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		},
		VolumeContext: map[string]string{
			"csi.storage.k8s.io/ephemeral":           "true",
			"csi.storage.k8s.io/pod.name":            pod.Name,
			"csi.storage.k8s.io/pod.namespace":       pod.Namespace,
			"csi.storage.k8s.io/pod.uid":             pod.UID,
			"csi.storage.k8s.io/serviceAccount.name": "default",
		},
	}
}

func (ev *env) publish(pod csi.PodRef, target string) string {
	ev.t.Helper()
	if _, err := ev.node.NodePublishVolume(ctxT(ev.t), publishReq(pod, target)); err != nil {
		ev.t.Fatalf("NodePublishVolume %s: %v", pod, err)
	}
	return filepath.Join(target, csi.SocketName)
}

func (ev *env) unpublish(pod csi.PodRef, target string) {
	ev.t.Helper()
	if _, err := ev.node.NodeUnpublishVolume(ctxT(ev.t), &csispec.NodeUnpublishVolumeRequest{VolumeId: "csi-" + pod.UID, TargetPath: target}); err != nil {
		ev.t.Fatalf("NodeUnpublishVolume %s: %v", target, err)
	}
}

func (ev *env) reapCalls() int {
	ev.reapMu.Lock()
	defer ev.reapMu.Unlock()
	return len(ev.reaps)
}

func (ev *env) apps(ns session.NamespaceConfig) int {
	st, ok := ev.engine.NamespaceStats(ns.Key())
	if !ok {
		ev.t.Fatalf("no app namespace %s", ns.Key())
	}
	return st.Apps
}

// wantCode checks err is a gRPC status with code c whose message holds every
// one of frags.
func wantCode(t *testing.T, err error, c codes.Code, frags ...string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != c {
		t.Fatalf("got %v, want code %v", err, c)
	}
	for _, f := range frags {
		if !strings.Contains(st.Message(), f) {
			t.Errorf("message %q lacks %q", st.Message(), f)
		}
	}
}

func attach(t *testing.T, sock, name, ns string) (*client.App, error) {
	t.Helper()
	app, err := client.Attach(ctxT(t), client.Options{Socket: sock, Name: name, Namespace: ns})
	if err == nil {
		t.Cleanup(func() { app.Close() })
	}
	return app, err
}

func isSocket(path string) bool {
	fi, err := os.Lstat(path)
	return err == nil && fi.Mode()&os.ModeSocket != 0
}
