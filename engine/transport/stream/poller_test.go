package stream

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/engine/shm"
)

func doorbell(t *testing.T) (mine, theirs int) {
	t.Helper()
	mine, theirs, err := shm.NewDoorbell()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		unix.Close(mine)
		unix.Close(theirs)
	})
	return mine, theirs
}

// TestWatchBell: a watched doorbell's rings reach ring from the poller's
// loop, drained; once unwatch returned, the loop neither drains the
// doorbell nor calls ring again (the engine closes the descriptor next,
// and its number may be reused).
func TestWatchBell(t *testing.T) {
	p, err := NewPoller("test", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	a, aPeer := doorbell(t)
	b, bPeer := doorbell(t)
	aRang, bRang := make(chan struct{}, 16), make(chan struct{}, 16)
	unwatchA, err := p.WatchBell(a, func() { aRang <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := shm.Ring(aPeer); err != nil {
			t.Fatal(err)
		}
		select {
		case <-aRang:
		case <-time.After(10 * time.Second):
			t.Fatal("a ring did not reach the loop")
		}
	}
	unwatchA()
	if _, err := p.WatchBell(b, func() { bRang <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	// a rings before b: had the loop still watched a, it would have seen
	// a no later than b
	if err := shm.Ring(aPeer); err != nil {
		t.Fatal(err)
	}
	if err := shm.Ring(bPeer); err != nil {
		t.Fatal(err)
	}
	select {
	case <-bRang:
	case <-time.After(10 * time.Second):
		t.Fatal("b's ring did not reach the loop")
	}
	if n := len(aRang); n != 0 {
		t.Fatalf("ring of an unwatched doorbell called %d times", n)
	}
	fds := []unix.PollFd{{Fd: int32(a), Events: unix.POLLIN}}
	if n, err := unix.Poll(fds, 0); err != nil || n != 1 {
		t.Fatalf("the unwatched doorbell was drained (poll: %d, %v)", n, err)
	}
}
