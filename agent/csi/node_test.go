package csi_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	csispec "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/hoststack/hoststack/agent/csi"
	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/wire"
)

func TestIdentityAndNodeInfo(t *testing.T) {
	ev := newEnv(t)
	ctx := ctxT(t)
	info, err := ev.ident.GetPluginInfo(ctx, &csispec.GetPluginInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.GetName() != "csi.hoststack.dev" || info.GetVendorVersion() != "v0.test" {
		t.Errorf("GetPluginInfo = %v", info)
	}
	caps, err := ev.ident.GetPluginCapabilities(ctx, &csispec.GetPluginCapabilitiesRequest{})
	if err != nil || len(caps.GetCapabilities()) != 0 {
		t.Errorf("GetPluginCapabilities = %v, %v; want none (no controller service)", caps, err)
	}
	probe, err := ev.ident.Probe(ctx, &csispec.ProbeRequest{})
	if err != nil || !probe.GetReady().GetValue() {
		t.Errorf("Probe = %v, %v", probe, err)
	}
	ni, err := ev.node.NodeGetInfo(ctx, &csispec.NodeGetInfoRequest{})
	if err != nil || ni.GetNodeId() != "node-a" {
		t.Errorf("NodeGetInfo = %v, %v", ni, err)
	}
	nc, err := ev.node.NodeGetCapabilities(ctx, &csispec.NodeGetCapabilitiesRequest{})
	if err != nil || len(nc.GetCapabilities()) != 0 {
		t.Errorf("NodeGetCapabilities = %v, %v; want none", nc, err)
	}
	_, err = ev.node.NodeStageVolume(ctx, &csispec.NodeStageVolumeRequest{VolumeId: "v", StagingTargetPath: "/x"})
	wantCode(t, err, codes.Unimplemented)
	_, err = ev.node.NodeGetVolumeStats(ctx, &csispec.NodeGetVolumeStatsRequest{VolumeId: "v", VolumePath: "/x"})
	wantCode(t, err, codes.Unimplemented)
	_, err = ev.node.NodeExpandVolume(ctx, &csispec.NodeExpandVolumeRequest{VolumeId: "v", VolumePath: "/x"})
	wantCode(t, err, codes.Unimplemented)
}

// A published volume holds the pod's socket; an app attaching through it
// gets the pod's AppNamespace and no other.
func TestPublishServesPodSocket(t *testing.T) {
	ev := newEnv(t)
	target := ev.target(webPod, "hoststack")
	sock := ev.publish(webPod, target)
	if !isSocket(sock) {
		t.Fatalf("no socket at %s", sock)
	}
	fi, err := os.Stat(target)
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("target %s: %v %v, want a 0755 directory", target, fi.Mode(), err)
	}
	// the socket's default: the pod's AppNamespace
	srvApp, err := attach(t, sock, "server", "")
	if err != nil {
		t.Fatalf("attach through the pod socket: %v", err)
	}
	// the AppNamespace named explicitly, in both spellings
	if _, err := attach(t, sock, "explicit", webNS.Key()); err != nil {
		t.Fatalf("attach to %s: %v", webNS.Key(), err)
	}
	if _, err := attach(t, sock, "short", webNS.Name); err != nil {
		t.Fatalf("attach to %s: %v", webNS.Name, err)
	}
	if n := ev.apps(webNS); n != 3 {
		t.Errorf("%s has %d apps, want 3", webNS.Key(), n)
	}
	// an AppNamespace that does not select the pod is refused
	_, err = attach(t, sock, "intruder", batchNS.Key())
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Code != wire.ErrNoNamespace || !strings.Contains(ce.Msg, `"team/batch" is not served by this attach socket`) {
		t.Fatalf("attach to %s through %s's socket = %v, want a refusal naming the namespace", batchNS.Key(), webPod, err)
	}
	if n := ev.apps(batchNS); n != 0 {
		t.Errorf("%s has %d apps, want 0", batchNS.Key(), n)
	}
	// the socket works: two apps of the pod talk cut-through
	ln, err := srvApp.Listen("tcp", "127.0.0.1:7000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cli, err := attach(t, sock, "client", "")
	if err != nil {
		t.Fatal(err)
	}
	c, err := cli.Dial(ctxT(t), "tcp", "127.0.0.1:7000")
	if err != nil {
		t.Fatalf("dial through the pod's socket: %v", err)
	}
	c.Close()
	// the logs name the pod and its socket
	logs := ev.logs.String()
	for _, want := range []string{"serving pod attach socket", "podUID=" + webPod.UID, "podName=" + webPod.Name, "podNamespace=team", "path=" + sock} {
		if !strings.Contains(logs, want) {
			t.Errorf("logs lack %q", want)
		}
	}
}

func TestPublishPodNotSelected(t *testing.T) {
	ev := newEnv(t)
	target := ev.target(lonelyPod, "hoststack")
	_, err := ev.node.NodePublishVolume(ctxT(t), publishReq(lonelyPod, target))
	wantCode(t, err, codes.FailedPrecondition, "team/lonely", lonelyPod.UID, "not selected by any AppNamespace")
	if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused publish left its target %s (%v)", target, err)
	}
	// the pod's labels change; kubelet retries and succeeds
	ev.res.set(lonelyPod.UID, batchNS.Key())
	sock := ev.publish(lonelyPod, target)
	if _, err := attach(t, sock, "late", ""); err != nil {
		t.Fatal(err)
	}
	if n := ev.apps(batchNS); n != 1 {
		t.Errorf("%s has %d apps, want 1", batchNS.Key(), n)
	}
}

func TestPublishRefusesBadRequests(t *testing.T) {
	ev := newEnv(t)
	target := ev.target(webPod, "bad")
	edit := func(f func(r *csispec.NodePublishVolumeRequest)) *csispec.NodePublishVolumeRequest {
		r := publishReq(webPod, target)
		f(r)
		return r
	}
	for _, tc := range []struct {
		name  string
		req   *csispec.NodePublishVolumeRequest
		code  codes.Code
		frags []string
	}{
		{"persistent volume", edit(func(r *csispec.NodePublishVolumeRequest) { delete(r.VolumeContext, "csi.storage.k8s.io/ephemeral") }),
			codes.InvalidArgument, []string{"only inline ephemeral volumes", "not through a PersistentVolume"}},
		{"ephemeral=false", edit(func(r *csispec.NodePublishVolumeRequest) { r.VolumeContext["csi.storage.k8s.io/ephemeral"] = "false" }),
			codes.InvalidArgument, []string{"only inline ephemeral volumes", `"false"`}},
		{"no pod name", edit(func(r *csispec.NodePublishVolumeRequest) { delete(r.VolumeContext, "csi.storage.k8s.io/pod.name") }),
			codes.InvalidArgument, []string{"lacks csi.storage.k8s.io/pod.name", "podInfoOnMount"}},
		{"no pod namespace", edit(func(r *csispec.NodePublishVolumeRequest) { delete(r.VolumeContext, "csi.storage.k8s.io/pod.namespace") }),
			codes.InvalidArgument, []string{"lacks csi.storage.k8s.io/pod.namespace"}},
		{"no pod uid", edit(func(r *csispec.NodePublishVolumeRequest) { r.VolumeContext["csi.storage.k8s.io/pod.uid"] = "" }),
			codes.InvalidArgument, []string{"lacks csi.storage.k8s.io/pod.uid"}},
		{"bad pod namespace", edit(func(r *csispec.NodePublishVolumeRequest) {
			r.VolumeContext["csi.storage.k8s.io/pod.namespace"] = "../etc"
		}),
			codes.InvalidArgument, []string{`pod namespace "../etc"`}},
		{"bad pod name", edit(func(r *csispec.NodePublishVolumeRequest) { r.VolumeContext["csi.storage.k8s.io/pod.name"] = "a/b" }),
			codes.InvalidArgument, []string{`pod name "a/b"`}},
		{"no volume id", edit(func(r *csispec.NodePublishVolumeRequest) { r.VolumeId = "" }),
			codes.InvalidArgument, []string{"volume_id"}},
		{"relative target", edit(func(r *csispec.NodePublishVolumeRequest) { r.TargetPath = "pods/x/mount" }),
			codes.InvalidArgument, []string{"target_path", "absolute"}},
		{"no capability", edit(func(r *csispec.NodePublishVolumeRequest) { r.VolumeCapability = nil }),
			codes.InvalidArgument, []string{"volume_capability"}},
		{"block", edit(func(r *csispec.NodePublishVolumeRequest) {
			r.VolumeCapability.AccessType = &csispec.VolumeCapability_Block{Block: &csispec.VolumeCapability_BlockVolume{}}
		}), codes.InvalidArgument, []string{"block access is not supported"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ev.node.NodePublishVolume(ctxT(t), tc.req)
			wantCode(t, err, tc.code, tc.frags...)
			if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("a refused publish left %s (%v)", target, err)
			}
		})
	}
	_, err := ev.node.NodeUnpublishVolume(ctxT(t), &csispec.NodeUnpublishVolumeRequest{TargetPath: target})
	wantCode(t, err, codes.InvalidArgument, "volume_id")
	_, err = ev.node.NodeUnpublishVolume(ctxT(t), &csispec.NodeUnpublishVolumeRequest{VolumeId: "v"})
	wantCode(t, err, codes.InvalidArgument, "target_path")
}

func TestUnpublishClosesPodSocket(t *testing.T) {
	ev := newEnv(t)
	target := ev.target(webPod, "hoststack")
	sock := ev.publish(webPod, target)
	app, err := attach(t, sock, "early", "")
	if err != nil {
		t.Fatal(err)
	}
	ev.unpublish(webPod, target)
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket %s after unpublish: %v", sock, err)
	}
	if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("target %s after unpublish: %v", target, err)
	}
	if _, err := attach(t, sock, "late", ""); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("attach after unpublish = %v, want ENOENT", err)
	}
	ev.reapMu.Lock()
	reaps := append([]reapCall(nil), ev.reaps...)
	ev.reapMu.Unlock()
	if len(reaps) != 1 || reaps[0].path != sock || !strings.Contains(reaps[0].reason, webPod.String()) {
		t.Errorf("ReapApps calls = %+v, want one for %s naming the pod", reaps, sock)
	}
	if !strings.Contains(ev.logs.String(), "closed pod attach socket") {
		t.Error("logs lack the socket's close")
	}
	// The app that attached through the pod's socket is reaped and told.
	if n := ev.apps(webNS); n != 0 {
		t.Errorf("%s has %d apps after unpublish, want 0", webNS.Key(), n)
	}
	if _, err := app.Listen("tcp", "127.0.0.1:0"); err == nil {
		t.Error("app of an unpublished pod can still listen")
	}
}

func TestPublishIsIdempotent(t *testing.T) {
	ev := newEnv(t)
	target := ev.target(webPod, "hoststack")
	sock := ev.publish(webPod, target)
	before, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attach(t, sock, "early", ""); err != nil {
		t.Fatal(err)
	}
	// kubelet publishes again (requiresRepublish, or a retry): same socket
	if again := ev.publish(webPod, target); again != sock {
		t.Errorf("second publish socket %s, want %s", again, sock)
	}
	after, err := os.Lstat(sock)
	if err != nil || !os.SameFile(before, after) {
		t.Errorf("second publish replaced the socket (%v)", err)
	}
	if _, err := attach(t, sock, "second", ""); err != nil {
		t.Fatal(err)
	}
	// the socket file disappeared (someone cleaned the directory): served again
	if err := os.Remove(sock); err != nil {
		t.Fatal(err)
	}
	ev.publish(webPod, target)
	if _, err := attach(t, sock, "third", ""); err != nil {
		t.Fatalf("attach after republish of a removed socket: %v", err)
	}
	if n := ev.reapCalls(); n != 0 {
		t.Errorf("re-serving a removed socket reaped apps (%d ReapApps calls)", n)
	}
	// the pod's AppNamespace changed: the socket now serves the new one only
	ev.res.set(webPod.UID, batchNS.Key())
	ev.publish(webPod, target)
	if _, err := attach(t, sock, "moved", ""); err != nil {
		t.Fatal(err)
	}
	if n := ev.apps(batchNS); n != 1 {
		t.Errorf("%s has %d apps, want 1", batchNS.Key(), n)
	}
	if n := ev.reapCalls(); n != 1 {
		t.Errorf("the pod left %s: %d ReapApps calls, want 1", webNS.Key(), n)
	}
	if _, err := attach(t, sock, "old", webNS.Key()); err == nil {
		t.Errorf("attach to %s after the pod left it succeeded", webNS.Key())
	}
	// another pod's publish of the same directory is refused
	_, err = ev.node.NodePublishVolume(ctxT(t), publishReq(batchPod, target))
	wantCode(t, err, codes.AlreadyExists, batchPod.String(), webPod.String())

	ev.unpublish(webPod, target)
	ev.unpublish(webPod, target) // again: fine
	// a volume this agent never published (it restarted, say) with a socket
	// file a previous agent left
	stale := ev.target(batchPod, "stale")
	if err := os.MkdirAll(stale, 0o755); err != nil {
		t.Fatal(err)
	}
	leaveSocket(t, filepath.Join(stale, csi.SocketName))
	ev.unpublish(batchPod, stale)
	if _, err := os.Lstat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale target %s after unpublish: %v", stale, err)
	}
	ev.unpublish(batchPod, ev.target(batchPod, "never")) // nothing there at all

	// the agent restarted: kubelet republishes (requiresRepublish) a volume
	// whose directory holds the previous agent's dead socket
	restarted := ev.target(batchPod, "restarted")
	if err := os.MkdirAll(restarted, 0o755); err != nil {
		t.Fatal(err)
	}
	leaveSocket(t, filepath.Join(restarted, csi.SocketName))
	if _, err := attach(t, filepath.Join(restarted, csi.SocketName), "before", ""); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("attach through a dead socket = %v, want ECONNREFUSED", err)
	}
	if _, err := attach(t, ev.publish(batchPod, restarted), "after", ""); err != nil {
		t.Fatalf("attach after republish over a dead socket: %v", err)
	}
}

// leaveSocket creates a socket file nothing serves.
func leaveSocket(t *testing.T, path string) {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_SEQPACKET, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
}

// Kubelet's real target paths are longer than a socket address holds.
func TestPublishLongTargetPath(t *testing.T) {
	ev := newEnv(t)
	target := filepath.Join(ev.dir, "var/lib/kubelet/pods", webPod.UID, "volumes/kubernetes.io~csi/hoststack-attach/mount")
	sock := ev.publish(webPod, target)
	if len(sock) <= 108 {
		t.Fatalf("test path %s is not long enough (%d)", sock, len(sock))
	}
	if !isSocket(sock) {
		t.Fatalf("no socket at %s", sock)
	}
	// as in the pod: the directory is reached by a short name
	short := filepath.Join(ev.dir, "p")
	if err := os.Symlink(target, short); err != nil {
		t.Fatal(err)
	}
	if _, err := attach(t, filepath.Join(short, csi.SocketName), "app", ""); err != nil {
		t.Fatalf("attach through a long-path socket: %v", err)
	}
	ev.unpublish(webPod, target)
	if _, err := os.Lstat(target); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("target after unpublish: %v", err)
	}
}

// Many pods' volumes published and unpublished at once (run with -race).
func TestConcurrentPublish(t *testing.T) {
	ev := newEnv(t)
	var wg sync.WaitGroup
	for i := range 8 {
		pod := csi.PodRef{Namespace: "team", Name: "web-" + string(rune('a'+i)), UID: strings.Repeat(string(rune('a'+i)), 8) + "-0000-0000-0000-000000000000"}
		ev.res.set(pod.UID, webNS.Key())
		wg.Add(1)
		go func() {
			defer wg.Done()
			target := ev.target(pod, "hoststack")
			for range 3 {
				if _, err := ev.node.NodePublishVolume(ctxT(t), publishReq(pod, target)); err != nil {
					t.Errorf("publish %s: %v", pod, err)
					return
				}
				app, err := client.Attach(ctxT(t), client.Options{Socket: filepath.Join(target, csi.SocketName), Name: pod.Name})
				if err != nil {
					t.Errorf("attach %s: %v", pod, err)
					return
				}
				app.Close()
				if _, err := ev.node.NodeUnpublishVolume(ctxT(t), &csispec.NodeUnpublishVolumeRequest{VolumeId: "v", TargetPath: target}); err != nil {
					t.Errorf("unpublish %s: %v", pod, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if m := ev.sockets.Sockets(); len(m) != 0 {
		t.Errorf("sockets left: %v", m)
	}
}

func TestForgetPodAndClose(t *testing.T) {
	ev := newEnv(t)
	a := ev.publish(webPod, ev.target(webPod, "one"))
	b := ev.publish(webPod, ev.target(webPod, "two"))
	c := ev.publish(batchPod, ev.target(batchPod, "one"))
	if n := ev.sockets.ForgetPod(webPod.UID); n != 2 {
		t.Errorf("ForgetPod closed %d sockets, want 2", n)
	}
	if isSocket(a) || isSocket(b) || !isSocket(c) {
		t.Errorf("after ForgetPod(web): sockets %v %v %v, want only %s", isSocket(a), isSocket(b), isSocket(c), c)
	}
	if n := ev.reapCalls(); n != 2 {
		t.Errorf("ForgetPod: %d ReapApps calls, want 2", n)
	}
	if err := ev.sockets.Close(); err != nil {
		t.Fatal(err)
	}
	if n := ev.reapCalls(); n != 2 {
		t.Errorf("Close asked to reap (%d ReapApps calls): the engine's Close tells the apps itself", n)
	}
	if isSocket(c) {
		t.Errorf("%s after Close", c)
	}
	_, err := ev.node.NodePublishVolume(ctxT(t), publishReq(webPod, ev.target(webPod, "three")))
	wantCode(t, err, codes.Internal, "agent stopping")
}
