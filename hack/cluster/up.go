package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// debianPackages are the node's runtime and network: containerd, runc, the CNI
// plugins (bridge, host-local, loopback) and nft for kube-proxy's nftables mode.
var debianPackages = map[string]string{
	"containerd":                  "/usr/bin/containerd",
	"runc":                        "/usr/sbin/runc",
	"containernetworking-plugins": debianCNI + "/bridge",
	"nftables":                    "/usr/sbin/nft",
}

func up(ctx context.Context, l layout) error {
	if os.Geteuid() != 0 {
		return errors.New("up must run as root")
	}
	if err := ensurePackages(ctx); err != nil {
		return err
	}
	n, err := detectNode()
	if err != nil {
		return err
	}
	logf("node %s, IP %s (%s), state in %s", n.name, n.ip, n.dev, l.dir)
	// Before anything changes the host.
	rec, err := loadOrRecordHost(l)
	if err != nil {
		return err
	}
	if err := ensurePKI(l, n); err != nil {
		return err
	}
	if err := writeConfigs(l, n); err != nil {
		return err
	}
	if err := ensureCNI(l); err != nil {
		return err
	}
	if err := writeSysctl("net.ipv4.ip_forward", "1"); err != nil {
		return err
	}
	if err := makeRootShared(); err != nil {
		return err
	}

	if _, err := l.start(l.containerd()); err != nil {
		return err
	}
	if err := waitFor(ctx, "containerd", time.Minute, func() error {
		_, err := run("ctr", "--address", l.containerdSock(), "version")
		return err
	}); err != nil {
		return withLog(l, "containerd", err)
	}
	if err := ensurePauseImage(ctx, l); err != nil {
		return err
	}
	// The runtime is ready; now the Kubernetes binaries (a cold build takes a while).
	if err := ensureBinaries(ctx, l); err != nil {
		return err
	}

	comps := l.components(n)
	byName := map[string]component{}
	for _, c := range comps {
		byName[c.name] = c
	}
	if _, err := l.start(byName["etcd"]); err != nil {
		return err
	}
	if err := waitFor(ctx, "etcd", time.Minute, func() error { return httpOK(etcdClientURL+"/health", nil) }); err != nil {
		return withLog(l, "etcd", err)
	}
	if _, err := l.start(byName["kube-apiserver"]); err != nil {
		return err
	}
	cs, err := adminClient(l)
	if err != nil {
		return err
	}
	if err := waitFor(ctx, "kube-apiserver", 2*time.Minute, func() error {
		_, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err
	}); err != nil {
		return withLog(l, "kube-apiserver", err)
	}
	if err := bootstrapRBAC(ctx, cs); err != nil {
		return err
	}
	for _, name := range []string{"kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"} {
		if _, err := l.start(byName[name]); err != nil {
			return err
		}
	}
	if err := waitFor(ctx, "kubelet", 2*time.Minute, func() error { return httpOK("http://127.0.0.1:10248/healthz", nil) }); err != nil {
		return withLog(l, "kubelet", err)
	}
	if err := waitFor(ctx, "node "+n.name+" Ready", 3*time.Minute, func() error { return nodeReady(ctx, cs, n.name) }); err != nil {
		return withLog(l, "kubelet", err)
	}
	// The kubelet has set its kernel tunables by now (at container manager start,
	// before the node turns Ready): put the shared machine's back.
	if err := restoreSysctls(rec, kubeletSysctls); err != nil {
		return err
	}
	if err := waitFor(ctx, "kube-proxy", time.Minute, func() error { return httpOK("http://127.0.0.1:10256/healthz", nil) }); err != nil {
		return withLog(l, "kube-proxy", err)
	}
	// Pods cannot be created before the controller manager made the default
	// ServiceAccount, nor reach the API server before the node is untainted.
	if err := waitFor(ctx, "default ServiceAccount and an untainted node", 2*time.Minute, func() error {
		if _, err := cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{}); err != nil {
			return err
		}
		nd, err := cs.CoreV1().Nodes().Get(ctx, n.name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, t := range nd.Spec.Taints {
			if t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute {
				return fmt.Errorf("node tainted %s", t.Key)
			}
		}
		return nil
	}); err != nil {
		return withLog(l, "kube-controller-manager", err)
	}
	return nil
}

func ensurePackages(ctx context.Context) error {
	var missing []string
	for pkg, file := range debianPackages {
		if !exists(file) {
			missing = append(missing, pkg)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	logf("installing %v", missing)
	if out, err := exec.CommandContext(ctx, "apt-get", "update", "-qq").CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get update: %w: %s", err, out)
	}
	cmd := exec.CommandContext(ctx, "apt-get", append([]string{"install", "-y", "-qq", "--no-install-recommends"}, missing...)...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get install %v: %w: %s", missing, err, out)
	}
	return nil
}

// ensureBinaries builds (once; then cached) the Kubernetes binaries from the Go
// module proxy with hack/envtest-assets.sh.
func ensureBinaries(ctx context.Context, l layout) error {
	root, err := repoRoot()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(root, "hack", "envtest-assets.sh"))
	cmd.Env = append(os.Environ(), "ASSET_SET=cluster", "KUBE_VERSION="+l.kubeVersion, "HOSTSTACK_CACHE="+l.cacheRoot)
	cmd.Stderr = os.Stderr
	var out bytes.Buffer
	cmd.Stdout = &out
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("building the cluster binaries (hack/envtest-assets.sh): %w", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		logf("binaries built in %s", d.Round(time.Second))
	}
	for _, b := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"} {
		if !exists(l.bin(b)) {
			return fmt.Errorf("%s missing after hack/envtest-assets.sh", l.bin(b))
		}
	}
	return nil
}

func writeConfigs(l layout, n node) error {
	for name, content := range map[string]string{
		"containerd.toml": l.containerdConfig(),
		"kubelet.yaml":    l.kubeletConfig(n),
		"kube-proxy.yaml": l.kubeProxyConfig(n),
	} {
		if err := writeFile(l.path("config", name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// ensureCNI puts the plugins where containerd looks and writes the primary conflist,
// unless it is there: hoststack (or a test) may have changed it, and `up` on a
// running cluster must not undo that.
func ensureCNI(l layout) error {
	for _, p := range []string{"bridge", "host-local", "loopback"} {
		src := filepath.Join(debianCNI, p)
		dst := filepath.Join(cniBinDir, p)
		b, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("CNI plugin %s: %w", p, err)
		}
		if have, err := os.ReadFile(dst); err == nil && bytes.Equal(have, b) {
			continue
		}
		if err := writeFile(dst, b, 0o755); err != nil {
			return err
		}
	}
	conf := filepath.Join(cniConfDir, primaryConflist)
	if exists(conf) {
		return nil
	}
	return writeFile(conf, []byte(l.primaryConflistJSON()), 0o644)
}

func adminClient(l layout) (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", l.adminKubeconfig())
	if err != nil {
		return nil, fmt.Errorf("admin kubeconfig: %w", err)
	}
	cfg.Timeout = 10 * time.Second
	return kubernetes.NewForConfig(cfg)
}

// bootstrapRBAC lets the API server's kubelet client certificate use the kubelet API
// (logs, exec), as kubeadm does.
func bootstrapRBAC(ctx context.Context, cs *kubernetes.Clientset) error {
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "hoststack-cluster:apiserver-kubelet-client"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:kubelet-api-admin"},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: "kube-apiserver-kubelet-client"}},
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("binding the API server's kubelet client: %w", err)
	}
	return nil
}

func nodeReady(ctx context.Context, cs *kubernetes.Clientset, name string) error {
	nd, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return err
	}
	for _, c := range nd.Status.Conditions {
		if c.Type == corev1.NodeReady {
			if c.Status == corev1.ConditionTrue {
				return nil
			}
			return fmt.Errorf("Ready=%s: %s", c.Status, c.Message)
		}
	}
	return errors.New("no Ready condition yet")
}

func httpOK(url string, tlsCfg *tls.Config) error {
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}

// waitFor polls check until it succeeds, the timeout passes or ctx ends.
func waitFor(ctx context.Context, what string, timeout time.Duration, check func() error) error {
	start := time.Now()
	deadline := start.Add(timeout)
	var last error
	for {
		if last = check(); last == nil {
			logf("%s ready after %s", what, time.Since(start).Round(100*time.Millisecond))
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s: %w", what, timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// withLog adds the tail of a component's log to err.
func withLog(l layout, name string, err error) error {
	b, _ := os.ReadFile(l.logFile(name))
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return fmt.Errorf("%w\n--- last lines of %s:\n%s", err, l.logFile(name), b)
}

func goArch() string { return runtime.GOARCH }
