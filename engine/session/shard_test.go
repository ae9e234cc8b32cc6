package session

import (
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/wire"
)

// addWorkerRaw adds a worker to a raw app over its attach socket; the
// result shares the app's socket and has the new worker's queues.
func addWorkerRaw(t *testing.T, a *rawApp, ctx uint64) *rawApp {
	t.Helper()
	send(t, a.c, &wire.WorkerAdd{Ctx: ctx})
	m, fds := recv(t, a.c)
	rep, ok := m.(*wire.WorkerAddReply)
	if !ok || rep.Code != wire.OK || len(fds) != wire.WorkerFDs {
		t.Fatalf("worker add: %#v fds %v", m, fds)
	}
	w := &rawApp{t: t, c: a.c, rep: a.rep, fds: fds, wake: fds[1]}
	var err error
	if w.mq, err = shm.OpenSegment(fds[0]); err != nil {
		t.Fatal(err)
	}
	if w.evq, err = shm.OpenQueue(w.mq, int(rep.Worker.EvqOff), int(rep.Worker.EvqSlots), fds[1]); err != nil {
		t.Fatal(err)
	}
	if w.rq, err = shm.OpenQueue(w.mq, int(rep.Worker.ReqOff), int(rep.Worker.ReqSlots), fds[1]); err != nil {
		t.Fatal(err)
	}
	if w.slp, err = wire.Word(w.mq.Bytes(), int(rep.Worker.CtlOff)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		w.mq.Close()
		unix.Close(fds[1])
		unix.Close(fds[2])
	})
	return w
}

func osThreads(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestShardsBoundThreads: 40 apps of 16 workers are served by the engine's
// shards, not by a thread each (before the shards, 20 apps of 16 workers
// took the engine from 6 to 326 threads): the process's thread count stays
// within the shards and a few runtime threads, and every worker is served
// (each listens; each app connects to another app's listener and its
// peer is told).
func TestShardsBoundThreads(t *testing.T) {
	const apps, workers = 40, 16
	cfg := testCfg
	cfg.Name = "many"
	cfg.MaxApps = apps
	cfg.MaxWorkersPerApp = workers
	e, path := newEngine(t, cfg)
	shards := runtime.GOMAXPROCS(0)
	base := osThreads(t)

	all := make([][]*rawApp, apps)
	for i := range all {
		a := attachRaw(t, path, fmt.Sprintf("app-%d", i))
		all[i] = append(all[i], a)
		for j := 1; j < workers; j++ {
			all[i] = append(all[i], addWorkerRaw(t, a, uint64(j)))
		}
	}
	if st := e.Limits(); st.Workers != apps*workers {
		t.Fatalf("%d workers, want %d", st.Workers, apps*workers)
	}
	// every worker listens
	ports := make([][]uint16, apps)
	for i, ws := range all {
		for j, w := range ws {
			w.request(&wire.Listen{Ctx: uint64(j + 1), Addr: lo(0)})
		}
		for j, w := range ws {
			b, ok := w.event().(*wire.Bound)
			if !ok || b.Code != wire.OK || b.Ctx != uint64(j+1) {
				t.Fatalf("app %d worker %d: listen answered %#v", i, j, b)
			}
			ports[i] = append(ports[i], b.Local.Port)
		}
	}
	// each app's last worker connects to the next app's first worker
	for i, ws := range all {
		ws[workers-1].request(&wire.Connect{Ctx: 99, Remote: lo(ports[(i+1)%apps][0])})
	}
	for i, ws := range all {
		// the cut-through segment comes first, on the attach socket
		if m, _ := recv(t, ws[0].c); m.Type() != wire.TAddSegment {
			t.Fatalf("app %d: %v on the attach socket, want an add-segment", i, m.Type())
		}
		if m, _ := recv(t, ws[0].c); m.Type() != wire.TAddSegment {
			t.Fatalf("app %d: %v on the attach socket, want an add-segment", i, m.Type())
		}
		// its last worker is answered; one of its workers (spread) is told
		// of the session the previous app connected
		connected, accepted := appEvents(t, ws)
		if connected == nil || connected.Code != wire.OK || connected.Ctx != 99 || connected.Session == 0 {
			t.Fatalf("app %d: connect answered %#v", i, connected)
		}
		if !accepted {
			t.Fatalf("app %d: none of its workers was told of the accepted session", i)
		}
	}
	n := osThreads(t)
	t.Logf("%d apps x %d workers: %d OS threads (%d before the first worker, %d shards)", apps, workers, n, base, shards)
	if n > base+shards+8 {
		t.Fatalf("%d OS threads for %d workers: more than %d before + %d shards + 8", n, apps*workers, base, shards)
	}
}

// gateListen is a transport whose listens block until gate is closed, as a
// bind in a pod's network namespace may take its time; it refuses connects.
type gateListen struct{ entered, gate chan struct{} }

func (gateListen) Name() string                               { return "gate" }
func (gateListen) Host(string, netip.Addr) (string, bool)     { return "", false }
func (gateListen) Connect(ConnectRequest) (wire.Code, string) { return wire.ErrRefused, "gate refuses" }
func (g gateListen) Listen(req ListenRequest) (netip.AddrPort, wire.Code, string) {
	g.entered <- struct{}{}
	<-g.gate
	return req.Local, wire.OK, ""
}

// TestParkedWorkerKeepsOrder: a request with a blocking step (a transport
// bind) parks its worker, not the shard: on a single shard another app is
// served meanwhile, and the parked worker's next request (a connect to the
// address being bound) is served after the bind completes, in order, as a
// client that listens and then connects expects.
func TestParkedWorkerKeepsOrder(t *testing.T) {
	g := gateListen{entered: make(chan struct{}, 1), gate: make(chan struct{})}
	released := false
	release := func() {
		if !released {
			released = true
			close(g.gate)
		}
	}
	dir := t.TempDir()
	e, err := New(Config{RunDir: dir, Logf: t.Logf, Transport: g, Limits: Limits{Shards: 1}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	path, err := e.AddNamespace(testCfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release) // before the engine's Close, which must not wait for the bind forever
	a := attachRaw(t, path, "binder")
	b := attachRaw(t, path, "other")

	a.request(&wire.Listen{Ctx: 1, Addr: lo(7000)})
	<-g.entered // the bind is under way
	a.request(&wire.Connect{Ctx: 2, Remote: lo(7000)})
	// the shard serves the other app meanwhile
	b.request(&wire.Connect{Ctx: 3, Remote: wire.Addr{Proto: wire.TCP, IP: netip.MustParseAddr("192.0.2.1"), Port: 80}})
	if c, ok := b.event().(*wire.Connected); !ok || c.Ctx != 3 || c.Code != wire.ErrRefused {
		t.Fatalf("other app's connect answered %#v, want refused by the transport", c)
	}
	release()
	if m, ok := a.event().(*wire.Bound); !ok || m.Ctx != 1 || m.Code != wire.OK {
		t.Fatalf("first event %#v, want the listen's bound", m)
	}
	if m, _ := recv(t, a.c); m.Type() != wire.TAddSegment {
		t.Fatalf("%v on the attach socket, want the add-segment of the session to itself", m.Type())
	}
	if _, ok := a.event().(*wire.Accepted); !ok {
		t.Fatal("the listener was not told of the session")
	}
	if m, ok := a.event().(*wire.Connected); !ok || m.Ctx != 2 || m.Code != wire.OK {
		t.Fatalf("connect after the listen answered %#v, want connected", m)
	}
}

// appEvents collects, within 10s, the Connected event and whether an
// Accepted event came on any of an app's workers.
func appEvents(t *testing.T, ws []*rawApp) (*wire.Connected, bool) {
	t.Helper()
	b := make([]byte, shm.MsgSize)
	var connected *wire.Connected
	accepted := false
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && (connected == nil || !accepted); {
		for _, w := range ws {
			n, err := w.evq.TryRecv(b)
			if err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				continue
			}
			m, err := wire.Decode(b[:n])
			if err != nil {
				t.Fatal(err)
			}
			switch m := m.(type) {
			case *wire.Accepted:
				accepted = true
			case *wire.Connected:
				connected = m
			default:
				t.Fatalf("%v event, want connected or accepted", m.Type())
			}
		}
		runtime.Gosched()
	}
	return connected, accepted
}
