package shm

import (
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
)

// TestFifoHostileConcurrent: a producer and a consumer goroutine run while a
// third goroutine — the hostile peer — keeps storing random values into
// every header word and into the data, truly concurrently with the reads of
// those words. Every result must be in range and every error ErrCorrupt (or
// EOF/ErrClosed/ErrInvalid where the operation allows it); no panic, no
// out-of-bounds access.
func TestFifoHostileConcurrent(t *testing.T) {
	for round := 0; round < 20; round++ {
		const capacity = 1024
		p, c, seg := newFifoPair(t, capacity)
		mem := seg.Bytes()
		words := []int{fifoOffTail, fifoOffEOF, fifoOffHead, fifoOffRClosed, fifoOffMagic, fifoOffCap, fifoOffRWait, fifoOffWWait}
		var stop atomic.Bool
		var wg sync.WaitGroup
		fail := make(chan string, 3)
		check := func(what string, n, limit int, err error, allowed ...error) bool {
			if n < 0 || n > limit {
				fail <- what + ": count out of range"
				return false
			}
			if err == nil || errors.Is(err, ErrCorrupt) {
				return true
			}
			for _, a := range allowed {
				if errors.Is(err, a) {
					return true
				}
			}
			fail <- what + ": " + err.Error()
			return false
		}
		wg.Add(3)
		go func() { // hostile peer
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(round), 1))
			for i := 0; !stop.Load() && i < 200000; i++ {
				if rng.IntN(4) == 0 {
					mem[fifoHeaderSize+rng.IntN(capacity)] = byte(rng.Uint32())
					continue
				}
				w, _ := wordAt(mem, words[rng.IntN(len(words))])
				switch rng.IntN(3) {
				case 0:
					w.Store(rng.Uint64())
				case 1:
					w.Add(uint64(rng.IntN(2048)))
				default:
					w.Add(^uint64(rng.IntN(2048)))
				}
			}
			stop.Store(true)
		}()
		go func() { // producer
			defer wg.Done()
			buf := make([]byte, 700)
			for i := 0; !stop.Load(); i++ {
				var n int
				var err error
				if i%2 == 0 {
					n, err = p.Write(buf[:i%len(buf)])
				} else {
					n, err = p.WriteVec([][]byte{buf[:i%100], buf[:i%300]})
				}
				if !check("write", n, capacity, err) {
					return
				}
				fr, err := p.Free()
				if !check("free", fr, capacity, err) {
					return
				}
				p.TakeReaderWaiting()
			}
		}()
		go func() { // consumer
			defer wg.Done()
			buf := make([]byte, 500)
			for i := 0; !stop.Load(); i++ {
				if i%2 == 0 {
					n, err := c.Read(buf[:i%len(buf)])
					if !check("read", n, i%len(buf), err, io.EOF) {
						return
					}
				} else {
					a, b, err := c.Peek()
					if !check("peek", len(a)+len(b), capacity, err, io.EOF) {
						return
					}
					sum := 0
					for _, s := range [][]byte{a, b} {
						for _, x := range s { // touch every byte
							sum += int(x)
						}
					}
					_ = sum
					if !check("consume", 0, 0, c.Consume((len(a)+len(b))/2), ErrInvalid) {
						return
					}
				}
				l, err := c.Len()
				if !check("len", l, capacity, err) {
					return
				}
				c.TakeWriterWaiting()
			}
		}()
		wg.Wait()
		close(fail)
		for msg := range fail {
			t.Fatal(msg)
		}
	}
}

// TestQueueHostileConcurrent: as TestFifoHostileConcurrent for a queue, the
// peer also scribbling on slot length words.
func TestQueueHostileConcurrent(t *testing.T) {
	for round := 0; round < 20; round++ {
		const slots = 8
		seg := newSeg(t, QueueFootprint(slots))
		q := newQueuePair(t, seg, 0, slots)
		mem := seg.Bytes()
		var stop atomic.Bool
		var wg sync.WaitGroup
		fail := make(chan string, 3)
		wg.Add(3)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(round), 2))
			for i := 0; !stop.Load() && i < 200000; i++ {
				var off int
				if rng.IntN(2) == 0 {
					off = []int{qOffTail, qOffHead, qOffMagic, qOffSlots, qOffRWait}[rng.IntN(5)]
				} else {
					off = qHeaderSize + rng.IntN(slots)*slotStride
				}
				w, _ := wordAt(mem, off)
				if rng.IntN(2) == 0 {
					w.Store(rng.Uint64())
				} else {
					w.Add(uint64(rng.IntN(600)) - 300)
				}
			}
			stop.Store(true)
		}()
		go func() {
			defer wg.Done()
			msg := make([]byte, MsgSize)
			for i := 0; !stop.Load(); i++ {
				err := q.send.Send(msg[:1+i%MsgSize])
				if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrQueueFull) {
					fail <- "send: " + err.Error()
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			buf := make([]byte, MsgSize)
			for i := 0; !stop.Load(); i++ {
				b := buf[:MsgSize-i%64]
				n, err := q.recv.TryRecv(b)
				if n < 0 || n > len(b) || err != nil && !errors.Is(err, ErrCorrupt) && err != io.ErrShortBuffer {
					fail <- "recv out of range or bad error"
					return
				}
			}
		}()
		wg.Wait()
		close(fail)
		for msg := range fail {
			t.Fatal(msg)
		}
	}
}
