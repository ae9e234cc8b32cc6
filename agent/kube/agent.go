// Package kube is the node agent's Kubernetes mode: a controller-runtime
// manager whose cache holds only what one node needs (its own Node and
// Pods, the AppNamespaces and SessionRules, the Secret copies the manager
// publishes in the agent namespace), one reconcile loop that renders the
// desired engine state with agent/render, applies it with agent/apply and
// reports it in the node's SessionNode with server-side apply, Prometheus
// metrics per AppNamespace, the node Lease, probes, and the CSI and CNI
// servers.
//
// The reconciler is single-key (MetalLB speaker style): every watched change
// enqueues the same request, and a reconcile recomputes the whole node from
// the cache. The status holds state, not counters (those are metrics), and
// is written only when it changes: a heartbeat every StatusInterval
// recomputes it locally (engine limits can change with no object changing)
// and sends nothing when it is the same. Liveness is the Lease's job.
package kube

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	crmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"
	anpv1 "sigs.k8s.io/network-policy-api/apis/v1alpha1"

	"github.com/hoststack/hoststack/agent/apply"
	"github.com/hoststack/hoststack/agent/cni"
	"github.com/hoststack/hoststack/agent/csi"
	"github.com/hoststack/hoststack/agent/netpol"
	"github.com/hoststack/hoststack/agent/render"
	hsv1 "github.com/hoststack/hoststack/api/v1alpha1"
	"github.com/hoststack/hoststack/engine/rules"
	"github.com/hoststack/hoststack/engine/session"
	enginetls "github.com/hoststack/hoststack/engine/tls"
	"github.com/hoststack/hoststack/engine/transport/netstack"
	"github.com/hoststack/hoststack/internal/version"
)

// FieldOwner is the server-side apply field manager of the agent.
const FieldOwner = "hoststack-agent"

// Options configures Run.
type Options struct {
	NodeName string       // required
	Config   *rest.Config // required
	Log      *slog.Logger // nil: slog.Default()
	Version  string       // "": version.Version (stamped at build time)

	MetricsAddr string // "0" disables
	// MetricsInsecure serves /metrics over plain HTTP to anyone;
	// otherwise, as the manager does, over HTTPS to callers the API
	// server authenticates (TokenReview) and authorizes
	// (SubjectAccessReview: get on the non-resource URL /metrics).
	MetricsInsecure bool
	ProbeAddr       string // "0" disables
	// StatusInterval is how often the SessionNode status is recomputed
	// (engine limits change with no object changing); it is written only
	// when it changed; default 10s.
	StatusInterval time.Duration
	// LeaseDuration of the node Lease the agent renews (every quarter of
	// it); default DefaultLeaseDuration.
	LeaseDuration time.Duration
	// AgentNamespace holds the node Leases and the Secret copies the
	// manager publishes for the agents (default PodNamespace, else
	// DefaultAgentNamespace).
	AgentNamespace string

	// CSI node plugin (per-pod sockets through csi.hoststack.dev volumes).
	CSI                bool
	CSISocket          string
	CSIRegistryDir     string
	CSIKubeletEndpoint string
	// HostPathDir, when set, also serves per-pod sockets under
	// <dir>/<pod-namespace>/<pod-name>/session.sock for every pod of the
	// node selected by a served AppNamespace (fallback without CSI).
	HostPathDir string

	// CNI socket for the chained hoststack-cni plugin.
	CNI           bool
	CNISocket     string
	CNIStateDir   string
	CNIPendingDir string
	// CNIInstall copies CNIBinary into CNIBinDir and keeps the plugin
	// chained into the node's CNI config in CNIConfDir (cni.Keeper),
	// reporting the CNIChained condition; CNIUninstall says when the
	// agent removes the chain entry and the binary at exit.
	CNIInstall   bool
	CNIUninstall CNIUninstallMode
	CNIBinary    string
	CNIBinDir    string
	CNIConfDir   string
	// PodName and PodNamespace are the agent's own pod (downward API), for
	// CNIUninstallWhenRemoved to find its DaemonSet.
	PodName, PodNamespace string

	// Transport carries sessions to the outside world: TransportKernel
	// (kernel sockets in each pod's network namespace, learned from the
	// CNI plugin) or TransportNone (cut-through only).
	Transport      string
	ConnectTimeout time.Duration // kernel transport TCP handshakes; 0: its default
	// InterfaceNetns is the network namespace file holding the interfaces
	// Interface-mode AppNamespaces name ("" the agent's own, the node's
	// with hostNetwork).
	InterfaceNetns string

	// Limits are the engine's node-wide caps (zero fields: the engine's
	// defaults).
	Limits session.Limits

	// AdminNetworkPolicy also enforces AdminNetworkPolicies and the
	// BaselineAdminNetworkPolicy (policy.networking.k8s.io/v1alpha1, alpha:
	// their CRDs must be installed) on cut-through sessions.
	AdminNetworkPolicy bool

	// AdminSocket, when set, serves the rules dump (`hoststack-agent
	// rules`): session rules and compiled NetworkPolicy entries.
	AdminSocket string
}

// CNIUninstallMode says when the agent removes the chain entry and the
// plugin binary as it exits.
type CNIUninstallMode string

const (
	// CNIUninstallNever keeps them (another tool cleans up).
	CNIUninstallNever CNIUninstallMode = "never"
	// CNIUninstallOnExit removes them at every exit (development).
	CNIUninstallOnExit CNIUninstallMode = "on-exit"
	// CNIUninstallWhenRemoved removes them, and the CNI state, only when
	// the agent's DaemonSet is gone or being deleted: hoststack is being
	// uninstalled. Rolling upgrades, restarts and node drains keep the
	// chain, so pods created meanwhile are queued for the next agent.
	CNIUninstallWhenRemoved CNIUninstallMode = "when-removed"
)

// Transports of Options.Transport.
const (
	TransportKernel = "kernel"
	TransportNone   = "none"
)

// NewScheme returns the scheme the agent's client uses.
func NewScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, err
	}
	if err := hsv1.AddToScheme(s); err != nil {
		return nil, err
	}
	if err := anpv1.Install(s); err != nil {
		return nil, err
	}
	return s, nil
}

// CacheOptions scopes the manager's cache to one node: its Pods (field
// selector spec.nodeName), its Node object and its SessionNode
// (metadata.name). AppNamespaces and SessionRules are cached cluster-wide
// (every one may select the node). Of Secrets, only those the manager
// publishes for the agents in agentNamespace: the agent cannot read the
// teams' Secrets at all.
func CacheOptions(nodeName, agentNamespace string) cache.Options {
	return cache.Options{ByObject: map[client.Object]cache.ByObject{
		&corev1.Pod{}:  {Field: fields.OneTermEqualSelector("spec.nodeName", nodeName)},
		&corev1.Node{}: {Field: fields.OneTermEqualSelector("metadata.name", nodeName)},
		// Only its own SessionNode, and only to see it deleted.
		&hsv1.SessionNode{}: {Field: fields.OneTermEqualSelector("metadata.name", nodeName)},
		&corev1.Secret{}: {
			Namespaces: map[string]cache.Config{agentNamespace: {}},
			Label:      labels.SelectorFromSet(labels.Set{hsv1.LabelPublished: "true"}),
		},
	}}
}

// metricsOptions serves /metrics like the manager's: HTTPS with a
// self-signed certificate, each caller authenticated and authorized by the
// API server, HTTP/2 off (CVE-2023-44487).
func metricsOptions(o Options) metricsserver.Options {
	if o.MetricsInsecure {
		return metricsserver.Options{BindAddress: o.MetricsAddr}
	}
	return metricsserver.Options{
		BindAddress:    o.MetricsAddr,
		SecureServing:  true,
		FilterProvider: filters.WithAuthenticationAndAuthorization,
		TLSOpts:        []func(*tls.Config){func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }},
	}
}

// Agent is the running Kubernetes-mode agent.
type Agent struct {
	o     Options
	log   *slog.Logger
	c     client.Client // cached reads, direct writes
	api   client.Reader // uncached reads (Secrets, pods not yet cached)
	eng   *session.Engine
	table *rules.Table
	count *CountingRules
	hp    *csi.HostPathSockets
	// podSockets serves the pods' CSI volumes (nil without CSI); the first
	// apply republishes those kubelet has mounted (republish.go)
	podSockets *csi.EngineSockets
	// netpol judges cut-through sessions by the node's NetworkPolicies
	// (netpol.go)
	netpol *netpol.Enforcer

	ready atomic.Bool
	lost  atomic.Bool // the SessionNode was deleted: write it anew

	servedMu sync.RWMutex
	served   map[string]bool // app namespace keys the engine serves

	mu       sync.Mutex // one writer at a time: reconcile, heartbeat, shutdown
	ap       *apply.Applier
	snap     *snapshot
	rules    []rules.Rule
	rulesGen int64
	created  bool
	last     *hsv1.SessionNodeStatus // last BuildStatus result applied
	owner    []metav1.OwnerReference
	readyCnd metav1.Condition // with its transition time
	limitCnd metav1.Condition // EngineLimitReached, with its transition time
	refusals uint64           // node-limit refusals seen by the previous status
	// cniCnd is the CNIChained condition (Type "" without --cni-install):
	// its state is set by the CNI keeper, under mu.
	cniCnd     metav1.Condition
	cniApplied metav1.Condition // as last applied, with its transition time
	// dropCNIState: hoststack is being uninstalled; set and read by the
	// exit path only.
	dropCNIState bool
	// ownerGone: the watch saw the agent's DaemonSet deleted or replaced.
	ownerGone atomic.Pointer[string]
	errTimes  map[string]metav1.Time
	kick      chan event.GenericEvent

	// nets gives each app namespace its transport (kernel or a userspace
	// stack); under mu.
	nets *apply.Networks

	// tls holds the CertKeyPairs the node's apps may use; certs what was
	// loaded for each (under mu).
	tls   *enginetls.Store
	certs map[client.ObjectKey]certState
}

// snapshot is what the last reconcile computed, for the heartbeat.
type snapshot struct {
	nodeLabels map[string]string
	ans        []hsv1.AppNamespace
	out        render.Output
	conflicts  []rules.Conflict
	applyErrs  map[string]string
	other      []hsv1.NodeError
}

// Run runs the agent until ctx ends, then stops the servers, closes the
// engine (which tells every attached app) and marks the SessionNode
// Stopped, best effort.
func Run(ctx context.Context, o Options) error {
	if o.NodeName == "" {
		return errors.New("Kubernetes mode needs the node name (--node-name or $NODE_NAME)")
	}
	if o.Config == nil {
		return errors.New("no Kubernetes client configuration")
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.StatusInterval <= 0 {
		o.StatusInterval = 10 * time.Second
	}
	if o.Version == "" {
		o.Version = version.Version
	}
	if o.LeaseDuration <= 0 {
		o.LeaseDuration = DefaultLeaseDuration
	}
	if o.LeaseDuration < time.Second {
		return fmt.Errorf("lease duration %s: must be at least 1s", o.LeaseDuration)
	}
	if o.AgentNamespace == "" {
		o.AgentNamespace = o.PodNamespace
	}
	if o.AgentNamespace == "" {
		o.AgentNamespace = DefaultAgentNamespace
	}
	log := o.Log.With("node", o.NodeName)
	ctrl.SetLogger(logr.FromSlogHandler(log.Handler()))

	scheme, err := NewScheme()
	if err != nil {
		return err
	}
	copts := CacheOptions(o.NodeName, o.AgentNamespace)
	var owner *metav1.OwnerReference
	if o.CNI && o.CNIInstall && o.CNIUninstall == CNIUninstallWhenRemoved {
		// Watch the DaemonSet from now on: at uninstall its RBAC may be
		// deleted before the agent is told to stop.
		if owner, err = ownerDaemonSet(o, scheme); err != nil {
			log.Warn("not watching the agent's DaemonSet; at exit it is read once", "err", err)
		} else {
			copts.ByObject[&appsv1.DaemonSet{}] = cache.ByObject{
				Namespaces: map[string]cache.Config{o.PodNamespace: {}},
				Field:      fields.OneTermEqualSelector("metadata.name", owner.Name),
			}
		}
	}
	mgr, err := ctrl.NewManager(o.Config, ctrl.Options{
		Scheme:                 scheme,
		Cache:                  copts,
		Metrics:                metricsOptions(o),
		HealthProbeBindAddress: o.ProbeAddr,
		Client: client.Options{Cache: &client.CacheOptions{
			DisableFor: []client.Object{&hsv1.SessionNode{}},
		}},
		GracefulShutdownTimeout: ptr.To(10 * time.Second),
	})
	if err != nil {
		return fmt.Errorf("creating manager: %w", err)
	}

	a := &Agent{o: o, log: log, c: mgr.GetClient(), api: mgr.GetAPIReader(),
		table: &rules.Table{}, served: map[string]bool{}, errTimes: map[string]metav1.Time{},
		tls: &enginetls.Store{}, certs: map[client.ObjectKey]certState{},
		kick: make(chan event.GenericEvent, 1), netpol: &netpol.Enforcer{}}
	a.count = &CountingRules{Next: apply.RuleLookup{Table: a.table}}
	// The CNI registry knows each pod's network namespace and addresses:
	// the kernel transport opens pods' sockets there.
	var reg *cni.Registry
	if o.CNI {
		if reg, err = cni.OpenRegistry(o.CNIStateDir); err != nil {
			return fmt.Errorf("CNI state: %w", err)
		}
	}
	tr, err := newTransport(o, reg, log)
	if err != nil {
		return err
	}
	interfaceNetns := o.InterfaceNetns
	a.nets = apply.NewNetworks(tr, func(ifc render.Interface) (*netstack.Transport, error) {
		return apply.OpenLink(ifc, interfaceNetns)
	}, func(f string, args ...any) { log.Info(fmt.Sprintf(f, args...), "component", "netstack") })
	a.eng, err = session.New(session.Config{
		Rules:     a.count,
		TLS:       a.tls,
		Transport: a.nets.Transport(),
		// cut-through sessions bypass the pods' network: NetworkPolicy
		// is judged by the agent, a drop times out like a dropped SYN
		PeerPolicy:      a.netpol,
		PolicyDropDelay: o.ConnectTimeout,
		Logf:            func(f string, args ...any) { log.Info(fmt.Sprintf(f, args...), "component", "engine") },
		Limits:          o.Limits,
	})
	if err != nil {
		return errors.Join(fmt.Errorf("starting engine: %w", err), a.nets.Close())
	}
	// Kubernetes mode has no attach socket per app namespace: pods attach
	// through their own sockets (CSI volume or hostPath fallback).
	a.ap = apply.New(a.eng, nil)

	col := NewCollector(a.eng.Stats, a.count)
	if err := crmetrics.Registry.Register(col); err != nil {
		return errors.Join(fmt.Errorf("registering metrics: %w", err), a.eng.Close(), a.nets.Close())
	}
	defer crmetrics.Registry.Unregister(col)
	npCol := newNetpolCollector(a.eng.Stats, a.netpol)
	if err := crmetrics.Registry.Register(npCol); err != nil {
		return errors.Join(fmt.Errorf("registering metrics: %w", err), a.eng.Close(), a.nets.Close())
	}
	defer crmetrics.Registry.Unregister(npCol)

	var cleanups []func()
	cleanup := func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
		cleanups = nil
	}
	fail := func(err error) error {
		cleanup()
		return errors.Join(err, a.eng.Close(), a.nets.Close())
	}

	if err := a.setup(ctx, mgr); err != nil {
		return fail(err)
	}
	if err := a.setupNetpol(mgr); err != nil {
		return fail(err)
	}
	if owner != nil {
		if err := a.watchOwner(ctx, mgr, *owner); err != nil {
			return fail(err)
		}
	}

	if o.AdminSocket != "" {
		stop, err := a.serveAdmin(o.AdminSocket, log)
		if err != nil {
			return fail(err)
		}
		cleanups = append(cleanups, stop)
	}

	var podSockets *csi.EngineSockets
	if o.CSI || o.HostPathDir != "" {
		podSockets, err = csi.NewEngineSockets(csi.EngineSocketsOptions{Engine: a.eng, Resolve: a.Resolve, Access: a.Access, Log: log})
		if err != nil {
			return fail(err)
		}
		cleanups = append(cleanups, func() { _ = podSockets.Close() })
	}
	if o.HostPathDir != "" {
		if a.hp, err = csi.NewHostPathSockets(o.HostPathDir, podSockets, log); err != nil {
			return fail(fmt.Errorf("hostPath sockets: %w", err))
		}
	}
	if o.CSI {
		srv, err := csi.NewServer(csi.Options{
			NodeName: o.NodeName, Pods: podSockets, Version: o.Version,
			CSISocket: o.CSISocket, RegistryDir: o.CSIRegistryDir, KubeletEndpoint: o.CSIKubeletEndpoint, Log: log,
		})
		if err != nil {
			return fail(err)
		}
		if err := srv.Start(ctx); err != nil {
			return fail(fmt.Errorf("starting CSI node plugin: %w", err))
		}
		a.podSockets = podSockets
		cleanups = append(cleanups, srv.Stop)
		log.Info("CSI node plugin serving", "socket", srv.CSISocket(), "registration", srv.RegistrationSocket())
	}
	if o.CNI {
		srv := cni.NewServer(reg, cni.ServerConfig{Socket: o.CNISocket, PendingDir: o.CNIPendingDir, Log: log,
			Status: func() error {
				if !a.ready.Load() {
					return errors.New("hoststack agent has not applied its configuration yet")
				}
				return nil
			}})
		if err := srv.Start(); err != nil {
			return fail(fmt.Errorf("starting CNI server: %w", err))
		}
		cleanups = append(cleanups, func() {
			_ = srv.Close()
			if a.dropCNIState {
				a.removeCNIState(log)
			}
		})
		log.Info("CNI server serving", "socket", o.CNISocket)
		if o.CNIInstall {
			stopKeeper := a.keepChained(ctx, log)
			cleanups = append(cleanups, func() {
				stopKeeper()
				a.uninstallCNI(log)
			})
		}
	}

	log.Info("starting", "version", o.Version, "statusInterval", o.StatusInterval)
	runErr := mgr.Start(ctx)

	log.Info("stopping: closing servers, telling apps, marking the SessionNode Stopped")
	cleanup()
	closeErr := errors.Join(a.eng.Close(), a.nets.Close())
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.writeStopped(sctx); err != nil {
		log.Warn("could not mark the SessionNode Stopped", "err", err)
	}
	if runErr != nil {
		return fmt.Errorf("manager: %w", runErr)
	}
	return closeErr
}

// the single request every watched change enqueues
var theKey = reconcile.Request{NamespacedName: types.NamespacedName{Name: "node"}}

func (a *Agent) setup(ctx context.Context, mgr manager.Manager) error {
	one := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{theKey}
	})
	b := ctrl.NewControllerManagedBy(mgr).Named("hoststack-agent").
		Watches(&hsv1.AppNamespace{}, one).
		Watches(&hsv1.SessionRule{}, one).
		Watches(&hsv1.CertKeyPair{}, one).
		Watches(&corev1.Node{}, one).
		// The Secret material the manager publishes for the agents.
		Watches(&corev1.Secret{}, one).
		WatchesRawSource(source.Channel(a.kick, one)).
		// Someone deleted the SessionNode: create and report it again.
		Watches(&hsv1.SessionNode{}, handler.Funcs{
			DeleteFunc: func(_ context.Context, _ event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
				a.lost.Store(true)
				q.Add(theKey)
			},
		})
	if a.o.HostPathDir != "" {
		// The hostPath fallback serves a socket per selected pod: pods
		// coming and going change what it serves.
		b = b.Watches(&corev1.Pod{}, one)
	}
	if err := b.Complete(reconcile.Func(a.Reconcile)); err != nil {
		return fmt.Errorf("creating controller: %w", err)
	}
	// The pod cache serves the CSI resolver even when no controller watches
	// pods: start its informer with the manager.
	if _, err := mgr.GetCache().GetInformer(ctx, &corev1.Pod{}); err != nil {
		return fmt.Errorf("pod informer: %w", err)
	}
	if err := mgr.Add(manager.RunnableFunc(a.heartbeat)); err != nil {
		return err
	}
	lr := &leaseRenewer{c: a.c, api: a.api, namespace: a.o.AgentNamespace, node: a.o.NodeName,
		duration: a.o.LeaseDuration, log: a.log.Warn}
	if err := mgr.Add(manager.RunnableFunc(lr.run)); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	return mgr.AddReadyzCheck("applied", func(*http.Request) error {
		if !a.ready.Load() {
			return errors.New("the first configuration has not been applied yet")
		}
		return nil
	})
}

// Reconcile recomputes the node: cache → render → rules → engine → status.
func (a *Agent) Reconcile(ctx context.Context, _ reconcile.Request) (reconcile.Result, error) {
	var node corev1.Node
	nodeLabels := map[string]string{}
	var other []hsv1.NodeError
	switch err := a.c.Get(ctx, client.ObjectKey{Name: a.o.NodeName}, &node); {
	case err == nil:
		for k, v := range node.Labels {
			nodeLabels[k] = v
		}
	case apierrors.IsNotFound(err):
		other = append(other, hsv1.NodeError{Reason: "NodeNotFound", Message: "Node " + a.o.NodeName + " not found; nodeSelectors see no labels", Object: "Node/" + a.o.NodeName})
	default:
		return reconcile.Result{}, err
	}
	var anList hsv1.AppNamespaceList
	if err := a.c.List(ctx, &anList); err != nil {
		return reconcile.Result{}, err
	}
	var srList hsv1.SessionRuleList
	if err := a.c.List(ctx, &srList); err != nil {
		return reconcile.Result{}, err
	}
	// Attach secrets come from the copies the manager publishes, named
	// after the AppNamespace; render reports a missing one.
	secrets := map[string]string{}
	for i := range anList.Items {
		an := &anList.Items[i]
		if an.Spec.SecretRef == nil || !Selected(an, nodeLabels) {
			continue
		}
		var s corev1.Secret
		key := client.ObjectKey{Namespace: a.o.AgentNamespace, Name: hsv1.PublishedSecretName("AppNamespace", an.Namespace, an.Name)}
		switch err := a.c.Get(ctx, key, &s); {
		case err == nil:
			if v, ok := s.Data[render.SecretKey]; ok && s.Annotations[hsv1.AnnotationPublishedFrom] == an.Namespace+"/"+an.Spec.SecretRef.Name {
				secrets[an.Namespace+"/"+an.Spec.SecretRef.Name] = string(v)
			}
		case apierrors.IsNotFound(err):
		default:
			return reconcile.Result{}, fmt.Errorf("reading the published Secret %s: %w", key, err)
		}
	}

	out := render.Render(render.Input{NodeLabels: nodeLabels, AppNamespaces: anList.Items, Secrets: secrets, SessionRules: srList.Items})
	set, conflicts, err := rules.Compile(out.Rules)
	if err != nil {
		return reconcile.Result{}, fmt.Errorf("compiling session rules: %w", err)
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	if a.lost.Swap(false) {
		a.created, a.last = false, nil
	}
	served := map[string]bool{}
	for _, cfg := range out.Namespaces {
		served[cfg.Namespace] = true
	}
	certErrs, err := a.syncCertKeyPairs(ctx, served)
	if err != nil {
		return reconcile.Result{}, fmt.Errorf("loading CertKeyPairs: %w", err)
	}
	other = append(other, certErrs...)
	// Rules first, so an app namespace added now starts with its rules.
	if a.rulesGen == 0 || !reflect.DeepEqual(a.rules, out.Rules) {
		a.table.Store(set)
		a.rules = out.Rules
		a.rulesGen++
	}
	stackErrs := a.nets.Apply(out.Interfaces)
	changes, applyErr := a.ap.Apply(out.Namespaces)
	for _, c := range changes {
		a.log.Info("app namespace "+c.Op, "appNamespace", c.Key)
	}
	applyErrs := map[string]string{}
	applied := a.ap.Applied()
	keep := make(map[string]bool, len(applied))
	for k := range applied {
		keep[k] = true
	}
	for _, cfg := range out.Namespaces {
		if got, ok := applied[cfg.Key()]; !ok || got != cfg {
			applyErrs[cfg.Key()] = errorFor(applyErr, cfg.Key())
		}
	}
	for key, err := range stackErrs {
		// Served (its apps attach and talk cut-through) but without a way
		// to the outside world.
		applyErrs[key] = "userspace stack: " + err.Error()
		a.log.Error("userspace stack not opened; the app namespace has no transport", "appNamespace", key, "err", err)
	}
	if applyErr != nil {
		a.log.Error("applying app namespaces partly failed", "err", applyErr)
	}
	for _, p := range out.Problems {
		a.log.Warn("object not served", "object", p.Object, "field", p.Field, "reason", p.Reason, "detail", p.Detail)
	}
	for _, c := range conflicts {
		a.log.Warn("SessionRule not applied: same match as an older rule, which wins", "rule", c.Loser.Name, "olderRule", c.Winner.Name)
	}
	a.count.Retain(keep)
	a.servedMu.Lock()
	a.served = keep
	a.servedMu.Unlock()
	a.snap = &snapshot{nodeLabels: nodeLabels, ans: anList.Items, out: out, conflicts: conflicts, applyErrs: applyErrs, other: other}

	if a.hp != nil {
		if err := a.syncHostPath(ctx); err != nil {
			a.log.Error("hostPath sockets partly failed", "err", err)
		}
	}
	if err := a.writeStatusLocked(ctx, hsv1.EngineRunning, nodeOwner(&node)); err != nil {
		return reconcile.Result{}, fmt.Errorf("writing SessionNode status: %w", err)
	}
	if applyErr == nil && !a.ready.Load() {
		a.ready.Store(true)
		a.log.Info("ready: configuration applied", "appNamespaces", len(applied), "rules", set.Len())
		if a.podSockets != nil {
			// not under the reconcile's locks: Publish resolves through them
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			go func() {
				defer cancel()
				a.republish(rctx, a.podSockets, filepath.Dir(cmp.Or(a.o.CSIRegistryDir, csi.DefaultRegistryDir)))
			}()
		}
	}
	return reconcile.Result{}, nil
}

// errorFor picks the lines of a joined Apply error that name key.
func errorFor(err error, key string) string {
	if err == nil {
		return "not applied"
	}
	var lines []string
	for _, l := range strings.Split(err.Error(), "\n") {
		if strings.Contains(l, " "+key+":") {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		return err.Error()
	}
	return strings.Join(lines, "; ")
}

func (a *Agent) heartbeat(ctx context.Context) error {
	t := time.NewTicker(a.o.StatusInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		a.mu.Lock()
		if a.snap != nil {
			if err := a.writeStatusLocked(ctx, hsv1.EngineRunning, nil); err != nil && ctx.Err() == nil {
				a.log.Warn("status heartbeat failed", "err", err)
			}
		}
		a.mu.Unlock()
	}
}

func (a *Agent) writeStopped(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.created {
		return nil // never wrote anything
	}
	return a.writeStatusLocked(ctx, hsv1.EngineStopped, nil)
}

func nodeOwner(n *corev1.Node) []metav1.OwnerReference {
	if n.UID == "" {
		return nil
	}
	return []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: n.Name, UID: n.UID}}
}

// writeStatusLocked computes the status from the last snapshot and fresh
// engine statistics and applies it if it changed.
func (a *Agent) writeStatusLocked(ctx context.Context, state hsv1.EngineState, owner []metav1.OwnerReference) error {
	s := a.snap
	if s == nil {
		s = &snapshot{}
	}
	stats := map[string]session.NamespaceStats{}
	if state != hsv1.EngineStopped {
		for _, st := range a.eng.Stats() {
			stats[st.Namespace] = st
		}
	}
	applied := map[string]bool{}
	for k := range a.ap.Applied() {
		applied[k] = true
	}
	st := BuildStatus(StatusInput{
		NodeLabels: s.nodeLabels, AppNamespaces: s.ans, Render: s.out, Conflicts: s.conflicts,
		Applied: applied, ApplyErrors: s.applyErrs, Stats: stats,
		Engine: state, Version: a.o.Version, RulesGeneration: a.rulesGen, OtherErrors: s.other,
		CertKeyPairs: a.loadedCerts(), Transport: a.transportType(),
	})
	if owner != nil {
		a.owner = owner
	}
	lim := a.eng.Limits()
	var refusals uint64
	for _, n := range lim.Refusals {
		refusals += n
	}
	limCnd := LimitCondition(lim, refusals > a.refusals)
	limChanged := a.limitCnd.Type == "" || a.limitCnd.Status != limCnd.Status || a.limitCnd.Reason != limCnd.Reason || a.limitCnd.Message != limCnd.Message
	if a.last != nil && reflect.DeepEqual(*a.last, st) && !limChanged && sameCondition(a.cniApplied, a.cniCnd) {
		return nil
	}
	built := st
	built.AppNamespaces = append([]hsv1.AppNamespaceNodeStatus(nil), st.AppNamespaces...)
	built.Errors = append([]hsv1.NodeError(nil), st.Errors...)
	now := metav1.Now()
	// Errors keep the time they were first seen while they persist.
	times := map[string]metav1.Time{}
	for i := range st.Errors {
		e := &st.Errors[i]
		k := e.Reason + "\x00" + e.Object + "\x00" + e.Message
		t, ok := a.errTimes[k]
		if !ok {
			t = now
		}
		times[k] = t
		e.Time = &t
	}
	sort.SliceStable(st.Errors, func(i, j int) bool { return st.Errors[i].Time.After(st.Errors[j].Time.Time) })
	cnd := ReadyCondition(st)
	if a.readyCnd.Type == "" || a.readyCnd.Status != cnd.Status {
		cnd.LastTransitionTime = now
	} else {
		cnd.LastTransitionTime = a.readyCnd.LastTransitionTime
	}
	if a.limitCnd.Type == "" || a.limitCnd.Status != limCnd.Status {
		limCnd.LastTransitionTime = now
	} else {
		limCnd.LastTransitionTime = a.limitCnd.LastTransitionTime
	}
	st.Conditions = []metav1.Condition{cnd, limCnd}
	cniCnd := a.cniCnd
	if cniCnd.Type != "" {
		if a.cniApplied.Status != cniCnd.Status {
			cniCnd.LastTransitionTime = now
		} else {
			cniCnd.LastTransitionTime = a.cniApplied.LastTransitionTime
		}
		st.Conditions = append(st.Conditions, cniCnd)
	}

	if err := a.applyStatus(ctx, st, a.owner); err != nil {
		return err
	}
	a.errTimes = times
	a.readyCnd = cnd
	a.limitCnd = limCnd
	a.refusals = refusals
	a.cniApplied = cniCnd
	a.last = &built
	return nil
}

// applyStatus creates the SessionNode if needed (server-side apply of its
// metadata) and applies status with the agent's field owner.
func (a *Agent) applyStatus(ctx context.Context, st hsv1.SessionNodeStatus, owner []metav1.OwnerReference) error {
	gvk := hsv1.GroupVersion.WithKind("SessionNode")
	if !a.created {
		obj := &unstructured.Unstructured{}
		obj.SetGroupVersionKind(gvk)
		obj.SetName(a.o.NodeName)
		if len(owner) > 0 {
			obj.SetOwnerReferences(owner)
		}
		if err := a.c.Apply(ctx, client.ApplyConfigurationFromUnstructured(obj), client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
			return fmt.Errorf("creating SessionNode %s: %w", a.o.NodeName, err)
		}
		a.created = true
	}
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&hsv1.SessionNode{Status: st})
	if err != nil {
		return err
	}
	obj := &unstructured.Unstructured{Object: map[string]any{"status": m["status"]}}
	obj.SetGroupVersionKind(gvk)
	obj.SetName(a.o.NodeName)
	err = a.c.Status().Apply(ctx, client.ApplyConfigurationFromUnstructured(obj), client.FieldOwner(FieldOwner), client.ForceOwnership)
	if apierrors.IsNotFound(err) {
		a.created = false // deleted behind our back: create it again next time
	}
	return err
}

// Resolve is the CSI resolver: the served AppNamespaces whose podSelector
// selects the pod (which must be on this node and have the UID kubelet
// named), sorted.
func (a *Agent) Resolve(ctx context.Context, ref csi.PodRef) ([]string, error) {
	var pod corev1.Pod
	key := client.ObjectKey{Namespace: ref.Namespace, Name: ref.Name}
	err := a.c.Get(ctx, key, &pod)
	if apierrors.IsNotFound(err) || (err == nil && string(pod.UID) != ref.UID) {
		// The cache may lag behind kubelet for a pod that just started.
		err = a.api.Get(ctx, key, &pod)
	}
	if err != nil {
		return nil, fmt.Errorf("pod %s: %w", key, err)
	}
	if string(pod.UID) != ref.UID {
		return nil, fmt.Errorf("pod %s has uid %s, not %s", key, pod.UID, ref.UID)
	}
	if pod.Spec.NodeName != a.o.NodeName {
		return nil, fmt.Errorf("pod %s runs on node %q, not %q", key, pod.Spec.NodeName, a.o.NodeName)
	}
	var ans hsv1.AppNamespaceList
	if err := a.c.List(ctx, &ans, client.InNamespace(pod.Namespace)); err != nil {
		return nil, err
	}
	chosen, err := ChosenAppNamespace(&pod, ref.AppNamespace, ans.Items, a.isServed)
	if err != nil {
		return nil, err
	}
	return []string{chosen}, nil
}

// ChosenAppNamespace returns the key of the one AppNamespace a pod's
// socket admits: chosen, the name the pod webhook wrote into the volume
// (empty, as with the hostPath fallback: the webhook's rule,
// hsv1.SelectAppNamespace, among those served on this node), provided it
// selects the pod and served reports it served on this node.
// Otherwise the error wraps csi.ErrNotSelected and says why. Another
// AppNamespace selecting the pod too is not admitted: the pod's apps
// belong to the one it was attached to.
func ChosenAppNamespace(pod *corev1.Pod, chosen string, ans []hsv1.AppNamespace, served func(key string) bool) (string, error) {
	if chosen == "" {
		// The webhook's rule over what this node serves (the webhook
		// cannot know the node; here it is known).
		var here []hsv1.AppNamespace
		for i := range ans {
			if served == nil || served(ans[i].Namespace+"/"+ans[i].Name) {
				here = append(here, ans[i])
			}
		}
		an, _ := hsv1.SelectAppNamespace(pod.Labels, here)
		if an == nil {
			return "", fmt.Errorf("no AppNamespace of namespace %s served on this node selects the pod: %w", pod.Namespace, csi.ErrNotSelected)
		}
		chosen = an.Name
	}
	key := pod.Namespace + "/" + chosen
	if !slices.Contains(PodAppNamespaces(pod, ans, nil), key) {
		return "", fmt.Errorf("AppNamespace %s, which the pod was attached to, does not select it (or is being deleted): %w", key, csi.ErrNotSelected)
	}
	if served != nil && !served(key) {
		return "", fmt.Errorf("AppNamespace %s, which the pod was attached to, is not served on this node: %w", key, csi.ErrNotSelected)
	}
	return key, nil
}

func (a *Agent) isServed(key string) bool {
	a.servedMu.RLock()
	defer a.servedMu.RUnlock()
	return a.served[key]
}

// PodAppNamespaces returns, sorted, the keys of the AppNamespaces of the
// pod's own Kubernetes namespace that select it and that served reports as
// served on this node.
func PodAppNamespaces(pod *corev1.Pod, ans []hsv1.AppNamespace, served func(key string) bool) []string {
	var keys []string
	for i := range ans {
		an := &ans[i]
		if an.Namespace != pod.Namespace || !an.DeletionTimestamp.IsZero() {
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(&an.Spec.PodSelector)
		if err != nil || !sel.Matches(labels.Set(pod.Labels)) {
			continue
		}
		key := an.Namespace + "/" + an.Name
		if served != nil && !served(key) {
			continue
		}
		keys = append(keys, key)
	}
	sort.Strings(keys)
	return keys
}

// syncHostPath serves a hostPath socket for every running pod of the node
// that a served AppNamespace selects.
func (a *Agent) syncHostPath(ctx context.Context) error {
	var pods corev1.PodList
	if err := a.c.List(ctx, &pods); err != nil {
		return err
	}
	var anList hsv1.AppNamespaceList
	if err := a.c.List(ctx, &anList); err != nil {
		return err
	}
	var refs []csi.PodRef
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Spec.NodeName != a.o.NodeName || p.DeletionTimestamp != nil ||
			p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
			continue
		}
		if _, err := ChosenAppNamespace(p, "", anList.Items, a.isServed); err == nil {
			refs = append(refs, csi.PodRef{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID)})
		}
	}
	return a.hp.Sync(ctx, refs)
}
