package shm

import (
	"os"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkFifoSameProcess: a producer and a consumer goroutine of one
// process on a 4 MiB fifo, with the spin-then-sleep wake protocol.
func BenchmarkFifoSameProcess(b *testing.B) {
	for _, size := range []int{64, 1 << 10, 16 << 10, 64 << 10} {
		b.Run(sizeName(size), func(b *testing.B) {
			p, c, _ := newFifoPair(b, 4<<20)
			rEfd, wEfd := mustEventFD(b), mustEventFD(b)
			prod := &endpoint{f: p, readerEfd: rEfd, writerEfd: wEfd, spin: 50 * time.Microsecond}
			cons := &endpoint{f: c, readerEfd: rEfd, writerEfd: wEfd, spin: 50 * time.Microsecond}
			var wg sync.WaitGroup
			var got int
			var rerr error
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, 256<<10)
				for {
					n, err := cons.read(buf)
					got += n
					if err != nil {
						if got != b.N*size {
							rerr = err
						}
						return
					}
				}
			}()
			buf := make([]byte, size)
			b.SetBytes(int64(size))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := prod.writeAll(buf); err != nil {
					b.Fatal(err)
				}
			}
			prod.closeWrite()
			wg.Wait()
			b.StopTimer()
			if rerr != nil || got != b.N*size {
				b.Fatalf("consumer: %v, %d bytes", rerr, got)
			}
		})
	}
}

// BenchmarkFifoWriteRead: one goroutine writes then reads size bytes: the
// cost of the two copies plus the index bookkeeping, no cross-core traffic.
func BenchmarkFifoWriteRead(b *testing.B) {
	for _, size := range []int{64, 1 << 10, 16 << 10, 64 << 10} {
		b.Run(sizeName(size), func(b *testing.B) {
			p, c, _ := newFifoPair(b, 1<<20)
			buf := make([]byte, size)
			out := make([]byte, size)
			b.SetBytes(int64(size))
			for i := 0; i < b.N; i++ {
				if n, err := p.Write(buf); n != size || err != nil {
					b.Fatal(n, err)
				}
				if n, err := c.Read(out); n != size || err != nil {
					b.Fatal(n, err)
				}
			}
		})
	}
}

// BenchmarkQueueRoundTrip: one op = a 64-byte message there and back between
// two goroutines of one process through two queues.
func BenchmarkQueueRoundTrip(b *testing.B) {
	for _, mode := range []struct {
		name string
		spin time.Duration
	}{{"spin", time.Second}, {"blocking", 0}, {"default", DefaultSpin}} {
		b.Run(mode.name, func(b *testing.B) {
			seg := newSeg(b, 2*QueueFootprint(16))
			ab := newQueuePair(b, seg, 0, 16)
			ba := newQueuePair(b, seg, QueueFootprint(16), 16)
			ab.recv.Spin, ba.recv.Spin = mode.spin, mode.spin
			done := make(chan error, 1)
			go func() {
				buf := make([]byte, MsgSize)
				for {
					n, err := ab.recv.Recv(buf, time.Time{})
					if err != nil {
						done <- err
						return
					}
					if n == 1 {
						done <- nil
						return
					}
					if err := ba.send.Send(buf[:n]); err != nil {
						done <- err
						return
					}
				}
			}()
			msg := make([]byte, 64)
			buf := make([]byte, MsgSize)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := ab.send.Send(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := ba.recv.Recv(buf, time.Time{}); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			ab.send.Send([]byte{0})
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkEventfdPingPong: one op = a wake-up there and back between two
// goroutines over two eventfds, no shared memory involved. "poll" is WaitFD
// (poll(2) on the goroutine's thread), "poll-locked" the same on threads
// pinned with runtime.LockOSThread, "netpoller" reads through os.File (Go's
// netpoller), for comparison.
func BenchmarkEventfdPingPong(b *testing.B) {
	for _, mode := range []string{"poll", "poll-locked", "netpoller"} {
		b.Run(mode, func(b *testing.B) {
			a2b, b2a := mustEventFD(b), mustEventFD(b)
			var wait func(int) error
			switch mode {
			case "netpoller":
				files := map[int]*os.File{}
				for _, fd := range []int{a2b, b2a} {
					d, err := unix.Dup(fd)
					if err != nil {
						b.Fatal(err)
					}
					files[fd] = os.NewFile(uintptr(d), "efd")
					defer files[fd].Close()
				}
				wait = func(fd int) error {
					var buf [8]byte
					_, err := files[fd].Read(buf[:])
					return err
				}
			default:
				wait = func(fd int) error { return WaitFD(fd, time.Time{}) }
			}
			lock := mode == "poll-locked"
			done := make(chan error, 1)
			go func() {
				if lock {
					runtime.LockOSThread()
					defer runtime.UnlockOSThread()
				}
				for i := 0; i < b.N; i++ {
					if err := wait(a2b); err != nil {
						done <- err
						return
					}
					Signal(b2a)
				}
				done <- nil
			}()
			if lock {
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				Signal(a2b)
				if err := wait(b2a); err != nil {
					b.Fatal(err)
				}
			}
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkMemcpy is the baseline: one copy of size bytes within a 4 MiB
// buffer (the ring size of the cross-process benchmarks), walking through it.
func BenchmarkMemcpy(b *testing.B) {
	for _, size := range []int{64, 1 << 10, 16 << 10, 64 << 10} {
		b.Run(sizeName(size), func(b *testing.B) {
			ring := make([]byte, 4<<20)
			src := make([]byte, size)
			b.SetBytes(int64(size))
			pos := 0
			for i := 0; i < b.N; i++ {
				if pos+size > len(ring) {
					pos = 0
				}
				copy(ring[pos:], src)
				pos += size
			}
		})
	}
}
