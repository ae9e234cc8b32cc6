package shm

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
)

// TestFifoModel runs random operation sequences on fifos of random
// capacities and offsets and checks every result against a plain byte-slice
// model: exact byte counts, content, wrap-around, Peek/Consume, WriteVec,
// Len/Free, EOF ordering.
func TestFifoModel(t *testing.T) {
	seeds := 300
	if testing.Short() {
		seeds = 50
	}
	for seed := 0; seed < seeds; seed++ {
		rng := rand.New(rand.NewPCG(uint64(seed), 7))
		capacity := 64 << rng.IntN(8) // 64 B .. 8 KiB
		off := Align * rng.IntN(4)
		seg := newSeg(t, off+FifoFootprint(capacity))
		p, err := InitFifo(seg, off, capacity)
		if err != nil {
			t.Fatal(err)
		}
		c, err := OpenFifo(seg, off, capacity)
		if err != nil {
			t.Fatal(err)
		}
		var model []byte // bytes written, not yet consumed
		gen := newStream(uint64(seed))
		closed := false
		src := func(n int) []byte { b := make([]byte, n); gen.fill(b); return b }
		for op := 0; op < 2000; op++ {
			switch k := rng.IntN(100); {
			case k < 25: // Write
				b := src(rng.IntN(2 * capacity))
				n, err := p.Write(b)
				want := min(len(b), capacity-len(model))
				if closed {
					if !errors.Is(err, ErrClosed) || n != 0 {
						t.Fatalf("seed %d: write after close: %d %v", seed, n, err)
					}
					continue
				}
				if err != nil || n != want {
					t.Fatalf("seed %d op %d: Write(%d) = %d %v, want %d", seed, op, len(b), n, err, want)
				}
				model = append(model, b[:n]...)
			case k < 40: // WriteVec
				if closed {
					continue
				}
				var bufs [][]byte
				var all []byte
				for i := rng.IntN(5); i >= 0; i-- {
					b := src(rng.IntN(capacity/2 + 1))
					bufs = append(bufs, b)
					all = append(all, b...)
				}
				n, err := p.WriteVec(bufs)
				want := min(len(all), capacity-len(model))
				if err != nil || n != want {
					t.Fatalf("seed %d op %d: WriteVec = %d %v, want %d", seed, op, n, err, want)
				}
				model = append(model, all[:n]...)
			case k < 65: // Read
				b := make([]byte, rng.IntN(2*capacity)+1)
				n, err := c.Read(b)
				want := min(len(b), len(model))
				if want == 0 && closed {
					if err != io.EOF || n != 0 {
						t.Fatalf("seed %d: read at eof = %d %v", seed, n, err)
					}
					continue
				}
				if err != nil || n != want || !bytes.Equal(b[:n], model[:n]) {
					t.Fatalf("seed %d op %d: Read(%d) = %d %v, want %d", seed, op, len(b), n, err, want)
				}
				model = model[n:]
			case k < 85: // Peek + Consume part
				a, b, err := c.Peek()
				if len(model) == 0 && closed {
					if err != io.EOF {
						t.Fatalf("seed %d: peek at eof: %v", seed, err)
					}
					continue
				}
				if err != nil {
					t.Fatalf("seed %d: peek: %v", seed, err)
				}
				got := append(append([]byte{}, a...), b...)
				if len(b) > 0 && len(a) == 0 {
					t.Fatalf("seed %d: second slice without first", seed)
				}
				if len(model) > 0 && len(got) == 0 || len(got) > len(model) || !bytes.Equal(got, model[:len(got)]) {
					t.Fatalf("seed %d op %d: Peek %d bytes, model %d, content mismatch or empty", seed, op, len(got), len(model))
				}
				n := rng.IntN(len(got) + 1)
				if err := c.Consume(n); err != nil {
					t.Fatal(err)
				}
				model = model[n:]
			case k < 90:
				if l, err := c.Len(); err != nil || l != len(model) {
					t.Fatalf("seed %d: Len = %d %v, want %d", seed, l, err, len(model))
				}
				if !closed {
					if fr, err := p.Free(); err != nil || fr != capacity-len(model) {
						t.Fatalf("seed %d: Free = %d %v, want %d", seed, fr, err, capacity-len(model))
					}
				}
			case k < 91:
				p.CloseWrite()
				closed = true
				if !c.WriteClosed() {
					t.Fatal("WriteClosed false after CloseWrite")
				}
			default: // Consume too much is refused without effect
				a, b, _ := c.Peek()
				if err := c.Consume(len(a) + len(b) + 1); !errors.Is(err, ErrInvalid) {
					t.Fatalf("over-consume: %v", err)
				}
			}
		}
	}
}

// TestFifoIndexWrap starts the indices just below 2^64 so the free-running
// counters overflow during the test.
func TestFifoIndexWrap(t *testing.T) {
	seg := newSeg(t, FifoFootprint(256))
	if _, err := InitFifo(seg, 0, 256); err != nil {
		t.Fatal(err)
	}
	start := ^uint64(0) - 1000
	w, _ := wordAt(seg.Bytes(), fifoOffTail)
	w.Store(start)
	w, _ = wordAt(seg.Bytes(), fifoOffHead)
	w.Store(start)
	p, err := OpenFifo(seg, 0, 256)
	if err != nil {
		t.Fatal(err)
	}
	c, err := OpenFifo(seg, 0, 256)
	if err != nil {
		t.Fatal(err)
	}
	gen, chk := newStream(1), newStream(1)
	buf := make([]byte, 100)
	want := make([]byte, 100)
	for i := 0; i < 100; i++ {
		src := make([]byte, 77)
		gen.fill(src)
		if n, err := p.Write(src); n != 77 || err != nil {
			t.Fatalf("write %d: %d %v", i, n, err)
		}
		n, err := c.Read(buf[:77])
		chk.fill(want[:77])
		if n != 77 || err != nil || !bytes.Equal(buf[:77], want[:77]) {
			t.Fatalf("read %d: %d %v", i, n, err)
		}
	}
	if h := c.cHead; h >= start {
		t.Fatalf("head %d did not wrap past 2^64", h)
	}
}

func TestFifoOffsetsAndCapacityChecked(t *testing.T) {
	seg := newSeg(t, 8192)
	for _, tc := range []struct{ off, capacity int }{
		{-64, 64}, {8, 64}, {32, 64}, {0, 100}, {0, 0}, {0, 32}, {0, 8192}, {8192 - 64, 64},
		{1 << 62, 64}, {0, 1 << 41},
	} {
		if _, err := InitFifo(seg, tc.off, tc.capacity); !errors.Is(err, ErrInvalid) {
			t.Errorf("InitFifo(off %d, cap %d): %v, want ErrInvalid", tc.off, tc.capacity, err)
		}
		if _, err := OpenFifo(seg, tc.off, tc.capacity); !errors.Is(err, ErrInvalid) {
			t.Errorf("OpenFifo(off %d, cap %d): %v, want ErrInvalid", tc.off, tc.capacity, err)
		}
	}
	if _, err := InitFifo(seg, 4096, 4096-fifoHeaderSize); !errors.Is(err, ErrInvalid) {
		t.Error("non power of two accepted")
	}
	if _, err := InitFifo(seg, 8192-FifoFootprint(2048), 2048); err != nil {
		t.Errorf("fifo at the very end refused: %v", err)
	}
	// header checks on open
	if _, err := InitFifo(seg, 0, 1024); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenFifo(seg, 0, 512); !errors.Is(err, ErrCorrupt) {
		t.Errorf("capacity mismatch: %v", err)
	}
	if _, err := OpenFifo(seg, 2048, 1024); !errors.Is(err, ErrCorrupt) {
		t.Errorf("no magic: %v", err)
	}
	w, _ := wordAt(seg.Bytes(), fifoOffTail)
	w.Store(5000)
	if _, err := OpenFifo(seg, 0, 1024); !errors.Is(err, ErrCorrupt) {
		t.Errorf("tail-head > capacity: %v", err)
	}
}

func TestFifoHeaderLayout(t *testing.T) {
	// producer, consumer and config words on three distinct cache lines
	lines := map[int][]int{}
	for _, off := range []int{fifoOffTail, fifoOffEOF, fifoOffHead, fifoOffRClosed, fifoOffMagic, fifoOffCap, fifoOffRWait, fifoOffWWait} {
		if off%8 != 0 {
			t.Fatalf("word at %d not 8-byte aligned", off)
		}
		lines[off/64] = append(lines[off/64], off)
	}
	if lines[0][0] != fifoOffTail || lines[1][0] != fifoOffHead || len(lines) != 3 || fifoHeaderSize%64 != 0 {
		t.Fatalf("layout %v", lines)
	}
	seg := newSeg(t, 1<<20)
	a := NewAllocator(seg.Size())
	for i := 0; i < 10; i++ {
		off, err := a.Alloc(FifoFootprint(1024))
		if err != nil {
			t.Fatal(err)
		}
		if !addrAligned(seg.Bytes(), off+fifoOffHead, 64) || !addrAligned(seg.Bytes(), off, 64) {
			t.Fatalf("fifo at %d: lines not cache aligned", off)
		}
	}
}

// TestFifoConcurrentStream moves 32 MiB between two goroutines through a
// small fifo with the full wake-up protocol (no spinning, so every empty and
// full condition goes through the flags and eventfds) and checks the hash.
// A lost wake-up shows up as a stall error, not a hang.
func TestFifoConcurrentStream(t *testing.T) {
	if raceBuild {
		t.Skip("the wake-up protocol over shared memory is checked in the race-free pass (see raceBuild)")
	}
	total := 32 << 20
	if testing.Short() {
		total = 4 << 20
	}
	// trim: the producer gives the free space's pages back after every
	// write, while the consumer reads the pages next to them.
	for _, mode := range []struct{ spin, trim bool }{{false, false}, {true, false}, {false, true}} {
		spin := mode.spin
		capacity := 4096
		if mode.trim {
			capacity = 16 << 10 // whole pages to release
		}
		p, c, _ := newFifoPair(t, capacity)
		rEfd, wEfd := mustEventFD(t), mustEventFD(t)
		prod := &endpoint{f: p, readerEfd: rEfd, writerEfd: wEfd}
		cons := &endpoint{f: c, readerEfd: rEfd, writerEfd: wEfd}
		if spin {
			prod.spin, cons.spin = 5e3, 5e3
		}
		released := 0
		var wg sync.WaitGroup
		var sent [32]byte
		var werr error
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := sha256.New()
			gen := newStream(3)
			rng := rand.New(rand.NewPCG(1, 2))
			buf := make([]byte, 10000)
			for left := total; left > 0; {
				n := min(left, 1+rng.IntN(len(buf)))
				gen.fill(buf[:n])
				h.Write(buf[:n])
				if werr = prod.writeAll(buf[:n]); werr != nil {
					return
				}
				if mode.trim {
					r, err := p.Trim()
					if werr = err; err != nil {
						return
					}
					released += r
				}
				left -= n
			}
			werr = prod.closeWrite()
			h.Sum(sent[:0])
		}()
		h := sha256.New()
		got := 0
		buf := make([]byte, 3000)
		var rerr error
		for {
			n, err := cons.read(buf)
			h.Write(buf[:n])
			got += n
			if err != nil {
				if err != io.EOF {
					rerr = err
				}
				break
			}
		}
		wg.Wait()
		if werr != nil || rerr != nil {
			t.Fatalf("%+v: writer %v, reader %v", mode, werr, rerr)
		}
		if got != total || !bytes.Equal(h.Sum(nil), sent[:]) {
			t.Fatalf("%+v: got %d bytes, want %d; hash match %v", mode, got, total, bytes.Equal(h.Sum(nil), sent[:]))
		}
		if mode.trim && released == 0 {
			t.Fatalf("trim: no page was ever released")
		}
	}
}

func mustEventFD(t testing.TB) int {
	t.Helper()
	fd, err := NewEventFD()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeFD(fd) })
	return fd
}

// TestFifoPeekSeesNewData: after a partial Consume, Peek shows data written
// since the previous Peek (a frame parser waiting for the rest of a frame
// must not be stuck on a stale cached tail).
func TestFifoPeekSeesNewData(t *testing.T) {
	p, c, _ := newFifoPair(t, 256)
	p.Write([]byte("0123456789"))
	a, _, _ := c.Peek()
	if string(a) != "0123456789" {
		t.Fatalf("peek %q", a)
	}
	c.Consume(4)
	p.Write([]byte("abc"))
	a, b, err := c.Peek()
	if got := string(a) + string(b); got != "456789abc" || err != nil {
		t.Fatalf("peek after partial consume: %q %v", got, err)
	}
}

// TestFifoReserveCommit fills the fifo in place through Reserve/Commit across
// the wrap point and checks the consumer reads exactly the stream, that
// nothing is visible before Commit, and that over-committing is refused.
func TestFifoReserveCommit(t *testing.T) {
	const capacity = 256
	seg := newSeg(t, FifoFootprint(capacity))
	if _, err := InitFifo(seg, 0, capacity); err != nil {
		t.Fatal(err)
	}
	p, err := OpenFifo(seg, 0, capacity)
	if err != nil {
		t.Fatal(err)
	}
	c, err := OpenFifo(seg, 0, capacity)
	if err != nil {
		t.Fatal(err)
	}
	gen, chk := newStream(7), newStream(7)
	buf := make([]byte, capacity)
	want := make([]byte, capacity)
	wrapped := false
	for i := 0; i < 50; i++ {
		a, b, err := p.Reserve()
		if err != nil {
			t.Fatal(err)
		}
		if len(a)+len(b) != capacity {
			t.Fatalf("round %d: reserved %d+%d bytes of an empty %d-byte fifo", i, len(a), len(b), capacity)
		}
		wrapped = wrapped || len(b) > 0
		n := 61 + i%90 // spans the wrap in some rounds
		src := make([]byte, n)
		gen.fill(src)
		k := copy(a, src)
		copy(b, src[k:])
		if l, _ := c.Len(); l != 0 {
			t.Fatalf("round %d: %d bytes visible before Commit", i, l)
		}
		if err := p.Commit(n); err != nil {
			t.Fatal(err)
		}
		got, err := c.Read(buf)
		chk.fill(want[:n])
		if got != n || err != nil || !bytes.Equal(buf[:n], want[:n]) {
			t.Fatalf("round %d: read %d (%v), want %d bytes of the stream", i, got, err, n)
		}
	}
	if !wrapped {
		t.Fatal("no reservation wrapped around the ring")
	}
	if _, err := p.Write(make([]byte, 200)); err != nil {
		t.Fatal(err)
	}
	if a, b, _ := p.Reserve(); len(a)+len(b) != capacity-200 {
		t.Fatalf("reserved %d bytes with 200 of %d used", len(a)+len(b), capacity)
	}
	if err := p.Commit(capacity - 199); err == nil {
		t.Fatal("a commit beyond the free space was accepted")
	}
}

// TestFifoTrimReleasesFreePages: a fifo costs memory for what it holds;
// Trim gives back the pages of the free space, keeps every unread byte, and
// the next writes fault pages in again. Resident is the memfd's own count.
func TestFifoTrimReleasesFreePages(t *testing.T) {
	const capacity = 1 << 20
	p, c, seg := newFifoPair(t, capacity)
	resident := func() int64 {
		t.Helper()
		r, err := seg.Resident()
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	pg := int64(os.Getpagesize())
	if r := resident(); r > pg {
		t.Fatalf("a fresh fifo has %d bytes resident, want at most the header's page", r)
	}
	if p.Written() {
		t.Fatal("Written before any write")
	}
	gen := newStream(7)
	data := make([]byte, capacity)
	gen.fill(data)
	if n, err := p.Write(data); n != capacity || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
	if r := resident(); r < capacity {
		t.Fatalf("full fifo: %d bytes resident, want >= %d", r, capacity)
	}
	// A full fifo has no free page.
	if n, err := p.Trim(); n != 0 || err != nil {
		t.Fatalf("trim of a full fifo: %d, %v", n, err)
	}
	got := make([]byte, capacity)
	if n, err := c.Read(got[:3*capacity/4]); n != 3*capacity/4 || err != nil {
		t.Fatalf("read: %d, %v", n, err)
	}
	n, err := p.Trim()
	if err != nil {
		t.Fatal(err)
	}
	// 3/4 of the ring is free: all its whole pages but the one shared with
	// the header and the one shared with unread data.
	if want := 3*capacity/4 - 2*int(pg); n < want {
		t.Fatalf("trim released %d bytes, want >= %d", n, want)
	}
	if r := resident(); r > capacity/4+2*pg {
		t.Fatalf("after trim: %d bytes resident, want <= %d", r, capacity/4+2*pg)
	}
	if !p.Written() {
		t.Fatal("not Written after a Trim that left unread bytes")
	}
	// The unread quarter survived; new data goes into released pages.
	more := make([]byte, capacity/2)
	gen.fill(more)
	if n, err := p.Write(more); n != len(more) || err != nil {
		t.Fatalf("write after trim: %d, %v", n, err)
	}
	if !p.Written() {
		t.Fatal("not Written after a write")
	}
	rest := got[3*capacity/4:]
	if n, err := c.Read(rest); n != len(rest) || err != nil {
		t.Fatalf("read: %d, %v", n, err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("bytes unread at the trim were lost")
	}
	got2 := make([]byte, len(more))
	if n, err := c.Read(got2); n != len(more) || err != nil || !bytes.Equal(got2, more) {
		t.Fatalf("read of data written into released pages: %d, %v, equal %v", n, err, bytes.Equal(got2, more))
	}
	// Empty: everything goes but the two pages the data shares with the
	// header and with whatever follows the fifo in the segment.
	if _, err := p.Trim(); err != nil {
		t.Fatal(err)
	}
	if p.Written() {
		t.Fatal("Written after the Trim of an empty fifo")
	}
	if r := resident(); r > 2*pg {
		t.Fatalf("empty fifo after trim: %d bytes resident, want <= %d", r, 2*pg)
	}
}

// TestSegmentPunch: a freed extent's pages go back; out-of-range is refused.
func TestSegmentPunch(t *testing.T) {
	pg := os.Getpagesize()
	seg := newSeg(t, 64*pg)
	b := seg.Bytes()
	for i := range b {
		b[i] = 0xa5
	}
	r0, err := seg.Resident()
	if err != nil || r0 < int64(64*pg) {
		t.Fatalf("resident after writing every page: %d, %v", r0, err)
	}
	// [pg/2, 10.5 pg): pages 1..9 are whole inside it
	if err := seg.Punch(pg/2, 10*pg); err != nil {
		t.Fatal(err)
	}
	r1, _ := seg.Resident()
	if r0-r1 != int64(9*pg) {
		t.Fatalf("punch released %d bytes, want %d", r0-r1, 9*pg)
	}
	if b[pg/2] != 0xa5 || b[pg] != 0 || b[10*pg-1] != 0 || b[10*pg] != 0xa5 {
		t.Fatal("punch touched bytes outside its whole pages, or left some inside")
	}
	if err := seg.Punch(63*pg, 2*pg); !errors.Is(err, ErrInvalid) {
		t.Fatalf("punch past the end: %v, want ErrInvalid", err)
	}
}
