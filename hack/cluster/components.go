package main

import (
	"fmt"
	"path/filepath"
	"strconv"
)

// The configuration of each part. Settings that matter here (see DESIGN.md, "Measured
// facts"): containerd restrict_oom_score_adj (the kubelet asks for OOM scores an
// unprivileged-looking root may not set), cgroupfs (no systemd), failCgroupV1: false
// (this kernel mounts cgroup v1), the node IP is the default route's address, and the
// API server reaches kubelets by InternalIP (the node name does not resolve).

func (l layout) containerdConfig() string {
	return fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = %q

[ttrpc]
  address = %q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  enable_unprivileged_ports = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = %q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
    max_conf_num = 1
`, l.path("containerd"), filepath.Join(l.runDir, "containerd"), l.containerdSock(),
		filepath.Join(l.runDir, "containerd", "containerd.sock.ttrpc"), pauseImage,
		filepath.Join(l.runDir, "runc"), cniBinDir, cniConfDir)
}

// primaryConflistJSON is the pod network: a bridge with host-local addresses, in the
// 0.3.1 conflist form Flannel and Calico write. No ipMasq (pods need not reach past the
// node, and it would add iptables rules).
func (l layout) primaryConflistJSON() string {
	return fmt.Sprintf(`{
  "cniVersion": "0.3.1",
  "name": %q,
  "plugins": [
    {
      "type": "bridge",
      "bridge": %q,
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": %q}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": %q
      }
    }
  ]
}
`, networkName, bridgeName, podCIDR, l.path("cni-ipam"))
}

func (l layout) kubeletConfig(n node) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %q}
authorization: {mode: Webhook}
tlsCertFile: %q
tlsPrivateKeyFile: %q
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://%s
address: %s
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
resolvConf: /etc/resolv.conf
serializeImagePulls: false
rotateCertificates: false
serverTLSBootstrap: false
protectKernelDefaults: false
# The machine's disk is shared with other work: evict only when it is really full.
evictionHard:
  memory.available: 100Mi
  nodefs.available: 2%%
  nodefs.inodesFree: 2%%
  imagefs.available: 2%%
imageGCHighThresholdPercent: 98
imageGCLowThresholdPercent: 95
`, l.pki("ca.crt"), l.pki("kubelet-serving.crt"), l.pki("kubelet-serving.key"), l.containerdSock(), n.ip)
}

// kubeProxyConfig: nftables mode (no iptables rule of ours on the host), and conntrack
// sysctls left as they are (zero values mean "do not touch").
func (l layout) kubeProxyConfig(n node) string {
	return fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %q
mode: nftables
clusterCIDR: %q
hostnameOverride: %q
bindAddress: %s
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: [%q]
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`, l.kubeconfig("kube-proxy"), podCIDR, n.name, n.ip, n.ip.String()+"/32")
}

func (l layout) components(n node) []component {
	etcd := component{name: "etcd", bin: l.bin("etcd"), args: []string{
		"--name=default",
		"--data-dir=" + l.path("etcd"),
		"--listen-client-urls=" + etcdClientURL,
		"--advertise-client-urls=" + etcdClientURL,
		"--listen-peer-urls=" + etcdPeerURL,
		"--initial-advertise-peer-urls=" + etcdPeerURL,
		"--initial-cluster=default=" + etcdPeerURL,
		// A throwaway cluster: losing it to a power cut is fine, waiting on fsync is not.
		"--unsafe-no-fsync",
	}}
	apiserver := component{name: "kube-apiserver", bin: l.bin("kube-apiserver"), args: []string{
		"--etcd-servers=" + etcdClientURL,
		"--advertise-address=" + n.ip.String(),
		"--bind-address=0.0.0.0",
		"--secure-port=" + strconv.Itoa(apiserverPort),
		"--tls-cert-file=" + l.pki("apiserver.crt"),
		"--tls-private-key-file=" + l.pki("apiserver.key"),
		"--client-ca-file=" + l.pki("ca.crt"),
		"--service-account-key-file=" + l.pki("sa.pub"),
		"--service-account-signing-key-file=" + l.pki("sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range=" + serviceCIDR,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--kubelet-client-certificate=" + l.pki("apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + l.pki("apiserver-kubelet-client.key"),
		"--kubelet-preferred-address-types=InternalIP",
		"--profiling=false",
	}}
	kcm := component{name: "kube-controller-manager", bin: l.bin("kube-controller-manager"), args: []string{
		"--kubeconfig=" + l.kubeconfig("controller-manager"),
		"--authentication-kubeconfig=" + l.kubeconfig("controller-manager"),
		"--authorization-kubeconfig=" + l.kubeconfig("controller-manager"),
		"--bind-address=127.0.0.1",
		"--leader-elect=false",
		"--use-service-account-credentials=true",
		"--service-account-private-key-file=" + l.pki("sa.key"),
		"--root-ca-file=" + l.pki("ca.crt"),
		"--cluster-signing-cert-file=" + l.pki("ca.crt"),
		"--cluster-signing-key-file=" + l.pki("ca.key"),
		"--service-cluster-ip-range=" + serviceCIDR,
		"--profiling=false",
	}}
	scheduler := component{name: "kube-scheduler", bin: l.bin("kube-scheduler"), args: []string{
		"--kubeconfig=" + l.kubeconfig("scheduler"),
		"--authentication-kubeconfig=" + l.kubeconfig("scheduler"),
		"--authorization-kubeconfig=" + l.kubeconfig("scheduler"),
		"--bind-address=127.0.0.1",
		"--leader-elect=false",
		"--profiling=false",
	}}
	kubelet := component{name: "kubelet", bin: l.bin("kubelet"), args: []string{
		"--config=" + l.path("config", "kubelet.yaml"),
		"--kubeconfig=" + l.kubeconfig("kubelet"),
		"--hostname-override=" + n.name,
		"--node-ip=" + n.ip.String(),
	}}
	proxy := component{name: "kube-proxy", bin: l.bin("kube-proxy"), args: []string{
		"--config=" + l.path("config", "kube-proxy.yaml"),
	}}
	return []component{etcd, apiserver, kcm, scheduler, kubelet, proxy}
}

func (l layout) containerd() component {
	return component{name: "containerd", bin: "/usr/bin/containerd", args: []string{
		"--config=" + l.path("config", "containerd.toml"),
	}}
}
