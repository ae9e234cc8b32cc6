// Command cluster assembles a real single-node Kubernetes cluster on this machine
// without Docker, and takes it apart again:
//
//	go run ./hack/cluster up      # idempotent; prints the admin kubeconfig path
//	go run ./hack/cluster down    # no process, mount, netns, veth, rule or file left
//	go run ./hack/cluster import IMAGE.tar...  # load image archives into the node
//	go run ./hack/cluster env     # KUBECONFIG=..., CONTAINERD_ADDRESS=..., NODE_NAME=...
//
// The control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) and
// the node (kubelet, kube-proxy) are the binaries hack/envtest-assets.sh builds from the
// Go module proxy (ASSET_SET=cluster); the container runtime is Debian's containerd and
// runc; the pod network is the bridge and host-local plugins from Debian's
// containernetworking-plugins, written as a cniVersion 0.3.1 conflist as Flannel and
// Calico write theirs. Certificates, keys and kubeconfigs are made here with crypto/x509.
//
// Everything the cluster changes on the host is recorded before it is changed (sysctls,
// the propagation of /, which shared directories existed) in the state directory, and
// `down` puts it back. Run as root.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func usage() {
	fmt.Fprint(os.Stderr, `usage: cluster up|down|status|env|import ARCHIVE...

  up      start (or finish starting) the single-node cluster; prints the kubeconfig path
  down    stop it and remove everything it put on the host
  status  say which components run
  env     print KUBECONFIG, CONTAINERD_ADDRESS, NODE_NAME, CNI_CONF_DIR, CNI_BIN_DIR, ...
  import  load image archives (docker save or OCI layout tarballs) into the node's containerd

Environment:
  HOSTSTACK_CLUSTER_DIR  state directory (default /var/lib/hoststack-cluster)
  HOSTSTACK_CACHE        binary cache root, as for hack/envtest-assets.sh
  KUBE_VERSION           Kubernetes version (default v1.37.2)
`)
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	l := defaultLayout()
	var err error
	switch os.Args[1] {
	case "up":
		start := time.Now()
		if err = up(ctx, l); err == nil {
			logf("cluster up in %s", time.Since(start).Round(100*time.Millisecond))
			fmt.Println(l.adminKubeconfig())
		}
	case "down":
		start := time.Now()
		if err = down(l); err == nil {
			logf("cluster down in %s", time.Since(start).Round(100*time.Millisecond))
		}
	case "status":
		err = status(l)
	case "env":
		err = printEnv(l)
	case "import":
		err = importImages(ctx, l, os.Args[2:])
	case "-h", "--help", "help":
		usage()
		return
	default:
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "cluster: "+format+"\n", args...)
}
