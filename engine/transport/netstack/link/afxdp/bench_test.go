package afxdp

import (
	"io"
	"net"
	"testing"
	"time"

	"github.com/hoststack/hoststack/internal/netnstest"
)

// The benchmarks measure one TCP flow over the same veth pair: the
// userspace stack on AF_XDP (copy mode: veth has no zero-copy) against the
// kernel on both ends. Each op writes chunk bytes; b.SetBytes makes
// `go test -bench` print MB/s.
const chunk = 1 << 20

// stream writes b.N chunks from src and waits until dst has read them all.
func stream(b *testing.B, src, dst net.Conn) {
	b.Helper()
	buf := make([]byte, chunk)
	total := int64(b.N) * chunk
	done := make(chan error, 1)
	go func() {
		_, err := io.CopyN(io.Discard, dst, total)
		done <- err
	}()
	deadline := time.Now().Add(10 * time.Minute)
	src.SetDeadline(deadline)
	dst.SetDeadline(deadline)
	b.SetBytes(chunk)
	b.ResetTimer()
	for range b.N {
		if _, err := src.Write(buf); err != nil {
			b.Fatalf("write: %v", err)
		}
	}
	if err := <-done; err != nil {
		b.Fatalf("read: %v", err)
	}
	b.StopTimer()
	b.ReportMetric(float64(total)*8/b.Elapsed().Seconds()/1e9, "Gbit/s")
}

// BenchmarkStackToKernel: gVisor stack on AF_XDP in A -> kernel socket in B.
func BenchmarkStackToKernel(b *testing.B) {
	e := newEnv(b, ModeAuto)
	c, k := e.dialFromStack(b, false)
	b.Logf("mode %s", e.ep.Mode())
	stream(b, c, k)
}

// BenchmarkKernelToStack: kernel socket in B -> gVisor stack on AF_XDP in A.
func BenchmarkKernelToStack(b *testing.B) {
	e := newEnv(b, ModeAuto)
	c, k := e.dialToStack(b, false)
	stream(b, k, c)
}

// BenchmarkKernelToKernel: kernel socket in A -> kernel socket in B over
// the same kind of veth pair, no XDP program, default offloads.
func BenchmarkKernelToKernel(b *testing.B) {
	p := netnstest.NewPair(b)
	l := netnstest.Listen(b, p.B.Path(), "tcp4", net.JoinHostPort(p.B.Addr4, "0"))
	acc := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			acc <- c
		}
		close(acc)
	}()
	c, err := netnstest.Dial(p.A.Path(), "tcp4", l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	k := <-acc
	if k == nil {
		b.Fatal("accept failed")
	}
	defer k.Close()
	stream(b, c, k)
}
