package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	cniversion "github.com/containernetworking/cni/pkg/version"
)

// MinSpecVersion is the oldest CNI spec version the plugin supports; a
// conflist older than that cannot chain it.
const MinSpecVersion = "0.4.0"

// Installer puts the plugin on a node. The zero value writes the default
// agentSocket and pendingDir into the conflist entry.
type Installer struct {
	AgentSocket string
	PendingDir  string
}

// Install is Installer{}.Install.
func Install(binSrc, cniBinDir, cniConfDir string) error {
	return Installer{}.Install(binSrc, cniBinDir, cniConfDir)
}

// Uninstall is Installer{}.Uninstall.
func Uninstall(cniConfDir string) error { return Installer{}.Uninstall(cniConfDir) }

// Install copies the plugin binary binSrc to cniBinDir/hoststack-cni (mode
// 0755) and makes our entry the last plugin of the node's primary network
// configuration: the lexically first *.conf, *.conflist or *.json file of
// cniConfDir, which is the one kubelet's runtime (containerd, CRI-O) uses.
// That file must be a conflist (it has a "plugins" list) of spec version
// 0.4.0 or later; otherwise Install fails rather than edit a file the
// runtime does not read or break the chain. Both files are replaced
// atomically (temporary file in the same directory, then rename), the other
// plugins and keys are kept as they were, and running Install again changes
// nothing.
func (in Installer) Install(binSrc, cniBinDir, cniConfDir string) error {
	if err := installBinary(binSrc, filepath.Join(cniBinDir, PluginType)); err != nil {
		return fmt.Errorf("install %s binary: %w", PluginType, err)
	}
	files, err := confFiles(cniConfDir)
	if err != nil {
		return fmt.Errorf("install %s: %w", PluginType, err)
	}
	if len(files) == 0 {
		return fmt.Errorf("install %s: no CNI network configuration (*.conf, *.conflist, *.json) in %s", PluginType, cniConfDir)
	}
	path := files[0]
	conf, err := readConflist(path)
	if err != nil {
		return fmt.Errorf("install %s: primary CNI config: %w", PluginType, err)
	}
	if conf.plugins == nil {
		return fmt.Errorf("install %s: primary CNI config %s is a single-plugin config, not a conflist; it cannot chain a plugin", PluginType, path)
	}
	ok, err := cniversion.GreaterThanOrEqualTo(conf.cniVersion, MinSpecVersion)
	if err != nil {
		return fmt.Errorf("install %s: %s: cniVersion %q: %w", PluginType, path, conf.cniVersion, err)
	}
	if !ok {
		return fmt.Errorf("install %s: %s has cniVersion %s; chaining %s needs %s or later", PluginType, path, conf.cniVersion, PluginType, MinSpecVersion)
	}
	entry, err := in.entry()
	if err != nil {
		return err
	}
	if n := len(conf.plugins); n > 0 && isOurs(conf.plugins[n-1]) && jsonEqual(conf.plugins[n-1], entry) && countOurs(conf.plugins) == 1 {
		return nil
	}
	conf.plugins = append(slices.DeleteFunc(conf.plugins, isOurs), entry)
	if err := conf.write(); err != nil {
		return fmt.Errorf("install %s: %w", PluginType, err)
	}
	return nil
}

// Uninstall removes our entry from every conflist of cniConfDir that has
// one (the primary may have changed since Install), leaving the rest of
// each file as it was. The binary stays: the runtime runs it for the DEL
// of pods added while the entry was there.
func (in Installer) Uninstall(cniConfDir string) error {
	files, err := confFiles(cniConfDir)
	if err != nil {
		return fmt.Errorf("uninstall %s: %w", PluginType, err)
	}
	var errs []error
	for _, path := range files {
		conf, err := readConflist(path)
		if err != nil || countOurs(conf.plugins) == 0 {
			continue // not ours to judge or fix
		}
		conf.plugins = slices.DeleteFunc(conf.plugins, isOurs)
		if err := conf.write(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("uninstall %s: %w", PluginType, err)
	}
	return nil
}

func (in Installer) entry() (json.RawMessage, error) {
	e := struct {
		Type        string `json:"type"`
		AgentSocket string `json:"agentSocket"`
		PendingDir  string `json:"pendingDir"`
	}{PluginType, in.AgentSocket, in.PendingDir}
	if e.AgentSocket == "" {
		e.AgentSocket = DefaultSocket
	}
	if e.PendingDir == "" {
		e.PendingDir = DefaultPendingDir
	}
	b, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("encode conflist entry: %w", err)
	}
	return b, nil
}

func installBinary(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(dst), ".hoststack-tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() { _ = os.Remove(tmp) }() // fails harmlessly after the rename
	_, err = io.Copy(f, in)
	if err == nil {
		err = f.Chmod(0o755)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, dst); err != nil {
		return err
	}
	return nil
}

// confFiles lists the network configuration files of dir in the order the
// runtime considers them.
func confFiles(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var files []string
	for _, e := range ents {
		switch filepath.Ext(e.Name()) {
		case ".conf", ".conflist", ".json":
			if !e.IsDir() {
				files = append(files, filepath.Join(dir, e.Name()))
			}
		}
	}
	slices.Sort(files)
	return files, nil
}

// conflist is a network configuration file decoded just enough to edit its
// plugins list: top-level keys keep their order and values byte for byte,
// and so does every plugin entry.
type conflist struct {
	path       string
	mode       os.FileMode
	keys       []string
	vals       map[string]json.RawMessage
	cniVersion string
	plugins    []json.RawMessage // nil: no "plugins" key
}

func readConflist(path string) (*conflist, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c := &conflist{path: path, mode: fi.Mode().Perm(), vals: map[string]json.RawMessage{}}
	dec := json.NewDecoder(bytes.NewReader(data))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, fmt.Errorf("%s: not a JSON object", path)
	}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		key, _ := t.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("%s: key %q: %w", path, key, err)
		}
		if _, dup := c.vals[key]; !dup {
			c.keys = append(c.keys, key)
		}
		c.vals[key] = v
	}
	if _, err := dec.Token(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if v, ok := c.vals["cniVersion"]; ok {
		if err := json.Unmarshal(v, &c.cniVersion); err != nil {
			return nil, fmt.Errorf("%s: cniVersion: %w", path, err)
		}
	}
	if v, ok := c.vals["plugins"]; ok {
		if err := json.Unmarshal(v, &c.plugins); err != nil {
			return nil, fmt.Errorf("%s: plugins: %w", path, err)
		}
		if c.plugins == nil {
			c.plugins = []json.RawMessage{}
		}
	}
	return c, nil
}

func (c *conflist) write() error {
	plugins, err := json.Marshal(c.plugins)
	if err != nil {
		return fmt.Errorf("%s: encode plugins: %w", c.path, err)
	}
	c.vals["plugins"] = plugins
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, k := range c.keys {
		if i > 0 {
			buf.WriteByte(',')
		}
		kb, _ := json.Marshal(k)
		buf.Write(kb)
		buf.WriteByte(':')
		buf.Write(c.vals[k])
	}
	buf.WriteByte('}')
	var out bytes.Buffer
	if err := json.Indent(&out, buf.Bytes(), "", "  "); err != nil {
		return fmt.Errorf("%s: encode: %w", c.path, err)
	}
	out.WriteByte('\n')
	return writeFileAtomic(c.path, out.Bytes(), c.mode)
}

func isOurs(p json.RawMessage) bool {
	var e struct {
		Type string `json:"type"`
	}
	return json.Unmarshal(p, &e) == nil && strings.TrimSpace(e.Type) == PluginType
}

func countOurs(ps []json.RawMessage) int {
	n := 0
	for _, p := range ps {
		if isOurs(p) {
			n++
		}
	}
	return n
}

func jsonEqual(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xb, _ := json.Marshal(x)
	yb, _ := json.Marshal(y)
	return bytes.Equal(xb, yb)
}
