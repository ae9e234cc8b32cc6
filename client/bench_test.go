//go:build !race

package client_test

import (
	"context"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/hoststack/hoststack/client"
)

// Benchmarks compare hoststack cut-through sessions with kernel TCP over
// loopback, same process, same code: go test -run '^$' -bench . ./client

// benchFifo is the fifo capacity of the benchmarks.
const benchFifo = 4 << 20

type pairFn func(b *testing.B) (c1, c2 net.Conn)

func tcpPair(b *testing.B) (net.Conn, net.Conn) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); acc <- c }()
	c1, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	c2 := <-acc
	b.Cleanup(func() { c1.Close(); c2.Close() })
	return c1, c2
}

func hsPair(spin bool) pairFn {
	return func(b *testing.B) (net.Conn, net.Conn) {
		cfg := testNS
		cfg.RxFifoSize, cfg.TxFifoSize = benchFifo, benchFifo
		cfg.SegmentSize = 4 * benchFifo
		_, sock := startEngine(b, cfg)
		mod := func(o *client.Options) { o.Spin = spin }
		a1 := attach(b, sock, "a", mod)
		a2 := attach(b, sock, "b", mod)
		ln, err := a2.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		acc := make(chan net.Conn, 1)
		go func() { c, _ := ln.Accept(); acc <- c }()
		c1, err := a1.Dial(context.Background(), "tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		c2 := <-acc
		b.Cleanup(func() { c1.Close(); c2.Close() })
		return c1, c2
	}
}

func benchStream(b *testing.B, mk pairFn, size int) {
	c1, c2 := mk(b)
	done := make(chan struct{})
	go func() {
		rb := make([]byte, 256<<10)
		for {
			if _, err := c2.Read(rb); err != nil {
				break
			}
		}
		close(done)
	}()
	buf := make([]byte, size)
	b.SetBytes(int64(size))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c1.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c1.(interface{ CloseWrite() error }).CloseWrite()
	<-done
}

func benchRTT(b *testing.B, mk pairFn) {
	c1, c2 := mk(b)
	go func() {
		buf := make([]byte, 64)
		for {
			if _, err := io.ReadFull(c2, buf); err != nil {
				return
			}
			if _, err := c2.Write(buf); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 64)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		c1.Write(buf)
		if _, err := io.ReadFull(c1, buf); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
}

func benchConnect(b *testing.B, dial func() net.Conn, ln net.Listener) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c := dial()
		c.Close()
	}
}

func BenchmarkStream64TCP(b *testing.B)       { benchStream(b, tcpPair, 64) }
func BenchmarkStream64Hoststack(b *testing.B) { benchStream(b, hsPair(false), 64) }
func BenchmarkStream64KTCP(b *testing.B)      { benchStream(b, tcpPair, 64<<10) }
func BenchmarkStream64KHoststack(b *testing.B) {
	benchStream(b, hsPair(false), 64<<10)
}
func BenchmarkRTT64TCP(b *testing.B)           { benchRTT(b, tcpPair) }
func BenchmarkRTT64Hoststack(b *testing.B)     { benchRTT(b, hsPair(false)) }
func BenchmarkRTT64HoststackSpin(b *testing.B) { benchRTT(b, hsPair(true)) }

func BenchmarkConnectTCP(b *testing.B) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	benchConnect(b, func() net.Conn {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		return c
	}, ln)
}

func BenchmarkConnectHoststack(b *testing.B) {
	_, sock := startEngine(b, testNS)
	a1 := attach(b, sock, "a")
	a2 := attach(b, sock, "b")
	ln, _ := a2.Listen("tcp", "127.0.0.1:0")
	defer ln.Close()
	benchConnect(b, func() net.Conn {
		c, err := a1.Dial(context.Background(), "tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		return c
	}, ln)
}

// Cross-process variants: the peer is an app in a child process.

func hsChildPair(role string, spin bool) pairFn {
	return func(b *testing.B) (net.Conn, net.Conn) {
		cfg := testNS
		cfg.RxFifoSize, cfg.TxFifoSize = benchFifo, benchFifo
		cfg.SegmentSize = 4 * benchFifo
		_, sock := startEngine(b, cfg)
		if spin {
			b.Setenv("HS_TEST_SPIN", "1")
		}
		a := attach(b, sock, "a", func(o *client.Options) { o.Spin = spin })
		_, addr := startChild(b, role, sock, "127.0.0.1:0")
		c, err := a.Dial(context.Background(), "tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		return c, nil
	}
}

func benchStreamChild(b *testing.B, size int) {
	c, _ := hsChildPair("sink-server", false)(b)
	buf := make([]byte, size)
	b.SetBytes(int64(size))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
}

func benchRTTChild(b *testing.B, spin bool) {
	c, _ := hsChildPair("echo-server", spin)(b)
	buf := make([]byte, 64)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		c.Write(buf)
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
}

func BenchmarkXProcStream64Hoststack(b *testing.B)  { benchStreamChild(b, 64) }
func BenchmarkXProcStream64KHoststack(b *testing.B) { benchStreamChild(b, 64<<10) }
func BenchmarkXProcRTT64Hoststack(b *testing.B)     { benchRTTChild(b, false) }
func BenchmarkXProcRTT64HoststackSpin(b *testing.B) { benchRTTChild(b, true) }
