package cni

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsnotify/fsnotify"
)

// ChainState is whether the plugin is chained into the node's CNI
// configuration, and why not.
type ChainState struct {
	Chained bool
	Reason  string // ReasonChained or a NotChainedError reason
	Message string
	File    string // the primary configuration file, when there is one
}

// Keeper keeps the plugin installed and chained: at start, whenever a file
// of the CNI configuration directory or our binary changes (a primary CNI
// such as Calico or Cilium rewrites its conflist at every restart, without
// our entry), and every Resync in case a change went unseen. A failure is
// a state, never the end of Run: the node may get its CNI configuration
// later, and the agent's other servers work without the chain.
type Keeper struct {
	Installer Installer
	// Binary is the plugin binary to install into BinDir; ConfDir is the
	// runtime's CNI configuration directory.
	Binary, BinDir, ConfDir string
	// Resync is how often the chain is checked without a change seen
	// (default 30s).
	Resync time.Duration
	// Settle is how long the directory must be quiet after a change
	// before the chain is checked (default 100ms): installers write a
	// temporary file and rename it.
	Settle time.Duration
	// OnChange is called with the first state and then with every change,
	// from Run's goroutine.
	OnChange func(ChainState)
	Log      *slog.Logger
}

// Run keeps the chain until ctx ends; it returns nil then.
func (k *Keeper) Run(ctx context.Context) error {
	log := k.Log
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "cni-chain")
	resync, settle := k.Resync, k.Settle
	if resync <= 0 {
		resync = 30 * time.Second
	}
	if settle <= 0 {
		settle = 100 * time.Millisecond
	}

	// The runtime creates the directory only when its CNI writes a file;
	// watching needs it now.
	for _, d := range []string{k.ConfDir, k.BinDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			log.Warn("cannot create CNI directory; checking it every resync", "dir", d, "err", err)
		}
	}
	events := make(<-chan fsnotify.Event)
	errs := make(<-chan error)
	watch := func() {}
	if w, err := fsnotify.NewWatcher(); err != nil {
		log.Warn("cannot watch the CNI directories; checking them every resync", "err", err)
	} else {
		defer w.Close()
		watching := map[string]bool{}
		// Again at every resync: a directory removed and created anew
		// is a new inode to watch.
		watch = func() {
			for _, d := range []string{k.ConfDir, k.BinDir} {
				err := w.Add(d)
				if was, seen := watching[d]; err != nil && (was || !seen) {
					log.Warn("cannot watch CNI directory; checking it every resync", "dir", d, "err", err)
				}
				watching[d] = err == nil
			}
		}
		watch()
		events, errs = w.Events, w.Errors
	}

	var last ChainState
	first := true
	check := func() {
		st := k.check()
		if !first && st == last {
			return
		}
		first, last = false, st
		if st.Chained {
			log.Info("CNI plugin chained", "file", st.File)
		} else {
			log.Warn("CNI plugin not chained", "reason", st.Reason, "detail", st.Message)
		}
		if k.OnChange != nil {
			k.OnChange(st)
		}
	}
	check()

	tick := time.NewTicker(resync)
	defer tick.Stop()
	quiet := time.NewTimer(settle)
	quiet.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			watch()
			check()
		case <-quiet.C:
			check()
		case err := <-errs:
			log.Warn("watching the CNI directories", "err", err)
		case ev := <-events:
			if k.relevant(ev) {
				quiet.Reset(settle)
			}
		}
	}
}

// relevant reports whether ev may change the chain: a configuration file
// of ConfDir, or our binary.
func (k *Keeper) relevant(ev fsnotify.Event) bool {
	dir, name := filepath.Split(ev.Name)
	dir = filepath.Clean(dir)
	if dir == filepath.Clean(k.BinDir) {
		return name == PluginType
	}
	if strings.HasPrefix(name, ".") {
		return false // a temporary file; its rename comes as its own event
	}
	for _, ext := range confExtensions {
		if filepath.Ext(name) == ext {
			return true
		}
	}
	return false
}

func (k *Keeper) check() ChainState {
	file, err := k.Installer.Install(k.Binary, k.BinDir, k.ConfDir)
	if err == nil {
		return ChainState{Chained: true, Reason: ReasonChained, Message: "chained into " + file, File: file}
	}
	var nc *NotChainedError
	if errors.As(err, &nc) {
		return ChainState{Reason: nc.Reason, Message: nc.Msg, File: nc.File}
	}
	return ChainState{Reason: ReasonInstallFailed, Message: err.Error(), File: file}
}
