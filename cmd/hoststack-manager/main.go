/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

// Command hoststack-manager runs the hoststack controllers: CertKeyPair,
// SessionRule and AppNamespace. One replica leads; the others wait. Every
// replica serves the mutating pod webhook, which attaches pods selected by
// an AppNamespace, with serving certificates it manages itself (or that
// cert-manager provides).
package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	"github.com/hoststack/hoststack/controllers"
	"github.com/hoststack/hoststack/internal/version"
)

// config is everything the command line sets.
type config struct {
	metricsAddr            string
	metricsSecure          bool
	enableHTTP2            bool
	probeAddr              string
	leaderElect            bool
	leaderElectionID       string
	leaderElectionNS       string
	leaseDuration          time.Duration
	renewDeadline          time.Duration
	retryPeriod            time.Duration
	gracefulShutdown       time.Duration
	watchNamespaces        string
	agentNamespace         string
	maxConcurrentReconcile int
	webhookPort            int
	webhookCertDir         string
	webhookServiceName     string
	webhookServiceNS       string
	webhookConfigName      string
	webhookCertSecret      string
	webhookCertExtraNames  string
	manageWebhookCerts     bool
	printVersion           bool
	zap                    zap.Options
}

func parseFlags(args []string) (*config, error) {
	c := &config{zap: zap.Options{Development: false}}
	fs := flag.NewFlagSet("hoststack-manager", flag.ContinueOnError)
	fs.StringVar(&c.metricsAddr, "metrics-bind-address", ":8443", "Address the metrics endpoint binds to; \"0\" disables it.")
	fs.BoolVar(&c.metricsSecure, "metrics-secure", true, "Serve metrics over HTTPS, allowing only callers authorised (TokenReview and SubjectAccessReview) to get /metrics.")
	fs.BoolVar(&c.enableHTTP2, "enable-http2", false, "Allow HTTP/2 on the metrics server (off by default: HTTP/2 Rapid Reset, CVE-2023-44487).")
	fs.StringVar(&c.probeAddr, "health-probe-bind-address", ":8081", "Address the /healthz and /readyz probes bind to.")
	fs.BoolVar(&c.leaderElect, "leader-elect", false, "Elect a leader, so only one replica reconciles at a time (the Deployment turns this on).")
	fs.StringVar(&c.leaderElectionID, "leader-election-id", "hoststack-manager.hoststack.dev", "Name of the Lease used for leader election.")
	fs.StringVar(&c.leaderElectionNS, "leader-election-namespace", "", "Namespace of the leader election Lease; default: the namespace the manager runs in.")
	fs.DurationVar(&c.leaseDuration, "leader-election-lease-duration", 15*time.Second, "How long non-leaders wait before trying to take over.")
	fs.DurationVar(&c.renewDeadline, "leader-election-renew-deadline", 10*time.Second, "How long the leader retries renewing before giving up leadership.")
	fs.DurationVar(&c.retryPeriod, "leader-election-retry-period", 2*time.Second, "How often leader election actions are retried.")
	fs.DurationVar(&c.gracefulShutdown, "graceful-shutdown-timeout", 30*time.Second, "How long in-flight reconciles may take to finish on SIGTERM.")
	fs.StringVar(&c.watchNamespaces, "watch-namespaces", "", "Comma-separated namespaces to reconcile; all when empty.")
	fs.StringVar(&c.agentNamespace, "agent-namespace", controllers.DefaultAgentNamespace, "Namespace where the agents renew their Leases (a node whose Lease expired does not count as serving).")
	fs.IntVar(&c.maxConcurrentReconcile, "max-concurrent-reconciles", 2, "Reconciles each controller runs in parallel.")
	fs.IntVar(&c.webhookPort, "webhook-port", 9443, "Port the pod webhook server listens on; 0 disables the webhook server (pods are then not injected).")
	fs.StringVar(&c.webhookCertDir, "webhook-cert-dir", filepath.Join(os.TempDir(), "k8s-webhook-server", "serving-certs"),
		"Directory with the webhook serving certificate (tls.crt, tls.key), reloaded when it changes. With --manage-webhook-certs the manager writes it; otherwise mount it (e.g. a cert-manager Certificate's Secret).")
	fs.StringVar(&c.webhookServiceName, "webhook-service-name", "hoststack-webhook", "Service the API server calls the webhook through; the managed serving certificate covers its DNS names.")
	fs.StringVar(&c.webhookServiceNS, "webhook-service-namespace", defaultNamespace(), "Namespace of --webhook-service-name, which also holds --webhook-cert-secret; default: the manager's own ($POD_NAMESPACE), else hoststack-system.")
	fs.StringVar(&c.webhookConfigName, "webhook-config-name", "hoststack-pod-injector", "MutatingWebhookConfiguration whose caBundle the manager sets (with --manage-webhook-certs).")
	fs.StringVar(&c.webhookCertSecret, "webhook-cert-secret", "hoststack-webhook-cert", "Secret where the manager keeps its webhook CA and serving certificate (with --manage-webhook-certs).")
	fs.StringVar(&c.webhookCertExtraNames, "webhook-cert-extra-names", "",
		"Comma-separated DNS names or IP addresses the managed serving certificate covers besides the Service's (for a webhook configuration with a url, e.g. 127.0.0.1 outside a cluster).")
	fs.BoolVar(&c.manageWebhookCerts, "manage-webhook-certs", true,
		"Generate and renew the webhook's own CA and serving certificate (renewed 30 days before they end), write them to --webhook-cert-dir and set the caBundle of --webhook-config-name. Turn off when cert-manager provides the certificate.")
	fs.BoolVar(&c.printVersion, "version", false, "Print the version and exit.")
	c.zap.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if c.printVersion {
		return c, nil
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if c.maxConcurrentReconcile < 1 {
		return nil, fmt.Errorf("--max-concurrent-reconciles must be at least 1, got %d", c.maxConcurrentReconcile)
	}
	if c.webhookPort < 0 || c.webhookPort > 65535 {
		return nil, fmt.Errorf("--webhook-port must be 0 (off) or a port, got %d", c.webhookPort)
	}
	if c.webhookPort != 0 && c.manageWebhookCerts {
		for flag, v := range map[string]string{"--webhook-cert-dir": c.webhookCertDir, "--webhook-service-name": c.webhookServiceName,
			"--webhook-service-namespace": c.webhookServiceNS, "--webhook-config-name": c.webhookConfigName, "--webhook-cert-secret": c.webhookCertSecret} {
			if v == "" {
				return nil, fmt.Errorf("%s must not be empty with --manage-webhook-certs", flag)
			}
		}
	}
	return c, nil
}

func main() {
	c, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "hoststack-manager:", err)
		os.Exit(2)
	}
	if c.printVersion {
		fmt.Println(version.Version)
		return
	}
	log := zap.New(zap.UseFlagOptions(&c.zap))
	ctrl.SetLogger(log)
	klog.SetLogger(log) // client-go logs through the same structured logger
	if err := run(c); err != nil {
		log.Error(err, "manager failed")
		os.Exit(1)
	}
}

func run(c *config) error {
	log := ctrl.Log.WithName("setup")
	restCfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	scheme, err := controllers.NewScheme()
	if err != nil {
		return err
	}

	var tlsOpts []func(*tls.Config)
	if !c.enableHTTP2 {
		tlsOpts = append(tlsOpts, func(t *tls.Config) { t.NextProtos = []string{"http/1.1"} })
	}
	metricsOpts := metricsserver.Options{
		BindAddress:   c.metricsAddr,
		SecureServing: c.metricsSecure,
		TLSOpts:       tlsOpts,
	}
	if c.metricsSecure {
		metricsOpts.FilterProvider = filters.WithAuthenticationAndAuthorization
	}

	namespaces := splitList(c.watchNamespaces)

	webhookOn := c.webhookPort != 0

	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme:                        scheme,
		Cache:                         controllers.CacheOptions(c.agentNamespace, namespaces...),
		Metrics:                       metricsOpts,
		HealthProbeBindAddress:        c.probeAddr,
		LeaderElection:                c.leaderElect,
		LeaderElectionID:              c.leaderElectionID,
		LeaderElectionNamespace:       c.leaderElectionNS,
		LeaseDuration:                 &c.leaseDuration,
		RenewDeadline:                 &c.renewDeadline,
		RetryPeriod:                   &c.retryPeriod,
		LeaderElectionReleaseOnCancel: true, // the next leader starts at once on a clean exit
		GracefulShutdownTimeout:       &c.gracefulShutdown,
		// No WebhookServer: the pod webhook's server is run by
		// controllers.WebhookServing, apart from the controllers.
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}

	ctx := ctrl.SetupSignalHandler()
	opts := controllers.Options{
		MaxConcurrentReconciles: c.maxConcurrentReconcile,
		Namespaces:              namespaces,
		AgentNamespace:          c.agentNamespace,
	}
	if webhookOn {
		opts.PodWebhook = webhook.NewServer(webhook.Options{Port: c.webhookPort, CertDir: c.webhookCertDir, TLSOpts: tlsOpts})
		if c.manageWebhookCerts {
			if opts.WebhookCerts, err = webhookCerts(c, mgr); err != nil {
				return err
			}
		}
	}
	if err := controllers.Setup(ctx, mgr, opts); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return fmt.Errorf("add healthz check: %w", err)
	}
	// Ready once the caches synced: a replica that cannot see the API
	// server is not ready.
	if err := mgr.AddReadyzCheck("readyz", func(req *http.Request) error {
		if !mgr.GetCache().WaitForCacheSync(req.Context()) {
			return errors.New("caches not synced")
		}
		return nil
	}); err != nil {
		return fmt.Errorf("add readyz check: %w", err)
	}

	log.Info("starting manager", "version", version.Version, "leaderElection", c.leaderElect, "metrics", c.metricsAddr, "probes", c.probeAddr,
		"namespaces", namespaces, "webhookPort", c.webhookPort, "manageWebhookCerts", webhookOn && c.manageWebhookCerts)
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("run manager: %w", err)
	}
	log.Info("manager stopped")
	return nil
}

// webhookCerts is the manager of the webhook's serving certificate. Its
// client reads the API server directly: the manager's cache holds only the
// Secrets CertKeyPairs may name.
func webhookCerts(c *config, mgr ctrl.Manager) (*controllers.WebhookCerts, error) {
	direct, err := client.New(mgr.GetConfig(), client.Options{Scheme: mgr.GetScheme(), Mapper: mgr.GetRESTMapper()})
	if err != nil {
		return nil, fmt.Errorf("webhook certificates client: %w", err)
	}
	return &controllers.WebhookCerts{
		Client:            direct,
		SecretName:        c.webhookCertSecret,
		SecretNamespace:   c.webhookServiceNS,
		ServiceName:       c.webhookServiceName,
		ServiceNamespace:  c.webhookServiceNS,
		ExtraNames:        splitList(c.webhookCertExtraNames),
		WebhookConfigName: c.webhookConfigName,
		CertDir:           c.webhookCertDir,
	}, nil
}

// defaultNamespace is the manager's own namespace (the downward API's
// POD_NAMESPACE), else hoststack-system.
func defaultNamespace() string {
	if ns := os.Getenv("POD_NAMESPACE"); ns != "" {
		return ns
	}
	return "hoststack-system"
}

// splitList splits a comma-separated flag value, dropping empty entries.
func splitList(v string) []string {
	var out []string
	for _, e := range strings.Split(v, ",") {
		if e = strings.TrimSpace(e); e != "" {
			out = append(out, e)
		}
	}
	return out
}
