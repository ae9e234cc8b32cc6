package standalone

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hoststack/hoststack/agent/apply"
	"github.com/hoststack/hoststack/agent/render"
	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/transport/netstack"
	"github.com/hoststack/hoststack/internal/netnstest"
)

// TestInterfaceMode: an AppNamespace in Interface mode gets a userspace
// stack on its interface (here AF_PACKET on a veth); its app reaches a plain
// kernel server on the other side from the stack's own address, and a
// kernel client reaches the app's listener there.
func TestInterfaceMode(t *testing.T) {
	p := netnstest.NewPair(t)
	cfg := t.TempDir()
	writeConfig(t, cfg, map[string]string{"ns.yaml": `apiVersion: hoststack.dev/v1alpha1
kind: AppNamespace
metadata: {name: edge}
spec:
  podSelector: {}
  network:
    mode: Interface
    interface: {name: ` + p.A.Dev + `, vrf: 0, addresses: [10.99.0.11/24], driver: AFPacket}
`})
	server := netnstest.Listen(t, p.B.Path(), "tcp", "10.99.0.2:0")
	peers := make(chan string, 1)
	go func() {
		c, err := server.Accept()
		if err != nil {
			return
		}
		peers <- c.RemoteAddr().String()
		_, _ = io.Copy(c, c)
		c.Close()
	}()

	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan map[string]string, 1)
	done := make(chan error, 1)
	logs := &lockedBuffer{}
	go func() {
		done <- Run(ctx, Options{ConfigDir: cfg, RunDir: filepath.Join(t.TempDir(), "run"), Log: slog.New(slog.NewTextHandler(logs, nil)),
			Ready: func(s map[string]string) { ready <- s },
			OpenStack: func(ifc render.Interface) (*netstack.Transport, error) {
				return apply.OpenLink(ifc, p.A.Path()) // the interface lives in A
			}})
	}()
	var socket string
	select {
	case s := <-ready:
		socket = s["default/edge"]
	case err := <-done:
		t.Fatalf("agent exited: %v\n%s", err, logs)
	case <-time.After(30 * time.Second):
		t.Fatal("agent not ready")
	}
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if !strings.Contains(logs.String(), "userspace stack of default/edge on "+p.A.Dev+" (AFPacket) open") {
			t.Errorf("no log of the stack opening:\n%s", logs)
		}
	}()

	app, err := client.Attach(ctx, client.Options{Socket: socket, Name: "edge"})
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	c, err := app.Dial(ctx, "tcp", server.Addr().String())
	if err != nil {
		t.Fatalf("dial through the userspace stack: %v", err)
	}
	if got := <-peers; !strings.HasPrefix(got, "10.99.0.11:") {
		t.Errorf("the server saw %s, want the stack's own 10.99.0.11", got)
	}
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte("over the interface")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 18)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "over the interface" {
		t.Fatalf("echo %q, %v", buf, err)
	}
	c.Close()

	ln, err := app.Listen("tcp", ":8443")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_, _ = c.Write([]byte("hi"))
			c.Close()
		}
	}()
	kc, err := netnstest.Dial(p.B.Path(), "tcp", "10.99.0.11:8443")
	if err != nil {
		t.Fatalf("kernel client to the app's listener: %v", err)
	}
	_ = kc.SetDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(kc)
	kc.Close()
	if err != nil || string(got) != "hi" {
		t.Fatalf("inbound: %q, %v", got, err)
	}
}
