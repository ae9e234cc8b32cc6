package standalone

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/hoststack/hoststack/agent/apply"
	"github.com/hoststack/hoststack/agent/render"
	hsschema "github.com/hoststack/hoststack/api/schema"
	"github.com/hoststack/hoststack/engine/session"
)

// Options configures Run.
type Options struct {
	ConfigDir string // YAML objects
	RunDir    string // attach sockets: <run-dir>/<namespace>/<name>/session.sock
	Log       *slog.Logger
	// Reload delivers a value whenever the configuration should be read
	// again (SIGHUP, file change). May be nil.
	Reload <-chan struct{}
	// Ready, if set, is called once the initial configuration is served,
	// with the socket path of every app namespace.
	Ready func(sockets map[string]string)
}

// SocketPath is where standalone mode serves an app namespace's attach socket.
func SocketPath(runDir string, cfg session.NamespaceConfig) string {
	return filepath.Join(runDir, cfg.Namespace, cfg.Name, "session.sock")
}

// Run serves the configuration until ctx ends, then tells every app, removes
// the sockets and returns nil. An invalid initial configuration is an error
// before anything starts; an invalid reload is logged and the running
// configuration kept.
func Run(ctx context.Context, o Options) error {
	log := o.Log
	if log == nil {
		log = slog.Default()
	}
	if o.ConfigDir == "" || o.RunDir == "" {
		return errors.New("standalone mode needs --config and --run-dir")
	}
	v, err := hsschema.New()
	if err != nil {
		return fmt.Errorf("compiling CRD schemas: %w", err)
	}
	out, err := load(ctx, v, o.ConfigDir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.RunDir, 0o755); err != nil {
		return fmt.Errorf("creating run directory: %w", err)
	}
	eng, err := session.New(session.Config{Logf: func(f string, a ...any) { log.Info(fmt.Sprintf(f, a...)) }})
	if err != nil {
		return fmt.Errorf("starting engine: %w", err)
	}
	ap := apply.New(eng, func(cfg session.NamespaceConfig) string { return SocketPath(o.RunDir, cfg) })
	shutdown := func() error {
		errA := ap.Close()
		errE := eng.Close()
		return errors.Join(errA, errE)
	}
	if _, err := ap.Apply(out.Namespaces); err != nil {
		// Nothing half-started: undo what did start.
		return errors.Join(fmt.Errorf("applying configuration: %w", err), shutdown())
	}
	sockets := map[string]string{}
	for key := range ap.Applied() {
		sockets[key] = ap.SocketOf(key)
		log.Info("serving app namespace", "appNamespace", key, "socket", ap.SocketOf(key))
	}
	if o.Ready != nil {
		o.Ready(sockets)
	}

	for {
		select {
		case <-ctx.Done():
			log.Info("stopping: telling apps and removing sockets")
			return shutdown()
		case <-o.Reload:
			next, err := load(ctx, v, o.ConfigDir)
			if err != nil {
				log.Error("reload refused; keeping the running configuration", "err", err)
				continue
			}
			changes, err := ap.Apply(next.Namespaces)
			for _, c := range changes {
				log.Info("reloaded", "op", c.Op, "appNamespace", c.Key)
			}
			if err != nil {
				log.Error("reload partly failed", "err", err)
			}
		}
	}
}

// load reads and renders the directory; problems that only rendering finds
// (a missing secret, say) are errors too.
func load(ctx context.Context, v *hsschema.Validator, dir string) (render.Output, error) {
	in, err := Load(ctx, v, dir)
	if err != nil {
		return render.Output{}, err
	}
	out := render.Render(in)
	if len(out.Problems) > 0 {
		var lines []string
		for _, p := range out.Problems {
			lines = append(lines, p.String())
		}
		return render.Output{}, &hsschema.InvalidError{Problems: lines}
	}
	return out, nil
}
