package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// hostRecord is what the host looked like before `up` changed it, so `down` can put
// it back. It is written once, by the first `up`, and removed by `down`.
type hostRecord struct {
	// Sysctls holds the original value of every sysctl the kubelet, kube-proxy, the
	// bridge plugin or `up` may change.
	Sysctls map[string]string `json:"sysctls"`
	// RootShared: whether / was a shared mount already.
	RootShared bool `json:"rootShared"`
	// Paths: for each of sharedPaths, whether it existed and its entries then.
	Paths map[string]pathRecord `json:"paths"`
	// Netns: the cni-* network namespaces that existed (none, normally).
	Netns []string `json:"netns"`
	// NftTables: "family name" of every nftables table that existed.
	NftTables []string `json:"nftTables"`
}

type pathRecord struct {
	Existed bool     `json:"existed"`
	Entries []string `json:"entries,omitempty"`
}

// trackedSysctls are every sysctl the cluster's parts may write. The kubelet sets the
// kernel.* and vm.* ones at start (kernel.panic=10 and kernel.panic_on_oops=1 must not
// stay on a shared machine); the bridge plugin and `up` turn on IPv4 forwarding;
// kube-proxy would set the conntrack ones unless told not to (it is).
var trackedSysctls = []string{
	"kernel.panic",
	"kernel.panic_on_oops",
	"kernel.keys.root_maxkeys",
	"kernel.keys.root_maxbytes",
	"vm.overcommit_memory",
	"vm.panic_on_oom",
	"net.ipv4.ip_forward",
	"net.ipv6.conf.all.forwarding",
	"net.ipv4.conf.all.route_localnet",
	"net.bridge.bridge-nf-call-iptables",
	"net.bridge.bridge-nf-call-ip6tables",
	"net.netfilter.nf_conntrack_max",
	"net.netfilter.nf_conntrack_tcp_timeout_established",
	"net.netfilter.nf_conntrack_tcp_timeout_close_wait",
	"net.netfilter.nf_conntrack_tcp_be_liberal",
}

// kubeletSysctls are the ones the kubelet sets when it starts; `up` puts them back
// as soon as the node is Ready.
var kubeletSysctls = []string{
	"kernel.panic", "kernel.panic_on_oops", "kernel.keys.root_maxkeys",
	"kernel.keys.root_maxbytes", "vm.overcommit_memory", "vm.panic_on_oom",
}

func sysctlPath(name string) string {
	return filepath.Join("/proc/sys", strings.ReplaceAll(name, ".", "/"))
}

func readSysctl(name string) (string, error) {
	b, err := os.ReadFile(sysctlPath(name))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func writeSysctl(name, value string) error {
	if err := os.WriteFile(sysctlPath(name), []byte(value+"\n"), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", name, value, err)
	}
	return nil
}

// restoreSysctls writes back every recorded value that differs now.
func restoreSysctls(rec *hostRecord, names []string) error {
	var errs []error
	for _, name := range names {
		want, ok := rec.Sysctls[name]
		if !ok {
			continue
		}
		have, err := readSysctl(name)
		if err != nil || have == want {
			continue
		}
		if err := writeSysctl(name, want); err != nil {
			errs = append(errs, err)
			continue
		}
		logf("sysctl %s: %s -> %s (restored)", name, have, want)
	}
	return errors.Join(errs...)
}

// loadOrRecordHost returns the record of the host before the first `up`, making it
// now if there is none.
func loadOrRecordHost(l layout) (*hostRecord, error) {
	if rec, err := loadHostRecord(l); err == nil {
		return rec, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	rec := &hostRecord{Sysctls: map[string]string{}, Paths: map[string]pathRecord{}}
	for _, name := range trackedSysctls {
		if v, err := readSysctl(name); err == nil {
			rec.Sysctls[name] = v
		}
	}
	shared, err := rootShared()
	if err != nil {
		return nil, err
	}
	rec.RootShared = shared
	for _, p := range sharedPaths {
		pr := pathRecord{}
		if ents, err := os.ReadDir(p); err == nil {
			pr.Existed = true
			for _, e := range ents {
				pr.Entries = append(pr.Entries, e.Name())
			}
		} else if exists(p) {
			pr.Existed = true
		}
		rec.Paths[p] = pr
	}
	rec.Netns = cniNetns()
	rec.NftTables = nftTables()
	if err := writeJSON(l.hostRecord(), rec); err != nil {
		return nil, err
	}
	return rec, nil
}

func loadHostRecord(l layout) (*hostRecord, error) {
	b, err := os.ReadFile(l.hostRecord())
	if err != nil {
		return nil, err
	}
	rec := &hostRecord{}
	if err := json.Unmarshal(b, rec); err != nil {
		return nil, fmt.Errorf("parsing %s: %w", l.hostRecord(), err)
	}
	return rec, nil
}

// rootShared reports whether / is a shared mount (mountinfo's optional "shared:N").
func rootShared() (bool, error) {
	for _, m := range mountinfo() {
		if m.point == "/" {
			return strings.Contains(m.optional, "shared:"), nil
		}
	}
	return false, errors.New("/ is not in /proc/self/mountinfo")
}

// makeRootShared makes / (not recursively) a shared mount: containerd 1.6 judges
// /var/run/netns by the mount of / and refuses HostToContainer mounts of it otherwise,
// and Bidirectional mounts under /var/lib/kubelet need it too.
func makeRootShared() error {
	if err := unix.Mount("", "/", "", unix.MS_SHARED, ""); err != nil {
		return fmt.Errorf("making / shared: %w", err)
	}
	return nil
}

func makeRootPrivate() error {
	if err := unix.Mount("", "/", "", unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making / private again: %w", err)
	}
	return nil
}

type mount struct {
	point    string
	optional string
	fstype   string
}

func mountinfo() []mount {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var ms []mount
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 7 {
			continue
		}
		m := mount{point: unescapeMount(f[4])}
		i := 6
		for ; i < len(f) && f[i] != "-"; i++ {
			m.optional += f[i] + " "
		}
		if i+1 < len(f) {
			m.fstype = f[i+1]
		}
		ms = append(ms, m)
	}
	return ms
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var c byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &c); err == nil {
				b.WriteByte(c)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unmountUnder detaches every mount at or below each of roots, deepest first.
func unmountUnder(roots ...string) error {
	var points []string
	for _, m := range mountinfo() {
		for _, r := range roots {
			if m.point == r || strings.HasPrefix(m.point, r+"/") {
				points = append(points, m.point)
				break
			}
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var errs []error
	for _, p := range points {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// cniNetns lists the network namespaces containerd's CRI names cni-<uuid>.
func cniNetns() []string {
	ents, _ := os.ReadDir(netnsDir)
	var ns []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "cni-") {
			ns = append(ns, e.Name())
		}
	}
	return ns
}

// nftTables lists "family name" of the tables in the host's ruleset.
func nftTables() []string {
	out, err := run("nft", "list", "tables")
	if err != nil {
		return nil
	}
	var ts []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 3 && f[0] == "table" {
			ts = append(ts, f[1]+" "+f[2])
		}
	}
	return ts
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
