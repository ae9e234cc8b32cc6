/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

// Command hoststack-manager runs the hoststack controllers: CertKeyPair,
// SessionRule and AppNamespace. One replica leads; the others wait.
package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"k8s.io/klog/v2"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/hoststack/hoststack/controllers"
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
	maxConcurrentReconcile int
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
	fs.IntVar(&c.maxConcurrentReconcile, "max-concurrent-reconciles", 2, "Reconciles each controller runs in parallel.")
	c.zap.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if c.maxConcurrentReconcile < 1 {
		return nil, fmt.Errorf("--max-concurrent-reconciles must be at least 1, got %d", c.maxConcurrentReconcile)
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

	var namespaces []string
	for _, ns := range strings.Split(c.watchNamespaces, ",") {
		if ns = strings.TrimSpace(ns); ns != "" {
			namespaces = append(namespaces, ns)
		}
	}

	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme:                        scheme,
		Cache:                         controllers.CacheOptions(namespaces...),
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
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}

	ctx := ctrl.SetupSignalHandler()
	if err := controllers.Setup(ctx, mgr, controllers.Options{MaxConcurrentReconciles: c.maxConcurrentReconcile}); err != nil {
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

	log.Info("starting manager", "leaderElection", c.leaderElect, "metrics", c.metricsAddr, "probes", c.probeAddr, "namespaces", namespaces)
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("run manager: %w", err)
	}
	log.Info("manager stopped")
	return nil
}
