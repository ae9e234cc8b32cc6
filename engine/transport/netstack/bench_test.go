package netstack_test

import (
	"io"
	"net"
	"testing"

	"github.com/hoststack/hoststack/internal/netnstest"
)

// BenchmarkSingleFlow measures one TCP flow from an app to a kernel sink
// over the veth, through the engine and the userspace stack on each link
// layer, and, on the same veth, from a kernel socket for comparison.
func BenchmarkSingleFlow(b *testing.B) {
	const chunk = 1 << 20
	for _, kind := range append([]string{"kernel"}, links...) {
		b.Run(kind, func(b *testing.B) {
			p := pair(b)
			ln := netnstest.Listen(b, p.B.Path(), "tcp", "10.99.0.2:0")
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() { _, _ = io.Copy(io.Discard, c); c.Close() }()
				}
			}()
			var c net.Conn
			var err error
			if kind == "kernel" {
				c, err = netnstest.Dial(p.A.Path(), "tcp", ln.Addr().String())
			} else {
				n := newNode(b, kind, p.A, "10.99.0.11/24")
				c, err = dial(n.attach(b, "bench"), ln.Addr().String())
			}
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			buf := make([]byte, chunk)
			b.SetBytes(chunk)
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
