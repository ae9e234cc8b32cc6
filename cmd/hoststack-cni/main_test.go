package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/onsi/gomega"

	hcni "github.com/hoststack/hoststack/agent/cni"
	"github.com/hoststack/hoststack/internal/testreq"
)

// The plugin runs as a binary, exactly as a runtime runs it: environment,
// netconf on stdin, result or error on stdout. TestMain builds it once.
var pluginBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "hoststack-cni-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	pluginBin = filepath.Join(dir, "hoststack-cni")
	out, err := exec.Command("go", "build", "-o", pluginBin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "go build hoststack-cni: %v\n%s", err, out)
		_ = os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

var seq atomic.Int32

// pod is a real network namespace with a veth pair: eth0 (with an IPv4
// address) inside, the peer on the host.
type pod struct {
	netns, nsPath    string
	hostIf, hostMac  string
	podMac, addrCIDR string
	gw               string
	uid, name        string
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func linkMac(t *testing.T, netns, dev string) string {
	t.Helper()
	args := []string{"ip", "-j", "link", "show", "dev", dev}
	if netns != "" {
		args = append([]string{"ip", "-n", netns}, args[1:]...)
	}
	var links []struct {
		Address string `json:"address"`
	}
	if err := json.Unmarshal([]byte(run(t, args...)), &links); err != nil || len(links) != 1 {
		t.Fatalf("ip link show %s: %v %v", dev, links, err)
	}
	return links[0].Address
}

func newPod(t *testing.T) *pod {
	t.Helper()
	testreq.NetNS(t)
	n := seq.Add(1)
	id := fmt.Sprintf("%d-%d", os.Getpid()%100000, n)
	p := &pod{
		netns:    "hs-cni-" + id,
		hostIf:   fmt.Sprintf("hsc%05d%d", os.Getpid()%100000, n), // ≤ 15 chars
		addrCIDR: fmt.Sprintf("10.213.%d.2/24", n),
		gw:       fmt.Sprintf("10.213.%d.1", n),
		uid:      fmt.Sprintf("0c0ffee0-0000-4000-8000-%012d", n),
		name:     "web-" + id,
	}
	p.nsPath = "/run/netns/" + p.netns
	run(t, "ip", "netns", "add", p.netns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", p.netns).Run() })
	run(t, "ip", "link", "add", p.hostIf, "type", "veth", "peer", "name", "eth0", "netns", p.netns)
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", p.hostIf).Run() }) // gone with the netns already, usually
	run(t, "ip", "-n", p.netns, "addr", "add", p.addrCIDR, "dev", "eth0")
	run(t, "ip", "-n", p.netns, "link", "set", "eth0", "up")
	run(t, "ip", "link", "set", p.hostIf, "up")
	p.hostMac = linkMac(t, "", p.hostIf)
	p.podMac = linkMac(t, p.netns, "eth0")
	return p
}

// prevResult is what the main plugin would have returned for p, in ver.
func (p *pod) prevResult(t *testing.T, ver string) map[string]any {
	t.Helper()
	ip, ipnet, err := net.ParseCIDR(p.addrCIDR)
	if err != nil {
		t.Fatal(err)
	}
	ipnet.IP = ip
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: p.hostIf, Mac: p.hostMac},
			{Name: "eth0", Mac: p.podMac, Sandbox: p.nsPath},
		},
		IPs: []*current.IPConfig{{Interface: current.Int(1), Address: *ipnet, Gateway: net.ParseIP(p.gw)}},
	}
	conv, err := res.GetAsVersion(ver)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := conv.PrintTo(&buf); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

type agent struct {
	dir, socket, pending string
	reg                  *hcni.Registry
	srv                  *hcni.Server
}

// startAgent starts the agent side on dir's state (a restart when called
// again on the same dir).
func startAgent(t *testing.T, dir string) *agent {
	t.Helper()
	a := &agent{dir: dir, socket: filepath.Join(dir, "cni.sock"), pending: filepath.Join(dir, "pending")}
	reg, err := hcni.OpenRegistry(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	a.reg = reg
	a.srv = hcni.NewServer(reg, hcni.ServerConfig{Socket: a.socket, PendingDir: a.pending})
	if err := a.srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.srv.Close() })
	return a
}

func (a *agent) stop(t *testing.T) {
	t.Helper()
	if err := a.srv.Close(); err != nil {
		t.Fatal(err)
	}
}

type invocation struct {
	cmd, containerID, netns, ifname, args string
	conf                                  map[string]any
}

type outcome struct {
	code           int
	stdout, stderr string
}

func (o outcome) cniError(t *testing.T) (code uint, msg string) {
	t.Helper()
	var e struct {
		Code uint   `json:"code"`
		Msg  string `json:"msg"`
	}
	if err := json.Unmarshal([]byte(o.stdout), &e); err != nil {
		t.Fatalf("error output is not a CNI error: %v\n%s", err, o.stdout)
	}
	return e.Code, e.Msg
}

func exec1(t *testing.T, in invocation) outcome {
	t.Helper()
	stdin, err := json.Marshal(in.conf)
	if err != nil {
		t.Fatal(err)
	}
	c := exec.Command(pluginBin)
	c.Env = []string{
		"CNI_COMMAND=" + in.cmd,
		"CNI_CONTAINERID=" + in.containerID,
		"CNI_NETNS=" + in.netns,
		"CNI_IFNAME=" + in.ifname,
		"CNI_ARGS=" + in.args,
		"CNI_PATH=" + filepath.Dir(pluginBin),
	}
	c.Stdin = bytes.NewReader(stdin)
	var so, se bytes.Buffer
	c.Stdout, c.Stderr = &so, &se
	err = c.Run()
	o := outcome{stdout: so.String(), stderr: se.String()}
	if ee, ok := err.(*exec.ExitError); ok {
		o.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run plugin: %v", err)
	}
	return o
}

func (p *pod) cniArgs() string {
	return "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=" + p.name + ";K8S_POD_INFRA_CONTAINER_ID=x;K8S_POD_UID=" + p.uid
}

func netconf(a *agent, ver string, prev map[string]any) map[string]any {
	m := map[string]any{
		"cniVersion":  ver,
		"name":        "podnet",
		"type":        "hoststack-cni",
		"agentSocket": a.socket,
		"pendingDir":  a.pending,
	}
	if prev != nil {
		m["prevResult"] = prev
	}
	return m
}

func mustOK(t *testing.T, what string, o outcome) {
	t.Helper()
	if o.code != 0 {
		t.Fatalf("%s: exit %d\nstdout: %s\nstderr: %s", what, o.code, o.stdout, o.stderr)
	}
}

func pendingFiles(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

var specVersions = hcni.SpecVersions

func TestPluginLifecycle(t *testing.T) {
	for _, ver := range specVersions {
		t.Run(ver, func(t *testing.T) {
			p := newPod(t)
			a := startAgent(t, t.TempDir())
			prev := p.prevResult(t, ver)
			prev["hoststack.test/unknown-key"] = map[string]any{"kept": true} // not in any result type
			cid := "sandbox" + strings.ReplaceAll(ver, ".", "")
			add := invocation{cmd: "ADD", containerID: cid, netns: p.nsPath, ifname: "eth0", args: p.cniArgs(), conf: netconf(a, ver, prev)}

			o := exec1(t, add)
			mustOK(t, "ADD", o)
			var got map[string]any
			if err := json.Unmarshal([]byte(o.stdout), &got); err != nil {
				t.Fatalf("ADD output: %v\n%s", err, o.stdout)
			}
			if !reflect.DeepEqual(got, prev) {
				t.Fatalf("ADD changed prevResult\n got: %v\nwant: %v", got, prev)
			}
			att, ok := a.reg.Lookup(p.uid)
			if !ok {
				t.Fatalf("agent does not know pod %s after ADD", p.uid)
			}
			if att.ContainerID != cid || att.IfName != "eth0" || att.Netns != p.nsPath || att.Network != "podnet" ||
				att.Pod != (hcni.PodRef{Namespace: "shop", Name: p.name, UID: p.uid}) {
				t.Fatalf("attachment = %+v", att)
			}
			if len(att.IPs) != 1 || att.IPs[0].Address != p.addrCIDR || att.IPs[0].Gateway != p.gw ||
				att.IPs[0].Interface == nil || att.Interfaces[*att.IPs[0].Interface].Name != "eth0" {
				t.Fatalf("attachment IPs = %+v, interfaces %+v", att.IPs, att.Interfaces)
			}
			if len(att.Interfaces) != 2 || att.Interfaces[1].Sandbox != p.nsPath || att.Interfaces[1].Mac != p.podMac || att.Interfaces[0].Mac != p.hostMac {
				t.Fatalf("attachment interfaces = %+v", att.Interfaces)
			}

			// A prevResult without cniVersion (allowed before 1.0.0) goes
			// through the library's conversion: same content, version set.
			conv := add
			conv.containerID = cid + "v"
			pv := p.prevResult(t, ver)
			delete(pv, "cniVersion")
			conv.conf = netconf(a, ver, pv)
			o = exec1(t, conv)
			mustOK(t, "ADD without prevResult.cniVersion", o)
			var got2 map[string]any
			if err := json.Unmarshal([]byte(o.stdout), &got2); err != nil {
				t.Fatalf("ADD output: %v\n%s", err, o.stdout)
			}
			if got2["cniVersion"] != ver {
				t.Fatalf("converted result has cniVersion %v, want %s", got2["cniVersion"], ver)
			}
			delete(got2, "cniVersion")
			if !reflect.DeepEqual(got2, pv) {
				t.Fatalf("converted result changed\n got: %v\nwant: %v", got2, pv)
			}
			conv.cmd = "DEL"
			mustOK(t, "DEL", exec1(t, conv))

			chk := add
			chk.cmd = "CHECK"
			if ver == "0.3.0" || ver == "0.3.1" {
				// CHECK came with 0.4.0.
				if o := exec1(t, chk); o.code == 0 {
					t.Fatalf("CHECK succeeded on spec %s", ver)
				} else if code, _ := o.cniError(t); code != 1 {
					t.Fatalf("CHECK on %s: code %d, want 1 (incompatible version)", ver, code)
				}
			} else {
				mustOK(t, "CHECK", exec1(t, chk))
				chk.containerID = "unknown"
				if o := exec1(t, chk); o.code == 0 {
					t.Fatal("CHECK of an unknown attachment succeeded")
				} else if code, _ := o.cniError(t); code != hcni.CodeUnknownContainer {
					t.Fatalf("CHECK unknown: code %d, want %d", code, hcni.CodeUnknownContainer)
				}
			}

			noPrev := add
			noPrev.conf = netconf(a, ver, nil)
			if o := exec1(t, noPrev); o.code == 0 {
				t.Fatal("ADD without prevResult succeeded")
			} else if code, msg := o.cniError(t); code != 7 || !strings.Contains(msg, "prevResult") {
				t.Fatalf("ADD without prevResult: code %d %q", code, msg)
			}

			status := invocation{cmd: "STATUS", conf: netconf(a, ver, nil)}
			gc := invocation{cmd: "GC", conf: netconf(a, ver, nil)}
			if ver == "1.1.0" {
				mustOK(t, "STATUS", exec1(t, status))
				// A second attachment (another sandbox) and one of another
				// network: GC of "podnet" keeping only the first removes
				// the second and leaves the other network alone.
				add2 := add
				add2.containerID = cid + "b"
				mustOK(t, "ADD 2", exec1(t, add2))
				other := add
				other.containerID = cid + "c"
				other.conf = netconf(a, ver, prev)
				other.conf["name"] = "othernet"
				mustOK(t, "ADD other network", exec1(t, other))
				if n := len(a.reg.ForPod(p.uid)); n != 3 {
					t.Fatalf("%d attachments before GC, want 3", n)
				}
				if o := exec1(t, gc); o.code == 0 {
					t.Fatal("GC without cni.dev/valid-attachments succeeded")
				} else if code, _ := o.cniError(t); code != 7 {
					t.Fatalf("GC without cni.dev/valid-attachments: code %d, want 7", code)
				}
				if n := len(a.reg.ForPod(p.uid)); n != 3 {
					t.Fatalf("a refused GC removed attachments: %d left", n)
				}
				gc.conf["cni.dev/valid-attachments"] = []map[string]string{{"containerID": cid, "ifname": "eth0"}}
				mustOK(t, "GC", exec1(t, gc))
				var left []string
				for _, at := range a.reg.ForPod(p.uid) {
					left = append(left, at.ContainerID)
				}
				if strings.Join(left, ",") != cid+"c,"+cid && strings.Join(left, ",") != cid+","+cid+"c" {
					t.Fatalf("after GC: %v, want %s and %sc", left, cid, cid)
				}
			} else {
				for _, inv := range []invocation{status, gc} {
					if o := exec1(t, inv); o.code == 0 {
						t.Fatalf("%s succeeded on spec %s", inv.cmd, ver)
					} else if code, _ := o.cniError(t); code != 1 {
						t.Fatalf("%s on %s: code %d, want 1 (incompatible version)", inv.cmd, ver, code)
					}
				}
			}

			del := add
			del.cmd = "DEL"
			mustOK(t, "DEL", exec1(t, del))
			if at, ok := a.reg.Get(hcni.AttachmentKey{ContainerID: cid, IfName: "eth0"}); ok {
				t.Fatalf("attachment still known after DEL: %+v", at)
			}
			mustOK(t, "DEL again", exec1(t, del))
			if files := pendingFiles(t, a.pending); len(files) != 0 {
				t.Fatalf("pending files after DELs the agent took: %v", files)
			}
		})
	}
}

// The agent is down (crash, OOM, image pull, rolling upgrade): ADD still
// succeeds with prevResult and queues the pod, STATUS says ready, DEL
// queues; the agent coming back applies them in order.
func TestAgentStopped(t *testing.T) {
	for _, ver := range specVersions {
		t.Run(ver, func(t *testing.T) {
			p := newPod(t)
			dir := t.TempDir()
			a := startAgent(t, dir)
			add := invocation{cmd: "ADD", containerID: "sbx", netns: p.nsPath, ifname: "eth0", args: p.cniArgs(), conf: netconf(a, ver, p.prevResult(t, ver))}
			mustOK(t, "ADD", exec1(t, add))
			a.stop(t)

			if ver == "1.1.0" {
				mustOK(t, "STATUS with the agent stopped", exec1(t, invocation{cmd: "STATUS", conf: netconf(a, ver, nil)}))
			}

			// A new pod starts while the agent is away.
			late := add
			late.containerID = "late"
			late.args = strings.ReplaceAll(p.cniArgs(), p.uid, p.uid+"-late")
			o := exec1(t, late)
			mustOK(t, "ADD with the agent stopped", o)
			var got map[string]any
			if err := json.Unmarshal([]byte(o.stdout), &got); err != nil || !reflect.DeepEqual(got, late.conf["prevResult"]) {
				t.Fatalf("ADD with the agent stopped printed %s (%v), want prevResult", o.stdout, err)
			}
			// And one that starts and is torn down before it returns: its
			// ADD and DEL are both queued and cancel out.
			gone := add
			gone.containerID = "gone"
			mustOK(t, "ADD of a short-lived sandbox", exec1(t, gone))
			gone.cmd = "DEL"
			mustOK(t, "DEL of a short-lived sandbox", exec1(t, gone))

			del := add
			del.cmd = "DEL"
			del.netns = "" // the runtime may have removed the netns already
			mustOK(t, "DEL with the agent stopped", exec1(t, del))
			files := pendingFiles(t, a.pending)
			slices.Sort(files)
			want := []string{"gone:eth0.add.json", "gone:eth0.json", "late:eth0.add.json", "sbx:eth0.json"}
			if !reflect.DeepEqual(files, want) {
				t.Fatalf("pending dir = %v, want %v", files, want)
			}

			// A restart: the persisted state still has the pod until the
			// queued DEL is applied, which Start does before serving.
			reg, err := hcni.OpenRegistry(filepath.Join(dir, "state"))
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := reg.Lookup(p.uid); !ok {
				t.Fatal("persisted state lost the pod")
			}
			b := startAgent(t, dir)
			if at, ok := b.reg.Get(hcni.AttachmentKey{ContainerID: "sbx", IfName: "eth0"}); ok {
				t.Fatalf("queued DEL not applied: %+v", at)
			}
			if at, ok := b.reg.Get(hcni.AttachmentKey{ContainerID: "gone", IfName: "eth0"}); ok {
				t.Fatalf("queued ADD applied after its queued DEL: %+v", at)
			}
			at, ok := b.reg.Lookup(p.uid + "-late")
			if !ok || at.ContainerID != "late" || at.Netns != p.nsPath || len(at.IPs) != 1 || at.IPs[0].Address != p.addrCIDR {
				t.Fatalf("queued ADD: %+v %v", at, ok)
			}
			if files := pendingFiles(t, a.pending); len(files) != 0 {
				t.Fatalf("pending dir after restart = %v", files)
			}
		})
	}
}

// A sandbox torn down and set up again under the same ID while the agent
// is away: DEL then ADD queued, the attachment stays.
func TestQueuedDelThenAdd(t *testing.T) {
	p := newPod(t)
	dir := t.TempDir()
	a := startAgent(t, dir)
	add := invocation{cmd: "ADD", containerID: "again", netns: p.nsPath, ifname: "eth0", args: p.cniArgs(), conf: netconf(a, "1.0.0", p.prevResult(t, "1.0.0"))}
	mustOK(t, "ADD", exec1(t, add))
	a.stop(t)
	del := add
	del.cmd = "DEL"
	mustOK(t, "DEL", exec1(t, del))
	mustOK(t, "ADD again", exec1(t, add))
	b := startAgent(t, dir)
	if _, ok := b.reg.Lookup(p.uid); !ok {
		t.Fatal("the sandbox set up again is unknown")
	}
}

// While the agent runs, a queued ADD (it timed out against a busy agent)
// is applied without a restart, and a DEL taken live drops a queued ADD
// of its attachment.
func TestQueuedWhileRunning(t *testing.T) {
	p := newPod(t)
	dir := t.TempDir()
	a := &agent{dir: dir, socket: filepath.Join(dir, "cni.sock"), pending: filepath.Join(dir, "pending")}
	reg, err := hcni.OpenRegistry(filepath.Join(dir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	a.reg = reg
	// Queue two ADDs as the plugin does when the agent is down.
	add := invocation{cmd: "ADD", containerID: "busy", netns: p.nsPath, ifname: "eth0", args: p.cniArgs(), conf: netconf(a, "1.1.0", p.prevResult(t, "1.1.0"))}
	mustOK(t, "ADD", exec1(t, add))
	stale := add
	stale.containerID = "stale"
	mustOK(t, "ADD", exec1(t, stale))
	// The agent starts and applies them; then queue one more while it runs
	// by writing what a timed-out ADD writes.
	a.srv = hcni.NewServer(reg, hcni.ServerConfig{Socket: a.socket, PendingDir: a.pending, PendingInterval: 50 * time.Millisecond})
	if err := a.srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.srv.Close() })
	if _, ok := reg.Get(hcni.AttachmentKey{ContainerID: "busy", IfName: "eth0"}); !ok {
		t.Fatal("queued ADD not applied at start")
	}
	req := hcni.Request{AttachmentKey: hcni.AttachmentKey{ContainerID: "later", IfName: "eth0"}, Netns: p.nsPath,
		Pod: hcni.PodRef{Namespace: "shop", Name: "later", UID: "uid-later"}, Command: hcni.CommandAdd, QueuedAt: time.Now().UTC()}
	data, _ := json.Marshal(req)
	if err := os.WriteFile(filepath.Join(a.pending, hcni.PendingAddFileName(req.AttachmentKey)), data, 0o600); err != nil {
		t.Fatal(err)
	}
	gomega.NewWithT(t).Eventually(func() bool { _, ok := reg.Lookup("uid-later"); return ok }).WithTimeout(10 * time.Second).Should(gomega.BeTrue())

	// A queued ADD whose DEL the agent takes live is dropped, not applied
	// after it.
	if err := a.srv.Close(); err != nil {
		t.Fatal(err)
	}
	a.srv = hcni.NewServer(reg, hcni.ServerConfig{Socket: a.socket, PendingDir: a.pending, PendingInterval: time.Hour})
	if err := a.srv.Start(); err != nil {
		t.Fatal(err)
	}
	req.ContainerID, req.Pod.UID, req.QueuedAt = "dropped", "uid-dropped", time.Now().UTC()
	data, _ = json.Marshal(req)
	if err := os.WriteFile(filepath.Join(a.pending, hcni.PendingAddFileName(req.AttachmentKey)), data, 0o600); err != nil {
		t.Fatal(err)
	}
	del := stale
	del.cmd = "DEL"
	del.containerID = "dropped"
	mustOK(t, "DEL", exec1(t, del))
	if err := a.srv.ProcessPending(); err != nil {
		t.Fatal(err)
	}
	if at, ok := reg.Lookup("uid-dropped"); ok {
		t.Fatalf("queued ADD applied after its live DEL: %+v", at)
	}
}

// STATUS is the plugin's own readiness: its pendingDir must be usable.
func TestStatusWithoutPendingDir(t *testing.T) {
	dir := t.TempDir()
	blocker := filepath.Join(dir, "file")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	a := &agent{socket: filepath.Join(dir, "none.sock"), pending: filepath.Join(blocker, "pending")}
	o := exec1(t, invocation{cmd: "STATUS", conf: netconf(a, "1.1.0", nil)})
	if o.code == 0 {
		t.Fatal("STATUS succeeded without a usable pendingDir")
	}
	if code, msg := o.cniError(t); code != 50 || msg != "plugin not available" {
		t.Fatalf("STATUS: code %d %q, want 50 \"plugin not available\"", code, msg)
	}
	a.pending = filepath.Join(dir, "pending")
	mustOK(t, "STATUS with the agent down", exec1(t, invocation{cmd: "STATUS", conf: netconf(a, "1.1.0", nil)}))
}

func TestStateSurvivesRestart(t *testing.T) {
	p := newPod(t)
	dir := t.TempDir()
	a := startAgent(t, dir)
	add := invocation{cmd: "ADD", containerID: "keep", netns: p.nsPath, ifname: "eth0", args: p.cniArgs(), conf: netconf(a, "1.1.0", p.prevResult(t, "1.1.0"))}
	mustOK(t, "ADD", exec1(t, add))
	want, _ := a.reg.Lookup(p.uid)
	a.stop(t)
	b := startAgent(t, dir)
	got, ok := b.reg.Lookup(p.uid)
	if !ok || !reflect.DeepEqual(got, want) {
		t.Fatalf("after restart: %+v %v, want %+v", got, ok, want)
	}
	chk := add
	chk.cmd = "CHECK"
	mustOK(t, "CHECK after restart", exec1(t, chk))
}

// An agent that accepts but never answers: DEL gives up after its short
// timeout, queues, and succeeds.
func TestDelWithAgentHung(t *testing.T) {
	p := newPod(t)
	dir := t.TempDir()
	a := &agent{dir: dir, socket: filepath.Join(dir, "cni.sock"), pending: filepath.Join(dir, "pending")}
	ln, err := net.Listen("unix", a.socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	accepted := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c // held open, never answered
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		for c := range accepted {
			_ = c.Close()
		}
	})
	del := invocation{cmd: "DEL", containerID: "hung", netns: p.nsPath, ifname: "eth0", args: p.cniArgs(), conf: netconf(a, "1.1.0", nil)}
	start := time.Now()
	mustOK(t, "DEL with a hung agent", exec1(t, del))
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("DEL took %v", d)
	}
	if files := pendingFiles(t, a.pending); len(files) != 1 {
		t.Fatalf("pending dir = %v, want one queued DEL", files)
	}
	add := del
	add.cmd = "ADD"
	add.conf = netconf(a, "1.1.0", p.prevResult(t, "1.1.0"))
	start = time.Now()
	mustOK(t, "ADD with a hung agent", exec1(t, add))
	if d := time.Since(start); d > 15*time.Second {
		t.Fatalf("ADD took %v", d)
	}
	if files := pendingFiles(t, a.pending); len(files) != 2 {
		t.Fatalf("pending dir = %v, want a queued ADD and DEL", files)
	}
}
