/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package enginetls

import (
	"crypto/tls"
	"net"
	"testing"
	"time"
)

// BenchmarkThroughput moves bytes one way over a TCP loopback connection,
// plaintext and then through TLS terminated with a store config against a
// stock client (TLS 1.3, the cipher suite crypto/tls picks for this CPU).
// The engine issue targets tls >= 0.7 x plain at the same write size
// (BenchmarkThroughputRatio reports the ratio directly):
//
//	go test -run '^$' -bench Throughput -count 5 ./engine/tls
//
// On the 2-core machine this was written on it does not reach that:
// BenchmarkThroughputRatio gave 0.34-0.37 (TLS 1.3, TLS_AES_128_GCM_SHA256).
// Loopback TCP is itself CPU-bound (1.5-3 GB/s), and TLS adds an AES-GCM
// pass on each end (crypto/cipher alone seals 3.5-4 GB/s per core) plus
// one syscall per 16 KiB record, on the same two cores; the profile is
// about half syscalls and half gcmAesEnc/gcmAesDec. Buffering reads under
// crypto/tls (fewer read syscalls) measured no gain. A real NIC is slower
// than loopback and leaves crypto headroom, so the ratio there is higher.
func BenchmarkThroughput(b *testing.B) {
	for _, size := range []int{16 << 10, 64 << 10} {
		b.Run("plain/"+sizeName(size), func(b *testing.B) {
			c, s := tcpPair(b)
			benchStream(b, size, c, s)
		})
		b.Run("tls/"+sizeName(size), func(b *testing.B) {
			ca := newCA(b, "bench-ca")
			l := ca.issue(b, leafOpts{})
			var st Store
			if err := st.Set("ns", "p", l.certPEM, l.keyPEM); err != nil {
				b.Fatal(err)
			}
			cfg, err := st.ServerConfig("ns", "p")
			if err != nil {
				b.Fatal(err)
			}
			cconn, sconn := tcpPair(b)
			ctx := testCtx(b)
			sc := tls.Server(sconn, cfg)
			done := make(chan error, 1)
			go func() { done <- Handshake(ctx, sc) }()
			cc := tls.Client(cconn, stockClient(ca, "svc.test"))
			if err := Handshake(ctx, cc); err != nil {
				b.Fatal(err)
			}
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			benchStream(b, size, cc, sc)
		})
	}
}

// BenchmarkThroughputRatio alternates plaintext and TLS transfers of 4 MiB
// (64 KiB writes) on two loopback connections set up once, and reports
// tls/plain: on a shared, noisy machine the interleaving cancels most of
// the drift that separate benchmarks would see.
func BenchmarkThroughputRatio(b *testing.B) {
	const size, chunks = 64 << 10, 64
	ca := newCA(b, "bench-ca")
	l := ca.issue(b, leafOpts{})
	var st Store
	if err := st.Set("ns", "p", l.certPEM, l.keyPEM); err != nil {
		b.Fatal(err)
	}
	cfg, err := st.ServerConfig("ns", "p")
	if err != nil {
		b.Fatal(err)
	}
	pc, ps := tcpPair(b)
	cconn, sconn := tcpPair(b)
	ctx := testCtx(b)
	sc := tls.Server(sconn, cfg)
	done := make(chan error, 1)
	go func() { done <- Handshake(ctx, sc) }()
	cc := tls.Client(cconn, stockClient(ca, "svc.test"))
	if err := Handshake(ctx, cc); err != nil {
		b.Fatal(err)
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	var plain, secure time.Duration
	b.SetBytes(2 * size * chunks)
	for b.Loop() {
		plain += timeStream(b, size, chunks, pc, ps)
		secure += timeStream(b, size, chunks, cc, sc)
	}
	b.ReportMetric(float64(plain)/float64(secure), "tls/plain")
}

// timeStream moves chunks writes of size from w to r and returns how long
// it took.
func timeStream(b *testing.B, size, chunks int, w, r net.Conn) time.Duration {
	start := time.Now()
	errc := make(chan error, 1)
	go func() {
		buf := make([]byte, size)
		var err error
		for i := 0; i < chunks && err == nil; i++ {
			_, err = w.Write(buf)
		}
		errc <- err
	}()
	rbuf := make([]byte, 256<<10)
	for got, want := 0, size*chunks; got < want; {
		n, err := r.Read(rbuf[:min(len(rbuf), want-got)])
		if err != nil {
			b.Fatal(err)
		}
		got += n
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	return time.Since(start)
}

func sizeName(n int) string {
	return map[int]string{16 << 10: "16KiB", 64 << 10: "64KiB"}[n]
}

// benchStream writes b.N chunks of size from w and reads them all at r.
func benchStream(b *testing.B, size int, w, r net.Conn) {
	buf := make([]byte, size)
	b.SetBytes(int64(size))
	b.ResetTimer()
	errc := make(chan error, 1)
	go func() {
		var err error
		for i := 0; i < b.N && err == nil; i++ {
			_, err = w.Write(buf)
		}
		errc <- err
	}()
	rbuf := make([]byte, 256<<10)
	want := int64(b.N) * int64(size)
	for got := int64(0); got < want; {
		n, err := r.Read(rbuf[:min(int64(len(rbuf)), want-got)])
		if err != nil {
			b.Fatal(err)
		}
		got += int64(n)
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
}
