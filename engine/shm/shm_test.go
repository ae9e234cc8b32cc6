package shm

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func newSeg(t testing.TB, size int) *Segment {
	t.Helper()
	s, err := CreateSegment("test", size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func newFifoPair(t testing.TB, capacity int) (prod, cons *Fifo, seg *Segment) {
	t.Helper()
	seg = newSeg(t, FifoFootprint(capacity)+4096)
	p, err := InitFifo(seg, 0, capacity)
	if err != nil {
		t.Fatal(err)
	}
	c, err := OpenFifo(seg, 0, capacity)
	if err != nil {
		t.Fatal(err)
	}
	return p, c, seg
}

func TestSegmentCreateOpen(t *testing.T) {
	s := newSeg(t, 10000)
	if s.Size() != 12288 {
		t.Fatalf("size %d, want page-rounded 12288", s.Size())
	}
	seals, err := unix.FcntlInt(uintptr(s.FD()), unix.F_GET_SEALS, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL
	if seals&want != want {
		t.Fatalf("seals %#x", seals)
	}
	// a second mapping through a dup'ed fd sees the same memory
	fd, err := unix.Dup(s.FD())
	if err != nil {
		t.Fatal(err)
	}
	s2, err := OpenSegment(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	s.Bytes()[100] = 42
	if s2.Bytes()[100] != 42 || s2.Size() != s.Size() {
		t.Fatal("second mapping differs")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	if s.FD() != -1 || s.Bytes() != nil {
		t.Fatal("closed segment still exposes fd or memory")
	}
}

func TestSegmentSealedAgainstResize(t *testing.T) {
	s := newSeg(t, 1<<16)
	for _, n := range []int64{0, 4096, 1 << 20} {
		if err := unix.Ftruncate(s.FD(), n); err == nil {
			t.Fatalf("ftruncate(%d) on a sealed segment succeeded", n)
		}
	}
	if err := unix.Fallocate(s.FD(), 0, 0, 1<<20); err == nil {
		t.Fatal("fallocate growing a sealed segment succeeded")
	}
	if _, err := unix.FcntlInt(uintptr(s.FD()), unix.F_ADD_SEALS, unix.F_SEAL_WRITE); err == nil {
		t.Fatal("F_SEAL_SEAL did not stop further seals")
	}
}

func TestOpenSegmentRefusesUnsealed(t *testing.T) {
	for _, tc := range []struct {
		name  string
		flags int
		seals int
	}{
		{"no-sealing-allowed", unix.MFD_CLOEXEC, 0},
		{"unsealed", unix.MFD_CLOEXEC | unix.MFD_ALLOW_SEALING, 0},
		{"shrink-only", unix.MFD_CLOEXEC | unix.MFD_ALLOW_SEALING, unix.F_SEAL_SHRINK},
		{"grow-only", unix.MFD_CLOEXEC | unix.MFD_ALLOW_SEALING, unix.F_SEAL_GROW},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fd, err := unix.MemfdCreate("unsealed", tc.flags)
			if err != nil {
				t.Fatal(err)
			}
			if err := unix.Ftruncate(fd, 1<<16); err != nil {
				t.Fatal(err)
			}
			if tc.seals != 0 {
				if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, tc.seals); err != nil {
					t.Fatal(err)
				}
			}
			s, err := OpenSegment(fd)
			if !errors.Is(err, ErrNotSealed) {
				if s != nil {
					s.Close()
				}
				t.Fatalf("OpenSegment: %v, want ErrNotSealed", err)
			}
			// ownership: OpenSegment closed fd
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
				t.Fatal("fd still open after refused OpenSegment")
			}
		})
	}
	// not a memfd at all
	p := make([]int, 2)
	if err := unix.Pipe2(p, unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[1])
	if _, err := OpenSegment(p[0]); !errors.Is(err, ErrNotSealed) {
		t.Fatalf("OpenSegment(pipe): %v", err)
	}
}

func TestFifoBasic(t *testing.T) {
	p, c, _ := newFifoPair(t, 64)
	if n, err := c.Read(make([]byte, 10)); n != 0 || err != nil {
		t.Fatalf("empty read %d %v", n, err)
	}
	msg := []byte("hello, shared memory")
	if n, err := p.Write(msg); n != len(msg) || err != nil {
		t.Fatalf("write %d %v", n, err)
	}
	if n, _ := c.Len(); n != len(msg) {
		t.Fatalf("len %d", n)
	}
	buf := make([]byte, 100)
	n, err := c.Read(buf)
	if err != nil || !bytes.Equal(buf[:n], msg) {
		t.Fatalf("read %q %v", buf[:n], err)
	}
	// fill exactly, wrapping
	big := bytes.Repeat([]byte{7}, 100)
	if n, err := p.Write(big); n != 64 || err != nil {
		t.Fatalf("fill: %d %v", n, err)
	}
	if n, err := p.Write(big); n != 0 || err != nil {
		t.Fatalf("write to full: %d %v", n, err)
	}
	a, b, err := c.Peek()
	if err != nil || len(a)+len(b) != 64 || len(b) == 0 {
		t.Fatalf("peek %d+%d %v (want wrapped 64)", len(a), len(b), err)
	}
	if err := c.Consume(65); !errors.Is(err, ErrInvalid) {
		t.Fatalf("over-consume: %v", err)
	}
	if err := c.Consume(64); err != nil {
		t.Fatal(err)
	}
	p.CloseWrite()
	if _, err := p.Write(msg); !errors.Is(err, ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
	if _, err := c.Read(buf); err != io.EOF {
		t.Fatalf("read at eof: %v", err)
	}
}

func TestFifoEOFAfterData(t *testing.T) {
	p, c, _ := newFifoPair(t, 128)
	p.Write([]byte("abc"))
	p.CloseWrite()
	if !c.WriteClosed() {
		t.Fatal("WriteClosed false")
	}
	buf := make([]byte, 2)
	var got []byte
	for {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if string(got) != "abc" {
		t.Fatalf("got %q before EOF", got)
	}
}

func TestQueueBasic(t *testing.T) {
	seg := newSeg(t, QueueFootprint(4))
	sb, rb := mustDoorbell(t)
	s, err := InitQueue(seg, 0, 4, sb)
	if err != nil {
		t.Fatal(err)
	}
	r, err := OpenQueue(seg, 0, 4, rb)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, MsgSize)
	if n, err := r.TryRecv(buf); n != 0 || err != nil {
		t.Fatalf("empty: %d %v", n, err)
	}
	for i := 0; i < 4; i++ {
		if err := s.Send([]byte{byte(i), 1, 2}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Send([]byte{9}); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("send to full: %v", err)
	}
	if err := s.Send(make([]byte, MsgSize+1)); !errors.Is(err, ErrMsgSize) {
		t.Fatalf("oversize: %v", err)
	}
	if _, err := r.TryRecv(make([]byte, 2)); err != io.ErrShortBuffer {
		t.Fatalf("short buffer: %v", err)
	}
	for i := 0; i < 4; i++ {
		n, err := r.Recv(buf, time.Time{})
		if err != nil || n != 3 || buf[0] != byte(i) {
			t.Fatalf("recv %d: %d %v %v", i, n, err, buf[:n])
		}
	}
	if _, err := r.Recv(buf, time.Now().Add(5*time.Millisecond)); err != ErrDeadline {
		t.Fatalf("recv on empty with deadline: %v", err)
	}
}

func closeFD(fd int) { unix.Close(fd) }

func writeFD(fd int, b []byte) (int, error) { return unix.Write(fd, b) }
