package session

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/wire"
)

// These tests speak the wire protocol directly, as a buggy or hostile app
// would, and check the engine answers every request, never blocks, and
// releases what the app held.

var testCfg = NamespaceConfig{Namespace: "team", Name: "raw", SegmentSize: 1 << 20, RxFifoSize: 4096, TxFifoSize: 4096, QueueSlots: 16}

func newEngine(t *testing.T, cfg NamespaceConfig) (*Engine, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "hs")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	e, err := New(Config{RunDir: dir, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	path, err := e.AddNamespace(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return e, path
}

// rawApp is a minimal hand-written app.
type rawApp struct {
	t    *testing.T
	c    *net.UnixConn
	rep  *wire.AttachReply
	fds  []int
	mq   *shm.Segment
	evq  *shm.Queue
	rq   *shm.Queue
	wake int
	slp  *atomic.Uint64
}

func dialRaw(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Net: "unixpacket", Name: path})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

func send(t *testing.T, c *net.UnixConn, m wire.Msg, fds ...int) {
	t.Helper()
	b := make([]byte, wire.SocketMsgMax)
	n, err := wire.Encode(b, m)
	if err != nil {
		t.Fatal(err)
	}
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	if _, _, err := c.WriteMsgUnix(b[:n], oob, nil); err != nil {
		t.Fatal(err)
	}
}

func recv(t *testing.T, c *net.UnixConn) (wire.Msg, []int) {
	t.Helper()
	b := make([]byte, wire.SocketMsgMax)
	oob := make([]byte, 256)
	n, oobn, _, _, err := c.ReadMsgUnix(b, oob)
	if err != nil {
		t.Fatalf("read attach socket: %v", err)
	}
	var fds []int
	if oobn > 0 {
		cms, _ := unix.ParseSocketControlMessage(oob[:oobn])
		for _, cm := range cms {
			f, _ := unix.ParseUnixRights(&cm)
			fds = append(fds, f...)
		}
	}
	m, err := wire.Decode(b[:n])
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	return m, fds
}

func attachRaw(t *testing.T, path, name string) *rawApp {
	t.Helper()
	c := dialRaw(t, path)
	send(t, c, &wire.Attach{Name: name, MinVersion: wire.MinVersion, MaxVersion: wire.Version})
	m, fds := recv(t, c)
	rep, ok := m.(*wire.AttachReply)
	if !ok || rep.Code != wire.OK || len(fds) != wire.AttachFDs {
		t.Fatalf("attach: %#v fds %v", m, fds)
	}
	a := &rawApp{t: t, c: c, rep: rep, fds: fds, wake: fds[1]}
	var err error
	if a.mq, err = shm.OpenSegment(fds[0]); err != nil {
		t.Fatal(err)
	}
	if a.evq, err = shm.OpenQueue(a.mq, int(rep.Worker.EvqOff), int(rep.Worker.EvqSlots), fds[1]); err != nil {
		t.Fatal(err)
	}
	// one doorbell end serves both queues: the engine rings it for events
	// and waits on its own end for requests
	if a.rq, err = shm.OpenQueue(a.mq, int(rep.Worker.ReqOff), int(rep.Worker.ReqSlots), fds[1]); err != nil {
		t.Fatal(err)
	}
	if a.slp, err = wire.Word(a.mq.Bytes(), int(rep.Worker.CtlOff)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.mq.Close()
		unix.Close(fds[1])
		unix.Close(fds[2])
		unix.Close(fds[3])
	})
	return a
}

func (a *rawApp) request(m wire.Msg) {
	a.t.Helper()
	b := make([]byte, wire.QueueMsgMax)
	n, _ := wire.Encode(b, m)
	if err := a.rq.Send(b[:n]); err != nil {
		a.t.Fatal(err)
	}
}

func (a *rawApp) event() wire.Msg {
	a.t.Helper()
	b := make([]byte, shm.MsgSize)
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := a.evq.TryRecv(b)
		if err != nil {
			a.t.Fatal(err)
		}
		if n > 0 {
			m, err := wire.Decode(b[:n])
			if err != nil {
				a.t.Fatal(err)
			}
			return m
		}
		if time.Now().After(deadline) {
			a.t.Fatal("no event")
		}
		a.slp.Store(1)
		if n, _ := a.evq.TryRecv(b); n > 0 {
			a.slp.Store(0)
			m, err := wire.Decode(b[:n])
			if err != nil {
				a.t.Fatal(err)
			}
			return m
		}
		shm.WaitBell(a.wake, time.Now().Add(time.Second))
		a.slp.Store(0)
	}
}

func lo(port uint16) wire.Addr {
	return wire.Addr{Proto: wire.TCP, IP: netip.MustParseAddr("127.0.0.1"), Port: port}
}

func TestConfigValidate(t *testing.T) {
	for _, bad := range []NamespaceConfig{
		{Name: "x"},
		{Namespace: "a", Name: "b", RxFifoSize: 1000},
		{Namespace: "a", Name: "b", SegmentSize: 1024},
		{Namespace: "a", Name: "b", MaxSegmentsPerApp: 1},
		{Namespace: "a", Name: "b", QueueSlots: 3},
		{Namespace: "a", Name: "b", MaxApps: -1},
	} {
		if err := bad.Validate(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	if err := (NamespaceConfig{Namespace: "a", Name: "b"}).Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestHostileAttach(t *testing.T) {
	_, path := newEngine(t, testCfg)
	// garbage
	c := dialRaw(t, path)
	c.Write([]byte("GET / HTTP/1.1\r\n\r\n"))
	m, _ := recv(t, c)
	if r, ok := m.(*wire.AttachReply); !ok || r.Code != wire.ErrVersion || !strings.Contains(r.Msg, fmt.Sprintf("versions %d to %d", wire.MinVersion, wire.Version)) {
		t.Fatalf("garbage: %#v", m)
	}
	// wrong first message
	c = dialRaw(t, path)
	send(t, c, &wire.Detach{})
	if m, _ := recv(t, c); m.(*wire.AttachReply).Code != wire.ErrInvalid {
		t.Fatalf("detach first: %#v", m)
	}
	// fds sent by an app are closed by the engine, not leaked
	before := openFDs(t)
	for i := 0; i < 20; i++ {
		c = dialRaw(t, path)
		p := make([]int, 2)
		unix.Pipe(p)
		send(t, c, &wire.Detach{}, p[0], p[1])
		recv(t, c)
		unix.Close(p[0])
		unix.Close(p[1])
		c.Close()
	}
	waitFor(t, "engine closes passed fds", func() bool { return openFDs(t) <= before+2 })
	// the engine still serves
	a := attachRaw(t, path, "ok")
	a.request(&wire.Listen{Ctx: 1, Addr: lo(8080)})
	if b := a.event().(*wire.Bound); b.Code != wire.OK || b.Local.Port != 8080 {
		t.Fatalf("bound: %#v", b)
	}
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc")
	}
	return len(ents)
}

// waitFor polls cond with a deadline: the engine releases asynchronously and
// has no event for it.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestRequestsAlwaysAnswered(t *testing.T) {
	e, path := newEngine(t, testCfg)
	a := attachRaw(t, path, "a")
	b := attachRaw(t, path, "b")
	// an undecodable request gets an error reply
	if err := a.rq.Send([]byte{wire.Version, 250, 0, 0, 0, 0, 0, 0}); err != nil {
		t.Fatal(err)
	}
	if r := a.event().(*wire.Reply); r.Code != wire.ErrInvalid || r.Req != 0 {
		t.Fatalf("garbage request: %#v", r)
	}
	// unknown handles
	a.request(&wire.Disconnect{Session: 999})
	if r := a.event().(*wire.Reply); r.Code != wire.ErrNoSession || r.Req != wire.TDisconnect {
		t.Fatalf("disconnect: %#v", r)
	}
	a.request(&wire.Unlisten{Ctx: 5, Listener: 999})
	if r := a.event().(*wire.UnlistenReply); r.Code != wire.ErrNoSession || r.Ctx != 5 {
		t.Fatalf("unlisten: %#v", r)
	}
	a.request(&wire.Listen{Ctx: 6, Addr: wire.Addr{Proto: wire.UDP, IP: netip.IPv4Unspecified(), Port: 5353}})
	if r := a.event().(*wire.Bound); r.Code != wire.ErrNoTransport || !strings.Contains(r.Msg, "udp sockets are carried by a transport") {
		t.Fatalf("udp listen without a transport: %#v", r)
	}
	// refused, then a listener, address in use, cut-through connect
	a.request(&wire.Connect{Ctx: 7, Remote: lo(8080)})
	if r := a.event().(*wire.Connected); r.Code != wire.ErrRefused || !strings.Contains(r.Msg, "nothing listens on 127.0.0.1:8080") {
		t.Fatalf("refused: %#v", r)
	}
	b.request(&wire.Listen{Ctx: 8, Addr: wire.Addr{Proto: wire.TCP, IP: netip.IPv4Unspecified(), Port: 8080}})
	bound := b.event().(*wire.Bound)
	a.request(&wire.Listen{Ctx: 9, Addr: wire.Addr{Proto: wire.TCP, IP: netip.IPv4Unspecified(), Port: 8080}})
	if r := a.event().(*wire.Bound); r.Code != wire.ErrAddrInUse || !strings.Contains(r.Msg, "app b") {
		t.Fatalf("in use: %#v", r)
	}
	a.request(&wire.Connect{Ctx: 10, Remote: lo(8080)})
	// the segment arrives on the socket before the events
	m, fds := recv(t, a.c)
	seg := m.(*wire.AddSegment)
	if len(fds) != 2 || !seg.HasPeerWake {
		t.Fatalf("add-segment %#v fds %v", seg, fds)
	}
	for _, fd := range fds {
		unix.Close(fd)
	}
	conn := a.event().(*wire.Connected)
	if conn.Code != wire.OK || conn.Fifos.Segment != seg.Segment || conn.Remote != lo(8080) {
		t.Fatalf("connected: %#v", conn)
	}
	m, fds = recv(t, b.c)
	for _, fd := range fds {
		unix.Close(fd)
	}
	acc := b.event().(*wire.Accepted)
	if acc.Listener != bound.Listener || acc.Remote != conn.Local || acc.Fifos.RxOff != conn.Fifos.TxOff {
		t.Fatalf("accepted %#v vs connected %#v", acc, conn)
	}
	b.request(&wire.AcceptReply{Session: acc.Session})
	b.request(&wire.Shutdown{Session: acc.Session})
	if r := b.event().(*wire.Reply); r.Code != wire.OK || r.Req != wire.TShutdown {
		t.Fatalf("shutdown: %#v", r)
	}
	// a may not touch b's session
	a.request(&wire.Reset{Session: acc.Session})
	if r := a.event().(*wire.Reply); r.Code != wire.ErrNoSession {
		t.Fatalf("foreign reset: %#v", r)
	}
	a.request(&wire.Reset{Session: conn.Session})
	if r := a.event().(*wire.Cleanup); r.Session != conn.Session {
		t.Fatalf("reset reply: %#v", r)
	}
	if r := b.event().(*wire.ResetEvt); r.Session != acc.Session || !strings.Contains(r.Msg, "reset by peer app a") {
		t.Fatalf("peer reset: %#v", r)
	}
	b.request(&wire.Disconnect{Session: acc.Session})
	if r := b.event().(*wire.Cleanup); r.Session != acc.Session {
		t.Fatalf("cleanup: %#v", r)
	}
	waitFor(t, "fifos freed", func() bool {
		st, _ := e.NamespaceStats(testCfg.Key())
		return st.Sessions == 0 && st.FifoBytesInUse == 0
	})
	// workers: add one, remove it; worker 0 cannot be removed
	send(t, a.c, &wire.WorkerAdd{Ctx: 11})
	m, fds = recv(t, a.c)
	if r := m.(*wire.WorkerAddReply); r.Code != wire.OK || r.Worker.ID != 1 || len(fds) != wire.WorkerFDs {
		t.Fatalf("worker add: %#v %v", m, fds)
	}
	for _, fd := range fds {
		unix.Close(fd)
	}
	send(t, a.c, &wire.WorkerDel{Ctx: 12, Worker: 0})
	if m, _ := recv(t, a.c); m.(*wire.WorkerDelReply).Code != wire.ErrNoWorker {
		t.Fatalf("del worker 0: %#v", m)
	}
	send(t, a.c, &wire.WorkerDel{Ctx: 13, Worker: 1})
	if m, _ := recv(t, a.c); m.(*wire.WorkerDelReply).Code != wire.OK {
		t.Fatalf("del worker 1: %#v", m)
	}
	send(t, a.c, &wire.Detach{})
	if m, _ := recv(t, a.c); m.(*wire.DetachReply).Code != wire.OK {
		t.Fatalf("detach: %#v", m)
	}
	waitFor(t, "a reaped", func() bool {
		st, _ := e.NamespaceStats(testCfg.Key())
		return st.Apps == 1 && st.Segments == 1
	})
}

// TestSlowAppNeverBlocksEngine: an app that stops reading its event queue
// is detached with a notice naming the queue; others are not affected.
func TestSlowAppNeverBlocksEngine(t *testing.T) {
	e, path := newEngine(t, testCfg)
	slow := attachRaw(t, path, "slow")
	good := attachRaw(t, path, "good")
	for i := 0; i < 200; i++ {
		for {
			b := make([]byte, wire.QueueMsgMax)
			n, _ := wire.Encode(b, &wire.Unlisten{Ctx: uint64(i), Listener: 1})
			err := slow.rq.Send(b[:n])
			if err == nil {
				break
			}
			if err != shm.ErrQueueFull {
				t.Fatal(err)
			}
			if _, err := os.Stat(path); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Microsecond) // the engine drains requests
			st, _ := e.NamespaceStats(testCfg.Key())
			if st.Apps == 1 {
				goto detached
			}
		}
	}
detached:
	m, _ := recv(t, slow.c)
	if n, ok := m.(*wire.Notice); !ok || n.Code != wire.ErrQueueFull || !strings.Contains(n.Msg, "16 slots") {
		t.Fatalf("notice: %#v", m)
	}
	waitFor(t, "slow app reaped", func() bool {
		st, _ := e.NamespaceStats(testCfg.Key())
		return st.Apps == 1
	})
	good.request(&wire.Listen{Ctx: 1, Addr: lo(0)})
	if b := good.event().(*wire.Bound); b.Code != wire.OK || b.Local.Port == 0 {
		t.Fatalf("good app: %#v", b)
	}
}

func TestRemoveNamespaceAndClose(t *testing.T) {
	dir := t.TempDir()
	e, err := New(Config{RunDir: filepath.Join(dir, "r"), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	p1, err := e.AddNamespace(testCfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg2 := testCfg
	cfg2.Name = "other"
	p2, err := e.AddNamespace(cfg2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.AddNamespace(cfg2); err == nil {
		t.Fatal("duplicate namespace accepted")
	}
	a := attachRaw(t, p1, "a")
	b := attachRaw(t, p2, "b")
	if err := e.RemoveNamespace(testCfg.Key()); err != nil {
		t.Fatal(err)
	}
	if m, _ := recv(t, a.c); m.(*wire.Notice).Code != wire.ErrShutdown || !strings.Contains(m.(*wire.Notice).Msg, "team/raw was removed") {
		t.Fatalf("notice: %#v", m)
	}
	if _, err := os.Stat(p1); !os.IsNotExist(err) {
		t.Fatalf("socket %s still there: %v", p1, err)
	}
	e.Close()
	if m, _ := recv(t, b.c); !strings.Contains(m.(*wire.Notice).Msg, "shutting down") {
		t.Fatalf("notice: %#v", m)
	}
	if _, err := os.Stat(p2); !os.IsNotExist(err) {
		t.Fatalf("socket %s still there", p2)
	}
	if len(e.Stats()) != 0 {
		t.Fatal("stats after close")
	}
}

// TestPerPodSocket: which namespaces an attach socket admits is a property
// of the socket.
func TestPerPodSocket(t *testing.T) {
	e, _ := newEngine(t, testCfg)
	cfg2 := testCfg
	cfg2.Name = "other"
	if _, err := e.AddNamespace(cfg2); err != nil {
		t.Fatal(err)
	}
	s, err := e.ServeAttach(filepath.Join(t.TempDir(), "pod.sock"), cfg2.Key())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	c := dialRaw(t, s.Path())
	send(t, c, &wire.Attach{Name: "x", Namespace: testCfg.Key(), MinVersion: wire.Version, MaxVersion: wire.Version})
	if m, _ := recv(t, c); m.(*wire.AttachReply).Code != wire.ErrNoNamespace {
		t.Fatalf("%#v", m)
	}
	c = dialRaw(t, s.Path())
	send(t, c, &wire.Attach{Name: "y", Namespace: cfg2.Name, MinVersion: wire.Version, MaxVersion: wire.Version}) // bare AppNamespace name
	if m, fds := recv(t, c); m.(*wire.AttachReply).Code != wire.OK {
		t.Fatalf("%#v", m)
	} else {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}
	c.Close()
	a := attachRaw(t, s.Path(), "pod-app") // empty namespace: the socket's
	_ = a
	waitFor(t, "one app attached through the pod socket", func() bool {
		st, _ := e.NamespaceStats(cfg2.Key())
		return st.Apps == 1
	})
}

// TestBacklogFlushed: events that find the app's queue full wait in a
// bounded backlog and arrive, in order, once the app catches up.
func TestBacklogFlushed(t *testing.T) {
	_, path := newEngine(t, testCfg)
	a := attachRaw(t, path, "a")
	const n = 40 // queue has 16 slots; backlog allows 4×16
	for i := 1; i <= n; i++ {
		for {
			b := make([]byte, wire.QueueMsgMax)
			k, _ := wire.Encode(b, &wire.Unlisten{Ctx: uint64(i), Listener: 12345})
			if err := a.rq.Send(b[:k]); err == nil {
				break
			} else if err != shm.ErrQueueFull {
				t.Fatal(err)
			}
			time.Sleep(50 * time.Microsecond) // back-off while the engine drains requests
		}
	}
	for i := 1; i <= n; i++ {
		r, ok := a.event().(*wire.UnlistenReply)
		if !ok || r.Ctx != uint64(i) || r.Code != wire.ErrNoSession {
			t.Fatalf("event %d: %#v", i, r)
		}
	}
}
