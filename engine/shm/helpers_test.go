package shm

import (
	"errors"
	"fmt"
	"runtime"
	"time"
)

// stallTimeout bounds every blocking wait in the tests: a lost wake-up
// fails the test instead of hanging it.
const stallTimeout = 20 * time.Second

// spinFor polls cond for about d, yielding between polls.
func spinFor(d time.Duration, cond func() bool) bool {
	start := time.Now()
	for i := 0; ; i++ {
		if cond() {
			return true
		}
		if i&15 == 15 {
			if time.Since(start) > d {
				return false
			}
			runtime.Gosched()
		}
	}
}

// endpoint is one side of a fifo with the two wake eventfds.
type endpoint struct {
	f         *Fifo
	readerEfd int // signalled when data arrives for a waiting reader
	writerEfd int // signalled when space frees up for a waiting writer
	spin      time.Duration
	alive     func() error // optional: checked before sleeping
}

var errStall = errors.New("stalled: no wake-up within stallTimeout")

func (e *endpoint) wait(efd int) error {
	err := WaitFD(efd, time.Now().Add(stallTimeout))
	if errors.Is(err, ErrDeadline) {
		return errStall
	}
	return err
}

// writeAll writes p completely, sleeping on writerEfd with the flag protocol
// whenever the fifo is full.
func (e *endpoint) writeAll(p []byte) error {
	for len(p) > 0 {
		n, err := e.f.Write(p)
		if err != nil {
			return err
		}
		if n > 0 {
			p = p[n:]
			if e.f.TakeReaderWaiting() {
				if err := Signal(e.readerEfd); err != nil {
					return err
				}
			}
			continue
		}
		if e.spin > 0 && spinFor(e.spin, func() bool { fr, err := e.f.Free(); return fr > 0 || err != nil }) {
			continue
		}
		e.f.SetWriterWaiting()
		if fr, err := e.f.Free(); fr > 0 || err != nil {
			e.f.ClearWriterWaiting()
			continue
		}
		if e.alive != nil {
			if err := e.alive(); err != nil {
				return err
			}
		}
		if err := e.wait(e.writerEfd); err != nil {
			return fmt.Errorf("writer: %w", err)
		}
	}
	return nil
}

// closeWrite half-closes and wakes a sleeping reader.
func (e *endpoint) closeWrite() error {
	e.f.CloseWrite()
	if e.f.TakeReaderWaiting() {
		return Signal(e.readerEfd)
	}
	return nil
}

// read reads at least one byte, sleeping on readerEfd with the flag protocol
// while the fifo is empty; io.EOF at end of stream.
func (e *endpoint) read(p []byte) (int, error) {
	for {
		n, err := e.f.Read(p)
		if n > 0 {
			if e.f.TakeWriterWaiting() {
				if err := Signal(e.writerEfd); err != nil {
					return n, err
				}
			}
			return n, nil
		}
		if err != nil {
			return 0, err
		}
		if err := e.waitReadable(); err != nil {
			return 0, err
		}
	}
}

// waitReadable returns once the fifo has data, is closed or corrupt (the
// caller's next Read/Peek tells which), spinning first, then sleeping with
// the set-flag / re-check / block protocol.
func (e *endpoint) waitReadable() error {
	ready := func() bool { l, err := e.f.Len(); return l > 0 || err != nil || e.f.WriteClosed() }
	for {
		if e.spin > 0 && spinFor(e.spin, ready) {
			return nil
		}
		e.f.SetReaderWaiting()
		if ready() {
			e.f.ClearReaderWaiting()
			return nil
		}
		if e.alive != nil {
			if err := e.alive(); err != nil {
				return err
			}
		}
		if err := e.wait(e.readerEfd); err != nil {
			return fmt.Errorf("reader: %w", err)
		}
		if ready() {
			return nil
		}
	}
}

// stream is a deterministic pseudo-random byte stream (xorshift64*),
// so both processes can generate and verify it independently.
type stream struct{ s uint64 }

func newStream(seed uint64) *stream { return &stream{s: seed*0x9E3779B97F4A7C15 | 1} }

func (r *stream) fill(p []byte) {
	for i := 0; i < len(p); i += 8 {
		r.s ^= r.s >> 12
		r.s ^= r.s << 25
		r.s ^= r.s >> 27
		v := r.s * 2685821657736338717
		for j := 0; j < 8 && i+j < len(p); j++ {
			p[i+j] = byte(v >> (8 * j))
		}
	}
}

func sizeName(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}
