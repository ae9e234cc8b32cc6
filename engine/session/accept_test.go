package session

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/wire"
)

// vWorker is one worker of a hand-written app speaking a given wire
// version: its queues and the end of its doorbell it waits on.
type vWorker struct {
	t     *testing.T
	codec wire.Codec
	id    uint32
	evq   *shm.Queue
	rq    *shm.Queue
	wake  int
	slp   *atomic.Uint64
}

// vApp is a hand-written app of wire version codec.V (3 or later: its
// worker descriptors are doorbells) with any number of workers.
type vApp struct {
	t       *testing.T
	codec   wire.Codec
	c       *net.UnixConn
	workers []*vWorker
}

func (a *vApp) sendSock(m wire.Msg) {
	a.t.Helper()
	b, err := a.codec.Append(nil, m)
	if err != nil {
		a.t.Fatal(err)
	}
	if _, err := a.c.Write(b); err != nil {
		a.t.Fatal(err)
	}
}

// recvSock reads attach-socket messages until one that is not an
// add-segment (those are for the app's mappings, which this test does not
// need) and returns it with its descriptors.
func (a *vApp) recvSock() (wire.Msg, []int) {
	a.t.Helper()
	for {
		b := make([]byte, wire.SocketMsgMax)
		oob := make([]byte, 256)
		n, oobn, _, _, err := a.c.ReadMsgUnix(b, oob)
		if err != nil {
			a.t.Fatalf("read attach socket: %v", err)
		}
		var fds []int
		if oobn > 0 {
			cms, _ := unix.ParseSocketControlMessage(oob[:oobn])
			for _, cm := range cms {
				f, _ := unix.ParseUnixRights(&cm)
				fds = append(fds, f...)
			}
		}
		a.t.Cleanup(func() {
			for _, fd := range fds {
				unix.Close(fd)
			}
		})
		m, err := a.codec.Decode(b[:n])
		if err != nil {
			a.t.Fatalf("decode: %v", err)
		}
		if _, ok := m.(*wire.AddSegment); !ok {
			return m, fds
		}
	}
}

func (a *vApp) openWorker(info wire.WorkerInfo, fds []int) *vWorker {
	a.t.Helper()
	mq, err := shm.OpenSegment(fds[0])
	if err != nil {
		a.t.Fatal(err)
	}
	a.t.Cleanup(func() { mq.Close() })
	w := &vWorker{t: a.t, codec: a.codec, id: info.ID, wake: fds[1]}
	if w.evq, err = shm.OpenQueue(mq, int(info.EvqOff), int(info.EvqSlots), fds[1]); err != nil {
		a.t.Fatal(err)
	}
	if w.rq, err = shm.OpenQueue(mq, int(info.ReqOff), int(info.ReqSlots), fds[1]); err != nil {
		a.t.Fatal(err)
	}
	if w.slp, err = wire.Word(mq.Bytes(), int(info.CtlOff)); err != nil {
		a.t.Fatal(err)
	}
	a.workers = append(a.workers, w)
	return w
}

// attachV attaches an app speaking up to version v with n workers.
func attachV(t *testing.T, path, name string, v uint8, n int) *vApp {
	t.Helper()
	a := &vApp{t: t, codec: wire.Codec{V: v}, c: dialRaw(t, path)}
	a.sendSock(&wire.Attach{Name: name, MinVersion: v, MaxVersion: v})
	m, fds := a.recvSock()
	rep, ok := m.(*wire.AttachReply)
	if !ok || rep.Code != wire.OK || len(fds) != wire.AttachFDs {
		t.Fatalf("attach: %#v fds %v", m, fds)
	}
	a.openWorker(rep.Worker, fds)
	for i := 1; i < n; i++ {
		a.sendSock(&wire.WorkerAdd{Ctx: uint64(i)})
		m, fds := a.recvSock()
		wr, ok := m.(*wire.WorkerAddReply)
		if !ok || wr.Code != wire.OK || len(fds) != wire.WorkerFDs {
			t.Fatalf("worker add: %#v fds %v", m, fds)
		}
		a.openWorker(wr.Worker, fds)
	}
	return a
}

func (w *vWorker) request(m wire.Msg) {
	w.t.Helper()
	b := make([]byte, wire.QueueMsgMax)
	n, err := w.codec.Encode(b, m)
	if err != nil {
		w.t.Fatal(err)
	}
	if err := w.rq.Send(b[:n]); err != nil {
		w.t.Fatal(err)
	}
}

// tryEvent returns the next event, or nil when the queue is empty.
func (w *vWorker) tryEvent() wire.Msg {
	w.t.Helper()
	b := make([]byte, shm.MsgSize)
	n, err := w.evq.TryRecv(b)
	if err != nil {
		w.t.Fatal(err)
	}
	if n == 0 {
		return nil
	}
	m, err := w.codec.Decode(b[:n])
	if err != nil {
		w.t.Fatal(err)
	}
	return m
}

// event waits for the next event (sleeping on the doorbell, as an app's
// loop does).
func (w *vWorker) event() wire.Msg {
	w.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if m := w.tryEvent(); m != nil {
			return m
		}
		if time.Now().After(deadline) {
			w.t.Fatal("no event")
		}
		w.slp.Store(1)
		if m := w.tryEvent(); m != nil {
			w.slp.Store(0)
			return m
		}
		_ = shm.WaitBell(w.wake, time.Now().Add(time.Second))
		w.slp.Store(0)
	}
}

// connected waits for the connected event answering ctx, skipping resets of
// earlier sessions.
func (w *vWorker) connected(ctx uint64) *wire.Connected {
	w.t.Helper()
	for {
		switch m := w.event().(type) {
		case *wire.Connected:
			if m.Ctx != ctx || m.Code != wire.OK {
				w.t.Fatalf("connect %d: %#v", ctx, m)
			}
			return m
		case *wire.ResetEvt:
		default:
			w.t.Fatalf("connect %d: unexpected %#v", ctx, m)
		}
	}
}

// acceptedOn connects once from cli to addr and returns the index of the
// worker of srv whose queue carried the accepted event. The engine queues
// it before the connected event, so by then it is there.
func acceptedOn(t *testing.T, cli *vWorker, srv *vApp, ctx uint64, addr wire.Addr, listener uint64) int {
	t.Helper()
	cli.request(&wire.Connect{Ctx: ctx, Remote: addr})
	cli.connected(ctx)
	got := -1
	for i, w := range srv.workers {
		for m := w.tryEvent(); m != nil; m = w.tryEvent() {
			acc, ok := m.(*wire.Accepted)
			if !ok {
				t.Fatalf("worker %d: unexpected %#v", w.id, m)
			}
			if acc.Listener != listener || got >= 0 {
				t.Fatalf("worker %d: accepted %#v (already seen on worker index %d)", w.id, acc, got)
			}
			got = i
		}
	}
	if got < 0 {
		t.Fatalf("connect %d: no worker of the listening app got an accepted event", ctx)
	}
	return got
}

// TestAcceptsSpreadOverWorkers: a listener of an app with 4 workers gets
// its sessions on all 4 (evenly: least loaded, then round robin); with one
// worker removed the others take every session; an app of an older wire
// version gets them all on the worker that listened.
func TestAcceptsSpreadOverWorkers(t *testing.T) {
	cfg := testCfg
	cfg.QueueSlots = 64
	_, path := newEngine(t, cfg)
	addr := lo(8090)

	srv := attachV(t, path, "srv", wire.Version, 4)
	srv.workers[0].request(&wire.Listen{Ctx: 1, Addr: addr})
	b, ok := srv.workers[0].event().(*wire.Bound)
	if !ok || b.Code != wire.OK {
		t.Fatalf("listen: %#v", b)
	}
	cli := attachV(t, path, "cli", wire.Version, 1).workers[0]

	counts := make([]int, 4)
	ctx := uint64(100)
	for i := 0; i < 16; i++ {
		ctx++
		counts[acceptedOn(t, cli, srv, ctx, addr, b.Listener)]++
	}
	for _, n := range counts {
		if n != 4 {
			t.Fatalf("accepts per worker %v, want 4 each", counts)
		}
	}

	// Remove worker 2 (its sessions are reset): the next sessions go to the
	// three others, none is lost.
	gone := srv.workers[2]
	srv.sendSock(&wire.WorkerDel{Ctx: 9, Worker: gone.id})
	if m, _ := srv.recvSock(); m.(*wire.WorkerDelReply).Code != wire.OK {
		t.Fatalf("worker del: %#v", m)
	}
	counts = make([]int, 4)
	for i := 0; i < 12; i++ {
		ctx++
		counts[acceptedOn(t, cli, srv, ctx, addr, b.Listener)]++
	}
	if counts[2] != 0 || counts[0] != 4 || counts[1] != 4 || counts[3] != 4 {
		t.Fatalf("accepts per worker after removing worker index 2: %v, want 4, 4, 0, 4", counts)
	}

	// An app of the previous version only knows accepts on the worker
	// that listened.
	old := attachV(t, path, "old", wire.VersionAcceptAnyWorker-1, 3)
	oaddr := lo(8091)
	old.workers[1].request(&wire.Listen{Ctx: 1, Addr: oaddr})
	ob, ok := old.workers[1].event().(*wire.Bound)
	if !ok || ob.Code != wire.OK {
		t.Fatalf("listen (old app): %#v", ob)
	}
	for i := 0; i < 6; i++ {
		ctx++
		if got := acceptedOn(t, cli, old, ctx, oaddr, ob.Listener); got != 1 {
			t.Fatalf("old app: session accepted on worker index %d, want 1 (the listening one)", got)
		}
	}
}
