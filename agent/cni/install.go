package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

// SpecVersions are the CNI spec versions the plugin implements, and so the
// cniVersion a conflist must have for Install to chain it. 0.3.x is what
// Calico, Flannel and Cilium write; CHECK exists from 0.4.0, STATUS and GC
// from 1.1.0.
var SpecVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// Reasons Install gives for not chaining (NotChainedError.Reason), and
// ReasonChained; they are the reasons of the SessionNode's CNIChained
// condition.
const (
	ReasonChained            = "Chained"
	ReasonNoConfig           = "NoConfig"
	ReasonUnsupportedVersion = "UnsupportedVersion"
	ReasonUnsupportedConfig  = "UnsupportedConfig"
	ReasonInstallFailed      = "InstallFailed"
)

// NotChainedError says why Install did not chain the plugin.
type NotChainedError struct {
	Reason string // one of the Reason constants
	File   string // the configuration file concerned, if any
	Msg    string
}

func (e *NotChainedError) Error() string { return e.Msg }

func notChained(reason, file, format string, args ...any) error {
	return &NotChainedError{Reason: reason, File: file, Msg: fmt.Sprintf(format, args...)}
}

// Installer puts the plugin on a node. The zero value writes the default
// agentSocket and pendingDir into the conflist entry.
type Installer struct {
	AgentSocket string
	PendingDir  string
}

// Install is Installer{}.Install.
func Install(binSrc, cniBinDir, cniConfDir string) (string, error) {
	return Installer{}.Install(binSrc, cniBinDir, cniConfDir)
}

// Uninstall is Installer{}.Uninstall.
func Uninstall(cniConfDir string) error { return Installer{}.Uninstall(cniConfDir) }

// Install copies the plugin binary binSrc to cniBinDir/hoststack-cni (mode
// 0755; left alone when it already has those bytes) and puts our entry in
// the plugins of the network configuration the runtime uses for pods (see
// Primary), which must be a conflist of one of SpecVersions. It returns
// that file. An entry already there once, after the first plugin and with
// our settings, is left where it is (another chained plugin that also
// wants to be last must not start a rewrite war); otherwise our entries
// are removed and one is appended. Files are replaced atomically
// (temporary file in the same directory, then rename) and only if nobody
// replaced them since they were read; the other plugins and keys are kept
// as they were, and running Install again changes nothing. A failure is a
// *NotChainedError.
func (in Installer) Install(binSrc, cniBinDir, cniConfDir string) (string, error) {
	if err := installBinary(binSrc, filepath.Join(cniBinDir, PluginType)); err != nil {
		return "", notChained(ReasonInstallFailed, "", "install the %s binary into %s: %v", PluginType, cniBinDir, err)
	}
	var path string
	var err error
	// A concurrent writer wins the file; then we edit its version.
	for range 3 {
		if path, err = in.chain(cniConfDir); !errors.Is(err, errChanged) {
			break
		}
	}
	return path, err
}

// errChanged: the file was replaced while we edited it.
var errChanged = errors.New("changed while being edited; not replaced")

func (in Installer) chain(cniConfDir string) (string, error) {
	p, err := Primary(cniConfDir)
	if err != nil {
		return "", err
	}
	conf, err := readConflist(p.Path)
	if err != nil {
		return p.Path, notChained(ReasonInstallFailed, p.Path, "read %s: %v", p.Path, err)
	}
	if conf.plugins == nil {
		return p.Path, notChained(ReasonUnsupportedConfig, p.Path, "%s is a single-plugin configuration, not a conflist: a plugin cannot be chained into it", p.Path)
	}
	if len(conf.plugins) != p.Plugins {
		return p.Path, notChained(ReasonUnsupportedConfig, p.Path, "%s takes plugins from the directory %s too; chaining into such a network is not supported", p.Path, filepath.Join(cniConfDir, p.Name))
	}
	if err := supportedVersion(p.CNIVersion); err != nil {
		return p.Path, notChained(ReasonUnsupportedVersion, p.Path, "%s: %v", p.Path, err)
	}
	entry, err := in.entry()
	if err != nil {
		return p.Path, notChained(ReasonInstallFailed, p.Path, "%v", err)
	}
	if i := slices.IndexFunc(conf.plugins, isOurs); i > 0 && countOurs(conf.plugins) == 1 {
		if jsonEqual(conf.plugins[i], entry) {
			return p.Path, nil
		}
		conf.plugins[i] = entry
	} else {
		conf.plugins = append(slices.DeleteFunc(conf.plugins, isOurs), entry)
	}
	if err := conf.write(); errors.Is(err, errChanged) {
		return p.Path, err
	} else if err != nil {
		return p.Path, notChained(ReasonInstallFailed, p.Path, "write %s: %v", p.Path, err)
	}
	return p.Path, nil
}

// supportedVersion reports whether a conflist of version v can chain the
// plugin.
func supportedVersion(v string) error {
	if slices.Contains(SpecVersions, v) {
		return nil
	}
	if v == "" {
		return fmt.Errorf("no cniVersion; %s needs one of %s", PluginType, strings.Join(SpecVersions, ", "))
	}
	return fmt.Errorf("cniVersion %s; %s implements %s", v, PluginType, strings.Join(SpecVersions, ", "))
}

// Uninstall removes our entry from every network configuration of
// cniConfDir that has one (the primary may have changed since Install),
// leaving the rest of each file as it was. The binary stays: see
// RemoveBinary.
func (in Installer) Uninstall(cniConfDir string) error {
	files, err := libcni.ConfFiles(cniConfDir, confExtensions)
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

// RemoveBinary removes cniBinDir/hoststack-cni. Only for an uninstall of
// hoststack from the node: the runtime runs the plugin for the DEL of pods
// added while the entry was there, when it tears them down with their
// cached configuration.
func RemoveBinary(cniBinDir string) error {
	err := os.Remove(filepath.Join(cniBinDir, PluginType))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove the %s binary: %w", PluginType, err)
	}
	return nil
}

// confExtensions are the file names the runtimes (containerd, CRI-O) read
// from the CNI configuration directory.
var confExtensions = []string{".conf", ".conflist", ".json"}

// Network is one network configuration file as the runtime loads it.
type Network struct {
	Path       string
	Name       string
	CNIVersion string // the version the runtime uses (libcni picks it from cniVersion and cniVersions)
	Plugins    int    // how many plugins the runtime runs
	Single     bool   // a single-plugin file (.conf or .json without "plugins")
	// ViaMultus is the Multus file the runtime uses, when it delegates the
	// pod's default network to this one.
	ViaMultus string
}

// loadNetwork loads path the way containerd and CRI-O do: a .conflist with
// ConfListFromFile, anything else with ConfFromFile as a single plugin.
func loadNetwork(path string) (*Network, error) {
	if strings.HasSuffix(path, ".conflist") {
		l, err := libcni.ConfListFromFile(path)
		if err != nil {
			return nil, err
		}
		return &Network{Path: path, Name: l.Name, CNIVersion: l.CNIVersion, Plugins: len(l.Plugins)}, nil
	}
	c, err := libcni.ConfFromFile(path)
	if err != nil {
		return nil, err
	}
	if c.Network.Type == "" { // a conflist in a .conf file, for one
		return nil, fmt.Errorf("%s: no plugin type", path)
	}
	return &Network{Path: path, Name: c.Network.Name, CNIVersion: c.Network.CNIVersion, Plugins: 1, Single: true}, nil
}

// Primary returns the network the runtime attaches pods to: of the
// *.conf, *.conflist and *.json files of confDir in lexical order, the
// first one that loads (CRI-O skips files that do not load; containerd
// fails on them and so runs no pod at all until they are fixed). A Multus
// file there (type multus or multus-shim) delegates the pod's default
// network: Primary returns the file Multus names (its clusterNetwork, as
// a file path or a network name, or its first delegate's name) or, without
// one, the first loadable non-Multus file, which is what Multus's own
// configuration generator picks. Nothing to chain into is a
// *NotChainedError with ReasonNoConfig or ReasonUnsupportedConfig.
func Primary(confDir string) (*Network, error) {
	files, err := libcni.ConfFiles(confDir, confExtensions)
	if err != nil {
		return nil, notChained(ReasonNoConfig, "", "read the CNI configuration directory %s: %v", confDir, err)
	}
	sort.Strings(files)
	var nets []*Network
	var skipped []string
	for _, f := range files {
		n, err := loadNetwork(f)
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("%s: %v", filepath.Base(f), err))
			continue
		}
		nets = append(nets, n)
	}
	if len(nets) == 0 {
		msg := fmt.Sprintf("no CNI network configuration in %s yet", confDir)
		if len(skipped) > 0 {
			msg += " (not loadable: " + strings.Join(skipped, "; ") + ")"
		}
		return nil, notChained(ReasonNoConfig, "", "%s", msg)
	}
	first := nets[0]
	target, ok := multusTarget(first.Path)
	if !ok {
		return first, nil
	}
	for _, n := range nets[1:] {
		if _, isMultus := multusTarget(n.Path); isMultus {
			continue
		}
		if target == "" || filepath.Base(target) == filepath.Base(n.Path) || target == n.Name {
			n.ViaMultus = first.Path
			return n, nil
		}
	}
	if target == "" {
		return nil, notChained(ReasonNoConfig, first.Path, "%s is Multus's and no other CNI network configuration is in %s yet", first.Path, confDir)
	}
	return nil, notChained(ReasonUnsupportedConfig, first.Path, "%s is Multus's and its default network %q is no file of %s (a NetworkAttachmentDefinition?); chaining into it is not supported", first.Path, target, confDir)
}

// multusTarget reports whether path is a Multus configuration and, if so,
// which network it delegates the default network to ("" when it does not
// say: Multus then uses the first other file).
func multusTarget(path string) (target string, ok bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", false
	}
	var m struct {
		Type           string `json:"type"`
		ClusterNetwork string `json:"clusterNetwork"`
		Delegates      []struct {
			Name string `json:"name"`
		} `json:"delegates"`
		Plugins []struct {
			Type string `json:"type"`
		} `json:"plugins"`
	}
	if json.Unmarshal(data, &m) != nil {
		return "", false
	}
	isMultus := func(t string) bool { return t == "multus" || t == "multus-shim" }
	if !isMultus(m.Type) && (len(m.Plugins) != 1 || !isMultus(m.Plugins[0].Type)) {
		return "", false
	}
	if m.ClusterNetwork != "" {
		return m.ClusterNetwork, true
	}
	if len(m.Delegates) > 0 {
		return m.Delegates[0].Name, true
	}
	return "", true
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

// installBinary puts src's bytes at dst (0755) through a temporary file
// and a rename, unless dst already is that.
func installBinary(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if fi, err := os.Stat(dst); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm() == 0o755 && fi.Size() == int64(len(data)) {
		if cur, err := os.ReadFile(dst); err == nil && bytes.Equal(cur, data) {
			return nil
		}
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return writeFileAtomic(dst, data, 0o755, nil)
}

// conflist is a network configuration file decoded just enough to edit its
// plugins list: top-level keys keep their order and values byte for byte,
// and so does every plugin entry.
type conflist struct {
	path       string
	read       os.FileInfo // the file as it was read
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
	c := &conflist{path: path, read: fi, mode: fi.Mode().Perm(), vals: map[string]json.RawMessage{}}
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
	// Another installer (the primary CNI's) may have replaced the file
	// since we read it: its version wins, and the watcher brings us back.
	return writeFileAtomic(c.path, out.Bytes(), c.mode, func() error {
		fi, err := os.Stat(c.path)
		if err != nil || !os.SameFile(fi, c.read) || !fi.ModTime().Equal(c.read.ModTime()) || fi.Size() != c.read.Size() {
			return fmt.Errorf("%s: %w", c.path, errChanged)
		}
		return nil
	})
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
