package shm

import (
	"bytes"
	"errors"
	"os"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestEpollWait: a parked Wait returns the rung doorbell's key, a deadline
// ends it with ErrDeadline, Close with os.ErrClosed.
func TestEpollWait(t *testing.T) {
	ep, err := NewEpoll()
	if err != nil {
		t.Fatal(err)
	}
	mine, theirs := mustDoorbell(t)
	if err := ep.Add(mine, unix.EPOLLIN, 7); err != nil {
		t.Fatal(err)
	}
	evs := make([]unix.EpollEvent, 4)
	if n, err := ep.Poll(evs); n != 0 || err != nil {
		t.Fatalf("poll of a quiet set: %d, %v", n, err)
	}
	type result struct {
		n   int
		key int32
		err error
	}
	got := make(chan result, 1)
	go func() {
		n, err := ep.Wait(evs, time.Time{})
		got <- result{n, evs[0].Fd, err}
	}()
	if err := Ring(theirs); err != nil {
		t.Fatal(err)
	}
	if r := <-got; r.n != 1 || r.key != 7 || r.err != nil {
		t.Fatalf("wait after a ring: %+v", r)
	}
	if err := DrainBell(mine); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if n, err := ep.Wait(evs, start.Add(20*time.Millisecond)); n != 0 || !errors.Is(err, ErrDeadline) {
		t.Fatalf("wait past its deadline: %d, %v", n, err)
	}
	if d := time.Since(start); d < 20*time.Millisecond {
		t.Fatalf("the deadline came after %v", d)
	}
	go func() {
		n, err := ep.Wait(evs, time.Time{})
		got <- result{n, 0, err}
	}()
	if err := ep.Close(); err != nil {
		t.Fatal(err)
	}
	if r := <-got; !errors.Is(r.err, os.ErrClosed) {
		t.Fatalf("wait on a closed set: %+v", r)
	}
}

// TestEpollWaitsHoldNoThread: loops parked in Wait hold no OS thread each
// (a loop asleep in epoll_wait(2) would, and its P with it).
func TestEpollWaitsHoldNoThread(t *testing.T) {
	threads := func() int {
		ents, err := os.ReadDir("/proc/self/task")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	const loops = 200
	before := threads()
	var eps []*Epoll
	done := make(chan error, loops)
	for range loops {
		ep, err := NewEpoll()
		if err != nil {
			t.Fatal(err)
		}
		eps = append(eps, ep)
		go func() {
			_, err := ep.Wait(make([]unix.EpollEvent, 1), time.Time{})
			done <- err
		}()
	}
	// Once every loop is parked (the runtime shows it in "IO wait"), count
	// the threads.
	buf := make([]byte, 1<<22)
	deadline := time.Now().Add(10 * time.Second)
	for {
		n := runtime.Stack(buf, true)
		if bytes.Count(buf[:n], []byte("[IO wait")) >= loops {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the loops did not park")
		}
		runtime.Gosched()
	}
	if n := threads(); n > before+loops/10 {
		t.Fatalf("%d parked loops: %d threads (%d before)", loops, n, before)
	}
	for _, ep := range eps {
		ep.Close()
	}
	for range loops {
		if err := <-done; !errors.Is(err, os.ErrClosed) {
			t.Fatalf("wait on a closed set: %v", err)
		}
	}
}
