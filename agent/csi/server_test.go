package csi_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	csispec "github.com/container-storage-interface/spec/lib/go/csi"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/hoststack/hoststack/agent/csi"
)

// Kubelet's side of plugin registration, through the registration socket.
func TestRegistration(t *testing.T) {
	ev := newEnv(t)
	reg := ev.srv.RegistrationSocket()
	if want := filepath.Join(ev.dir, "plugins_registry", "csi.hoststack.dev-reg.sock"); reg != want || !isSocket(reg) {
		t.Fatalf("registration socket %s (socket: %v), want %s", reg, isSocket(reg), want)
	}
	rc := registerapi.NewRegistrationClient(dial(t, reg))
	ctx := ctxT(t)
	info, err := rc.GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.GetType() != registerapi.CSIPlugin || info.GetName() != "csi.hoststack.dev" || info.GetEndpoint() != ev.srv.CSISocket() ||
		strings.Join(info.GetSupportedVersions(), ",") != "1.0.0" {
		t.Errorf("GetInfo = %v", info)
	}
	// kubelet checks the plugin through the endpoint it was given
	ni, err := csispec.NewNodeClient(dial(t, info.GetEndpoint())).NodeGetInfo(ctx, &csispec.NodeGetInfoRequest{})
	if err != nil || ni.GetNodeId() != "node-a" {
		t.Fatalf("NodeGetInfo through the registered endpoint = %v, %v", ni, err)
	}
	if _, err := rc.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}
	if err := <-ev.regs; err != nil {
		t.Errorf("registered: OnRegistration(%v), want nil", err)
	}
	if _, err := rc.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{Error: "highest supported version 0.3.0 is too old"}); err != nil {
		t.Fatal(err)
	}
	err = <-ev.regs
	if !errors.Is(err, csi.ErrRegistration) || !strings.Contains(err.Error(), "0.3.0 is too old") || !strings.Contains(err.Error(), "csi.hoststack.dev") {
		t.Errorf("refused: OnRegistration(%v), want ErrRegistration with kubelet's reason", err)
	}
	if !strings.Contains(ev.logs.String(), "kubelet refused the CSI plugin") {
		t.Error("logs lack the refusal")
	}
}

// A kubelet endpoint other than the agent's own path of the CSI socket.
func TestRegistrationKubeletEndpoint(t *testing.T) {
	dir := shortDir(t)
	srv, err := csi.NewServer(csi.Options{NodeName: "n", Pods: &noPods{}, Log: quiet, CSISocket: filepath.Join(dir, "csi.sock"),
		RegistryDir: filepath.Join(dir, "reg"), KubeletEndpoint: "/var/lib/kubelet/plugins/csi.hoststack.dev/csi.sock"})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	info, err := registerapi.NewRegistrationClient(dial(t, srv.RegistrationSocket())).GetInfo(ctxT(t), &registerapi.InfoRequest{})
	if err != nil || info.GetEndpoint() != "/var/lib/kubelet/plugins/csi.hoststack.dev/csi.sock" {
		t.Errorf("GetInfo = %v, %v", info, err)
	}
}

var quiet = slog.New(slog.DiscardHandler)

// noPods is a PodSockets for tests that publish nothing.
type noPods struct{}

func (*noPods) Publish(context.Context, csi.PodRef, string) (string, error) {
	return "", errors.New("no pods here")
}
func (*noPods) Unpublish(context.Context, string) error { return nil }

func TestServerStop(t *testing.T) {
	dir := shortDir(t)
	csiSock, regDir := filepath.Join(dir, "p", "csi.sock"), filepath.Join(dir, "reg")
	// sockets a previous agent left are replaced
	if err := os.MkdirAll(filepath.Dir(csiSock), 0o755); err != nil {
		t.Fatal(err)
	}
	leaveSocket(t, csiSock)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv, err := csi.NewServer(csi.Options{NodeName: "n", Pods: &noPods{}, Log: quiet, CSISocket: csiSock, RegistryDir: regDir})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(ctx); err == nil {
		t.Error("second Start succeeded")
	}
	conn := dial(t, csiSock)
	if _, err := csispec.NewIdentityClient(conn).Probe(ctxT(t), &csispec.ProbeRequest{}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(csiSock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("CSI socket mode %v (%v), want 0600", fi.Mode(), err)
	}
	cancel()   // the context's end stops the server...
	srv.Stop() // ...and Stop waits for that stop
	srv.Stop()
	for _, p := range []string{csiSock, srv.RegistrationSocket()} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s after Stop: %v", p, err)
		}
	}
	if err := srv.Start(context.Background()); err == nil {
		t.Error("Start after Stop succeeded")
	}
	// a file that is not a socket is never removed
	if err := os.WriteFile(csiSock, []byte("keep"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv2, err := csi.NewServer(csi.Options{NodeName: "n", Pods: &noPods{}, Log: quiet, CSISocket: csiSock, RegistryDir: regDir})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv2.Start(context.Background()); err == nil {
		srv2.Stop()
		t.Error("Start over a regular file succeeded")
	}
	if b, err := os.ReadFile(csiSock); err != nil || string(b) != "keep" {
		t.Errorf("the regular file at the socket path: %q, %v", b, err)
	}
	if _, err := csi.NewServer(csi.Options{Pods: &noPods{}}); err == nil {
		t.Error("NewServer without a node name succeeded")
	}
	if _, err := csi.NewServer(csi.Options{NodeName: "n"}); err == nil {
		t.Error("NewServer without Pods succeeded")
	}
}
