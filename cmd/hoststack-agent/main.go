// Command hoststack-agent runs the hoststack session engine on a node.
//
// Kubernetes mode (the default) runs as a DaemonSet pod on node --node-name
// ($NODE_NAME): it watches AppNamespaces and SessionRules, its Node and the
// pods of its node, serves the AppNamespaces that select the node, reports
// them in the SessionNode named after the node, serves per-pod attach
// sockets through the CSI driver csi.hoststack.dev and the CNI socket, and
// exports metrics and probes. SIGTERM tells the attached apps, marks the
// SessionNode Stopped and exits 0.
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
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/client/config"

	"github.com/hoststack/hoststack/agent/cni"
	"github.com/hoststack/hoststack/agent/csi"
	"github.com/hoststack/hoststack/agent/kube"
	"github.com/hoststack/hoststack/agent/standalone"
	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/engine/transport/kernel"
	"github.com/hoststack/hoststack/internal/version"
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
	kubeconfig := fs.String("kubeconfig", "", "Kubernetes mode: kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config)")
	// 7464/7465: the agent uses the host's network, so its ports must not
	// take a common exporter's (9100-9999 is the exporters' allocated
	// range, 10248-10259 Kubernetes' own, 7472/7473 MetalLB's).
	metricsAddr := fs.String("metrics-bind-address", ":7464", "Kubernetes mode: address of /metrics (\"0\" disables)")
	metricsSecure := fs.Bool("metrics-secure", true, "Kubernetes mode: serve /metrics over HTTPS to callers the API server authenticates and authorizes (get on /metrics), as the manager does; false: plain HTTP to anyone")
	probeAddr := fs.String("health-probe-bind-address", ":7465", "Kubernetes mode: address of /healthz and /readyz (\"0\" disables)")
	statusInterval := fs.Duration("status-interval", 10*time.Second, "Kubernetes mode: how often the SessionNode status is recomputed; it is written only when it changed")
	leaseDuration := fs.Duration("lease-duration", kube.DefaultLeaseDuration, "Kubernetes mode: duration of the node Lease the agent renews every quarter of it; the manager stops counting the node when it expires")
	agentNamespace := fs.String("agent-namespace", "", "Kubernetes mode: the agents' namespace, where the node Lease is renewed and the manager publishes the Secret material agents read (default --pod-namespace, else "+kube.DefaultAgentNamespace+")")
	csiEnable := fs.Bool("csi", true, "Kubernetes mode: serve the CSI node plugin csi.hoststack.dev (per-pod attach sockets)")
	csiSocket := fs.String("csi-socket", csi.DefaultCSISocket, "Kubernetes mode: CSI socket path")
	csiRegistry := fs.String("csi-registry-dir", csi.DefaultRegistryDir, "Kubernetes mode: kubelet plugin registry directory")
	csiEndpoint := fs.String("csi-kubelet-endpoint", "", "Kubernetes mode: the CSI socket path as kubelet sees it (default --csi-socket)")
	hostPathDir := fs.String("hostpath-sockets-dir", "", "Kubernetes mode: also serve per-pod sockets at DIR/<namespace>/<pod>/session.sock (fallback without CSI; empty disables)")
	cniEnable := fs.Bool("cni", true, "Kubernetes mode: serve the socket the hoststack-cni plugin talks to")
	cniSocket := fs.String("cni-socket", cni.DefaultSocket, "Kubernetes mode: CNI socket path")
	cniState := fs.String("cni-state-dir", "/var/lib/hoststack/cni", "Kubernetes mode: directory of the CNI attachment registry")
	cniPending := fs.String("cni-pending-dir", cni.DefaultPendingDir, "Kubernetes mode: directory where the plugin queues DELs it could not deliver")
	cniInstall := fs.Bool("cni-install", false, "Kubernetes mode: install the hoststack-cni binary and chain it into the node's CNI config at start")
	cniUninstall := fs.String("cni-uninstall", string(kube.CNIUninstallWhenRemoved), "Kubernetes mode: when to remove the chain entry and the plugin binary at exit: never, on-exit, or when-removed (only when the agent's DaemonSet is gone or being deleted; needs --pod-name and --pod-namespace)")
	podName := fs.String("pod-name", os.Getenv("POD_NAME"), "Kubernetes mode: the agent's own pod (default $POD_NAME)")
	podNamespace := fs.String("pod-namespace", os.Getenv("POD_NAMESPACE"), "Kubernetes mode: the agent's own pod's namespace (default $POD_NAMESPACE)")
	cniBinary := fs.String("cni-binary", "/opt/hoststack/bin/hoststack-cni", "Kubernetes mode: the hoststack-cni binary --cni-install copies")
	cniBinDir := fs.String("cni-bin-dir", "/opt/cni/bin", "Kubernetes mode: the node's CNI binary directory")
	cniConfDir := fs.String("cni-conf-dir", "/etc/cni/net.d", "Kubernetes mode: the node's CNI configuration directory")
	transport := fs.String("transport", kube.TransportKernel, "how sessions reach the outside world: kernel (kernel sockets in each pod's network namespace, learned from the CNI plugin; the agent's own namespace in standalone mode) or none (cut-through between apps only)")
	interfaceNetns := fs.String("interface-netns", "", "Kubernetes mode: network namespace file holding the interfaces Interface-mode AppNamespaces name (default: the agent's own)")
	anp := fs.Bool("admin-network-policy", false, "Kubernetes mode: also enforce AdminNetworkPolicies and the BaselineAdminNetworkPolicy (policy.networking.k8s.io/v1alpha1, alpha; their CRDs must be installed) on cut-through sessions")
	connectTimeout := fs.Duration("connect-timeout", kernel.DefaultConnectTimeout, "kernel transport: how long a TCP handshake to the outside world may take")
	nodeMaxApps := fs.Int("node-max-apps", session.DefaultNodeMaxApps, "the engine's cap on attached apps, all AppNamespaces together")
	nodeMaxWorkers := fs.Int("node-max-workers", session.DefaultNodeMaxWorkers, "the engine's cap on app workers, all apps together")
	engineShards := fs.Int("engine-shards", 0, "engine shards: threads that serve the request queues of all app workers together (0: one per CPU the Go runtime uses, GOMAXPROCS)")
	nodeMaxThreads := fs.Int("node-max-engine-threads", session.DefaultNodeMaxThreads, "no app worker is added while the agent has this many OS threads (Go aborts at 10000)")
	maxPending := fs.Int("max-pending-attaches", session.DefaultMaxPendingAttaches, "connections per attach socket that may wait to complete their attach; more are refused")
	attachTimeout := fs.Duration("attach-timeout", session.DefaultAttachTimeout, "how long a connection to an attach socket may take to send its attach")
	socketMode := fs.String("socket-mode", "0660", "standalone: permission bits of the attach sockets (octal)")
	socketGroup := fs.String("socket-group", "", "standalone: group (name or id) of the attach sockets; empty: the agent's")
	privPorts := fs.String("privileged-ports", "", "standalone: comma-separated AppNamespaces (namespace/name, or * for all) whose apps may listen on ports below 1024")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	printVersion := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if *printVersion {
		fmt.Println(version.Version)
		return 0
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

	switch m := kube.CNIUninstallMode(*cniUninstall); m {
	case kube.CNIUninstallNever, kube.CNIUninstallOnExit, kube.CNIUninstallWhenRemoved:
	default:
		fmt.Fprintf(os.Stderr, "hoststack-agent: --cni-uninstall must be never, on-exit or when-removed, not %q\n", m)
		return 2
	}

	if *transport != kube.TransportKernel && *transport != kube.TransportNone {
		fmt.Fprintf(os.Stderr, "hoststack-agent: --transport must be %s or %s, not %q\n", kube.TransportKernel, kube.TransportNone, *transport)
		return 2
	}

	limits := session.Limits{MaxApps: *nodeMaxApps, MaxWorkers: *nodeMaxWorkers, MaxThreads: *nodeMaxThreads,
		MaxPendingAttaches: *maxPending, AttachTimeout: *attachTimeout, Shards: *engineShards}
	if *engineShards < 0 {
		fmt.Fprintln(os.Stderr, "hoststack-agent: --engine-shards must not be negative")
		return 2
	}
	if limits.MaxApps <= 0 || limits.MaxWorkers <= 0 || limits.MaxThreads <= 0 || limits.MaxPendingAttaches <= 0 || limits.AttachTimeout <= 0 {
		fmt.Fprintln(os.Stderr, "hoststack-agent: --node-max-apps, --node-max-workers, --node-max-engine-threads, --max-pending-attaches and --attach-timeout must be positive")
		return 2
	}
	mode, err := strconv.ParseUint(*socketMode, 8, 32)
	if err != nil || mode == 0 || mode > 0o777 {
		fmt.Fprintf(os.Stderr, "hoststack-agent: --socket-mode must be octal permission bits such as 0660, not %q\n", *socketMode)
		return 2
	}
	var socketGID *int
	if *socketGroup != "" {
		gid, err := lookupGroup(*socketGroup)
		if err != nil {
			fmt.Fprintf(os.Stderr, "hoststack-agent: --socket-group: %v\n", err)
			return 2
		}
		socketGID = &gid
	}
	var privileged []string
	for _, k := range strings.Split(*privPorts, ",") {
		if k = strings.TrimSpace(k); k != "" {
			if k != "*" && strings.Count(k, "/") != 1 {
				fmt.Fprintf(os.Stderr, "hoststack-agent: --privileged-ports: %q is not namespace/name or *\n", k)
				return 2
			}
			privileged = append(privileged, k)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if !*standaloneMode {
		if *nodeName == "" {
			fmt.Fprintln(os.Stderr, "hoststack-agent: Kubernetes mode needs --node-name or $NODE_NAME (or run with --standalone)")
			return 2
		}
		cfg, err := restConfig(*kubeconfig)
		if err != nil {
			fmt.Fprintf(os.Stderr, "hoststack-agent: Kubernetes client configuration: %v\n", err)
			return 1
		}
		err = kube.Run(ctx, kube.Options{
			NodeName: *nodeName, Config: cfg, Log: log, Version: version.Version,
			MetricsAddr: *metricsAddr, MetricsInsecure: !*metricsSecure, ProbeAddr: *probeAddr, StatusInterval: *statusInterval,
			LeaseDuration: *leaseDuration, AgentNamespace: *agentNamespace,
			CSI: *csiEnable, CSISocket: *csiSocket, CSIRegistryDir: *csiRegistry, CSIKubeletEndpoint: *csiEndpoint,
			HostPathDir: *hostPathDir, PodName: *podName, PodNamespace: *podNamespace,
			CNI: *cniEnable, CNISocket: *cniSocket, CNIStateDir: *cniState, CNIPendingDir: *cniPending,
			CNIInstall: *cniInstall, CNIUninstall: kube.CNIUninstallMode(*cniUninstall), CNIBinary: *cniBinary, CNIBinDir: *cniBinDir, CNIConfDir: *cniConfDir,
			Transport: *transport, ConnectTimeout: *connectTimeout, InterfaceNetns: *interfaceNetns,
			Limits: limits, AdminSocket: standalone.AdminSocketPath(*runDir), AdminNetworkPolicy: *anp,
		})
		if err != nil {
			fmt.Fprintf(os.Stderr, "hoststack-agent: %v\n", err)
			return 1
		}
		return 0
	}
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

	var tr session.Transport
	if *transport == kube.TransportKernel {
		// standalone apps are the node's own: sockets in the agent's namespace
		tr = kernel.New(kernel.Options{ConnectTimeout: *connectTimeout,
			Logf: func(f string, args ...any) { log.Info(fmt.Sprintf(f, args...), "component", "kernel-transport") }})
	}
	err = standalone.Run(ctx, standalone.Options{
		Limits:          limits,
		SocketMode:      os.FileMode(mode),
		SocketGID:       socketGID,
		PrivilegedPorts: privileged,
		Transport:       tr,
		ConfigDir:       *configDir,
		RunDir:          *runDir,
		Log:             log,
		Reload:          reload,
		Watch:           *watch,
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

// lookupGroup resolves a group name or numeric id.
func lookupGroup(g string) (int, error) {
	if id, err := strconv.Atoi(g); err == nil && id >= 0 {
		return id, nil
	}
	grp, err := user.LookupGroup(g)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(grp.Gid)
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	return ctrlconfig.GetConfig()
}

// rulesCmd prints the compiled session rules of a running agent (and, in
// Kubernetes mode, its compiled NetworkPolicy entries).
func rulesCmd(args []string) int {
	fs := flag.NewFlagSet("hoststack-agent rules", flag.ContinueOnError)
	runDir := fs.String("run-dir", "/run/hoststack", "run directory of the agent to ask")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
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
