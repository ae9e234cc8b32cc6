package afpacket_test

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/hoststack/hoststack/internal/netnstest"
)

// BenchmarkTCP measures single-flow TCP throughput over the veth of a pair:
// the userspace stack on A sending to B's kernel (and receiving from it),
// and, for comparison, A's kernel sending to B's kernel over a veth pair
// of its own (no AF_PACKET tap on it, which would copy every frame).
// Payload only: 64 KiB writes of a constant buffer, the receiver discards.
//
//	go test -run '^$' -bench TCP -benchtime 4s ./engine/transport/netstack/link/afpacket/
func BenchmarkTCP(b *testing.B) {
	b.Run("stack-to-kernel", func(b *testing.B) {
		e := newEnv(b, keepKernelAddrs)
		c := e.stackDials(b, stack4)
		benchFlow(b, c.stack, c.kernel)
	})
	b.Run("kernel-to-stack", func(b *testing.B) {
		e := newEnv(b, keepKernelAddrs)
		c := e.kernelDials(b, e.stackListener(b, stack4, 9000), stackAddr(stack4, 9000))
		benchFlow(b, c.kernel, c.stack)
	})
	b.Run("kernel-to-kernel", func(b *testing.B) {
		p := netnstest.NewPair(b)
		l := netnstest.Listen(b, p.B.Path(), "tcp", p.B.Addr4+":0")
		w, err := netnstest.Dial(p.A.Path(), "tcp", l.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		defer w.Close()
		r, err := l.Accept()
		if err != nil {
			b.Fatal(err)
		}
		defer r.Close()
		benchFlow(b, w, r)
	})
}

// benchFlow writes b.N chunks of 64 KiB on w and reads them on r.
func benchFlow(b *testing.B, w, r net.Conn) {
	const chunk = 64 << 10
	buf := make([]byte, chunk)
	got := make(chan int64, 1)
	go func() {
		// Wrapped: io.Discard.ReadFrom would read 8 KiB at a time.
		n, _ := io.CopyBuffer(struct{ io.Writer }{io.Discard}, struct{ io.Reader }{r}, make([]byte, 256<<10))
		got <- n
	}()
	// A stall fails rather than hangs the benchmark.
	w.SetDeadline(time.Now().Add(5 * time.Minute))
	r.SetDeadline(time.Now().Add(5 * time.Minute))
	b.SetBytes(chunk)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		if _, err := w.Write(buf); err != nil {
			b.Fatalf("write: %v", err)
		}
	}
	if err := w.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		b.Fatal(err)
	}
	n := <-got
	elapsed := time.Since(start)
	b.StopTimer()
	if n != int64(b.N)*chunk {
		b.Fatalf("received %d bytes, want %d", n, int64(b.N)*chunk)
	}
	b.ReportMetric(float64(n)*8/elapsed.Seconds()/1e9, "Gbit/s")
}
