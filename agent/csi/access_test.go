package csi_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/hoststack/hoststack/agent/csi"
	"github.com/hoststack/hoststack/internal/testreq"
)

// TestPodSocketAccess: a pod's socket gets the mode and group its
// PodAccess says (not 0666), and only a pod allowed privileged ports may
// listen below 1024 through it.
func TestPodSocketAccess(t *testing.T) {
	testreq.Root(t) // chown to the pod's group
	dir := shortDir(t)
	eng := newEngine(t, dir, &logBuf{})
	res := &resolver{sel: map[string][]string{webPod.UID: {webNS.Key()}, batchPod.UID: {batchNS.Key()}}}
	gid := 4321
	access := map[string]csi.PodAccess{
		webPod.UID:   {Mode: 0o660, GID: &gid, PrivilegedPorts: true},
		batchPod.UID: {},
	}
	socks, err := csi.NewEngineSockets(csi.EngineSocketsOptions{Engine: eng, Resolve: res.resolve,
		Access: func(_ context.Context, p csi.PodRef) (csi.PodAccess, error) { return access[p.UID], nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer socks.Close()
	publish := func(p csi.PodRef) string {
		d := filepath.Join(dir, p.Name)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		s, err := socks.Publish(context.Background(), p, d)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	web, batch := publish(webPod), publish(batchPod)
	for _, tc := range []struct {
		path string
		mode os.FileMode
		gid  uint32
	}{{web, 0o660, uint32(gid)}, {batch, 0o600, 0}} {
		fi, err := os.Stat(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != tc.mode || fi.Sys().(*syscall.Stat_t).Gid != tc.gid {
			t.Errorf("%s: mode %o gid %d, want %o %d", tc.path, fi.Mode().Perm(), fi.Sys().(*syscall.Stat_t).Gid, tc.mode, tc.gid)
		}
	}
	wa, err := attach(t, web, "w", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wa.Listen("tcp", "127.0.0.1:443"); err != nil {
		t.Fatalf("a pod with NET_BIND_SERVICE on port 443: %v", err)
	}
	ba, err := attach(t, batch, "b", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ba.Listen("tcp", "127.0.0.1:443"); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("a pod without NET_BIND_SERVICE on port 443: %v", err)
	}
}
