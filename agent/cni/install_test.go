package cni

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
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
	if err := in.Install(bin, binDir, confDir); err != nil {
		t.Fatal(err)
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
	if err := in.Install(bin, binDir, confDir); err != nil {
		t.Fatal(err)
	}
	if inode(t, primary) != ino {
		t.Fatal("second Install rewrote the conflist")
	}
	// A changed setting replaces our entry, still once and last.
	if err := (Installer{AgentSocket: "/other.sock"}).Install(bin, binDir, confDir); err != nil {
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
	if err := Install(bin, binDir, confDir); err != nil {
		t.Fatal(err)
	}
	_, ps := decodePlugins(t, primary)
	if len(ps) != 2 || ps[0]["type"] != "ptp" || ps[1]["type"] != PluginType || ps[1]["agentSocket"] != DefaultSocket {
		t.Fatalf("plugins: %v", ps)
	}
}

func TestInstallRefuses(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"empty dir", nil, "no CNI network configuration"},
		{"primary is a .conf", map[string]string{
			"10-bridge.conf":      `{"cniVersion":"1.0.0","name":"b","type":"bridge"}`,
			"20-flannel.conflist": flannelConflist,
		}, "not a conflist"},
		{"old spec", map[string]string{"10-old.conflist": `{"cniVersion":"0.3.1","name":"o","plugins":[{"type":"bridge"}]}`}, "0.4.0 or later"},
		{"garbage", map[string]string{"10-bad.conflist": `{"plugins":`}, "primary CNI config"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bin, binDir, confDir := installDirs(t)
			for n, d := range tc.files {
				writeFile(t, filepath.Join(confDir, n), d, 0o644)
			}
			err := Install(bin, binDir, confDir)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Install: %v, want an error containing %q", err, tc.want)
			}
			for n, d := range tc.files {
				if got, _ := os.ReadFile(filepath.Join(confDir, n)); string(got) != d {
					t.Fatalf("%s changed by a refused Install", n)
				}
			}
		})
	}
}
