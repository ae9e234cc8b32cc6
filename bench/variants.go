package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/session"
)

// setupVariants starts an in-process engine with one app namespace and two
// apps attached to it (a server app and a client app, as two pods would be)
// and returns every transport to compare.
func setupVariants() ([]variant, func(), error) {
	dir, err := tempDir()
	if err != nil {
		return nil, nil, err
	}
	eng, err := session.New(session.Config{RunDir: dir, Logf: func(string, ...any) {}})
	if err != nil {
		return nil, nil, err
	}
	cfg := session.NamespaceConfig{Namespace: "bench", Name: "bench",
		SegmentSize: 256 << 20, RxFifoSize: 4 << 20, TxFifoSize: 4 << 20, MaxSessionsPerApp: 1 << 16}
	sock, err := eng.AddNamespace(cfg)
	if err != nil {
		eng.Close()
		return nil, nil, fmt.Errorf("engine: %w", err)
	}
	var apps []*client.App
	attach := func(name string, spin bool) (*client.App, error) {
		a, err := client.Attach(context.Background(), client.Options{Socket: sock, Name: name, Spin: spin})
		if err == nil {
			apps = append(apps, a)
		}
		return a, err
	}
	cleanup := func() {
		for _, a := range apps {
			a.Close()
		}
		eng.Close()
		os.RemoveAll(dir)
	}
	hs := func(name string, spin bool) (variant, error) {
		srv, err := attach(name+"-server", spin)
		if err != nil {
			return variant{}, err
		}
		cli, err := attach(name+"-client", spin)
		if err != nil {
			return variant{}, err
		}
		return variant{
			name:   name,
			listen: func() (net.Listener, error) { return srv.Listen("tcp", "127.0.0.1:0") },
			dial: func(a net.Addr) (net.Conn, error) {
				return cli.Dial(context.Background(), "tcp", a.String())
			},
		}, nil
	}
	def, err := hs("hoststack", false)
	if err != nil {
		cleanup()
		return nil, nil, fmt.Errorf("attaching: %w", err)
	}
	spin, err := hs("hoststack-spin", true)
	if err != nil {
		cleanup()
		return nil, nil, fmt.Errorf("attaching: %w", err)
	}
	vs := append([]variant{def}, kernelVariants(filepath.Join(dir))...)
	vs = append(vs, spin)
	return vs, cleanup, nil
}

func idleSessionMemory() (float64, bool, error) { return 0, false, nil }
