//go:build !race

package client_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/wire"
)

// Hostile descriptor tests: a separate process attaches through the real
// socket speaking the wire protocol itself, and abuses every descriptor the
// engine gave it. They run only without -race (shared-memory atomics across
// processes, golang/go#16206).

// TestHostileFDsDoNotStallEngine: an app that clears O_NONBLOCK on every
// descriptor it received, fills them (eventfd counters to the maximum,
// socket buffers until EAGAIN) and announces it sleeps cannot stall the
// engine: a session to it is still answered, a fresh app attaches and moves
// data within 1 s, and stopping the engine returns.
func TestHostileFDsDoNotStallEngine(t *testing.T) {
	e, sock := startEngine(t, testNS)
	// runs before startEngine's cleanup: a blocked engine fails the test
	// instead of hanging it (the later Close returns at once)
	t.Cleanup(func() { closeWithin(t, e, 10*time.Second) })
	_, addr := startChild(t, "fd-hostile", sock, "")
	cli := attach(t, sock, "good-client")

	// The engine now owes the hostile app an event (accepted): it must ring
	// the app's doorbell without blocking.
	dialed := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		c, err := cli.Dial(ctx, "tcp", addr)
		if err == nil {
			c.Close()
		}
		dialed <- err
	}()
	select {
	case err := <-dialed:
		if err != nil {
			t.Fatalf("dial to the hostile app's listener: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("dial to the hostile app's listener hangs: the engine is blocked on the app's descriptors")
	}

	start := time.Now()
	if err := freshRoundTrip(sock, time.Second); err != nil {
		t.Fatalf("fresh app after the hostile one: %v", err)
	}
	t.Logf("fresh app attached and round-tripped in %v", time.Since(start))
	closeWithin(t, e, 10*time.Second)
}

func closeWithin(t *testing.T, e *session.Engine, d time.Duration) {
	closed := make(chan struct{})
	go func() { e.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(d):
		t.Errorf("engine Close hangs for %v", d)
	}
}

// freshRoundTrip attaches a new app, connects it to itself and moves 64
// bytes there and back, all within d.
func freshRoundTrip(sock string, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	a, err := client.Attach(ctx, client.Options{Socket: sock, Name: "fresh"})
	if err != nil {
		return err
	}
	defer a.Close()
	ln, err := a.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	c, err := a.Dial(ctx, "tcp", ln.Addr().String())
	if err != nil {
		return err
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	c.SetDeadline(dl)
	s, err := ln.Accept()
	if err != nil {
		return err
	}
	defer s.Close()
	s.SetDeadline(dl)
	msg := make([]byte, 64)
	if _, err := c.Write(msg); err != nil {
		return err
	}
	if _, err := io.ReadFull(s, msg); err != nil {
		return err
	}
	if _, err := s.Write(msg); err != nil {
		return err
	}
	_, err = io.ReadFull(c, msg)
	return err
}

// TestHostilePeerCannotStealWakeups: an app with a cut-through session to a
// good server fills every descriptor that came with the session's segment,
// makes it blocking and reads it forever. The good server's other sessions still get every
// wake-up: 300 round trips with a good client, the server never spinning
// (each Read sleeps), none stalls.
func TestHostilePeerCannotStealWakeups(t *testing.T) {
	_, sock := startEngine(t, testNS)
	noSpin := func(o *client.Options) { o.SpinFor = -1 }
	srv := attach(t, sock, "good-server", noSpin)
	ln, err := srv.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	startChild(t, "fd-thief", sock, ln.Addr().String())
	cli := attach(t, sock, "good-client", noSpin)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := cli.Dial(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := make([]byte, 64)
	for i := 0; i < 300; i++ {
		c.SetDeadline(time.Now().Add(2 * time.Second))
		msg[0] = byte(i)
		if _, err := c.Write(msg); err != nil {
			t.Fatalf("round trip %d: write: %v", i, err)
		}
		if _, err := io.ReadFull(c, msg); err != nil {
			t.Fatalf("round trip %d: the server's wake-up was stolen or stalled: %v", i, err)
		}
		if msg[0] != byte(i) {
			t.Fatalf("round trip %d: echoed %d", i, msg[0])
		}
	}
}

// ---- the hostile child (raw wire protocol) ----

func init() {
	rawRoles["fd-hostile"] = runFDChild
	rawRoles["fd-thief"] = runFDChild
	rawRoles["writeto-close"] = func(string) error { return runWriteToClose() }
}

// childCmd is the test binary re-executed as role, not yet started.
func childCmd(role string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"="+role)
	return cmd
}

// runFDChild plays a hostile app without the client library. "fd-hostile"
// listens, then fills and blocks every descriptor it got and sets its
// sleeping flags; "fd-thief" connects to $HS_TEST_ADDR, fills and blocks
// every descriptor that came with the cut-through segment and keeps reading
// them.
func runFDChild(role string) error {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Net: "unixpacket", Name: os.Getenv(envSocket)})
	if err != nil {
		return err
	}
	if err := sendWire(c, &wire.Attach{Name: role}); err != nil {
		return err
	}
	m, fds, err := readWire(c)
	if err != nil {
		return err
	}
	rep, ok := m.(*wire.AttachReply)
	if !ok || rep.Code != wire.OK || len(fds) != wire.AttachFDs {
		return fmt.Errorf("attach: %v, %d fds", m, len(fds))
	}
	mq, err := shm.OpenSegment(fds[0])
	if err != nil {
		return err
	}
	wi := rep.Worker
	// no doorbell for the queues: the child pokes every descriptor itself,
	// whatever each one is for
	evq, err := shm.OpenQueue(mq, int(wi.EvqOff), int(wi.EvqSlots), -1)
	if err != nil {
		return err
	}
	rq, err := shm.OpenQueue(mq, int(wi.ReqOff), int(wi.ReqSlots), -1)
	if err != nil {
		return err
	}
	worker := fds[1:3]
	request := func(m wire.Msg) error {
		var b [wire.QueueMsgMax]byte
		n, err := wire.Encode(b[:], m)
		if err != nil {
			return err
		}
		_ = rq.Send(b[:n]) // queued even when the ring fails
		for _, fd := range worker {
			poke(fd)
		}
		return nil
	}
	event := func() (wire.Msg, error) {
		b := make([]byte, shm.MsgSize)
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
			n, err := evq.TryRecv(b)
			if err != nil {
				return nil, err
			}
			if n > 0 {
				return wire.Decode(b[:n])
			}
			time.Sleep(time.Millisecond) // a child polling; nobody waits on it
		}
		return nil, errors.New("no event within 5s")
	}
	switch role {
	case "fd-hostile":
		if err := request(&wire.Listen{Ctx: 1, Addr: wire.Addr{Proto: wire.TCP, IP: netip.MustParseAddr("127.0.0.1")}}); err != nil {
			return err
		}
		m, err := event()
		if err != nil {
			return err
		}
		b, ok := m.(*wire.Bound)
		if !ok || b.Code != wire.OK {
			return fmt.Errorf("listen: %v", m)
		}
		for _, fd := range worker {
			if err := saturate(fd); err != nil {
				return err
			}
		}
		// announce sleep everywhere the engine looks before it wakes us
		if w, err := wire.Word(mq.Bytes(), int(wi.CtlOff)+wire.CtlSleeping); err == nil {
			w.Store(1)
		}
		if w, err := wire.Word(mq.Bytes(), int(wi.EvqOff)+144); err == nil { // the queue's rwait word
			w.Store(1)
		}
		fmt.Println("ready", netip.AddrPortFrom(b.Local.IP, b.Local.Port))
	case "fd-thief":
		dst, err := netip.ParseAddrPort(os.Getenv(envAddr))
		if err != nil {
			return err
		}
		if err := request(&wire.Connect{Ctx: 1, Remote: wire.Addr{Proto: wire.TCP, IP: dst.Addr(), Port: dst.Port()}}); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		m, segFDs, err := readWire(c)
		if err != nil {
			return err
		}
		if _, ok := m.(*wire.AddSegment); !ok || len(segFDs) < 2 {
			return fmt.Errorf("expected add-segment with a wake descriptor, got %v with %d fds", m, len(segFDs))
		}
		if m, err := event(); err != nil {
			return err
		} else if cm, ok := m.(*wire.Connected); !ok || cm.Code != wire.OK {
			return fmt.Errorf("connect: %v", m)
		}
		for _, fd := range segFDs[1:] {
			if err := saturate(fd); err != nil {
				return err
			}
			go steal(fd)
		}
		fmt.Println("ready -")
	default:
		return fmt.Errorf("unknown role %q", role)
	}
	select {} // until killed
}

func isSocket(fd int) bool {
	_, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	return err == nil
}

// poke wakes whoever waits on the other side of fd (an eventfd or a
// doorbell end), like a normal ring.
func poke(fd int) {
	if isSocket(fd) {
		unix.Sendto(fd, []byte{1}, unix.MSG_DONTWAIT, nil)
		return
	}
	var one [8]byte
	one[0] = 1
	unix.Write(fd, one[:])
}

// saturate fills fd as far as it goes and makes it blocking: an eventfd's
// counter to its maximum, a socket's buffer until EAGAIN.
func saturate(fd int) error {
	if isSocket(fd) {
		for i := 0; i < 1<<20; i++ {
			if err := unix.Sendto(fd, []byte{1}, unix.MSG_DONTWAIT, nil); err != nil {
				break
			}
		}
	} else {
		var b [8]byte
		unix.Read(fd, b[:]) // counter to 0 (non-blocking still)
		for i := range b {
			b[i] = 0xff
		}
		b[0] = 0xfe // 0xfffffffffffffffe, the largest value a counter holds
		if _, err := unix.Write(fd, b[:]); err != nil {
			return fmt.Errorf("saturate eventfd: %w", err)
		}
	}
	return unix.SetNonblock(fd, false)
}

// steal reads fd forever, blocking: an eventfd shared with a peer loses the
// wake-ups meant for that peer.
func steal(fd int) {
	unix.SetNonblock(fd, false)
	var b [64]byte
	for {
		if _, err := unix.Read(fd, b[:]); err != nil && err != unix.EINTR {
			return
		}
	}
}

func sendWire(c *net.UnixConn, m wire.Msg) error {
	var b [wire.SocketMsgMax]byte
	n, err := wire.Encode(b[:], m)
	if err != nil {
		return err
	}
	_, err = c.Write(b[:n])
	return err
}

func readWire(c *net.UnixConn) (wire.Msg, []int, error) {
	b := make([]byte, wire.SocketMsgMax)
	oob := make([]byte, unix.CmsgSpace(4*wire.MaxFDs))
	n, oobn, _, _, err := c.ReadMsgUnix(b, oob)
	if err != nil {
		return nil, nil, err
	}
	var fds []int
	if cms, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
		for _, cm := range cms {
			if f, err := unix.ParseUnixRights(&cm); err == nil {
				fds = append(fds, f...)
			}
		}
	}
	m, err := wire.Decode(b[:n])
	return m, fds, err
}

// ---- point 4: the client never faults ----

// TestWriteToSurvivesAppClose: io.Copy from a session into a slow writer
// while App.Close runs. The writer touches the slice it was given after
// App.Close returned: the segment must still be mapped (the old client
// unmapped it under the writer: "unexpected fault address"). In a child
// process, so a fault fails the test instead of killing the test binary.
func TestWriteToSurvivesAppClose(t *testing.T) {
	cmd := childCmd("writeto-close")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, tail(string(out), 3000))
	}
	if !strings.Contains(string(out), "ok writeto-close") {
		t.Fatalf("child did not finish:\n%s", tail(string(out), 3000))
	}
}

// tail is the end of a child's output, from its fatal error if it has one.
func tail(s string, n int) string {
	if i := strings.Index(s, "fatal error"); i >= 0 {
		s = s[i:]
		if len(s) > n {
			return s[:n] + "..."
		}
		return s
	}
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// runWriteToClose repeats: app A accepts a session from app B, io.Copy's it
// into a writer that, on its first Write, waits for A.Close to return and
// then reads every byte of the slice it got.
func runWriteToClose() error {
	dir, err := os.MkdirTemp("", "hs")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	e, err := session.New(session.Config{RunDir: filepath.Join(dir, "run"), Logf: func(string, ...any) {}})
	if err != nil {
		return err
	}
	defer e.Close()
	sock, err := e.AddNamespace(testNS)
	if err != nil {
		return err
	}
	ctx := context.Background()
	for i := 0; i < 10; i++ {
		a, err := client.Attach(ctx, client.Options{Socket: sock, Name: "copier"})
		if err != nil {
			return err
		}
		b, err := client.Attach(ctx, client.Options{Socket: sock, Name: "writer"})
		if err != nil {
			return err
		}
		ln, err := a.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		bc, err := b.Dial(ctx, "tcp", ln.Addr().String())
		if err != nil {
			return err
		}
		ac, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			buf := make([]byte, 32<<10)
			for {
				if _, err := bc.Write(buf); err != nil {
					return
				}
			}
		}()
		sw := &slowWriter{entered: make(chan struct{}), closed: make(chan struct{})}
		copied := make(chan error, 1)
		go func() { _, err := io.Copy(sw, ac); copied <- err }()
		select {
		case <-sw.entered:
		case <-time.After(5 * time.Second):
			return errors.New("io.Copy never reached the writer")
		}
		a.Close()
		close(sw.closed)
		select {
		case <-copied:
		case <-time.After(5 * time.Second):
			return errors.New("io.Copy did not return after App.Close")
		}
		b.Close()
	}
	fmt.Println("ok writeto-close")
	return nil
}

// slowWriter's first Write waits until the test closed the app, then reads
// the whole slice (a fault if its memory was unmapped).
type slowWriter struct {
	entered, closed chan struct{}
	first           bool
	sum             [32]byte
}

func (w *slowWriter) Write(p []byte) (int, error) {
	if !w.first {
		w.first = true
		close(w.entered)
		<-w.closed
	}
	w.sum = sha256.Sum256(p)
	return len(p), nil
}
