package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// down stops the cluster and removes what it put on the host. It carries on past
// errors (a half-started cluster must come down too) and reports them all at the end.
func down(l layout) error {
	if os.Geteuid() != 0 {
		return errors.New("down must run as root")
	}
	rec, recErr := loadHostRecord(l)
	if recErr != nil && !errors.Is(recErr, os.ErrNotExist) {
		return recErr
	}
	if rec == nil {
		// No record: `up` never got as far as changing the host. Clean what may be
		// there anyway, treating the shared paths as pre-existing (remove nothing in
		// them but what is certainly ours).
		rec = &hostRecord{Paths: map[string]pathRecord{}}
		for _, p := range sharedPaths {
			rec.Paths[p] = pathRecord{Existed: true, Entries: nil}
		}
	}
	var errs []error
	keep := func(err error) {
		if err != nil {
			logf("down: %v", err)
			errs = append(errs, err)
		}
	}
	n, _ := detectNode()
	comps := l.components(n)
	byName := map[string]component{}
	for _, c := range comps {
		byName[c.name] = c
	}

	// The kubelet first, so nothing restarts the pods removed next.
	keep(l.stop("kubelet", byName["kubelet"].bin, 30*time.Second))
	savePodLogs()

	// Every pod through the CRI: containerd stops the containers, runs CNI DEL (which
	// removes the veths and frees the addresses) and removes the network namespaces.
	if exists(l.path("containerd")) {
		if l.running("containerd", l.containerd().bin) == 0 {
			// Restart a dead containerd so it can tear down what its shims still hold.
			if _, err := l.start(l.containerd()); err == nil {
				_ = waitFor(context.Background(), "containerd", 30*time.Second, func() error {
					_, err := run("ctr", "--address", l.containerdSock(), "version")
					return err
				})
			}
		}
		keep(removeAllPods(l))
	}
	keep(l.stop("containerd", l.containerd().bin, 30*time.Second))
	// Shims whose containerd is gone, and anything left in the kubelet's cgroups.
	for _, pid := range pidsMatching("containerd-shim", l.containerdSock()) {
		keep(killWait(pid, 5*time.Second))
	}
	keep(killCgroupProcs())

	for _, name := range []string{"kube-proxy", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"} {
		keep(l.stop(name, byName[name].bin, 30*time.Second))
	}

	keep(cleanNetfilter(l, rec))

	// Mounts: the kubelet's volumes, containerd's rootfs and shm mounts, and the
	// pods' network namespaces that were not there before.
	roots := []string{kubeletDir, l.dir, l.runDir}
	if pr := rec.Paths["/run/containerd"]; !pr.Existed {
		roots = append(roots, "/run/containerd")
	}
	keep(unmountUnder(roots...))
	for _, ns := range cniNetns() {
		if contains(rec.Netns, ns) {
			continue
		}
		p := filepath.Join(netnsDir, ns)
		keep(unmountUnder(p))
		keep(os.Remove(p))
	}

	keep(removeLinks())
	keep(removeCgroups())
	keep(removePaths(l, rec))

	if len(rec.Sysctls) > 0 {
		keep(restoreSysctls(rec, trackedSysctls))
	}
	if shared, err := rootShared(); err == nil && shared && !rec.RootShared && recErr == nil {
		keep(makeRootPrivate())
	}
	keep(saveLogsAndRemoveState(l))
	return errors.Join(errs...)
}

// removeAllPods stops and removes every pod sandbox (and so its containers).
func removeAllPods(l layout) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+l.containerdSock(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connecting to containerd's CRI: %w", err)
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	pods, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return fmt.Errorf("listing pod sandboxes: %w", err)
	}
	var errs []error
	for _, p := range pods.Items {
		if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			errs = append(errs, fmt.Errorf("stopping pod %s/%s: %w", p.Metadata.GetNamespace(), p.Metadata.GetName(), err))
			continue
		}
		if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			errs = append(errs, fmt.Errorf("removing pod %s/%s: %w", p.Metadata.GetNamespace(), p.Metadata.GetName(), err))
		}
	}
	if len(pods.Items) > 0 {
		logf("removed %d pod sandboxes", len(pods.Items))
	}
	return errors.Join(errs...)
}

// cgroupRoots are the kubelet's cgroups (cgroupfs driver, cgroup v1): one tree per
// controller hierarchy.
func cgroupRoots() []string {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/kubepods")
	if exists("/sys/fs/cgroup/kubepods") { // cgroup v2
		roots = append(roots, "/sys/fs/cgroup/kubepods")
	}
	return roots
}

// killCgroupProcs kills processes still in the kubelet's cgroups (containers whose
// shim was killed).
func killCgroupProcs() error {
	var errs []error
	seen := map[int]bool{}
	for _, root := range cgroupRoots() {
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			b, _ := os.ReadFile(p)
			for _, f := range strings.Fields(string(b)) {
				pid, err := strconv.Atoi(f)
				if err != nil || seen[pid] {
					continue
				}
				seen[pid] = true
				errs = append(errs, killWait(pid, 5*time.Second))
			}
			return nil
		})
	}
	return errors.Join(errs...)
}

// removeCgroups removes the kubelet's cgroup trees, deepest first.
func removeCgroups() error {
	var errs []error
	for _, root := range cgroupRoots() {
		var dirs []string
		_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", d, err))
			}
		}
	}
	return errors.Join(errs...)
}

// removeLinks deletes the pod bridge and any veth still enslaved to it.
func removeLinks() error {
	if _, err := run("ip", "link", "show", bridgeName); err != nil {
		return nil
	}
	var errs []error
	out, _ := run("ip", "-o", "link", "show", "master", bridgeName)
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		dev := strings.SplitN(strings.TrimSuffix(f[1], ":"), "@", 2)[0]
		if _, err := run("ip", "link", "del", dev); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := run("ip", "link", "del", bridgeName); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// cleanNetfilter removes kube-proxy's rules: its own cleanup first, then whatever
// is left of its nftables tables, and any KUBE-* iptables chain (the kubelet's or an
// iptables-mode kube-proxy's), with the rules that jump to them.
func cleanNetfilter(l layout, rec *hostRecord) error {
	var errs []error
	if exists(l.bin("kube-proxy")) {
		if _, err := run(l.bin("kube-proxy"), "--cleanup", "--v=0"); err != nil {
			logf("kube-proxy --cleanup: %v (cleaning up directly)", err)
		}
	}
	for _, t := range nftTables() {
		if contains(rec.NftTables, t) {
			continue
		}
		f := strings.Fields(t)
		if f[1] == "kube-proxy" {
			if _, err := run("nft", "delete", "table", f[0], f[1]); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, ipt := range []string{"iptables", "ip6tables"} {
		if _, err := run(ipt, "--version"); err != nil {
			continue
		}
		for _, table := range []string{"filter", "nat", "mangle"} {
			errs = append(errs, removeKubeChains(ipt, table))
		}
	}
	// Tables iptables-nft created for those chains and that are empty now.
	for _, t := range nftTables() {
		if contains(rec.NftTables, t) {
			continue
		}
		f := strings.Fields(t)
		if (f[0] == "ip" || f[0] == "ip6") && (f[1] == "filter" || f[1] == "nat" || f[1] == "mangle") {
			out, err := run("nft", "list", "table", f[0], f[1])
			if err == nil && !strings.Contains(out, " jump ") && !strings.Contains(out, " counter ") && ruleCount(out) == 0 {
				if _, err := run("nft", "delete", "table", f[0], f[1]); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	return errors.Join(errs...)
}

// ruleCount counts rule lines in `nft list table` output (lines inside chains that
// are neither the chain's hook line nor braces).
func ruleCount(listing string) int {
	n := 0
	for _, line := range strings.Split(listing, "\n") {
		s := strings.TrimSpace(line)
		if s == "" || s == "}" || strings.HasPrefix(s, "table ") || strings.HasPrefix(s, "chain ") || strings.HasPrefix(s, "type ") {
			continue
		}
		n++
	}
	return n
}

func removeKubeChains(ipt, table string) error {
	out, err := run(ipt, "-w", "-t", table, "-S")
	if err != nil {
		return nil // no such table
	}
	var chains []string
	var errs []error
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 2 && f[0] == "-N" && strings.HasPrefix(f[1], "KUBE-"):
			chains = append(chains, f[1])
		case len(f) >= 2 && f[0] == "-A" && !strings.HasPrefix(f[1], "KUBE-") && strings.Contains(line, " KUBE-"):
			args := append([]string{"-w", "-t", table, "-D"}, f[1:]...)
			if _, err := run(ipt, args...); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for _, c := range chains {
		_, _ = run(ipt, "-w", "-t", table, "-F", c)
	}
	for _, c := range chains {
		if _, err := run(ipt, "-w", "-t", table, "-X", c); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removePaths removes the shared paths `up` created and, in those that existed, the
// entries added since.
func removePaths(l layout, rec *hostRecord) error {
	var errs []error
	// Deepest first, so a created parent is removed after its created children.
	paths := append([]string(nil), sharedPaths...)
	sort.Slice(paths, func(i, j int) bool { return len(paths[i]) > len(paths[j]) })
	for _, p := range paths {
		pr, ok := rec.Paths[p]
		if !ok {
			continue
		}
		if p == netnsDir {
			// Other users' namespaces live here (and it may be a mount): only remove
			// the directory when it is empty and not a mount point.
			if !pr.Existed && !isMountPoint(p) {
				if ents, err := os.ReadDir(p); err == nil && len(ents) == 0 {
					_ = os.Remove(p)
				}
			}
			continue
		}
		if !pr.Existed {
			if err := os.RemoveAll(p); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if pr.Entries == nil && rec.Sysctls == nil {
			continue // no record: leave pre-existing directories alone
		}
		ents, _ := os.ReadDir(p)
		for _, e := range ents {
			if contains(pr.Entries, e.Name()) || contains(sharedPaths, filepath.Join(p, e.Name())) {
				continue
			}
			if err := os.RemoveAll(filepath.Join(p, e.Name())); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func isMountPoint(p string) bool {
	for _, m := range mountinfo() {
		if m.point == p {
			return true
		}
	}
	return false
}

// saveLogsAndRemoveState copies the components' logs to $HOSTSTACK_CLUSTER_LOGS (when
// set; for CI artifacts) and removes the state directories.
func saveLogsAndRemoveState(l layout) error {
	if dst := os.Getenv("HOSTSTACK_CLUSTER_LOGS"); dst != "" {
		if err := copyDir(l.path("logs"), dst); err != nil {
			logf("saving logs: %v", err)
		} else {
			logf("logs saved in %s", dst)
		}
	}
	return errors.Join(os.RemoveAll(l.dir), os.RemoveAll(l.runDir))
}

// savePodLogs copies the containers' logs (/var/log/pods) to
// $HOSTSTACK_CLUSTER_LOGS/pods before the pods, and with them their logs, are removed:
// a failed e2e run is read from them afterwards.
func savePodLogs() {
	dst := os.Getenv("HOSTSTACK_CLUSTER_LOGS")
	if dst == "" || !exists("/var/log/pods") {
		return
	}
	dst = filepath.Join(dst, "pods")
	_ = os.RemoveAll(dst) // the previous run's
	err := filepath.WalkDir("/var/log/pods", func(p string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, err := filepath.Rel("/var/log/pods", p)
		if err != nil {
			return err
		}
		return copyFile(p, filepath.Join(dst, rel))
	})
	if err != nil {
		logf("saving pod logs: %v", err)
	}
}

func copyFile(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func copyDir(src, dst string) error {
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		if err := copyFile(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

func status(l layout) error {
	n, _ := detectNode()
	all := append([]component{l.containerd()}, l.components(n)...)
	for _, c := range all {
		if pid := l.running(c.name, c.bin); pid != 0 {
			fmt.Printf("%-24s running (pid %d)\n", c.name, pid)
		} else {
			fmt.Printf("%-24s stopped\n", c.name)
		}
	}
	return nil
}
