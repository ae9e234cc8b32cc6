package shm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// fuzzOps decodes the fuzzer's bytes into operations.
type fuzzOps struct{ b []byte }

func (o *fuzzOps) byte() (byte, bool) {
	if len(o.b) == 0 {
		return 0, false
	}
	c := o.b[0]
	o.b = o.b[1:]
	return c, true
}

func (o *fuzzOps) u64() uint64 {
	var w [8]byte
	n := copy(w[:], o.b)
	o.b = o.b[n:]
	return binary.LittleEndian.Uint64(w[:])
}

// hostileValue turns fuzzer input into a word a hostile peer would write:
// small deltas around the current value as well as arbitrary values.
func hostileValue(o *fuzzOps, cur uint64) uint64 {
	k, _ := o.byte()
	v := o.u64()
	switch k % 4 {
	case 0:
		return cur + v%512
	case 1:
		return cur - v%512
	default:
		return v
	}
}

// FuzzFifoHostilePeer drives a producer and a consumer handle of one fifo in
// a real memfd segment while the "peer" scribbles arbitrary values into any
// header word (indices, flags, magic, capacity) and into the data between
// operations. Every result must be valid or ErrCorrupt (never a panic or an
// out-of-bounds access); until the first scribble, results must match a model.
func FuzzFifoHostilePeer(f *testing.F) {
	f.Add(uint8(0), []byte{0, 10, 2, 10, 0, 200, 3, 5, 2, 255})
	f.Add(uint8(1), []byte{0, 100, 4, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 2, 50, 3, 1})
	f.Add(uint8(2), []byte{0, 255, 4, 2, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 255, 0, 10})
	f.Add(uint8(3), []byte{1, 40, 40, 40, 4, 1, 0, 9, 0, 0, 0, 0, 0, 0, 0, 3, 0, 6, 2, 100, 2, 100})
	f.Fuzz(func(t *testing.T, capSel uint8, prog []byte) {
		capacity := MinFifoCapacity << (capSel % 5)
		seg := newSeg(t, FifoFootprint(capacity))
		p, err := InitFifo(seg, 0, capacity)
		if err != nil {
			t.Fatal(err)
		}
		c, err := OpenFifo(seg, 0, capacity)
		if err != nil {
			t.Fatal(err)
		}
		mem := seg.Bytes()
		words := []int{fifoOffTail, fifoOffEOF, fifoOffHead, fifoOffRClosed, fifoOffMagic, fifoOffCap, fifoOffRWait, fifoOffWWait}
		o := &fuzzOps{prog}
		var model []byte
		trusted := true // no scribble yet: results must match the model exactly
		closed := false
		gen := newStream(uint64(len(prog)))
		okErr := func(what string, err error, allowed ...error) {
			if err == nil || errors.Is(err, ErrCorrupt) {
				return
			}
			for _, a := range allowed {
				if errors.Is(err, a) {
					return
				}
			}
			t.Fatalf("%s: unexpected error %v", what, err)
		}
		for {
			op, ok := o.byte()
			if !ok {
				break
			}
			arg, _ := o.byte()
			switch op % 8 {
			case 0, 1: // Write / WriteVec of up to 2*capacity bytes
				n := int(arg) * capacity / 128
				src := make([]byte, n)
				gen.fill(src)
				var w int
				if op%8 == 0 {
					w, err = p.Write(src)
				} else {
					w, err = p.WriteVec([][]byte{src[:n/3], src[n/3 : n/2], src[n/2:]})
				}
				okErr("write", err, ErrClosed)
				if w < 0 || w > n || w > capacity {
					t.Fatalf("write returned %d of %d", w, n)
				}
				if trusted && !closed {
					want := min(n, capacity-len(model))
					if w != want || err != nil {
						t.Fatalf("write %d: got %d %v, want %d", n, w, err, want)
					}
					model = append(model, src[:w]...)
				}
			case 2: // Read
				buf := make([]byte, int(arg)*capacity/128+1)
				n, err := c.Read(buf)
				okErr("read", err, io.EOF)
				if n < 0 || n > len(buf) {
					t.Fatalf("read returned %d into %d", n, len(buf))
				}
				if trusted {
					want := min(len(buf), len(model))
					if n != want || !bytes.Equal(buf[:n], model[:n]) {
						t.Fatalf("read: got %d, want %d (or content differs)", n, want)
					}
					model = model[n:]
				}
			case 3: // Peek, then Consume part of it
				a, b, err := c.Peek()
				okErr("peek", err, io.EOF)
				tot := len(a) + len(b)
				if tot > capacity || (len(a) == 0 && len(b) > 0) {
					t.Fatalf("peek returned %d+%d with capacity %d", len(a), len(b), capacity)
				}
				for _, s := range [][]byte{a, b} { // touch every byte: must be mapped
					for i := range s {
						_ = s[i]
					}
				}
				k := 0
				if tot > 0 {
					k = int(arg) % (tot + 1)
				}
				err = c.Consume(k)
				okErr("consume", err)
				if trusted {
					got := append(append([]byte{}, a...), b...)
					if !bytes.Equal(got, model[:len(got)]) || (len(model) > 0 && tot == 0) {
						t.Fatal("peek content differs from model")
					}
					model = model[k:]
				}
			case 4: // hostile peer writes a header word
				w, _ := wordAt(mem, words[int(arg)%len(words)])
				w.Store(hostileValue(o, w.Load()))
				trusted = false
			case 5: // hostile peer writes data bytes
				v := o.u64()
				pos := fifoHeaderSize + int(arg)*capacity/256
				binary.LittleEndian.PutUint64(mem[pos:], v)
				trusted = false
			case 6:
				l, err := c.Len()
				okErr("len", err)
				fr, err2 := p.Free()
				okErr("free", err2, ErrClosed)
				if l < 0 || l > capacity || fr < 0 || fr > capacity {
					t.Fatalf("Len %d Free %d outside [0, %d]", l, fr, capacity)
				}
				if trusted && (l != len(model) || (!closed && fr != capacity-len(model))) {
					t.Fatalf("Len %d Free %d, model %d", l, fr, len(model))
				}
			case 7:
				if arg%8 == 0 {
					p.CloseWrite()
					closed = true
				} else {
					// arbitrary Consume: refused unless within what is known readable
					err := c.Consume(int(arg) - 128)
					okErr("consume", err, ErrInvalid)
					if trusted && err == nil {
						model = model[int(arg)-128:]
					}
				}
			}
		}
	})
}

// FuzzQueueHostilePeer: as FuzzFifoHostilePeer for a message queue; the peer
// also scribbles on slot length words and payloads.
func FuzzQueueHostilePeer(f *testing.F) {
	f.Add(uint8(2), []byte{0, 10, 0, 20, 1, 0, 1, 0, 1, 0})
	f.Add(uint8(1), []byte{0, 10, 2, 0, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0})
	f.Add(uint8(3), []byte{0, 1, 3, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0})
	f.Fuzz(func(t *testing.T, slotSel uint8, prog []byte) {
		slots := 1 << (slotSel % 5)
		seg := newSeg(t, QueueFootprint(slots))
		q := newQueuePair(t, seg, 0, slots)
		mem := seg.Bytes()
		words := []int{qOffTail, qOffHead, qOffMagic, qOffSlots, qOffRWait}
		o := &fuzzOps{prog}
		var model [][]byte
		trusted := true
		buf := make([]byte, MsgSize)
		for {
			op, ok := o.byte()
			if !ok {
				break
			}
			arg, _ := o.byte()
			switch op % 5 {
			case 0:
				m := make([]byte, 1+int(arg)%MsgSize)
				newStream(uint64(op)).fill(m)
				err := q.send.Send(m)
				if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrQueueFull) {
					t.Fatalf("send: %v", err)
				}
				if trusted {
					if (len(model) == slots) != errors.Is(err, ErrQueueFull) {
						t.Fatalf("send with %d/%d queued: %v", len(model), slots, err)
					}
					if err == nil {
						model = append(model, m)
					}
				}
			case 1:
				small := arg%16 == 0
				b := buf
				if small {
					b = buf[:arg%64]
				}
				n, err := q.recv.TryRecv(b)
				if err != nil && !errors.Is(err, ErrCorrupt) && err != io.ErrShortBuffer {
					t.Fatalf("recv: %v", err)
				}
				if n < 0 || n > len(b) || n > MsgSize {
					t.Fatalf("recv returned %d into %d", n, len(b))
				}
				if trusted {
					switch {
					case len(model) == 0:
						if n != 0 || err != nil {
							t.Fatalf("recv on empty: %d %v", n, err)
						}
					case len(model[0]) > len(b):
						if err != io.ErrShortBuffer {
							t.Fatalf("want ErrShortBuffer, got %d %v", n, err)
						}
					default:
						if err != nil || !bytes.Equal(b[:n], model[0]) {
							t.Fatalf("recv: %d %v, want %d bytes", n, err, len(model[0]))
						}
						model = model[1:]
					}
				}
			case 2: // header word
				w, _ := wordAt(mem, words[int(arg)%len(words)])
				w.Store(hostileValue(o, w.Load()))
				trusted = false
			case 3: // slot length word
				w, _ := wordAt(mem, qHeaderSize+(int(arg)%slots)*slotStride)
				w.Store(hostileValue(o, w.Load()))
				trusted = false
			case 4: // a blocking Recv must not block when the queue says it has data,
				// and must give up at its deadline otherwise (deadline already passed)
				n, err := q.recv.Recv(buf, pastDeadline)
				if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrDeadline) {
					t.Fatalf("Recv: %v", err)
				}
				if n < 0 || n > MsgSize {
					t.Fatalf("Recv returned %d", n)
				}
				if trusted {
					if len(model) == 0 {
						if !errors.Is(err, ErrDeadline) {
							t.Fatalf("Recv on empty: %d %v", n, err)
						}
					} else {
						if err != nil || !bytes.Equal(buf[:n], model[0]) {
							t.Fatalf("Recv: %d %v", n, err)
						}
						model = model[1:]
					}
				}
			}
		}
	})
}
