package shm

import (
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

type queuePair struct {
	send, recv         *Queue
	sendBell, recvBell int // the two ends of the queue's doorbell
}

func newQueuePair(t testing.TB, seg *Segment, off, slots int) queuePair {
	t.Helper()
	sb, rb := mustDoorbell(t)
	s, err := InitQueue(seg, off, slots, sb)
	if err != nil {
		t.Fatal(err)
	}
	r, err := OpenQueue(seg, off, slots, rb)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.EnableWake(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return queuePair{s, r, sb, rb}
}

func mustDoorbell(t testing.TB) (int, int) {
	t.Helper()
	a, b, err := NewDoorbell()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(a); unix.Close(b) })
	return a, b
}

// TestQueueModel checks random send/receive sequences against a slice model.
func TestQueueModel(t *testing.T) {
	for seed := 0; seed < 100; seed++ {
		rng := rand.New(rand.NewPCG(uint64(seed), 9))
		slots := 1 << rng.IntN(6)
		seg := newSeg(t, QueueFootprint(slots))
		q := newQueuePair(t, seg, 0, slots)
		var model [][]byte
		buf := make([]byte, MsgSize)
		for op := 0; op < 1000; op++ {
			if rng.IntN(2) == 0 {
				m := make([]byte, 1+rng.IntN(MsgSize))
				newStream(uint64(op)).fill(m)
				err := q.send.Send(m)
				if len(model) == slots {
					if !errors.Is(err, ErrQueueFull) {
						t.Fatalf("seed %d: send to full: %v", seed, err)
					}
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				model = append(model, m)
			} else {
				n, err := q.recv.TryRecv(buf)
				if len(model) == 0 {
					if n != 0 || err != nil {
						t.Fatalf("seed %d: recv on empty: %d %v", seed, n, err)
					}
					continue
				}
				if err != nil || string(buf[:n]) != string(model[0]) {
					t.Fatalf("seed %d op %d: recv %d %v, want %d bytes", seed, op, n, err, len(model[0]))
				}
				model = model[1:]
			}
		}
	}
}

func TestQueueChecks(t *testing.T) {
	seg := newSeg(t, 8192)
	efd, _ := mustDoorbell(t)
	for _, tc := range []struct{ off, slots int }{{8, 4}, {0, 3}, {0, 0}, {0, 64}, {-64, 4}, {8192, 1}} {
		if _, err := InitQueue(seg, tc.off, tc.slots, efd); !errors.Is(err, ErrInvalid) {
			t.Errorf("InitQueue(%d, %d): %v", tc.off, tc.slots, err)
		}
	}
	q := newQueuePair(t, seg, 0, 4)
	if err := q.send.Send(nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("empty message: %v", err)
	}
	if _, err := OpenQueue(seg, 0, 8, efd); !errors.Is(err, ErrCorrupt) {
		t.Errorf("slot count mismatch: %v", err)
	}
	if _, err := OpenQueue(seg, 4096, 4, efd); !errors.Is(err, ErrCorrupt) {
		t.Errorf("no magic: %v", err)
	}
	// a corrupt length word is detected on receive
	if err := q.send.Send([]byte("x")); err != nil {
		t.Fatal(err)
	}
	q.recv.slotLen(0).Store(MsgSize + 1)
	if _, err := q.recv.TryRecv(make([]byte, MsgSize)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("bad length word: %v", err)
	}
	if _, err := q.recv.TryRecv(make([]byte, MsgSize)); !errors.Is(err, ErrCorrupt) {
		t.Errorf("ErrCorrupt not sticky: %v", err)
	}
}

// TestQueueWakeInterrupts: Wake makes a Recv blocked on the eventfd return.
func TestQueueWakeInterrupts(t *testing.T) {
	seg := newSeg(t, QueueFootprint(4))
	q := newQueuePair(t, seg, 0, 4)
	q.recv.Spin = 0
	done := make(chan error, 1)
	go func() {
		_, err := q.recv.Recv(make([]byte, MsgSize), time.Time{})
		done <- err
	}()
	// wait until the receiver announced it sleeps, then wake it
	if !eventually(func() bool { return q.recv.rwaitW.Load() != 0 }) {
		t.Fatal("receiver never set its waiting flag")
	}
	if err := q.recv.Wake(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrInterrupted) {
			t.Fatalf("Recv after Wake: %v", err)
		}
	case <-time.After(stallTimeout):
		t.Fatal("Wake did not interrupt Recv")
	}
}

// TestQueuePingPong: two goroutines bounce numbered messages through two
// queues with Recv; without spinning every message goes through the waiting
// flag and the eventfd, so a lost wake-up fails (deadline) instead of hanging.
func TestQueuePingPong(t *testing.T) {
	if raceBuild {
		t.Skip("the wake-up protocol over shared memory is checked in the race-free pass (see raceBuild)")
	}
	rounds := 20000
	if testing.Short() {
		rounds = 2000
	}
	for _, spin := range []time.Duration{0, DefaultSpin} {
		seg := newSeg(t, 2*QueueFootprint(8))
		ab := newQueuePair(t, seg, 0, 8)
		ba := newQueuePair(t, seg, QueueFootprint(8), 8)
		ab.recv.Spin, ba.recv.Spin = spin, spin
		var wg sync.WaitGroup
		var echoErr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, MsgSize)
			for i := 0; i < rounds; i++ {
				n, err := ab.recv.Recv(buf, time.Now().Add(stallTimeout))
				if err != nil {
					echoErr = err
					return
				}
				if err := ba.send.Send(buf[:n]); err != nil {
					echoErr = err
					return
				}
			}
		}()
		buf := make([]byte, MsgSize)
		var msg [8]byte
		for i := 0; i < rounds; i++ {
			binary.LittleEndian.PutUint64(msg[:], uint64(i))
			if err := ab.send.Send(msg[:]); err != nil {
				t.Fatal(err)
			}
			n, err := ba.recv.Recv(buf, time.Now().Add(stallTimeout))
			if err != nil {
				t.Fatalf("spin %v round %d: %v", spin, i, err)
			}
			if n != 8 || binary.LittleEndian.Uint64(buf) != uint64(i) {
				t.Fatalf("round %d: got %v", i, buf[:n])
			}
		}
		wg.Wait()
		if echoErr != nil {
			t.Fatal(echoErr)
		}
	}
}

// TestQueueStreamBurst: a sender bursting into a small queue (retrying on
// ErrQueueFull) and a blocking receiver; order and content preserved.
func TestQueueStreamBurst(t *testing.T) {
	seg := newSeg(t, QueueFootprint(4))
	q := newQueuePair(t, seg, 0, 4)
	q.recv.Spin = 0
	const total = 20000
	go func() {
		var m [MsgSize]byte
		for i := 0; i < total; i++ {
			n := 8 + i%(MsgSize-8)
			binary.LittleEndian.PutUint64(m[:], uint64(i))
			for {
				err := q.send.Send(m[:n])
				if err == nil {
					break
				}
				if !errors.Is(err, ErrQueueFull) {
					panic(err)
				}
				spinFor(time.Millisecond, func() bool { return q.send.headW.Load() != q.send.sHeadCache })
			}
		}
	}()
	buf := make([]byte, MsgSize)
	for i := 0; i < total; i++ {
		n, err := q.recv.Recv(buf, time.Now().Add(stallTimeout))
		if err != nil || n != 8+i%(MsgSize-8) || binary.LittleEndian.Uint64(buf) != uint64(i) {
			t.Fatalf("msg %d: %d %v", i, n, err)
		}
	}
	if n, err := q.recv.TryRecv(buf); n != 0 || err != nil && err != io.EOF {
		t.Fatalf("extra message: %d %v", n, err)
	}
}

func TestWaitFDDeadline(t *testing.T) {
	efd := mustEventFD(t)
	start := time.Now()
	if err := WaitFD(efd, start.Add(20*time.Millisecond)); !errors.Is(err, ErrDeadline) {
		t.Fatalf("WaitFD: %v", err)
	}
	if d := time.Since(start); d < 20*time.Millisecond {
		t.Fatalf("returned early after %v", d)
	}
	if err := Signal(efd); err != nil {
		t.Fatal(err)
	}
	if err := WaitFD(efd, time.Now().Add(stallTimeout)); err != nil {
		t.Fatal(err)
	}
	// the counter was drained: next wait times out
	if err := WaitFD(efd, time.Now()); !errors.Is(err, ErrDeadline) {
		t.Fatalf("counter not drained: %v", err)
	}
}

// TestSignalSaturatedCounter: a peer that pushes the shared eventfd counter
// to its maximum cannot make Signal block.
func TestSignalSaturatedCounter(t *testing.T) {
	efd := mustEventFD(t)
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], 0xfffffffffffffffe)
	if _, err := writeFD(efd, b[:]); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- Signal(efd) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(stallTimeout):
		t.Fatal("Signal blocked on a saturated eventfd")
	}
}

// eventually polls cond with a bound (no sleeping as synchronisation).
func eventually(cond func() bool) bool {
	deadline := time.Now().Add(stallTimeout)
	for time.Now().Before(deadline) {
		if spinFor(time.Millisecond, cond) {
			return true
		}
	}
	return false
}

// pastDeadline makes Recv give up as soon as it would block.
var pastDeadline = time.Unix(1, 0)

// TestQueueEventLoopReceiver: a receiver that polls with Pending and sleeps
// on the doorbell itself (the engine's shards) is rung exactly when it
// armed the waiting flag, and Pending sees a message without consuming it.
func TestQueueEventLoopReceiver(t *testing.T) {
	seg := newSeg(t, QueueFootprint(4))
	q := newQueuePair(t, seg, 0, 4)
	rung := func() bool {
		var b [8]byte
		_, _, err := unix.Recvfrom(q.recvBell, b[:], unix.MSG_DONTWAIT)
		return err == nil
	}
	buf := make([]byte, MsgSize)
	if q.recv.Pending() {
		t.Fatal("an empty queue is pending")
	}
	// not armed: the sender does not ring (a unix datagram is delivered by
	// the time sendto returns, so its absence is certain)
	if err := q.send.Send([]byte("a")); err != nil {
		t.Fatal(err)
	}
	if rung() {
		t.Fatal("rung without the waiting flag")
	}
	if !q.recv.Pending() || !q.recv.Pending() {
		t.Fatal("a queued message is not pending")
	}
	if n, err := q.recv.TryRecv(buf); n != 1 || err != nil {
		t.Fatalf("TryRecv after Pending: %d, %v", n, err)
	}
	if q.recv.Pending() {
		t.Fatal("pending after the only message was taken")
	}
	// armed: the next send rings once and clears the flag
	q.recv.ArmWake()
	for _, m := range []string{"b", "c"} {
		if err := q.send.Send([]byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	if !rung() || rung() {
		t.Fatal("an armed receiver was not rung exactly once")
	}
	// disarmed again: no ring
	q.recv.ArmWake()
	q.recv.DisarmWake()
	if err := q.send.Send([]byte("d")); err != nil {
		t.Fatal(err)
	}
	if rung() {
		t.Fatal("rung after DisarmWake")
	}
	for _, want := range []string{"b", "c", "d"} {
		if n, err := q.recv.TryRecv(buf); err != nil || string(buf[:n]) != want {
			t.Fatalf("got %q, %v, want %q", buf[:n], err, want)
		}
	}
}
