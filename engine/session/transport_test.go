package session_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/engine/wire"
)

// fakeTransport exercises the Flow seam in-process: depending on the port it
// refuses at once, refuses later, resets after connecting, or echoes.
type fakeTransport struct{}

const (
	portSyncRefuse  = 1
	portAsyncRefuse = 2
	portReset       = 3
	portEcho        = 4
)

func (fakeTransport) Name() string                                   { return "fake" }
func (fakeTransport) Host(string, netip.Addr) (host string, ok bool) { return "", false }
func (fakeTransport) Connect(req session.ConnectRequest) (wire.Code, string) {
	f := req.Flow
	switch req.Remote.Port {
	case portSyncRefuse:
		return wire.ErrNoTransport, "fake: no route at all"
	case portAsyncRefuse:
		go f.Finish(wire.ErrRefused, "fake: nobody home")
	case portReset:
		go func() {
			if f.Connected(netip.MustParseAddrPort("192.0.2.9:40000")) {
				f.Finish(wire.ErrReset, "fake: the far end reset")
			} else {
				f.Finish(wire.OK, "")
			}
		}()
	default:
		go echo(f)
	}
	return wire.OK, ""
}

// echo copies the app's tx fifo into its rx fifo, following the waiting-flag
// protocol, and ends the session after the app's end of stream.
func echo(f *session.Flow) {
	if !f.Connected(netip.MustParseAddrPort("192.0.2.9:40000")) {
		f.Finish(wire.OK, "")
		return
	}
	rx, tx := f.Rx, f.Tx
	for {
		a, _, err := tx.Peek()
		if len(a) > 0 {
			if n, _ := rx.Write(a); n > 0 {
				_ = tx.Consume(n)
				if rx.TakeReaderWaiting() {
					f.WakeApp()
				}
				if tx.TakeWriterWaiting() {
					f.WakeApp()
				}
				continue
			}
		} else if err == io.EOF {
			rx.CloseWrite()
			f.WakeApp()
			f.Finish(wire.OK, "")
			return
		}
		tx.SetReaderWaiting()
		rx.SetWriterWaiting()
		n, _ := tx.Len()
		free, _ := rx.Free()
		if (n > 0 && free > 0) || (n == 0 && tx.WriteClosed()) {
			continue
		}
		select {
		case <-f.Kick():
		case <-f.AppClosed():
			if f.AppReset() || !tx.WriteClosed() {
				f.Finish(wire.OK, "")
				return
			}
		}
	}
}

func TestTransportFlows(t *testing.T) {
	eng, err := session.New(session.Config{RunDir: t.TempDir(), Transport: fakeTransport{}, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	sock, err := eng.AddNamespace(session.NamespaceConfig{Namespace: "team", Name: "flows", SegmentSize: 1 << 20,
		RxFifoSize: 16 << 10, TxFifoSize: 16 << 10})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	app, err := client.Attach(ctx, client.Options{Socket: sock, Name: "app"})
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()

	for _, tc := range []struct {
		port  string
		errno syscall.Errno
		msg   string
	}{{"1", syscall.ECONNREFUSED, "no route at all"}, {"2", syscall.ECONNREFUSED, "nobody home"}} {
		_, err := app.Dial(ctx, "tcp", "192.0.2.9:"+tc.port)
		if !errors.Is(err, tc.errno) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("dial port %s: %v, want %v saying %q", tc.port, err, tc.errno, tc.msg)
		}
	}

	c, err := app.Dial(ctx, "tcp", "192.0.2.9:3")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(c); !errors.Is(err, syscall.ECONNRESET) || !strings.Contains(err.Error(), "far end reset") {
		t.Errorf("read of a reset flow: %v, want ECONNRESET with the transport's reason", err)
	}
	c.Close()

	// more rounds than the segment holds pairs: each pair comes back
	data := bytes.Repeat([]byte("0123456789abcdef"), 16<<10) // 256 KiB, 16 fifos' worth
	for i := 0; i < 40; i++ {
		c, err := app.Dial(ctx, "tcp", "192.0.2.9:4")
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if got := c.LocalAddr().String(); got != "192.0.2.9:40000" {
			t.Fatalf("local address %s, want what the transport reported", got)
		}
		wErr := make(chan error, 1)
		go func() {
			_, err := c.Write(data)
			if err == nil {
				err = c.(interface{ CloseWrite() error }).CloseWrite()
			}
			wErr <- err
		}()
		got, err := io.ReadAll(c)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("round %d: echo %d bytes of %d, %v", i, len(got), len(data), err)
		}
		if err := <-wErr; err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
}

// gatedTransport's global-scope listens block until gate is closed, as a
// bind in a pod's network namespace may take its time.
type gatedTransport struct {
	fakeTransport
	entered chan struct{}
	gate    chan struct{}
}

func (g gatedTransport) Listen(req session.ListenRequest) (netip.AddrPort, wire.Code, string) {
	g.entered <- struct{}{}
	<-g.gate
	return req.Local, wire.OK, ""
}

// TestSlowTransportListenLeavesNamespace: while the transport binds an app's
// global listener, the app namespace keeps serving (a fresh app attaches
// and moves data within 1 s) — also on the engine's only shard, which the
// bind must not hold —, and the listener's address is reserved.
func TestSlowTransportListenLeavesNamespace(t *testing.T) {
	gt := gatedTransport{entered: make(chan struct{}, 1), gate: make(chan struct{})}
	// one shard: the bind must not stall the shard every app shares
	eng, err := session.New(session.Config{RunDir: t.TempDir(), Transport: gt, Logf: t.Logf, Limits: session.Limits{Shards: 1}})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	released := false
	release := func() {
		if !released {
			released = true
			close(gt.gate)
		}
	}
	defer release() // before eng.Close, which must not wait for the bind forever
	sock, err := eng.AddNamespace(session.NamespaceConfig{Namespace: "team", Name: "slow"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	slow, err := client.Attach(ctx, client.Options{Socket: sock, Name: "slow"})
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	listened := make(chan error, 1)
	go func() {
		ln, err := slow.Listen("tcp", "127.0.0.1:7000")
		if err == nil {
			ln.Close()
		}
		listened <- err
	}()
	<-gt.entered // the transport is binding now

	start := time.Now()
	ctx1, cancel1 := context.WithTimeout(ctx, time.Second)
	defer cancel1()
	fresh, err := client.Attach(ctx1, client.Options{Socket: sock, Name: "fresh", Scope: client.ScopeLocal})
	if err != nil {
		t.Fatalf("attach while a transport binds: %v", err)
	}
	defer fresh.Close()
	if _, err := fresh.Listen("tcp", "127.0.0.1:7000"); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("listen on the address being bound: %v, want EADDRINUSE", err)
	}
	ln, err := fresh.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c, err := fresh.Dial(ctx1, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("dial while a transport binds: %v", err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4)
	if _, err := io.ReadFull(s, b); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("fresh app took %v while a transport bound", d)
	}
	release()
	if err := <-listened; err != nil {
		t.Fatalf("the slow listen after its bind: %v", err)
	}
}
