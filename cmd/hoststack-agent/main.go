// Command hoststack-agent runs the hoststack session engine on a node.
//
// Standalone mode (no Kubernetes) serves the app namespaces described by the
// YAML files of a directory:
//
//	hoststack-agent --standalone --config ./config/samples/standalone --run-dir /run/hoststack
//
// and apps attach at <run-dir>/<namespace>/<name>/session.sock. A change to
// a file of the directory, or SIGHUP, reloads it; SIGTERM or SIGINT tells the
// apps, removes the sockets and exits 0.
//
//	hoststack-agent rules --run-dir /run/hoststack
//
// prints the session rules the running engine enforces.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hoststack/hoststack/agent/standalone"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) > 0 && args[0] == "rules" {
		return rulesCmd(args[1:])
	}
	fs := flag.NewFlagSet("hoststack-agent", flag.ContinueOnError)
	standaloneMode := fs.Bool("standalone", false, "run without Kubernetes, from the YAML files in --config")
	configDir := fs.String("config", "", "standalone: directory of AppNamespace (and Secret) YAML files")
	runDir := fs.String("run-dir", "/run/hoststack", "directory for attach sockets and the admin socket")
	watch := fs.Bool("watch-config", true, "standalone: reload when a file of --config changes (SIGHUP always reloads)")
	nodeName := fs.String("node-name", os.Getenv("NODE_NAME"), "Kubernetes mode: this node's name (default $NODE_NAME)")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return 2
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "hoststack-agent: --log-level: %v\n", err)
		return 2
	}
	hopts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch *logFormat {
	case "text":
		h = slog.NewTextHandler(os.Stderr, hopts)
	case "json":
		h = slog.NewJSONHandler(os.Stderr, hopts)
	default:
		fmt.Fprintf(os.Stderr, "hoststack-agent: --log-format must be text or json, not %q\n", *logFormat)
		return 2
	}
	log := slog.New(h)

	if !*standaloneMode {
		_ = nodeName
		fmt.Fprintln(os.Stderr, "hoststack-agent: Kubernetes mode is not available in this build yet; run with --standalone --config DIR --run-dir DIR")
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	reload := make(chan struct{}, 1)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			select {
			case reload <- struct{}{}:
			default: // a reload is already pending
			}
		}
	}()

	err := standalone.Run(ctx, standalone.Options{
		ConfigDir: *configDir,
		RunDir:    *runDir,
		Log:       log,
		Reload:    reload,
		Watch:     *watch,
		Ready: func(sockets map[string]string) {
			log.Info("ready", "appNamespaces", len(sockets))
		},
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "hoststack-agent: %v\n", err)
		return 1
	}
	return 0
}

// rulesCmd prints the compiled session rules of a running standalone agent.
func rulesCmd(args []string) int {
	fs := flag.NewFlagSet("hoststack-agent rules", flag.ContinueOnError)
	runDir := fs.String("run-dir", "/run/hoststack", "run directory of the agent to ask")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := standalone.DumpRules(ctx, *runDir, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "hoststack-agent rules: %v\n", err)
		return 1
	}
	return 0
}
