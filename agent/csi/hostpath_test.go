package csi_test

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hoststack/hoststack/agent/csi"
	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/wire"
)

// The fallback without CSI: per-pod sockets under a host directory.
func TestHostPathSockets(t *testing.T) {
	ev := newEnv(t) // its EngineSockets; its CSI server is not used
	base := filepath.Join(ev.dir, "hostpath")
	hp, err := csi.NewHostPathSockets(base, ev.sockets, slog.New(slog.NewTextHandler(ev.logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	sock, err := hp.AddPod(ctx, webPod)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(base, "team", "web-0", "session.sock"); sock != want || !isSocket(sock) {
		t.Fatalf("AddPod socket %s (socket: %v), want %s", sock, isSocket(sock), want)
	}
	if again, err := hp.AddPod(ctx, webPod); err != nil || again != sock {
		t.Errorf("AddPod again = %s, %v", again, err)
	}
	if _, err := attach(t, sock, "app", ""); err != nil {
		t.Fatalf("attach through the hostPath socket: %v", err)
	}
	_, err = attach(t, sock, "intruder", batchNS.Key())
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Code != wire.ErrNoNamespace {
		t.Errorf("attach to %s through %s's hostPath socket = %v, want refused", batchNS.Key(), webPod, err)
	}
	if _, err := hp.AddPod(ctx, lonelyPod); !errors.Is(err, csi.ErrNotSelected) {
		t.Errorf("AddPod of an unselected pod = %v, want ErrNotSelected", err)
	}
	if _, err := os.Lstat(hp.Dir(lonelyPod)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused pod left its directory: %v", err)
	}
	if _, err := hp.AddPod(ctx, csi.PodRef{Namespace: "..", Name: "x", UID: "u"}); err == nil || !strings.Contains(err.Error(), "pod namespace") {
		t.Errorf("AddPod with namespace .. = %v", err)
	}

	// a deleted pod's late event (an older UID) does not remove the new pod
	if err := hp.RemovePod(ctx, csi.PodRef{Namespace: webPod.Namespace, Name: webPod.Name, UID: "old"}); err != nil || !isSocket(sock) {
		t.Errorf("RemovePod with a stale UID: %v, socket kept: %v", err, isSocket(sock))
	}
	// the pod is replaced by one of the same name (a StatefulSet's)
	reborn := csi.PodRef{Namespace: webPod.Namespace, Name: webPod.Name, UID: "44444444-4444-4444-4444-444444444444"}
	ev.res.set(reborn.UID, webNS.Key())
	if s, err := hp.AddPod(ctx, reborn); err != nil || s != sock {
		t.Fatalf("AddPod of the replacement = %s, %v", s, err)
	}
	if _, err := attach(t, sock, "reborn", ""); err != nil {
		t.Fatal(err)
	}

	// Sync to another set of pods: the web pod goes (with its directories),
	// the batch pod comes
	if err := hp.Sync(ctx, []csi.PodRef{batchPod}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(base, "team", "web-0")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("web pod's directory after Sync: %v", err)
	}
	bsock := filepath.Join(base, "team", "batch-0", "session.sock")
	if _, err := attach(t, bsock, "batch", ""); err != nil {
		t.Fatalf("attach through the synced pod's socket: %v", err)
	}
	if pods := hp.Pods(); len(pods) != 1 || pods[0] != batchPod {
		t.Errorf("Pods() = %v, want [%v]", pods, batchPod)
	}
	// the pod is no longer selected: Sync reports it and stops serving it
	ev.res.set(batchPod.UID)
	if err := hp.Sync(ctx, []csi.PodRef{batchPod}); !errors.Is(err, csi.ErrNotSelected) || strings.Count(err.Error(), "\n") != 0 {
		t.Errorf("Sync with an unselected pod = %v, want ErrNotSelected", err)
	}
	if isSocket(bsock) || len(hp.Pods()) != 0 {
		t.Errorf("unselected pod still served: socket %v, pods %v", isSocket(bsock), hp.Pods())
	}
	if _, err := os.Lstat(filepath.Join(base, "team")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("empty namespace directory kept: %v", err)
	}
	if _, err := csi.NewHostPathSockets("relative", ev.sockets, nil); err == nil {
		t.Error("NewHostPathSockets with a relative directory succeeded")
	}
}
