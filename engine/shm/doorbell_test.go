package shm

import (
	"errors"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestDoorbellHostilePeer: whatever the holder of the other end does to it —
// clear O_NONBLOCK, never read, flood us — Ring and WaitBell on our end
// neither block nor fail, and a ring still reaches the peer once it reads.
func TestDoorbellHostilePeer(t *testing.T) {
	mine, theirs := mustDoorbell(t)
	// the peer makes its end blocking: its description, not ours
	if err := unix.SetNonblock(theirs, false); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		// far more rings than the peer's queue and our send budget hold
		for i := 0; i < 100000; i++ {
			if err := Ring(mine); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Ring to a peer that never reads: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Ring blocked on a peer that cleared O_NONBLOCK and never reads")
	}
	// the peer floods our end: one drain is bounded, and WaitBell returns
	go func() {
		for i := 0; i < 100000; i++ {
			if err := Ring(theirs); err != nil {
				return
			}
		}
	}()
	for i := 0; i < 10; i++ {
		if err := WaitBell(mine, time.Now().Add(stallTimeout)); err != nil {
			t.Fatalf("WaitBell while flooded: %v", err)
		}
	}
	// our own end is still non-blocking: nothing the peer did changed it
	fl, err := unix.FcntlInt(uintptr(mine), unix.F_GETFL, 0)
	if err != nil || fl&unix.O_NONBLOCK == 0 {
		t.Fatalf("our end lost O_NONBLOCK: %#x %v", fl, err)
	}
}

// TestDoorbellPeerDisconnects: a peer that disconnects or closes its end
// makes our Ring report ErrPeerGone and leaves our waits spurious at worst.
func TestDoorbellPeerDisconnects(t *testing.T) {
	mine, theirs, err := NewDoorbell()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(mine)
	// connect(AF_UNSPEC) on the peer's end sets an error on ours
	_ = unix.Connect(theirs, &unix.SockaddrUnix{})
	if err := WaitBell(mine, time.Now().Add(50*time.Millisecond)); err != nil && !errors.Is(err, ErrDeadline) {
		t.Fatalf("WaitBell after the peer disconnected: %v", err)
	}
	unix.Close(theirs)
	if err := Ring(mine); !errors.Is(err, ErrPeerGone) {
		t.Fatalf("Ring to a closed peer: %v, want ErrPeerGone", err)
	}
	if err := WaitBell(mine, time.Now().Add(20*time.Millisecond)); !errors.Is(err, ErrDeadline) {
		t.Fatalf("WaitBell on a closed pair: %v, want ErrDeadline", err)
	}
}

// TestDoorbellNoLostRing: a ring sent before the waiter polls is kept.
func TestDoorbellNoLostRing(t *testing.T) {
	a, b := mustDoorbell(t)
	if err := Ring(a); err != nil {
		t.Fatal(err)
	}
	if err := WaitBell(b, time.Now().Add(stallTimeout)); err != nil {
		t.Fatal(err)
	}
	if err := WaitBell(b, time.Now()); !errors.Is(err, ErrDeadline) {
		t.Fatalf("drained bell still readable: %v", err)
	}
}

// BenchmarkWakePingPong: one op = a wake-up there and back between two
// goroutines on locked OS threads, each blocking in poll(2): over two
// eventfds (the old wake-up) and over one doorbell (each side polls its own
// end).
func BenchmarkWakePingPong(b *testing.B) {
	for _, kind := range []string{"eventfd", "doorbell"} {
		b.Run(kind, func(b *testing.B) {
			var ringA, waitA, ringB, waitB func() error
			if kind == "eventfd" {
				a2b, b2a := mustEventFD(b), mustEventFD(b)
				ringA, waitB = func() error { return Signal(a2b) }, func() error { return WaitFD(a2b, time.Time{}) }
				ringB, waitA = func() error { return Signal(b2a) }, func() error { return WaitFD(b2a, time.Time{}) }
			} else {
				x, y := mustDoorbell(b)
				ringA, waitA = func() error { return Ring(x) }, func() error { return WaitBell(x, time.Time{}) }
				ringB, waitB = func() error { return Ring(y) }, func() error { return WaitBell(y, time.Time{}) }
			}
			done := make(chan error, 1)
			go func() {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				for i := 0; i < b.N; i++ {
					if err := waitB(); err != nil {
						done <- err
						return
					}
					ringB()
				}
				done <- nil
			}()
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				ringA()
				if err := waitA(); err != nil {
					b.Fatal(err)
				}
			}
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		})
	}
}
