package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	types040 "github.com/containernetworking/cni/pkg/types/040"

	hcni "github.com/hoststack/hoststack/agent/cni"
	"github.com/hoststack/hoststack/internal/testreq"
)

// mainPlugins returns the directory holding the node's real bridge and
// host-local plugins (Debian's containernetworking-plugins, or
// $HOSTSTACK_CNI_PLUGINS_DIR).
func mainPlugins(t *testing.T) string {
	t.Helper()
	dirs := []string{"/usr/lib/cni", "/opt/cni/bin"}
	if d := os.Getenv("HOSTSTACK_CNI_PLUGINS_DIR"); d != "" {
		dirs = []string{d}
	}
	for _, d := range dirs {
		if fi, err := os.Stat(filepath.Join(d, "bridge")); err == nil && fi.Mode().IsRegular() {
			if _, err := os.Stat(filepath.Join(d, "host-local")); err == nil {
				return d
			}
		}
	}
	testreq.Missing(t, fmt.Sprintf("the bridge and host-local CNI plugins (Debian package containernetworking-plugins) in none of %v", dirs))
	return ""
}

// bareNetns creates an empty network namespace, as the runtime does for a
// pod sandbox.
func bareNetns(t *testing.T, name string) string {
	t.Helper()
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	return "/run/netns/" + name
}

// The node's primary network is bridge + host-local written as a 0.3.1
// conflist, the way Flannel and Calico write theirs. The installer chains
// the plugin into it, and the runtime's own library (libcni, which
// containerd and CRI-O use) runs the chain in a real pod namespace: the
// result is a valid 0.3.1 result with the pod's address, and the agent
// knows the pod. With the agent down, a pod still gets its network and the
// agent learns of it when it returns. After the uninstall (entry, then
// binary) the primary chain runs without our plugin: pods keep starting.
func TestRealChainOnSpec031(t *testing.T) {
	testreq.NetNS(t)
	plugins := mainPlugins(t)
	tag := fmt.Sprintf("%d", os.Getpid()%100000)
	bridge := "hsbr" + tag
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", bridge).Run() })

	dir := t.TempDir()
	binDir, confDir, cacheDir := filepath.Join(dir, "bin"), filepath.Join(dir, "net.d"), filepath.Join(dir, "cache")
	for _, d := range []string{binDir, confDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	primary := filepath.Join(confDir, "10-bridge.conflist")
	conflist := `{
  "cniVersion": "0.3.1",
  "name": "podnet",
  "plugins": [
    {"type": "bridge", "bridge": "` + bridge + `", "isGateway": true, "ipMasq": false,
     "ipam": {"type": "host-local", "subnet": "10.216.7.0/24", "dataDir": "` + filepath.Join(dir, "ipam") + `"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`
	if err := os.WriteFile(primary, []byte(conflist), 0o644); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, filepath.Join(dir, "agent"))
	in := hcni.Installer{AgentSocket: a.socket, PendingDir: a.pending}
	if got, err := in.Install(pluginBin, binDir, confDir); err != nil || got != primary {
		t.Fatalf("Install: %q, %v", got, err)
	}

	cni := libcni.NewCNIConfigWithCacheDir([]string{binDir, plugins}, cacheDir, nil)
	// What the runtime does: load the first configuration, run the chain.
	attach := func(id, uid string) (*types040.Result, *libcni.RuntimeConf, *libcni.NetworkConfigList) {
		t.Helper()
		p, err := hcni.Primary(confDir)
		if err != nil {
			t.Fatal(err)
		}
		list, err := libcni.ConfListFromFile(p.Path)
		if err != nil {
			t.Fatal(err)
		}
		rt := &libcni.RuntimeConf{ContainerID: id, NetNS: bareNetns(t, "hs-chain-"+tag+"-"+id), IfName: "eth0",
			Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "shop"}, {"K8S_POD_NAME", id}, {"K8S_POD_UID", uid}}}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			t.Fatalf("ADD of the chain %s: %v", p.Path, err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_ = cni.DelNetworkList(ctx, list, rt)
		})
		if res.Version() != "0.3.1" {
			t.Fatalf("result version %s, want 0.3.1", res.Version())
		}
		r, err := types040.GetResult(res)
		if err != nil {
			t.Fatalf("not a valid 0.3.1 result: %v", err)
		}
		if len(r.IPs) != 1 || r.IPs[0].Interface == nil || r.Interfaces[*r.IPs[0].Interface].Sandbox != rt.NetNS {
			t.Fatalf("result: %s", r)
		}
		return r, rt, list
	}

	r, rt, _ := attach("pod1", "uid-1")
	at, ok := a.reg.Lookup("uid-1")
	if !ok || at.Netns != rt.NetNS || len(at.IPs) != 1 || at.IPs[0].Address != r.IPs[0].Address.String() {
		t.Fatalf("agent's attachment: %+v %v; result %s", at, ok, r)
	}

	// The agent is down: the pod still starts, and is known once it is
	// back.
	a.stop(t)
	r2, _, _ := attach("pod2", "uid-2")
	b := startAgent(t, filepath.Join(dir, "agent"))
	at, ok = b.reg.Lookup("uid-2")
	if !ok || len(at.IPs) != 1 || at.IPs[0].Address != r2.IPs[0].Address.String() {
		t.Fatalf("queued ADD: %+v %v; result %s", at, ok, r2)
	}

	// Uninstall: the entry, then the binary. The runtime's next ADD runs
	// the primary chain alone.
	if err := hcni.Uninstall(confDir); err != nil {
		t.Fatal(err)
	}
	if err := hcni.RemoveBinary(binDir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(binDir, hcni.PluginType)); !os.IsNotExist(err) {
		t.Fatalf("binary left: %v", err)
	}
	attach("pod3", "uid-3")
	if _, ok := b.reg.Lookup("uid-3"); ok {
		t.Fatal("the agent learned of a pod after the uninstall")
	}
}
