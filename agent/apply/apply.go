// Package apply drives a session engine towards a rendered desired state as
// a diff: app namespaces that appear are added, changed ones updated in place
// (attached apps keep their sessions), vanished ones removed (their apps are
// told). The Kubernetes agent and the standalone agent both use it.
package apply

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hoststack/hoststack/engine/session"
)

// SocketPath says where an app namespace's own attach socket lives, or ""
// for none (Kubernetes mode serves per-pod sockets instead).
type SocketPath func(cfg session.NamespaceConfig) string

// Applier remembers what it applied so each call is a diff. Not safe for
// concurrent use: one reconcile loop owns it.
type Applier struct {
	engine  *session.Engine
	socket  SocketPath
	applied map[string]session.NamespaceConfig
	sockets map[string]*session.AttachSocket
}

// New returns an Applier for engine; socket may be nil.
func New(engine *session.Engine, socket SocketPath) *Applier {
	return &Applier{engine: engine, socket: socket,
		applied: map[string]session.NamespaceConfig{}, sockets: map[string]*session.AttachSocket{}}
}

// Change is one step Apply took, for logs.
type Change struct {
	Op  string // "add", "update", "remove"
	Key string
}

// Apply makes the engine serve exactly desired. It keeps going past a failed
// namespace so one bad object never blocks the others, and returns every
// error joined.
func (a *Applier) Apply(desired []session.NamespaceConfig) ([]Change, error) {
	var changes []Change
	var errs []error
	want := make(map[string]bool, len(desired))
	for _, cfg := range desired {
		key := cfg.Key()
		want[key] = true
		old, ok := a.applied[key]
		switch {
		case !ok:
			if err := a.add(cfg); err != nil {
				errs = append(errs, fmt.Errorf("adding app namespace %s: %w", key, err))
				continue
			}
			changes = append(changes, Change{"add", key})
		case old != cfg:
			if err := a.engine.UpdateNamespace(cfg); err != nil {
				errs = append(errs, fmt.Errorf("updating app namespace %s: %w", key, err))
				continue
			}
			a.applied[key] = cfg
			changes = append(changes, Change{"update", key})
		}
	}
	for key := range a.applied {
		if want[key] {
			continue
		}
		if err := a.remove(key); err != nil {
			errs = append(errs, fmt.Errorf("removing app namespace %s: %w", key, err))
			continue
		}
		changes = append(changes, Change{"remove", key})
	}
	return changes, errors.Join(errs...)
}

// Applied returns the keys currently applied.
func (a *Applier) Applied() map[string]session.NamespaceConfig { return a.applied }

// SocketOf returns the attach socket path of an applied namespace, or "".
func (a *Applier) SocketOf(key string) string {
	if s := a.sockets[key]; s != nil {
		return s.Path()
	}
	return ""
}

func (a *Applier) add(cfg session.NamespaceConfig) error {
	if _, err := a.engine.AddNamespace(cfg); err != nil {
		return err
	}
	if a.socket != nil {
		if p := a.socket(cfg); p != "" {
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				_ = a.engine.RemoveNamespace(cfg.Key())
				return fmt.Errorf("socket directory: %w", err)
			}
			s, err := a.engine.ServeAttach(p, cfg.Key())
			if err != nil {
				_ = a.engine.RemoveNamespace(cfg.Key())
				return err
			}
			a.sockets[cfg.Key()] = s
		}
	}
	a.applied[cfg.Key()] = cfg
	return nil
}

func (a *Applier) remove(key string) error {
	if s := a.sockets[key]; s != nil {
		// Stop new attaches first, then tell and reap the attached apps.
		_ = s.Close()
		delete(a.sockets, key)
	}
	err := a.engine.RemoveNamespace(key)
	delete(a.applied, key)
	return err
}
