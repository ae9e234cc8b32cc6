/*
Copyright The hoststack Authors.

Licensed under the Apache License, Version 2.0.
*/

package enginetls

import (
	"crypto/tls"
	"net"
	"testing"
)

// BenchmarkThroughput moves bytes one way over a TCP loopback connection,
// plaintext and then through TLS terminated with a store config against a
// stock client (TLS 1.3, the cipher suite crypto/tls picks for this CPU).
// The engine issue targets tls >= 0.7 x plain at the same write size:
//
//	go test -run '^$' -bench Throughput -count 5 ./engine/tls
//
// On the 2-core CI machine it does not reach that (about 0.3): loopback
// TCP is itself CPU-bound on both cores (2-3.5 GB/s), and TLS adds an
// AES-GCM pass on each end at ~3.5-4 GB/s per core (measured with
// crypto/cipher alone) on those same two cores; the profile is half
// syscalls, half gcmAesEnc/gcmAesDec, nothing else. A real NIC is slower
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
			if size == 64<<10 {
				b.Logf("%s %s", tls.VersionName(cc.ConnectionState().Version), tls.CipherSuiteName(cc.ConnectionState().CipherSuite))
			}
			benchStream(b, size, cc, sc)
		})
	}
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
