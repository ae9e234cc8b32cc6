package shm

import (
	"slices"
	"sync"
	"testing"
)

func TestEventBitsSize(t *testing.T) {
	for _, tc := range []struct {
		n    int
		want int
	}{
		{0, -1}, {-64, -1}, {63, -1}, {65, -1}, {EventBitsMax + 64, -1},
		{64, 16},         // one summary word, one word
		{4096, 8 + 512},  // one summary word covers 64 words
		{4160, 16 + 520}, // the 65th word needs a second summary word
		{EventBitsMax, 8*256 + EventBitsMax/8},
	} {
		if got := EventBitsSize(tc.n); got != tc.want {
			t.Errorf("EventBitsSize(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
}

func newEventBits(t *testing.T, n int) (*EventBits, []byte) {
	t.Helper()
	seg, err := CreateSegment("events", 1<<16)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { seg.Close() })
	e, err := FormatEventBits(seg, 64, n)
	if err != nil {
		t.Fatal(err)
	}
	return e, seg.Bytes()[64 : 64+EventBitsSize(n)]
}

func drained(e *EventBits) []int {
	var got []int
	e.Drain(func(i int) { got = append(got, i) })
	return got
}

func TestEventBitsSetDrain(t *testing.T) {
	const n = 3 * 4096
	e, _ := newEventBits(t, n)
	set := []int{0, 1, 63, 64, 4095, 4096, 8191, 8192, n - 1}
	for _, i := range set {
		e.Set(i)
		e.Set(i) // idempotent
	}
	e.Set(-1) // out of range: ignored
	e.Set(n)
	if got := drained(e); !slices.Equal(got, set) {
		t.Fatalf("drained %v, want %v", got, set)
	}
	if got := drained(e); len(got) != 0 {
		t.Fatalf("second drain found %v, want nothing", got)
	}
	if _, err := OpenEventBits(make([]byte, 64), 0, 4096); err == nil {
		t.Fatal("a set larger than its memory opened")
	}
}

// TestEventBitsConcurrent: setters on many goroutines, one drainer running
// all the while; every bit set is reported by some drain, once per Set at
// most.
func TestEventBitsConcurrent(t *testing.T) {
	const n, setters = 8192, 4
	e, _ := newEventBits(t, n)
	seen := make([]int, n)
	stop := make(chan struct{})
	drainerDone := make(chan struct{})
	go func() {
		defer close(drainerDone)
		for {
			select {
			case <-stop:
				e.Drain(func(i int) { seen[i]++ }) // what the last rings left
				return
			default:
				e.Drain(func(i int) { seen[i]++ })
			}
		}
	}()
	var wg sync.WaitGroup
	for s := range setters {
		wg.Go(func() {
			for i := s; i < n; i += setters {
				e.Set(i)
			}
		})
	}
	wg.Wait()
	close(stop)
	<-drainerDone
	for i, c := range seen {
		if c != 1 {
			t.Fatalf("bit %d reported %d times, want once", i, c)
		}
	}
}

// TestEventBitsHostile: a writer that fills the region with ones (summary
// bits past the last word included) makes a drain report each index below
// n once, and nothing else.
func TestEventBitsHostile(t *testing.T) {
	const n = 4096 + 64 // two summary words, the second mostly past the end
	e, mem := newEventBits(t, n)
	for i := range mem {
		mem[i] = 0xff
	}
	got := drained(e)
	if len(got) != n {
		t.Fatalf("drained %d bits, want %d", len(got), n)
	}
	for k, i := range got {
		if i != k {
			t.Fatalf("drain reported %d at position %d", i, k)
		}
	}
}
