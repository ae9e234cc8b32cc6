package standalone

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/hoststack/hoststack/agent/apply"
	"github.com/hoststack/hoststack/agent/render"
	attachapi "github.com/hoststack/hoststack/api/attach"
	hsschema "github.com/hoststack/hoststack/api/schema"
	"github.com/hoststack/hoststack/engine/rules"
	"github.com/hoststack/hoststack/engine/session"
	enginetls "github.com/hoststack/hoststack/engine/tls"
)

// Options configures Run.
type Options struct {
	ConfigDir string // YAML objects
	RunDir    string // attach sockets: <run-dir>/<namespace>/<name>/session.sock
	Log       *slog.Logger
	// Reload delivers a value whenever the configuration should be read
	// again (SIGHUP). May be nil.
	Reload <-chan struct{}
	// Watch reloads when a file of ConfigDir changes (inotify).
	Watch bool
	// Ready, if set, is called once the initial configuration is served,
	// with the socket path of every app namespace.
	Ready func(sockets map[string]string)
	// Reloaded, if set, is called after every reload attempt with its error.
	Reloaded func(error)
	// Transport carries the sessions of PodNetwork-mode app namespaces to
	// the outside world; nil: cut-through only. Interface-mode ones get a
	// userspace stack on their interface.
	Transport session.Transport
	// OpenStack opens Interface-mode stacks; nil: apply.OpenLink in the
	// process's own network namespace.
	OpenStack apply.OpenStack
	// Limits are the engine's node-wide caps (zero fields: defaults).
	Limits session.Limits
	// SocketMode is the attach sockets' permission bits (0: 0660) and
	// SocketGID, when set, their group: who may open a socket may attach.
	SocketMode os.FileMode
	SocketGID  *int
	// PrivilegedPorts lists the app namespaces ("namespace/name", or "*"
	// for all) whose apps may listen on ports below 1024. Standalone apps
	// are the node's own, so the node's administrator decides here, not
	// the AppNamespace (whose owner would grant it to itself).
	PrivilegedPorts []string
}

// DefaultSocketMode is the standalone attach sockets' mode: the agent's user
// and group.
const DefaultSocketMode os.FileMode = 0o660

// SocketPath is where standalone mode serves an app namespace's attach socket.
func SocketPath(runDir string, cfg session.NamespaceConfig) string {
	return filepath.Join(runDir, cfg.Namespace, cfg.Name, attachapi.SocketFile)
}

// AdminSocketPath is where standalone mode serves its admin API (rules dump).
func AdminSocketPath(runDir string) string { return filepath.Join(runDir, "admin.sock") }

// desired is a loaded, rendered and compiled configuration.
type desired struct {
	out       render.Output
	set       *rules.Set
	conflicts []rules.Conflict
	pairs     []tlsPair
}

// tlsPair is a CertKeyPair's material, checked when loaded.
type tlsPair struct {
	namespace, name string
	cert, key, ca   []byte
}

// applyTLS makes the store hold exactly pairs.
func applyTLS(store *enginetls.Store, pairs []tlsPair, loaded map[string]bool) error {
	keep := map[string]bool{}
	var errs []error
	for _, p := range pairs {
		id := p.namespace + "/" + p.name
		if err := store.Set(p.namespace, p.name, p.cert, p.key); err != nil {
			errs = append(errs, fmt.Errorf("CertKeyPair %s: %w", id, err))
			continue
		}
		if err := store.SetCA(p.namespace, p.name, p.ca); err != nil {
			errs = append(errs, fmt.Errorf("CertKeyPair %s: %w", id, err))
			continue
		}
		keep[id] = true
		loaded[id] = true
	}
	for id := range loaded {
		if !keep[id] {
			ns, name, _ := strings.Cut(id, "/")
			store.Remove(ns, name)
			delete(loaded, id)
		}
	}
	return errors.Join(errs...)
}

// Run serves the configuration until ctx ends, then tells every app, removes
// the sockets and returns nil. An invalid initial configuration is an error
// before anything starts; an invalid reload is logged and the running
// configuration kept. Rule changes apply to new sessions; open sessions are
// never cut by a reload.
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
	d, err := load(ctx, v, o.ConfigDir)
	if err != nil {
		return err
	}
	logConflicts(log, d.conflicts)
	var changes <-chan struct{}
	if o.Watch {
		w, err := watchDir(ctx, o.ConfigDir)
		if err != nil {
			return err
		}
		changes = w
	}
	if err := os.MkdirAll(o.RunDir, 0o755); err != nil {
		return fmt.Errorf("creating run directory: %w", err)
	}
	var table rules.Table
	table.Store(d.set)
	store, loadedPairs := &enginetls.Store{}, map[string]bool{}
	if err := applyTLS(store, d.pairs, loadedPairs); err != nil {
		return err
	}
	nets := apply.NewNetworks(o.Transport, o.OpenStack, func(f string, a ...any) { log.Info(fmt.Sprintf(f, a...)) })
	if errs := nets.Apply(d.out.Interfaces); len(errs) > 0 {
		return errors.Join(stackErrors(errs), nets.Close())
	}
	mode := o.SocketMode
	if mode == 0 {
		mode = DefaultSocketMode
	}
	priv := map[string]bool{}
	for _, k := range o.PrivilegedPorts {
		priv[strings.TrimSpace(k)] = true
	}
	eng, err := session.New(session.Config{
		Rules:       apply.RuleLookup{Table: &table},
		TLS:         store,
		Transport:   nets.Transport(),
		Logf:        func(f string, a ...any) { log.Info(fmt.Sprintf(f, a...)) },
		Limits:      o.Limits,
		NodeSockets: session.SocketConfig{Mode: mode, GID: o.SocketGID},
		PrivilegedPorts: func(key string) bool {
			return priv["*"] || priv[key]
		},
	})
	if err != nil {
		return errors.Join(fmt.Errorf("starting engine: %w", err), nets.Close())
	}
	ap := apply.New(eng, func(cfg session.NamespaceConfig) string { return SocketPath(o.RunDir, cfg) })
	admin, err := serveAdmin(AdminSocketPath(o.RunDir), &table, log)
	if err != nil {
		return errors.Join(err, eng.Close(), nets.Close())
	}
	// Closing the engine tells every app it is shutting down, reaps them and
	// removes the attach sockets.
	shutdown := func() error {
		return errors.Join(admin.Close(), eng.Close(), nets.Close())
	}
	if _, err := ap.Apply(d.out.Namespaces); err != nil {
		// Nothing half-started: undo what did start.
		return errors.Join(fmt.Errorf("applying configuration: %w", err), shutdown())
	}
	sockets := map[string]string{}
	for key := range ap.Applied() {
		sockets[key] = ap.SocketOf(key)
		log.Info("serving app namespace", "appNamespace", key, "socket", ap.SocketOf(key))
	}
	log.Info("session rules loaded", "rules", d.set.Len(), "conflicts", len(d.conflicts))
	if o.Ready != nil {
		o.Ready(sockets)
	}

	reload := func(why string) {
		next, err := load(ctx, v, o.ConfigDir)
		if err != nil {
			log.Error("reload refused; keeping the running configuration", "trigger", why, "err", err)
			if o.Reloaded != nil {
				o.Reloaded(err)
			}
			return
		}
		logConflicts(log, next.conflicts)
		// Rules first: a namespace added by this reload starts with its rules.
		table.Store(next.set)
		// A rotated certificate serves new handshakes; open sessions stay.
		if err := applyTLS(store, next.pairs, loadedPairs); err != nil {
			log.Error("CertKeyPairs partly refused; the previous material stays in service", "err", err)
		}
		if errs := nets.Apply(next.out.Interfaces); len(errs) > 0 {
			log.Error("userspace stacks not opened; their app namespaces have no transport", "err", stackErrors(errs))
		}
		changes, err := ap.Apply(next.out.Namespaces)
		for _, c := range changes {
			log.Info("reloaded", "op", c.Op, "appNamespace", c.Key)
		}
		log.Info("reloaded", "trigger", why, "rules", next.set.Len(), "conflicts", len(next.conflicts))
		if err != nil {
			log.Error("reload partly failed", "err", err)
		}
		if o.Reloaded != nil {
			o.Reloaded(err)
		}
	}
	for {
		select {
		case <-ctx.Done():
			log.Info("stopping: telling apps and removing sockets")
			return shutdown()
		case <-o.Reload:
			reload("SIGHUP")
		case <-changes:
			reload("file change")
		}
	}
}

func stackErrors(errs map[string]error) error {
	keys := make([]string, 0, len(errs))
	for k := range errs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []error
	for _, k := range keys {
		out = append(out, fmt.Errorf("AppNamespace %s: userspace stack: %w", k, errs[k]))
	}
	return errors.Join(out...)
}

func logConflicts(log *slog.Logger, cs []rules.Conflict) {
	for _, c := range cs {
		log.Warn("SessionRule not applied: same match as an older rule, which wins",
			"rule", c.Loser.Name, "olderRule", c.Winner.Name, "detail", c.String())
	}
}

// load reads, renders and compiles the directory; problems that only
// rendering or compiling finds (a missing secret, an unknown AppNamespace)
// are errors too.
func load(ctx context.Context, v *hsschema.Validator, dir string) (desired, error) {
	in, err := Load(ctx, v, dir)
	if err != nil {
		return desired{}, err
	}
	out := render.Render(in)
	if len(out.Problems) > 0 {
		var lines []string
		for _, p := range out.Problems {
			lines = append(lines, p.String())
		}
		return desired{}, &hsschema.InvalidError{Problems: lines}
	}
	set, conflicts, err := rules.Compile(out.Rules)
	if err != nil {
		return desired{}, fmt.Errorf("compiling session rules: %w", err)
	}
	pairs, err := tlsPairs(in)
	if err != nil {
		return desired{}, err
	}
	return desired{out: out, set: set, conflicts: conflicts, pairs: pairs}, nil
}

// tlsPairs resolves each CertKeyPair's Secret (kubernetes.io/tls: tls.crt,
// tls.key, optional ca.crt) from the directory.
func tlsPairs(in render.Input) ([]tlsPair, error) {
	var pairs []tlsPair
	var problems []string
	for _, ckp := range in.CertKeyPairs {
		ns := ckp.Namespace
		if ns == "" {
			ns = "default"
		}
		ref := ns + "/" + ckp.Spec.SecretRef.Name
		data, ok := in.SecretData[ref]
		if !ok {
			problems = append(problems, fmt.Sprintf("CertKeyPair %s/%s: spec.secretRef.name: Secret %s not found in the directory", ns, ckp.Name, ref))
			continue
		}
		cert, key, err := enginetls.SecretData(data)
		if err != nil {
			problems = append(problems, fmt.Sprintf("CertKeyPair %s/%s: Secret %s: %v", ns, ckp.Name, ref, err))
			continue
		}
		pairs = append(pairs, tlsPair{namespace: ns, name: ckp.Name, cert: cert, key: key, ca: data["ca.crt"]})
	}
	if len(problems) > 0 {
		return nil, &hsschema.InvalidError{Problems: problems}
	}
	return pairs, nil
}
