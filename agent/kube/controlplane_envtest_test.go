package kube

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/go-logr/logr"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/hoststack/hoststack/controllers"
	"github.com/hoststack/hoststack/internal/serviceaccount"
)

// The control plane of the suite runs as it runs in a cluster: the RBAC
// and the admission policy of config/rbac and config/agent are installed,
// the manager's reconcilers run in this process as the manager's service
// account, and every agent runs as the agent's service account with a
// token bound to its node (impersonated: internal/serviceaccount).
const (
	managerSA = serviceaccount.Manager
	agentSA   = serviceaccount.Agent
)

// asServiceAccount returns admin acting as sa, bound to node if not "".
func asServiceAccount(admin *rest.Config, sa, node string) *rest.Config {
	return serviceaccount.Impersonate(admin, sa, node)
}

// agentKubeconfig writes a kubeconfig for the agent of node.
func agentKubeconfig(t interface {
	Helper()
	TempDir() string
	Fatal(...any)
}, node string) string {
	t.Helper()
	admin := testEnv.Config
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{Server: admin.Host, CertificateAuthorityData: admin.CAData}
	kc.AuthInfos["agent"] = &clientcmdapi.AuthInfo{
		ClientCertificateData: admin.CertData, ClientKeyData: admin.KeyData, Token: admin.BearerToken,
		Impersonate:          agentSA,
		ImpersonateGroups:    serviceaccount.Groups(agentSA),
		ImpersonateUserExtra: map[string][]string{serviceaccount.NodeNameExtra: {node}},
	}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "agent"}
	kc.CurrentContext = "envtest"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// installControlPlane applies, as an admin, everything of config/rbac and
// config/agent but the agent's DaemonSet.
func installControlPlane(ctx context.Context, c client.Client) error {
	return serviceaccount.Install(ctx, c, []string{filepath.Join("..", "..", "config", "rbac"), filepath.Join("..", "..", "config", "agent")}, "daemonset.yaml")
}

// runManager starts the manager's reconcilers (not the webhook) as
// cmd/hoststack-manager configures them, with cfg, until ctx ends; the
// returned function waits for it to stop.
func runManager(ctx context.Context, cfg *rest.Config) (wait func(), err error) {
	ctrl.SetLogger(logr.Discard())
	scheme, err := controllers.NewScheme()
	if err != nil {
		return nil, err
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Cache:                  controllers.CacheOptions(DefaultAgentNamespace),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
	})
	if err != nil {
		return nil, err
	}
	if err := controllers.Setup(ctx, mgr, controllers.Options{AgentNamespace: DefaultAgentNamespace}); err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	var runErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		runErr = mgr.Start(ctx)
	}()
	return func() {
		wg.Wait()
		if runErr != nil && !errors.Is(runErr, context.Canceled) {
			fmt.Fprintln(os.Stderr, "manager stopped with error:", runErr)
		}
	}, nil
}
