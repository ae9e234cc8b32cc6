package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
)

// Fixed addresses of the cluster. The ports are the upstream defaults, all below the
// ephemeral range, so envtest control planes started by tests (which pick free
// ephemeral ports) never collide with them.
const (
	podCIDR       = "10.244.0.0/24"
	serviceCIDR   = "10.96.0.0/16"
	kubernetesSvc = "10.96.0.1"
	apiserverPort = 6443
	etcdClientURL = "http://127.0.0.1:2379"
	etcdPeerURL   = "http://127.0.0.1:2380"
	bridgeName    = "hoststack-br0"
	networkName   = "hoststack-cluster"
	// primaryConflist is the name a real primary CNI would use (Calico writes
	// 10-calico.conflist, Flannel 10-flannel.conflist).
	primaryConflist = "10-bridge.conflist"
	// pauseImage is built here (hack/cluster/pause) and imported before containerd
	// needs it: nothing is ever pulled.
	pauseImage = "hoststack.local/pause:1.0"
)

// layout is where everything lives. The well-known node paths (kubelet, CNI,
// /var/log/pods) are the standard ones, so the chart's defaults apply unchanged.
type layout struct {
	dir         string // state: certs, configs, etcd data, containerd root, logs, pids
	runDir      string // runtime state: containerd's state and socket
	kubeVersion string
	cacheRoot   string
}

func defaultLayout() layout {
	l := layout{
		dir:         "/var/lib/hoststack-cluster",
		runDir:      "/run/hoststack-cluster",
		kubeVersion: "v1.37.2",
		cacheRoot:   filepath.Join(os.Getenv("HOME"), ".cache", "hoststack"),
	}
	if d := os.Getenv("HOSTSTACK_CLUSTER_DIR"); d != "" {
		l.dir = d
	}
	if v := os.Getenv("KUBE_VERSION"); v != "" {
		l.kubeVersion = v
	}
	if c := os.Getenv("HOSTSTACK_CACHE"); c != "" {
		l.cacheRoot = c
	}
	return l
}

func (l layout) path(elem ...string) string {
	return filepath.Join(append([]string{l.dir}, elem...)...)
}

func (l layout) pki(name string) string     { return l.path("pki", name) }
func (l layout) kubeconfig(c string) string { return l.path("kubeconfig", c+".kubeconfig") }
func (l layout) adminKubeconfig() string    { return l.kubeconfig("admin") }
func (l layout) logFile(c string) string    { return l.path("logs", c+".log") }
func (l layout) pidFile(c string) string    { return l.path("pids", c+".pid") }
func (l layout) hostRecord() string         { return l.path("host-record.json") }
func (l layout) binDir() string             { return filepath.Join(l.cacheRoot, "envtest", l.kubeVersion) }
func (l layout) bin(name string) string     { return filepath.Join(l.binDir(), name) }
func (l layout) containerdSock() string {
	return filepath.Join(l.runDir, "containerd", "containerd.sock")
}

// Standard node paths.
const (
	kubeletDir = "/var/lib/kubelet"
	cniConfDir = "/etc/cni/net.d"
	cniBinDir  = "/opt/cni/bin"
	netnsDir   = "/var/run/netns"
	debianCNI  = "/usr/lib/cni"
)

// sharedPaths are host paths the cluster (or hoststack on it) may create. `up`
// records which of them exist, with their entries, before it starts anything; `down`
// removes the ones it created and, in those that existed, the entries it added.
var sharedPaths = []string{
	kubeletDir,
	"/var/log/pods",
	"/var/log/containers",
	"/etc/cni",
	cniConfDir,
	"/opt/cni",
	cniBinDir,
	"/var/lib/cni",
	"/run/containerd", // containerd-shim sockets live in /run/containerd/s whatever the state dir
	"/opt/containerd",
	"/run/hoststack",     // the agent's socket dir (chart default)
	"/var/lib/hoststack", // the agent's state (chart default)
	netnsDir,
}

// node is who this machine is in the cluster.
type node struct {
	name string
	ip   net.IP
	dev  string
}

// detectNode picks the node IP as the first IPv4 address of the interface holding the
// default route (eth0 here): the address pods and the API server reach the kubelet at.
func detectNode() (node, error) {
	dev, err := defaultRouteDev()
	if err != nil {
		return node{}, err
	}
	ifc, err := net.InterfaceByName(dev)
	if err != nil {
		return node{}, fmt.Errorf("interface %s of the default route: %w", dev, err)
	}
	addrs, err := ifc.Addrs()
	if err != nil {
		return node{}, fmt.Errorf("addresses of %s: %w", dev, err)
	}
	var ip net.IP
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil {
			ip = n.IP.To4()
			break
		}
	}
	if ip == nil {
		return node{}, fmt.Errorf("interface %s has no IPv4 address", dev)
	}
	host, err := os.Hostname()
	if err != nil {
		return node{}, fmt.Errorf("hostname: %w", err)
	}
	name := strings.ToLower(strings.SplitN(host, ".", 2)[0])
	return node{name: name, ip: ip, dev: dev}, nil
}

// defaultRouteDev reads /proc/net/route for the IPv4 default route's interface.
func defaultRouteDev() (string, error) {
	b, err := os.ReadFile("/proc/net/route")
	if err != nil {
		return "", fmt.Errorf("reading routes: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) >= 2 && f[1] == "00000000" {
			return f[0], nil
		}
	}
	return "", errors.New("no IPv4 default route: cannot pick a node IP")
}

func printEnv(l layout) error {
	n, err := detectNode()
	if err != nil {
		return err
	}
	fmt.Printf("KUBECONFIG=%s\n", l.adminKubeconfig())
	fmt.Printf("CONTAINERD_ADDRESS=%s\n", l.containerdSock())
	fmt.Printf("NODE_NAME=%s\n", n.name)
	fmt.Printf("NODE_IP=%s\n", n.ip)
	fmt.Printf("CNI_CONF_DIR=%s\n", cniConfDir)
	fmt.Printf("CNI_BIN_DIR=%s\n", cniBinDir)
	fmt.Printf("CNI_PRIMARY_CONFLIST=%s\n", filepath.Join(cniConfDir, primaryConflist))
	fmt.Printf("KUBELET_DIR=%s\n", kubeletDir)
	fmt.Printf("KUBECTL=%s\n", l.bin("kubectl"))
	return nil
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFile(path, append(b, '\n'), 0o600)
}

// writeFile writes atomically (temp file and rename), creating the directory.
func writeFile(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("creating directory for %s: %w", path, err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("renaming %s: %w", tmp, err)
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}
