// Command localcluster runs a real etcd and kube-apiserver (the binaries
// hack/envtest-assets.sh builds from the Go module proxy) with the hoststack
// CRDs installed, writes an admin kubeconfig, and keeps them running until
// SIGINT/SIGTERM. `make demo` and `make run-local` use it so a newcomer needs
// no existing cluster and no Docker.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

func main() {
	assets := flag.String("assets", os.Getenv("KUBEBUILDER_ASSETS"), "directory with etcd, kube-apiserver and kubectl (default $KUBEBUILDER_ASSETS)")
	crds := flag.String("crds", "config/crd/bases", "directory of CRD manifests to install")
	kubeconfig := flag.String("write-kubeconfig", "", "where to write the admin kubeconfig (required)")
	ready := flag.String("ready-file", "", "file created once the control plane serves and the CRDs are established")
	startTimeout := flag.Duration("start-timeout", 2*time.Minute, "how long each component may take to start")
	flag.Parse()
	if err := run(*assets, *crds, *kubeconfig, *ready, *startTimeout); err != nil {
		fmt.Fprintln(os.Stderr, "localcluster:", err)
		os.Exit(1)
	}
}

func run(assets, crds, kubeconfig, ready string, startTimeout time.Duration) error {
	if assets == "" {
		return fmt.Errorf("no assets directory: pass --assets or set KUBEBUILDER_ASSETS (hack/envtest-assets.sh prints it)")
	}
	if kubeconfig == "" {
		return fmt.Errorf("--write-kubeconfig is required")
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory:    assets,
		CRDDirectoryPaths:        []string{crds},
		ErrorIfCRDPathMissing:    true,
		ControlPlaneStartTimeout: startTimeout,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	if _, err := env.Start(); err != nil {
		return fmt.Errorf("starting control plane: %w", err)
	}
	// Stop no matter how we leave from here on.
	defer func() {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "localcluster: stopping control plane:", err)
		}
	}()

	user, err := env.AddUser(envtest.User{Name: "hoststack-admin", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		return fmt.Errorf("creating admin user: %w", err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		return fmt.Errorf("rendering kubeconfig: %w", err)
	}
	if err := writeAtomic(kubeconfig, kc); err != nil {
		return err
	}
	if ready != "" {
		if err := writeAtomic(ready, []byte(env.Config.Host+"\n")); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "localcluster: API server %s, kubeconfig %s\n", env.Config.Host, kubeconfig)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "localcluster: stopping")
	return nil
}

func writeAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("creating directory for %s: %w", path, err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("renaming %s: %w", tmp, err)
	}
	return nil
}
