//go:build dpdk

package dpdk

import (
	"io"
	"net"
	"testing"

	"github.com/hoststack/hoststack/internal/netnstest"
)

// BenchmarkTCP measures single-flow TCP throughput on one veth pair, in
// 64 KiB writes, ending when the receiver has read every byte:
//
//   - stack->kernel: the gVisor stack on the DPDK port in A sends to a
//     kernel socket in B (1500-byte frames: these PMDs have no TSO);
//   - stack->kernel-afxdp: the same over the af_xdp PMD;
//   - kernel->stack: the reverse (af_packet);
//   - kernel->kernel: A's kernel sends to B's on the same veth with its
//     offloads (TSO/GSO: 64 KiB frames cross the veth);
//   - kernel->kernel-noTSO: the same with TSO and GSO off on A, so that
//     the kernel too moves 1500-byte frames.
//
// Each uses the same pair settings as the tests (B's TX checksum offload
// off, A's GRO off).
func BenchmarkTCP(b *testing.B) {
	b.Run("stack->kernel", func(b *testing.B) {
		e := newEnv(b, DriverAFPacket)
		to := ap(e.p.B.Addr4, 7001)
		l := netnstest.Listen(b, e.p.B.Path(), "tcp", to.String())
		benchFlow(b, l, func() (net.Conn, error) { return e.dialStack(b, to), nil })
	})
	b.Run("stack->kernel-afxdp", func(b *testing.B) {
		e := newEnv(b, DriverAFXDP)
		to := ap(e.p.B.Addr4, 7004)
		l := netnstest.Listen(b, e.p.B.Path(), "tcp", to.String())
		benchFlow(b, l, func() (net.Conn, error) { return e.dialStack(b, to), nil })
	})
	b.Run("kernel->stack", func(b *testing.B) {
		e := newEnv(b, DriverAFPacket)
		at := ap(stack4.Addr().String(), 7002)
		l := e.listenStack(b, at)
		benchFlow(b, l, func() (net.Conn, error) { return netnstest.Dial(e.p.B.Path(), "tcp", at.String()) })
	})
	for _, noTSO := range []bool{false, true} {
		name := "kernel->kernel"
		if noTSO {
			name += "-noTSO"
		}
		b.Run(name, func(b *testing.B) {
			p := netnstest.NewPair(b)
			inNS(b, p.B.NS, "ethtool", "-K", p.B.Dev, "tx", "off")
			inNS(b, p.A.NS, "ethtool", "-K", p.A.Dev, "gro", "off")
			if noTSO {
				inNS(b, p.A.NS, "ethtool", "-K", p.A.Dev, "tso", "off", "gso", "off")
			}
			to := ap(p.B.Addr4, 7003)
			l := netnstest.Listen(b, p.B.Path(), "tcp", to.String())
			benchFlow(b, l, func() (net.Conn, error) { return netnstest.Dial(p.A.Path(), "tcp", to.String()) })
		})
	}
}

// benchFlow accepts one connection on l, dials it with dial, writes b.N
// chunks of 64 KiB and waits until the acceptor has read them all.
func benchFlow(b *testing.B, l net.Listener, dial func() (net.Conn, error)) {
	const chunk = 64 << 10
	got := make(chan int64, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			got <- -1
			return
		}
		deadline(c)
		n, _ := io.Copy(io.Discard, c)
		c.Close()
		got <- n
	}()
	c, err := dial()
	if err != nil {
		b.Fatalf("dial: %v", err)
	}
	deadline(c)
	buf := make([]byte, chunk)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	b.SetBytes(chunk)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := c.Write(buf); err != nil {
			b.Fatalf("write: %v", err)
		}
	}
	c.Close()
	if n := <-got; n != int64(b.N)*chunk {
		b.Fatalf("receiver read %d bytes, want %d", n, int64(b.N)*chunk)
	}
	b.StopTimer()
}

// BenchmarkRoundTrip measures the round trip of a 64-byte message to a
// kernel echo server in B (ns/op is the round-trip time): from the gVisor
// stack on the DPDK port, and from A's kernel on the same veth. Between
// round trips the RX thread keeps spinning (the last transmit was under
// spinWindow ago), so this is the loaded-path latency, not the wake-up from
// an idle poll(2).
func BenchmarkRoundTrip(b *testing.B) {
	echo := func(b *testing.B, l net.Listener) {
		go func() {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			_, _ = io.Copy(c, c)
		}()
	}
	run := func(b *testing.B, c net.Conn) {
		deadline(c)
		defer c.Close()
		msg := make([]byte, 64)
		buf := make([]byte, 64)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := c.Write(msg); err != nil {
				b.Fatalf("write: %v", err)
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				b.Fatalf("read: %v", err)
			}
		}
	}
	b.Run("stack<->kernel", func(b *testing.B) {
		e := newEnv(b, DriverAFPacket)
		to := ap(e.p.B.Addr4, 7101)
		echo(b, netnstest.Listen(b, e.p.B.Path(), "tcp", to.String()))
		run(b, e.dialStack(b, to))
	})
	b.Run("kernel<->kernel", func(b *testing.B) {
		p := netnstest.NewPair(b)
		to := ap(p.B.Addr4, 7102)
		echo(b, netnstest.Listen(b, p.B.Path(), "tcp", to.String()))
		c, err := netnstest.Dial(p.A.Path(), "tcp", to.String())
		if err != nil {
			b.Fatalf("dial: %v", err)
		}
		run(b, c)
	})
}
