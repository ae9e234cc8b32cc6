package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/hoststack/hoststack/agent/netpol"
	"github.com/hoststack/hoststack/engine/rules"
)

// serveAdmin serves the agent's local admin API on a unix socket (root
// only, 0600), as standalone mode does: GET /rules prints the session
// rules the engine enforces, then the compiled NetworkPolicy entries that
// judge cut-through sessions. `hoststack-agent rules` reads it. It returns
// a function that stops it.
func (a *Agent) serveAdmin(path string, log *slog.Logger) (func(), error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /rules", func(w http.ResponseWriter, _ *http.Request) {
		var buf bytes.Buffer
		if err := a.writeRules(&buf); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write(buf.Bytes())
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin socket stopped", "err", err)
		}
	}()
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
		_ = os.Remove(path)
	}, nil
}

func (a *Agent) writeRules(buf *bytes.Buffer) error {
	if err := rules.WriteTable(buf, a.table.Dump()); err != nil {
		return err
	}
	t := a.netpol.Table()
	if t == nil {
		buf.WriteString("\nNetworkPolicy (cut-through sessions): not loaded yet\n")
		return nil
	}
	np, isolated, entries := t.Counts()
	fmt.Fprintf(buf, "\nNetworkPolicy (cut-through sessions): %d policies, %d isolated pods, %d entries\n", np, isolated, entries)
	return netpol.WriteEntries(buf, t.Dump())
}
