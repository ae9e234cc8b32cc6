package afxdp

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/stack"

	"github.com/hoststack/hoststack/internal/netnstest"
	"github.com/hoststack/hoststack/internal/stacktest"
)

// Transfer sizes: the race detector slows the stack ~10x.
func size(normal int64) int64 {
	if raceEnabled {
		return normal / 8
	}
	return normal
}

func TestTCPStackToKernel(t *testing.T) {
	e := newEnv(t, ModeAuto)
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v6=%v", v6), func(t *testing.T) {
			c, k := e.dialFromStack(t, v6)
			n := size(64 << 20)
			d := transfer(t, c, k, n, 1, 60*time.Second)
			t.Logf("%d MiB stack->kernel in %v (%.2f Gbit/s)", n>>20, d, gbits(n, d))
		})
	}
}

func TestTCPKernelToStack(t *testing.T) {
	e := newEnv(t, ModeAuto)
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v6=%v", v6), func(t *testing.T) {
			c, k := e.dialToStack(t, v6)
			n := size(64 << 20)
			d := transfer(t, k, c, n, 2, 60*time.Second)
			t.Logf("%d MiB kernel->stack in %v (%.2f Gbit/s)", n>>20, d, gbits(n, d))
		})
	}
}

func TestUDPEcho(t *testing.T) {
	e := newEnv(t, ModeAuto)
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("v6=%v", v6), func(t *testing.T) {
			network := "udp4"
			if v6 {
				network = "udp6"
			}
			pc := netnstest.ListenPacket(t, e.p.B.Path(), network, net.JoinHostPort(e.bAddr(v6).String(), "0"))
			go func() {
				buf := make([]byte, 2048)
				for {
					n, from, err := pc.ReadFrom(buf)
					if err != nil {
						return
					}
					pc.WriteTo(buf[:n], from)
				}
			}()
			port := pc.LocalAddr().(*net.UDPAddr).Port
			raddr := stacktest.FullAddress(netip.AddrPortFrom(e.bAddr(v6), uint16(port)))
			c, err := gonet.DialUDP(e.s, nil, &raddr, stacktest.Proto(e.bAddr(v6)))
			if err != nil {
				t.Fatalf("DialUDP: %v", err)
			}
			defer c.Close()
			buf := make([]byte, 2048)
			for i := range 100 {
				msg := fmt.Appendf(nil, "datagram %d %s", i, strings.Repeat("x", i*13))
				// UDP may lose the first datagrams while ARP/ND resolves;
				// resend on a short read deadline.
				got := false
				for try := 0; try < 50 && !got; try++ {
					if _, err := c.Write(msg); err != nil {
						t.Fatalf("write: %v", err)
					}
					c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
					n, err := c.Read(buf)
					if err != nil {
						if isTimeout(err) {
							continue
						}
						t.Fatalf("read: %v", err)
					}
					// An echo of an earlier resend may still be in
					// flight; only a different payload is wrong.
					if string(buf[:n]) == string(msg) {
						got = true
					} else if !strings.HasPrefix(string(buf[:n]), "datagram ") {
						t.Fatalf("echo %d: got %q", i, buf[:n])
					}
				}
				if !got {
					t.Fatalf("no echo for datagram %d", i)
				}
			}
		})
	}
}

// TestKernelKeepsItsTraffic: with the program attached and the stack busy,
// the kernel in A still gets its own traffic (ARP, ND, ICMP, TCP): the
// program passes everything not addressed to the stack.
func TestKernelKeepsItsTraffic(t *testing.T) {
	e := newEnv(t, ModeAuto)
	// Bring the stack path up first so both share the link.
	c, k := e.dialFromStack(t, false)
	transfer(t, c, k, size(8<<20), 3, 60*time.Second)
	if !xdpAttached(t, e.p) {
		t.Fatal("no XDP program on A's veth while the endpoint is open")
	}
	// Forget B's neighbours so B must resolve A's kernel addresses
	// through the program again (ARP and NS for .1/::1 must be passed).
	netnstest.Cmd(t, "-n", e.p.B.NS, "neigh", "flush", "dev", e.p.B.Dev)
	for _, v6 := range []bool{false, true} {
		kernelTCP(t, e.p, v6)
	}
	// The stack still works after the kernel's traffic.
	c2, k2 := e.dialToStack(t, true)
	transfer(t, k2, c2, size(8<<20), 4, 60*time.Second)
	if st := e.ep.Stats(); st.RXBadDescs != 0 || st.CompBadAddrs != 0 {
		t.Fatalf("bad descriptors: %+v", st)
	}
}

func TestParallelFlows(t *testing.T) {
	e := newEnv(t, ModeAuto)
	const flows = 16
	n := size(16 << 20)
	type pair struct{ src, dst net.Conn }
	var ps []pair
	for i := range flows {
		v6 := i%4 >= 2
		if i%2 == 0 {
			c, k := e.dialFromStack(t, v6)
			ps = append(ps, pair{c, k})
		} else {
			c, k := e.dialToStack(t, v6)
			ps = append(ps, pair{k, c})
		}
	}
	var wg sync.WaitGroup
	start := time.Now()
	for i, p := range ps {
		wg.Go(func() { transfer(t, p.src, p.dst, n, uint64(100+i), 120*time.Second) })
	}
	wg.Wait()
	d := time.Since(start)
	t.Logf("%d flows x %d MiB in %v (%.2f Gbit/s aggregate)", flows, n>>20, d, gbits(flows*n, d))
}

// TestCloseDetaches: Close removes the program (the kernel no longer shows
// XDP on the device), releases the socket's mappings, and is idempotent;
// the kernel's own traffic keeps working.
func TestCloseDetaches(t *testing.T) {
	p := netnstest.NewPair(t)
	ep, err := New(Options{Interface: p.A.Dev, Netns: p.A.Path(), Addrs: []netip.Prefix{stack4, stack6}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if !xdpAttached(t, p) {
		t.Fatal("no XDP program after New")
	}
	var st unix.Stat_t
	if err := unix.Fstat(ep.fd, &st); err != nil {
		t.Fatal(err)
	}
	sock := fmt.Sprintf("socket:[%d]", st.Ino)
	if !mapsContain(t, sock) {
		t.Fatalf("no mapping of %s before Close", sock)
	}
	ep.Close()
	ep.Close()
	if xdpAttached(t, p) {
		t.Fatalf("XDP program still attached after Close:\n%s", netnstest.Cmd(t, "-n", p.A.NS, "-d", "link", "show", "dev", p.A.Dev))
	}
	if mapsContain(t, sock) {
		t.Fatalf("%s still mapped after Close", sock)
	}
	_ = ep.Stats()
	kernelTCP(t, p, false)
	// A new endpoint can take the device again.
	ep2, err := New(Options{Interface: p.A.Dev, Netns: p.A.Path(), Addrs: []netip.Prefix{stack4}, ZeroCopy: ModeCopy})
	if err != nil {
		t.Fatalf("New after Close: %v", err)
	}
	if ep2.Mode() != ModeCopy {
		t.Fatalf("mode %q, want copy", ep2.Mode())
	}
	ep2.Close()
}

// kernelTCP checks a TCP exchange from B to A's kernel address.
func kernelTCP(t *testing.T, p *netnstest.Pair, v6 bool) {
	t.Helper()
	dst, network := p.A.Addr4, "tcp4"
	if v6 {
		dst, network = p.A.Addr6, "tcp6"
	}
	l := netnstest.Listen(t, p.A.Path(), network, net.JoinHostPort(dst, "0"))
	port := l.Addr().(*net.TCPAddr).Port
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.Write([]byte("kernel of A"))
	}()
	kc, err := netnstest.Dial(p.B.Path(), network, net.JoinHostPort(dst, fmt.Sprint(port)))
	if err != nil {
		t.Fatalf("kernel TCP to %s: %v", dst, err)
	}
	defer kc.Close()
	kc.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 64)
	n, err := kc.Read(buf)
	if err != nil || string(buf[:n]) != "kernel of A" {
		t.Fatalf("kernel TCP to %s: %q %v", dst, buf[:n], err)
	}
}

func mapsContain(t *testing.T, s string) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(b), s)
}

func TestModes(t *testing.T) {
	p := netnstest.NewPair(t)
	if _, err := New(Options{Interface: p.A.Dev, Netns: p.A.Path(), Addrs: []netip.Prefix{stack4}, ZeroCopy: "fast"}); err == nil {
		t.Fatal("unknown mode accepted")
	}
	if _, err := New(Options{Interface: p.A.Dev, Netns: p.A.Path()}); err == nil {
		t.Fatal("no addresses accepted")
	}
	ep, err := New(Options{Interface: p.A.Dev, Netns: p.A.Path(), Addrs: []netip.Prefix{stack4}})
	if err != nil {
		t.Fatalf("auto: %v", err)
	}
	t.Logf("auto mode on veth: %s", ep.Mode())
	ep.Close()
	ep, err = New(Options{Interface: p.A.Dev, Netns: p.A.Path(), Addrs: []netip.Prefix{stack4}, ZeroCopy: ModeZeroCopy})
	if err == nil {
		t.Logf("zero-copy bind succeeded on veth: %s", ep.Mode())
		ep.Close()
	} else {
		t.Logf("zero-copy on veth: %v", err)
	}
	if xdpAttached(t, p) {
		t.Fatal("a failed New left a program attached")
	}
}

// TestSteering runs the program on crafted frames (BPF_PROG_TEST_RUN). With
// the socket in the XSKMAP, "to the stack" is XDP_REDIRECT (4) and "to the
// kernel" XDP_PASS (2).
func TestSteering(t *testing.T) {
	p := netnstest.NewPair(t)
	ep, err := New(Options{Interface: p.A.Dev, Netns: p.A.Path(), Addrs: []netip.Prefix{stack4, stack6}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer ep.Close()
	const redirect, pass = 4, 2
	owned4, other4 := netip.MustParseAddr("10.99.0.11"), netip.MustParseAddr("10.99.0.1")
	owned6, other6 := netip.MustParseAddr("fd99::11"), netip.MustParseAddr("fd99::1")
	snm := func(a netip.Addr) netip.Addr { // solicited-node multicast
		b := a.As16()
		return netip.AddrFrom16([16]byte{0xff, 0x02, 10: 0, 11: 1, 12: 0xff, 13: b[13], 14: b[14], 15: b[15]})
	}
	cases := []struct {
		name  string
		frame []byte
		want  uint32
	}{
		{"ipv4 to stack", ipv4Frame(owned4), redirect},
		{"ipv4 to kernel", ipv4Frame(other4), pass},
		{"ipv4 truncated", ipv4Frame(owned4)[:30], pass},
		{"arp for stack", arpFrame(owned4, 0x0800, 0x0604), redirect},
		{"arp for kernel", arpFrame(other4, 0x0800, 0x0604), pass},
		{"arp odd ptype", arpFrame(owned4, 0x86dd, 0x0604), pass},
		{"arp odd lengths", arpFrame(owned4, 0x0800, 0x0610), pass},
		{"arp truncated", arpFrame(owned4, 0x0800, 0x0604)[:41], pass},
		{"ipv6 to stack", ipv6Frame(owned6, 6, nil), redirect},
		{"ipv6 to kernel", ipv6Frame(other6, 6, nil), pass},
		{"ns for stack", ipv6Frame(snm(owned6), 58, nsBody(owned6)), redirect},
		{"ns for kernel", ipv6Frame(snm(other6), 58, nsBody(other6)), pass},
		{"ns for stack to all-nodes", ipv6Frame(netip.MustParseAddr("ff02::1"), 58, nsBody(owned6)), pass},
		{"ns truncated", ipv6Frame(snm(owned6), 58, nsBody(owned6))[:70], pass},
		{"vlan", append([]byte{0: 0xff, 12: 0x81, 13: 0x00}, ipv4Frame(owned4)[12:]...), pass},
		{"ethernet only", ipv4Frame(owned4)[:14], pass},
	}
	for _, c := range cases {
		got, err := ep.st.prog.Run(&ebpf.RunOptions{Data: c.frame})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if got != c.want {
			t.Errorf("%s: action %d, want %d", c.name, got, c.want)
		}
	}
}

func eth(typ uint16) []byte {
	b := make([]byte, 14)
	copy(b, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1})
	binary.BigEndian.PutUint16(b[12:], typ)
	return b
}

func ipv4Frame(dst netip.Addr) []byte {
	ip := make([]byte, 28)
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], 28)
	ip[8], ip[9] = 64, 17
	copy(ip[12:], []byte{10, 99, 0, 2})
	d := dst.As4()
	copy(ip[16:], d[:])
	return append(eth(0x0800), ip...)
}

func arpFrame(tpa netip.Addr, ptype, lens uint16) []byte {
	a := make([]byte, 28)
	binary.BigEndian.PutUint16(a[0:], 1)
	binary.BigEndian.PutUint16(a[2:], ptype)
	binary.BigEndian.PutUint16(a[4:], lens)
	binary.BigEndian.PutUint16(a[6:], 1)
	copy(a[14:], []byte{10, 99, 0, 2})
	d := tpa.As4()
	copy(a[24:], d[:])
	return append(eth(0x0806), a...)
}

func ipv6Frame(dst netip.Addr, next byte, payload []byte) []byte {
	ip := make([]byte, 40)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(payload)))
	ip[6], ip[7] = next, 255
	src := netip.MustParseAddr("fd99::2").As16()
	copy(ip[8:], src[:])
	d := dst.As16()
	copy(ip[24:], d[:])
	if payload == nil {
		payload = make([]byte, 20)
	}
	return append(append(eth(0x86dd), ip...), payload...)
}

func nsBody(target netip.Addr) []byte {
	b := make([]byte, 32)
	b[0] = 135
	t := target.As16()
	copy(b[8:], t[:])
	b[24], b[25] = 1, 1 // source link-layer address option
	return b
}

// TestDescriptorValidation feeds the RX and completion checks descriptors a
// buggy or hostile kernel could produce.
func TestDescriptorValidation(t *testing.T) {
	e := &Endpoint{umemLen: nFrames * frameSize, frames: make([]uint8, nFrames)}
	e.frames[3] = frameTX
	e.frames[5] = frameRX
	bad := []unix.XDPDesc{
		{Addr: nFrames * frameSize, Len: 64},                   // past the UMEM
		{Addr: 1<<64 - 8, Len: 64},                             // wraps
		{Addr: 7*frameSize + frameSize - 10, Len: 64},          // crosses a frame
		{Addr: 7 * frameSize, Len: frameSize + 1},              // longer than a frame
		{Addr: 7*frameSize + xdpHeadroom, Len: 10},             // runt
		{Addr: 3*frameSize + xdpHeadroom, Len: 100},            // a TX frame
		{Addr: 5*frameSize + xdpHeadroom, Len: 100},            // already returned
		{Addr: (nFrames-1)*frameSize + xdpHeadroom, Len: 4000}, // last frame, too long for its offset
	}
	for _, d := range bad {
		if e.validRX(d) {
			t.Errorf("accepted %+v", d)
		}
	}
	good := []unix.XDPDesc{
		{Addr: 7*frameSize + xdpHeadroom, Len: 1514},
		{Addr: 0, Len: frameSize},
		{Addr: (nFrames-1)*frameSize + xdpHeadroom, Len: frameSize - xdpHeadroom},
	}
	for _, d := range good {
		if !e.validRX(d) {
			t.Errorf("rejected %+v", d)
		}
	}
}

// TestTXDrainsLargeBatch hands WritePackets twice a ring's worth of frames
// plus 1000 in one call and then nothing more: every frame must reach B. In
// copy mode the kernel sends at most a budget of frames per kick (32, or 256
// where the kernel lets us raise it), and the batch also overflows the TX
// ring (and the frames TX can get), so this needs both the
// kick-until-drained loop and the ring-full path; an endpoint that kicks
// once per write (gVisor's) strands the rest.
func TestTXDrainsLargeBatch(t *testing.T) {
	p := netnstest.NewPair(t)
	ep, err := New(Options{Interface: p.A.Dev, Netns: p.A.Path(), Addrs: []netip.Prefix{stack4}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer ep.Close()
	bmac, err := net.ParseMAC(p.B.MAC)
	if err != nil {
		t.Fatal(err)
	}
	before := rxPackets(t, p.B)
	n := int(2*ep.ringSize) + 1000
	var list stack.PacketBufferList
	for i := range n {
		f := make([]byte, 60+i%1000)
		copy(f, bmac)
		copy(f[6:], ep.LinkAddress())
		binary.BigEndian.PutUint16(f[12:], 0x88b5) // IEEE local experimental
		binary.BigEndian.PutUint32(f[14:], uint32(i))
		list.PushBack(stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(f)}))
	}
	pkts := list.AsSlice()
	written, terr := ep.WritePackets(list)
	for _, pkt := range pkts {
		pkt.DecRef()
	}
	if terr != nil || written != n {
		t.Fatalf("WritePackets: %d of %d, %v", written, n, terr)
	}
	// B's veth counts every frame it receives; wait (bounded) for all.
	deadline := time.Now().Add(10 * time.Second)
	for got := rxPackets(t, p.B) - before; got < uint64(n); got = rxPackets(t, p.B) - before {
		if time.Now().After(deadline) {
			t.Fatalf("STALL: B received %d of %d frames written in one call; %+v", got, n, ep.Stats())
		}
		runtime.Gosched()
	}
	st := ep.Stats()
	t.Logf("stats after %d frames: kicks %d, ring full %d", n, st.TXKicks, st.TXRingFull)
	if st.TXPackets != uint64(n) || st.TXDrops != 0 {
		t.Fatalf("stats: %+v", st)
	}
	if st.TXRingFull == 0 {
		// Copying outruns the kernel's transmit by far, so this means the
		// writer was descheduled for long: not a failure, but the ring-full
		// path went untested this time.
		t.Logf("the TX ring never filled")
	}
}

// rxPackets reads the RX packet counter of end's veth.
func rxPackets(t *testing.T, end netnstest.End) uint64 {
	t.Helper()
	out, err := inNS(end.NS, "cat", "/sys/class/net/"+end.Dev+"/statistics/rx_packets")
	if err != nil {
		t.Fatalf("rx_packets: %v: %s", err, out)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestIdleDoesNotSpin: once traffic stops, the endpoint's goroutines sleep
// (poll and a channel) instead of spinning on the rings. The process's CPU
// time over a quiet half second is the measurement.
func TestIdleDoesNotSpin(t *testing.T) {
	e := newEnv(t, ModeAuto)
	c, k := e.dialFromStack(t, false)
	transfer(t, c, k, size(4<<20), 5, 60*time.Second)
	var r0, r1 unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &r0)
	const window = 500 * time.Millisecond
	time.Sleep(window) // a measurement window, not synchronisation
	unix.Getrusage(unix.RUSAGE_SELF, &r1)
	used := time.Duration(r1.Utime.Nano()-r0.Utime.Nano()) + time.Duration(r1.Stime.Nano()-r0.Stime.Nano())
	t.Logf("CPU while idle: %v in %v", used, window)
	if used > window/10 {
		t.Fatalf("endpoint busy while idle: %v CPU in %v", used, window)
	}
}

// TestReopen closes and reopens the endpoint on the same queue many times
// in a row (the kernel frees a socket's queue asynchronously; New must cope)
// and checks the last one carries traffic.
func TestReopen(t *testing.T) {
	p := netnstest.NewPair(t)
	txChecksumOff(t, p.B)
	for i := range 10 {
		ep, err := New(Options{Interface: p.A.Dev, Netns: p.A.Path(), Addrs: []netip.Prefix{stack4, stack6}})
		if err != nil {
			t.Fatalf("New #%d right after Close: %v", i, err)
		}
		ep.Close()
	}
	ep, err := New(Options{Interface: p.A.Dev, Netns: p.A.Path(), Addrs: []netip.Prefix{stack4, stack6}})
	if err != nil {
		t.Fatalf("final New: %v", err)
	}
	t.Cleanup(ep.Close)
	e := &env{p: p, ep: ep, s: stacktest.New(t, ep, stack4, stack6)}
	c, k := e.dialToStack(t, false)
	transfer(t, k, c, size(4<<20), 6, 60*time.Second)
}

// TestInterfaceGone deletes the veth under an open endpoint with a flow in
// progress: writes must not hang, the goroutines must not spin, and Close
// must return.
func TestInterfaceGone(t *testing.T) {
	e := newEnv(t, ModeAuto)
	c, k := e.dialFromStack(t, false)
	transfer(t, c, k, size(1<<20), 7, 60*time.Second)
	netnstest.Cmd(t, "-n", e.p.A.NS, "link", "del", "dev", e.p.A.Dev)
	// The stack keeps sending into a dead socket until its write fails or
	// times out; neither may hang the endpoint.
	c.SetWriteDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 1<<20)
	for range 4 {
		if _, err := c.Write(buf); err != nil {
			break
		}
	}
	done := make(chan struct{})
	go func() { e.ep.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hangs after the interface went away")
	}
	t.Logf("stats: %+v", e.ep.Stats())
}
