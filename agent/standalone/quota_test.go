package standalone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hoststack/hoststack/engine/transport/kernel"
)

// defaultsNSYAML is an AppNamespace with every size and quota at the CRD's
// defaults (segmentSize 1Gi, FIFOs 4Mi, maxSegmentsPerApp 32,
// maxSessionsPerApp 512).
const defaultsNSYAML = `apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: web}
spec:
  podSelector: {}
`

func runWith(t *testing.T, o Options, files map[string]string) string {
	t.Helper()
	cfg := t.TempDir()
	writeConfig(t, cfg, files)
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan map[string]string, 1)
	done := make(chan error, 1)
	logs := &lockedBuffer{}
	o.ConfigDir, o.RunDir, o.Log = cfg, filepath.Join(t.TempDir(), "run"), slog.New(slog.NewTextHandler(logs, nil))
	o.Ready = func(s map[string]string) { ready <- s }
	go func() { done <- Run(ctx, o) }()
	var socket string
	select {
	case s := <-ready:
		socket = s["default/web"]
	case err := <-done:
		t.Fatalf("agent exited: %v\n%s", err, logs)
	case <-time.After(30 * time.Second):
		t.Fatal("agent not ready")
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	return socket
}

// TestHTTPServerManyClientsCRDDefaults: an HTTP server (net/http over
// client.Listen) behind the kernel transport holds 96 concurrent
// connections from outside with the CRD's defaults. Before transport
// segments were added on demand, the 32nd connection was refused ("no room
// for a fifo pair … in app srv's segment").
func TestHTTPServerManyClientsCRDDefaults(t *testing.T) {
	const clients = 96
	socket := runWith(t, Options{Transport: kernel.New(kernel.Options{})}, map[string]string{"ns.yaml": defaultsNSYAML})
	app := attach(t, socket, "srv")
	ln, err := app.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Every handler waits until all clients are in: the connections are
	// open at the same time.
	var arrived atomic.Int32
	all := make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if arrived.Add(1) == clients {
			close(all)
		}
		select {
		case <-all:
		case <-time.After(60 * time.Second):
			http.Error(w, "not every client arrived", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "hello %s", r.URL.Path)
	})}
	go srv.Serve(ln)
	defer srv.Close()

	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Timeout: 90 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			resp, err := c.Get(fmt.Sprintf("http://%s/%d", ln.Addr(), i))
			if err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != http.StatusOK || string(b) != fmt.Sprintf("hello /%d", i) {
				errs <- fmt.Errorf("client %d: %s %q %v", i, resp.Status, b, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestSocketAccessAndPrivilegedPorts: standalone attach sockets are 0660
// (not 0666) unless told otherwise, and only the app namespaces named in
// PrivilegedPorts may listen below 1024.
func TestSocketAccessAndPrivilegedPorts(t *testing.T) {
	socket := runWith(t, Options{}, map[string]string{"ns.yaml": nsYAML})
	fi, err := os.Stat(socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != DefaultSocketMode {
		t.Fatalf("socket mode %o, want %o", fi.Mode().Perm(), DefaultSocketMode)
	}
	app := attach(t, socket, "web")
	if _, err := app.Listen("tcp", "127.0.0.1:80"); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("port 80 without --privileged-ports: %v", err)
	}

	socket = runWith(t, Options{PrivilegedPorts: []string{"default/web"}, SocketMode: 0o600}, map[string]string{"ns.yaml": nsYAML})
	if fi, err := os.Stat(socket); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode: %v %v", fi.Mode(), err)
	}
	app = attach(t, socket, "web")
	ln, err := app.Listen("tcp", "127.0.0.1:80") // no transport: cut-through only, no kernel port
	if err != nil {
		t.Fatalf("port 80 with --privileged-ports default/web: %v", err)
	}
	ln.Close()
}
