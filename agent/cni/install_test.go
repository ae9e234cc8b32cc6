package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/containernetworking/cni/libcni"
)

const flannelConflist = `{
  "name": "cbr0",
  "cniVersion": "1.0.0",
  "plugins": [
    {"type": "flannel", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ],
  "disableCheck": false
}
`

func writeFile(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}

func installDirs(t *testing.T) (bin, binDir, confDir string) {
	t.Helper()
	d := t.TempDir()
	bin = filepath.Join(d, "src-hoststack-cni")
	writeFile(t, bin, "#!/bin/sh\necho plugin\n", 0o600)
	binDir, confDir = filepath.Join(d, "bin"), filepath.Join(d, "net.d")
	for _, p := range []string{binDir, confDir} {
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return bin, binDir, confDir
}

func decodePlugins(t *testing.T, path string) (top map[string]json.RawMessage, plugins []map[string]any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &top); err != nil {
		t.Fatalf("%s: %v\n%s", path, err, data)
	}
	if err := json.Unmarshal(top["plugins"], &plugins); err != nil {
		t.Fatal(err)
	}
	return top, plugins
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var ns []string
	for _, e := range ents {
		ns = append(ns, e.Name())
	}
	return ns
}

func TestInstallUninstall(t *testing.T) {
	bin, binDir, confDir := installDirs(t)
	primary := filepath.Join(confDir, "10-flannel.conflist")
	other := filepath.Join(confDir, "20-other.conflist")
	writeFile(t, primary, flannelConflist, 0o640)
	writeFile(t, other, `{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"bridge"}]}`, 0o644)
	_, before := decodePlugins(t, primary)
	ino := inode(t, primary)

	in := Installer{AgentSocket: "/run/hs/cni.sock"}
	if got, err := in.Install(bin, binDir, confDir); err != nil || got != primary {
		t.Fatalf("Install: %q, %v; want %s", got, err, primary)
	}
	// The binary: same bytes, 0755.
	fi, err := os.Stat(filepath.Join(binDir, PluginType))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o755 {
		t.Fatalf("binary mode %v", fi.Mode())
	}
	got, _ := os.ReadFile(filepath.Join(binDir, PluginType))
	want, _ := os.ReadFile(bin)
	if !bytes.Equal(got, want) {
		t.Fatal("binary content differs")
	}
	// The conflist: replaced by a rename (new inode, mode kept), ours last,
	// the others unchanged, top-level keys in their order.
	if inode(t, primary) == ino {
		t.Fatal("conflist rewritten in place, not replaced")
	}
	if fi, _ := os.Stat(primary); fi.Mode().Perm() != 0o640 {
		t.Fatalf("conflist mode %v, want 0640", fi.Mode())
	}
	top, after := decodePlugins(t, primary)
	if len(after) != 3 || !reflect.DeepEqual(after[:2], before) {
		t.Fatalf("plugins after install: %v", after)
	}
	if !reflect.DeepEqual(after[2], map[string]any{"type": PluginType, "agentSocket": "/run/hs/cni.sock", "pendingDir": DefaultPendingDir}) {
		t.Fatalf("our entry: %v", after[2])
	}
	if string(top["name"]) != `"cbr0"` || string(top["disableCheck"]) != "false" {
		t.Fatalf("top-level keys changed: %v", top)
	}
	data, _ := os.ReadFile(primary)
	if i, j := bytes.Index(data, []byte(`"name"`)), bytes.Index(data, []byte(`"disableCheck"`)); i < 0 || j < i {
		t.Fatalf("top-level key order lost:\n%s", data)
	}
	if o, _ := os.ReadFile(other); string(o) != `{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"bridge"}]}` {
		t.Fatalf("non-primary conflist touched: %s", o)
	}
	for _, d := range []string{binDir, confDir} {
		for _, n := range dirNames(t, d) {
			if strings.HasPrefix(n, ".") {
				t.Fatalf("temporary file left: %s/%s", d, n)
			}
		}
	}

	// Idempotent: a second Install leaves the conflist alone.
	ino = inode(t, primary)
	binIno := inode(t, filepath.Join(binDir, PluginType))
	if _, err := in.Install(bin, binDir, confDir); err != nil {
		t.Fatal(err)
	}
	if inode(t, primary) != ino {
		t.Fatal("second Install rewrote the conflist")
	}
	if inode(t, filepath.Join(binDir, PluginType)) != binIno {
		t.Fatal("second Install rewrote the binary")
	}
	// A changed setting replaces our entry, still once and last.
	if _, err := (Installer{AgentSocket: "/other.sock"}).Install(bin, binDir, confDir); err != nil {
		t.Fatal(err)
	}
	_, after = decodePlugins(t, primary)
	if len(after) != 3 || after[2]["agentSocket"] != "/other.sock" {
		t.Fatalf("after reconfigure: %v", after)
	}

	// Uninstall: only our entry goes; twice is fine.
	for range 2 {
		if err := Uninstall(confDir); err != nil {
			t.Fatal(err)
		}
		_, after = decodePlugins(t, primary)
		if !reflect.DeepEqual(after, before) {
			t.Fatalf("after uninstall: %v, want %v", after, before)
		}
	}
	if _, err := os.Stat(filepath.Join(binDir, PluginType)); err != nil {
		t.Fatalf("uninstall removed the binary (DELs of running pods need it): %v", err)
	}
}

func TestInstallMovesOurEntryLast(t *testing.T) {
	bin, binDir, confDir := installDirs(t)
	primary := filepath.Join(confDir, "05-x.conflist")
	writeFile(t, primary, `{"cniVersion":"1.1.0","name":"n","plugins":[{"type":"hoststack-cni"},{"type":"ptp"},{"type":"hoststack-cni","agentSocket":"/a"}]}`, 0o644)
	if _, err := Install(bin, binDir, confDir); err != nil {
		t.Fatal(err)
	}
	_, ps := decodePlugins(t, primary)
	if len(ps) != 2 || ps[0]["type"] != "ptp" || ps[1]["type"] != PluginType || ps[1]["agentSocket"] != DefaultSocket {
		t.Fatalf("plugins: %v", ps)
	}
}

// A conflist where another chained plugin came after ours (it wants to be
// last too) is left alone: moving ours would start a rewrite war.
func TestInstallKeepsOurEntryWhereItIs(t *testing.T) {
	bin, binDir, confDir := installDirs(t)
	primary := filepath.Join(confDir, "05-x.conflist")
	writeFile(t, primary, `{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"ptp"},{"type":"hoststack-cni","agentSocket":"/run/hoststack/cni.sock","pendingDir":"/var/lib/hoststack/cni-pending"},{"type":"istio-cni"}]}`, 0o644)
	ino := inode(t, primary)
	if _, err := Install(bin, binDir, confDir); err != nil {
		t.Fatal(err)
	}
	if inode(t, primary) != ino {
		t.Fatal("Install moved an entry that was fine")
	}
}

func TestInstallRefuses(t *testing.T) {
	for _, tc := range []struct {
		name   string
		files  map[string]string
		reason string
		want   string
	}{
		{"empty dir", nil, ReasonNoConfig, "no CNI network configuration"},
		{"primary is a .conf", map[string]string{
			"10-bridge.conf":      `{"cniVersion":"1.0.0","name":"b","type":"bridge"}`,
			"20-flannel.conflist": flannelConflist,
		}, ReasonUnsupportedConfig, "not a conflist"},
		{"too old", map[string]string{"10-old.conflist": `{"cniVersion":"0.2.0","name":"o","plugins":[{"type":"bridge"}]}`}, ReasonUnsupportedVersion, "cniVersion 0.2.0"},
		{"too new", map[string]string{"10-new.conflist": `{"cniVersion":"1.2.0","name":"o","plugins":[{"type":"bridge"}]}`}, ReasonUnsupportedVersion, "cniVersion 1.2.0"},
		{"only garbage", map[string]string{"10-bad.conflist": `{"plugins":`}, ReasonNoConfig, "10-bad.conflist"},
		{"plugins from a directory", map[string]string{"10-d.conflist": `{"cniVersion":"1.1.0","name":"d","plugins":[{"type":"bridge"}]}`, "d/20-tuning.conf": `{"type":"tuning"}`}, ReasonUnsupportedConfig, "plugins from the directory"},
		{"Multus delegating to a NetworkAttachmentDefinition", map[string]string{
			"00-multus.conf":     `{"cniVersion":"0.3.1","name":"multus-cni-network","type":"multus-shim","clusterNetwork":"default/calico"}`,
			"10-calico.conflist": `{"cniVersion":"0.3.1","name":"k8s-pod-network","plugins":[{"type":"calico"}]}`,
		}, ReasonUnsupportedConfig, "default/calico"},
		{"Multus alone", map[string]string{"00-multus.conf": `{"cniVersion":"0.3.1","name":"multus-cni-network","type":"multus-shim"}`}, ReasonNoConfig, "Multus"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bin, binDir, confDir := installDirs(t)
			for n, d := range tc.files {
				if err := os.MkdirAll(filepath.Dir(filepath.Join(confDir, n)), 0o755); err != nil {
					t.Fatal(err)
				}
				writeFile(t, filepath.Join(confDir, n), d, 0o644)
			}
			_, err := Install(bin, binDir, confDir)
			var nc *NotChainedError
			if !errors.As(err, &nc) || nc.Reason != tc.reason || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Install: %v, want a %s error containing %q", err, tc.reason, tc.want)
			}
			for n, d := range tc.files {
				if got, _ := os.ReadFile(filepath.Join(confDir, n)); string(got) != d {
					t.Fatalf("%s changed by a refused Install", n)
				}
			}
		})
	}
}

// Every spec version the plugin implements can be chained into, 0.3.x
// (what Calico, Flannel and Cilium write) included; libcni's cniVersions
// list decides the version as it does for the runtime.
func TestInstallSpecVersions(t *testing.T) {
	for _, v := range append(slices.Clone(SpecVersions), "cniVersions") {
		t.Run(v, func(t *testing.T) {
			bin, binDir, confDir := installDirs(t)
			primary := filepath.Join(confDir, "10-net.conflist")
			data := `{"cniVersion":"` + v + `","name":"n","plugins":[{"type":"bridge","ipam":{"type":"host-local","subnet":"10.1.0.0/16"}},{"type":"portmap","capabilities":{"portMappings":true}}]}`
			if v == "cniVersions" {
				data = `{"cniVersion":"0.3.1","cniVersions":["0.3.1","1.0.0"],"name":"n","plugins":[{"type":"bridge"}]}`
			}
			writeFile(t, primary, data, 0o644)
			if got, err := Install(bin, binDir, confDir); err != nil || got != primary {
				t.Fatalf("Install: %q, %v", got, err)
			}
			l, err := libcni.ConfListFromFile(primary)
			if err != nil {
				t.Fatalf("the runtime cannot load the chained file: %v", err)
			}
			if last := l.Plugins[len(l.Plugins)-1].Network.Type; last != PluginType {
				t.Fatalf("last plugin %s", last)
			}
		})
	}
}

// The primary network is the one the runtime uses: lexical order, files
// that do not load skipped (CRI-O), .conf files with a conflist inside
// skipped, and Multus's own file stepped over to the file it delegates to.
func TestPrimaryAsTheRuntime(t *testing.T) {
	calico := `{"cniVersion":"0.3.1","name":"k8s-pod-network","plugins":[{"type":"calico"},{"type":"bandwidth","capabilities":{"bandwidth":true}}]}`
	for _, tc := range []struct {
		name      string
		files     map[string]string
		want      string
		viaMultus string
	}{
		{"lexical, not numeric", map[string]string{"10-a.conflist": `{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"ptp"}]}`, "9-b.conflist": calico}, "10-a.conflist", ""},
		{"conflist in a .json skipped", map[string]string{"10-a.json": `{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"ptp"}]}`, "9-b.conflist": calico}, "9-b.conflist", ""},
		{"broken first file skipped", map[string]string{"05-broken.conflist": `{"name":"x","plugins":[`, "10-calico.conflist": calico}, "10-calico.conflist", ""},
		{"conflist in a .conf skipped", map[string]string{"05-wrong.conf": calico, "10-calico.conflist": calico}, "10-calico.conflist", ""},
		{"empty plugins skipped", map[string]string{"05-empty.conflist": `{"cniVersion":"1.0.0","name":"e","plugins":[]}`, "10-calico.conflist": calico}, "10-calico.conflist", ""},
		{"Multus thick, clusterNetwork a path", map[string]string{
			"00-multus.conf":     `{"cniVersion":"0.3.1","name":"multus-cni-network","type":"multus-shim","clusterNetwork":"/host/etc/cni/net.d/20-calico.conflist"}`,
			"10-other.conflist":  `{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"ptp"}]}`,
			"20-calico.conflist": calico,
		}, "20-calico.conflist", "00-multus.conf"},
		{"Multus thin, delegates embedded", map[string]string{
			"00-multus.conf":     `{"cniVersion":"0.3.1","name":"multus-cni-network","type":"multus","kubeconfig":"/etc/cni/net.d/multus.d/multus.kubeconfig","delegates":[` + calico + `]}`,
			"10-calico.conflist": calico,
		}, "10-calico.conflist", "00-multus.conf"},
		{"Multus, clusterNetwork a network name", map[string]string{
			"00-multus.conf":     `{"cniVersion":"0.3.1","name":"multus-cni-network","type":"multus","clusterNetwork":"k8s-pod-network"}`,
			"05-other.conflist":  `{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"ptp"}]}`,
			"10-calico.conflist": calico,
		}, "10-calico.conflist", "00-multus.conf"},
		{"Multus, default network unnamed", map[string]string{
			"00-multus.conf":     `{"cniVersion":"0.3.1","name":"multus-cni-network","type":"multus-shim"}`,
			"10-calico.conflist": calico,
		}, "10-calico.conflist", "00-multus.conf"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bin, binDir, confDir := installDirs(t)
			for n, d := range tc.files {
				writeFile(t, filepath.Join(confDir, n), d, 0o644)
			}
			p, err := Primary(confDir)
			if err != nil {
				t.Fatal(err)
			}
			if p.Path != filepath.Join(confDir, tc.want) {
				t.Fatalf("primary %s, want %s", p.Path, tc.want)
			}
			if via := filepath.Base(p.ViaMultus); tc.viaMultus != "" && via != tc.viaMultus {
				t.Fatalf("via Multus %q, want %q", p.ViaMultus, tc.viaMultus)
			}
			if got, err := Install(bin, binDir, confDir); err != nil || got != p.Path {
				t.Fatalf("Install: %q, %v; want %s", got, err, p.Path)
			}
			for n, d := range tc.files {
				if n == tc.want {
					continue
				}
				if got, _ := os.ReadFile(filepath.Join(confDir, n)); string(got) != d {
					t.Fatalf("%s (not the primary) changed by Install", n)
				}
			}
			_, ps := decodePlugins(t, p.Path)
			if ps[len(ps)-1]["type"] != PluginType {
				t.Fatalf("plugins of %s: %v", tc.want, ps)
			}
		})
	}
}
