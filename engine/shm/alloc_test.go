package shm

import (
	"errors"
	"math/rand/v2"
	"testing"
)

func TestAllocatorModel(t *testing.T) {
	const size = 1 << 16
	a := NewAllocator(size)
	rng := rand.New(rand.NewPCG(1, 1))
	owned := map[int]int{} // off -> rounded size
	for op := 0; op < 20000; op++ {
		if rng.IntN(3) > 0 {
			n := 1 + rng.IntN(3000)
			off, err := a.Alloc(n)
			if errors.Is(err, ErrNoSpace) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			r := (n + 63) &^ 63
			if off%Align != 0 || off < 0 || off+r > size {
				t.Fatalf("bad extent %d+%d", off, r)
			}
			for o, s := range owned {
				if off < o+s && o < off+r {
					t.Fatalf("overlap %d+%d with %d+%d", off, r, o, s)
				}
			}
			owned[off] = r
		} else {
			for off := range owned {
				if !a.Free(off) {
					t.Fatal("free of owned extent failed")
				}
				delete(owned, off)
				break
			}
		}
		sum := 0
		for _, s := range owned {
			sum += s
		}
		if a.InUse() != sum {
			t.Fatalf("InUse %d, want %d", a.InUse(), sum)
		}
	}
	for off := range owned {
		a.Free(off)
	}
	if a.Free(12345) {
		t.Fatal("free of unknown offset accepted")
	}
	// fully coalesced again: the whole range is one extent
	if off, err := a.Alloc(size); err != nil || off != 0 {
		t.Fatalf("after freeing all: %d %v", off, err)
	}
	if _, err := a.Alloc(1); !errors.Is(err, ErrNoSpace) {
		t.Fatal("alloc from full allocator")
	}
	if _, err := a.Alloc(0); !errors.Is(err, ErrInvalid) {
		t.Fatal("alloc(0) accepted")
	}
}
