//go:build !race

// Cross-process tests and benchmarks. Excluded from -race builds: the race
// detector cannot see the happens-before edges carried by atomics in a
// MAP_SHARED mapping used by two processes (golang/go#16206).

package shm

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Child processes are this test binary re-executed with -test.run selecting
// TestShmChild and HOSTSTACK_SHM_CHILD naming the role. They inherit
// fd 3 = segment memfd, fd 4 = reader eventfd, fd 5 = writer eventfd, and
// get their parameters in HOSTSTACK_SHM_ARGS (key=value,...). They print
// "READY" once attached and "RESULT k=v ..." at the end on stdout.
const (
	childEnv = "HOSTSTACK_SHM_CHILD"
	argsEnv  = "HOSTSTACK_SHM_ARGS"
)

type childArgs map[string]int

func parseArgs(s string) childArgs {
	a := childArgs{}
	for _, kv := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(kv, "=")
		n, _ := strconv.Atoi(v)
		a[k] = n
	}
	return a
}

func (a childArgs) String() string {
	var parts []string
	for k, v := range a {
		parts = append(parts, fmt.Sprintf("%s=%d", k, v))
	}
	return strings.Join(parts, ",")
}

var childRoles = map[string]func(seg *Segment, rEfd, wEfd int, a childArgs, out io.Writer) error{
	"fifo-consumer": childFifoConsumer,
	"fifo-producer": childFifoProducer,
	"queue-echo":    childQueueEcho,
	"efd-echo":      childEfdEcho,
	"bell-echo":     childBellEcho,
}

// childBellEcho answers every ring of its doorbell end (rEfd) by ringing
// back through it, a["n"] times.
func childBellEcho(_ *Segment, bell, _ int, a childArgs, out io.Writer) error {
	fmt.Fprintln(out, "READY")
	out.(*bufio.Writer).Flush()
	for i := 0; i < a["n"]; i++ {
		if err := WaitBell(bell, time.Now().Add(stallTimeout)); err != nil {
			return err
		}
		if err := Ring(bell); err != nil {
			return err
		}
	}
	return nil
}

// childEfdEcho answers every wake-up on the reader eventfd with one on the
// writer eventfd, a["n"] times, waiting with WaitFD (netpoller=0) or by
// reading through an os.File (netpoller=1).
func childEfdEcho(_ *Segment, rEfd, wEfd int, a childArgs, out io.Writer) error {
	wait := func() error { return WaitFD(rEfd, time.Now().Add(stallTimeout)) }
	if a["netpoller"] != 0 {
		unix.SetNonblock(rEfd, true)
		f := os.NewFile(uintptr(rEfd), "efd")
		wait = func() error { var b [8]byte; _, err := f.Read(b[:]); return err }
	}
	fmt.Fprintln(out, "READY")
	out.(*bufio.Writer).Flush()
	for i := 0; i < a["n"]; i++ {
		if err := wait(); err != nil {
			return err
		}
		if err := Signal(wEfd); err != nil {
			return err
		}
	}
	return nil
}

// TestShmChild is the entry point of child processes; it is skipped in a
// normal run.
func TestShmChild(t *testing.T) {
	role := os.Getenv(childEnv)
	if role == "" {
		t.Skip("only runs as a child process")
	}
	fn := childRoles[role]
	if fn == nil {
		t.Fatalf("unknown child role %q", role)
	}
	seg, err := OpenSegment(3)
	if err != nil {
		t.Fatal(err)
	}
	defer seg.Close()
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	if err := fn(seg, 4, 5, parseArgs(os.Getenv(argsEnv)), out); err != nil {
		t.Fatal(err)
	}
}

// childFifoConsumer reads the fifo at off until EOF and reports bytes and hash.
func childFifoConsumer(seg *Segment, rEfd, wEfd int, a childArgs, out io.Writer) error {
	f, err := OpenFifo(seg, a["off"], a["cap"])
	if err != nil {
		return err
	}
	e := &endpoint{f: f, readerEfd: rEfd, writerEfd: wEfd, spin: time.Duration(a["spin"])}
	fmt.Fprintln(out, "READY")
	out.(*bufio.Writer).Flush()
	h := sha256.New()
	hash := a["hash"] != 0
	buf := make([]byte, max(a["rbuf"], 1))
	total := 0
	for {
		var n int
		if a["peek"] != 0 {
			n, err = peekConsume(e, h, hash)
		} else {
			n, err = e.read(buf)
			if hash {
				h.Write(buf[:n])
			}
		}
		total += n
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "RESULT n=%d sha=%s\n", total, hex.EncodeToString(h.Sum(nil)))
	return nil
}

// peekConsume is the zero-copy read path: hash straight from the ring.
func peekConsume(e *endpoint, h io.Writer, hash bool) (int, error) {
	for {
		a, b, err := e.f.Peek()
		if err != nil {
			return 0, err
		}
		if n := len(a) + len(b); n > 0 {
			if hash {
				h.Write(a)
				h.Write(b)
			}
			if err := e.f.Consume(n); err != nil {
				return 0, err
			}
			if e.f.TakeWriterWaiting() {
				Signal(e.writerEfd)
			}
			return n, nil
		}
		if err := e.waitReadable(); err != nil {
			return 0, err
		}
	}
}

// childFifoProducer writes a["n"] bytes of newStream(seed) in chunks of
// a["chunk"], then closes; it reports a line every a["report"] bytes.
func childFifoProducer(seg *Segment, rEfd, wEfd int, a childArgs, out io.Writer) error {
	f, err := OpenFifo(seg, a["off"], a["cap"])
	if err != nil {
		return err
	}
	e := &endpoint{f: f, readerEfd: rEfd, writerEfd: wEfd, spin: time.Duration(a["spin"])}
	fmt.Fprintln(out, "READY")
	out.(*bufio.Writer).Flush()
	gen := newStream(uint64(a["seed"]))
	block := make([]byte, 1<<20)
	for left := a["n"]; left > 0; {
		m := min(left, len(block))
		gen.fill(block[:m])
		for c := block[:m]; len(c) > 0; {
			k := min(len(c), a["chunk"])
			if err := e.writeAll(c[:k]); err != nil {
				return err
			}
			c = c[k:]
		}
		left -= m
	}
	return e.closeWrite()
}

// childQueueEcho echoes messages from the queue at "in" to the queue at
// "out" until it receives a 1-byte message.
func childQueueEcho(seg *Segment, rEfd, wEfd int, a childArgs, out io.Writer) error {
	in, err := OpenQueue(seg, a["in"], a["slots"], rEfd)
	if err != nil {
		return err
	}
	back, err := OpenQueue(seg, a["out"], a["slots"], wEfd)
	if err != nil {
		return err
	}
	in.Spin = time.Duration(a["spin"])
	fmt.Fprintln(out, "READY")
	out.(*bufio.Writer).Flush()
	buf := make([]byte, MsgSize)
	for {
		n, err := in.Recv(buf, time.Now().Add(stallTimeout))
		if err != nil {
			return err
		}
		if n == 1 {
			return nil
		}
		if err := back.Send(buf[:n]); err != nil {
			return err
		}
	}
}

// child is a running child process.
type child struct {
	cmd    *exec.Cmd
	out    *bufio.Reader
	done   chan struct{} // closed when the process exited
	err    error         // exit status, valid after done
	exited atomic.Bool
	stderr bytes.Buffer
}

// startChild starts role with the segment and the two eventfds. onExit runs
// (in the waiting goroutine) right after the child exits; tests use it to
// wake the parent's blocked waits.
func startChild(t testing.TB, role string, seg *Segment, rEfd, wEfd int, a childArgs, onExit func()) *child {
	t.Helper()
	var files []*os.File
	for _, fd := range []int{seg.FD(), rEfd, wEfd} {
		d, err := unix.Dup(fd)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, os.NewFile(uintptr(d), "shm"))
	}
	args := []string{"-test.run=^TestShmChild$", "-test.count=1"}
	if p := os.Getenv("HOSTSTACK_SHM_CHILD_CPUPROFILE"); p != "" {
		args = append(args, "-test.cpuprofile="+p)
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), childEnv+"="+role, argsEnv+"="+a.String())
	cmd.ExtraFiles = files
	c := &child{cmd: cmd, done: make(chan struct{})}
	cmd.Stderr = &c.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c.out = bufio.NewReader(stdout)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		f.Close()
	}
	go func() {
		// drain stdout into a pipe the test reads line by line; Wait after EOF
		c.err = waitAfterEOF(cmd, stdout)
		c.exited.Store(true)
		if onExit != nil {
			onExit()
		}
		close(c.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-c.done
	})
	return c
}

// waitAfterEOF waits for the process only; stdout is read by the test.
func waitAfterEOF(cmd *exec.Cmd, _ io.Reader) error {
	ps, err := cmd.Process.Wait()
	if err != nil {
		return err
	}
	if !ps.Success() {
		return fmt.Errorf("child %s", ps)
	}
	return nil
}

// line reads the next stdout line starting with prefix, with a deadline.
func (c *child) line(t testing.TB, prefix string) string {
	t.Helper()
	type res struct {
		s   string
		err error
	}
	ch := make(chan res, 1)
	go func() {
		for {
			s, err := c.out.ReadString('\n')
			if err != nil {
				ch <- res{s, err}
				return
			}
			if strings.HasPrefix(s, prefix) {
				ch <- res{strings.TrimSpace(s), nil}
				return
			}
		}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("child: waiting for %q: %v; stderr:\n%s", prefix, r.err, c.stderr.String())
		}
		return r.s
	case <-time.After(stallTimeout):
		t.Fatalf("child: no %q line within %v", prefix, stallTimeout)
		return ""
	}
}

func (c *child) wait(t testing.TB) {
	t.Helper()
	select {
	case <-c.done:
		if c.err != nil {
			t.Fatalf("child failed: %v; stderr:\n%s", c.err, c.stderr.String())
		}
	case <-time.After(stallTimeout):
		t.Fatal("child did not exit")
	}
}

func resultField(line, key string) string {
	for _, f := range strings.Fields(line) {
		if k, v, ok := strings.Cut(f, "="); ok && k == key {
			return v
		}
	}
	return ""
}

// TestCrossProcessStream streams 256 MiB from this process to a child
// through a 4 MiB fifo in a memfd passed with ExtraFiles (the child opens it
// with OpenSegment, which checks the seals), both with the copying Read and
// the zero-copy Peek/Consume reader, and compares SHA-256 of both ends.
func TestCrossProcessStream(t *testing.T) {
	total := 256 << 20
	if testing.Short() {
		total = 32 << 20
	}
	for _, peek := range []int{0, 1} {
		t.Run(fmt.Sprintf("peek=%d", peek), func(t *testing.T) {
			const capacity = 4 << 20
			seg := newSeg(t, FifoFootprint(capacity))
			f, err := InitFifo(seg, 0, capacity)
			if err != nil {
				t.Fatal(err)
			}
			rEfd, wEfd := mustEventFD(t), mustEventFD(t)
			prod := &endpoint{f: f, readerEfd: rEfd, writerEfd: wEfd, spin: 20 * time.Microsecond}
			c := startChild(t, "fifo-consumer", seg, rEfd, wEfd,
				childArgs{"off": 0, "cap": capacity, "hash": 1, "rbuf": 64 << 10, "peek": peek, "spin": 20000},
				func() { Signal(wEfd) })
			prod.alive = func() error {
				if c.exited.Load() {
					return errors.New("consumer exited early")
				}
				return nil
			}
			c.line(t, "READY")
			h := sha256.New()
			gen := newStream(42)
			block := make([]byte, 1<<20)
			chunks := []int{1, 64, 1000, 4096, 65536, 300000}
			for left, i := total, 0; left > 0; i++ {
				m := min(left, len(block))
				gen.fill(block[:m])
				h.Write(block[:m])
				// vary write sizes, and use WriteVec for some
				for b := block[:m]; len(b) > 0; {
					k := min(len(b), chunks[i%len(chunks)]*(1+len(b)%3))
					if err := prod.writeAll(b[:k]); err != nil {
						t.Fatal(err)
					}
					b = b[k:]
				}
				left -= m
			}
			if err := prod.closeWrite(); err != nil {
				t.Fatal(err)
			}
			res := c.line(t, "RESULT")
			c.wait(t)
			if n := resultField(res, "n"); n != strconv.Itoa(total) {
				t.Fatalf("child read %s bytes, want %d", n, total)
			}
			if got, want := resultField(res, "sha"), hex.EncodeToString(h.Sum(nil)); got != want {
				t.Fatalf("hash mismatch: child %s, parent %s", got, want)
			}
		})
	}
}

// TestCrossProcessProducerKilled: the child produces an endless stream, the
// parent reads some of it and SIGKILLs the child. The parent's blocked read
// must end because the child is gone (process wait wakes it through the
// eventfd), never hang, and everything it read must be a correct prefix.
func TestCrossProcessProducerKilled(t *testing.T) {
	const capacity = 1 << 20
	seg := newSeg(t, FifoFootprint(capacity))
	f, err := InitFifo(seg, 0, capacity)
	if err != nil {
		t.Fatal(err)
	}
	rEfd, wEfd := mustEventFD(t), mustEventFD(t)
	c := startChild(t, "fifo-producer", seg, rEfd, wEfd,
		childArgs{"off": 0, "cap": capacity, "n": 1 << 40, "chunk": 1 << 16, "seed": 7, "spin": 20000},
		func() { Signal(rEfd) })
	errDead := errors.New("producer died")
	cons := &endpoint{f: f, readerEfd: rEfd, writerEfd: wEfd, spin: 20 * time.Microsecond,
		alive: func() error {
			if c.exited.Load() {
				return errDead
			}
			return nil
		}}
	c.line(t, "READY")
	check := newStream(7)
	want := make([]byte, 1<<20)
	got := make([]byte, 1<<20)
	total, killed := 0, false
	for {
		// read one block-aligned megabyte and compare with the generator
		n := 0
		for n < len(got) {
			k, err := cons.read(got[n:])
			n += k
			if err != nil {
				if !errors.Is(err, errDead) {
					t.Fatalf("read after %d bytes: %v", total+n, err)
				}
				if !killed {
					t.Fatal("reader saw death before the kill")
				}
				// the partial block must still be a correct prefix
				check.fill(want)
				if !bytes.Equal(got[:n], want[:n]) {
					t.Fatal("data before the kill corrupted")
				}
				if f.WriteClosed() {
					t.Fatal("killed producer shows EOF")
				}
				t.Logf("read %d bytes; producer killed; reader woke up", total+n)
				return
			}
		}
		check.fill(want)
		if !bytes.Equal(got, want) {
			t.Fatalf("stream corrupted at block %d", total>>20)
		}
		total += n
		if total >= 64<<20 && !killed {
			if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			killed = true
		}
	}
}

// TestCrossProcessConsumerKilled: the parent produces into a small fifo, the
// child consumer is killed; the parent's writer, blocked on a full fifo,
// is woken by the process exit and stops.
func TestCrossProcessConsumerKilled(t *testing.T) {
	const capacity = 64 << 10
	seg := newSeg(t, FifoFootprint(capacity))
	f, err := InitFifo(seg, 0, capacity)
	if err != nil {
		t.Fatal(err)
	}
	rEfd, wEfd := mustEventFD(t), mustEventFD(t)
	c := startChild(t, "fifo-consumer", seg, rEfd, wEfd,
		childArgs{"off": 0, "cap": capacity, "rbuf": 4096, "spin": 0}, func() { Signal(wEfd) })
	errDead := errors.New("consumer died")
	prod := &endpoint{f: f, readerEfd: rEfd, writerEfd: wEfd, alive: func() error {
		if c.exited.Load() {
			return errDead
		}
		return nil
	}}
	c.line(t, "READY")
	buf := make([]byte, 8192)
	var once sync.Once
	for i := 0; ; i++ {
		if i == 1000 {
			once.Do(func() { c.cmd.Process.Signal(syscall.SIGKILL) })
		}
		if err := prod.writeAll(buf); err != nil {
			if !errors.Is(err, errDead) || i < 1000 {
				t.Fatalf("write %d: %v", i, err)
			}
			return
		}
	}
}

// TestCrossProcessQueuePingPong: numbered messages bounce through two queues
// between processes with blocking receives (no spin: every message goes
// through the waiting flag and the eventfd).
func TestCrossProcessQueuePingPong(t *testing.T) {
	rounds := 20000
	for _, spin := range []int{0, 20000} {
		seg := newSeg(t, 2*QueueFootprint(16))
		ab := newQueuePair(t, seg, 0, 16)
		ba := newQueuePair(t, seg, QueueFootprint(16), 16)
		ba.recv.Spin = time.Duration(spin)
		c := startChild(t, "queue-echo", seg, ab.recvBell, ba.sendBell,
			childArgs{"in": 0, "out": QueueFootprint(16), "slots": 16, "spin": spin}, nil)
		c.line(t, "READY")
		buf := make([]byte, MsgSize)
		for i := 0; i < rounds; i++ {
			msg := []byte(fmt.Sprintf("ping %d", i))
			if err := ab.send.Send(msg); err != nil {
				t.Fatal(err)
			}
			n, err := ba.recv.Recv(buf, time.Now().Add(stallTimeout))
			if err != nil || string(buf[:n]) != string(msg) {
				t.Fatalf("spin %d round %d: %q %v", spin, i, buf[:n], err)
			}
		}
		ab.send.Send([]byte{0})
		c.wait(t)
	}
}

// ---- benchmarks ----

// benchCrossFifo streams b.N writes of size bytes to a child consumer.
func benchCrossFifo(b *testing.B, size int, vec bool) {
	peek := 0
	if os.Getenv("HOSTSTACK_SHM_BENCH_PEEK") != "" {
		peek = 1
	}
	const capacity = 4 << 20
	seg := newSeg(b, FifoFootprint(capacity))
	f, err := InitFifo(seg, 0, capacity)
	if err != nil {
		b.Fatal(err)
	}
	rEfd, wEfd := mustEventFD(b), mustEventFD(b)
	c := startChild(b, "fifo-consumer", seg, rEfd, wEfd,
		childArgs{"off": 0, "cap": capacity, "rbuf": 256 << 10, "spin": 50000, "peek": peek}, func() { Signal(wEfd) })
	prod := &endpoint{f: f, readerEfd: rEfd, writerEfd: wEfd, spin: 50 * time.Microsecond}
	c.line(b, "READY")
	buf := make([]byte, size)
	bufs := [][]byte{buf[:size/2], buf[size/2:]}
	b.SetBytes(int64(size))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if vec {
			for n, want := 0, size; n < want; {
				k, err := f.WriteVec(bufs)
				if err != nil {
					b.Fatal(err)
				}
				if k == size {
					if f.TakeReaderWaiting() {
						Signal(rEfd)
					}
					break
				}
				// partial: finish with the blocking path
				rest := append([]byte{}, buf[k:]...)
				if err := prod.writeAll(rest); err != nil {
					b.Fatal(err)
				}
				break
			}
		} else if err := prod.writeAll(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := prod.closeWrite(); err != nil {
		b.Fatal(err)
	}
	res := c.line(b, "RESULT")
	b.StopTimer()
	c.wait(b)
	if resultField(res, "n") != strconv.Itoa(b.N*size) {
		b.Fatalf("child got %s bytes, want %d", resultField(res, "n"), b.N*size)
	}
}

func BenchmarkFifoCrossProcess(b *testing.B) {
	for _, size := range []int{64, 1 << 10, 16 << 10, 64 << 10} {
		b.Run(sizeName(size), func(b *testing.B) { benchCrossFifo(b, size, false) })
	}
	b.Run("writevec-16KiB", func(b *testing.B) { benchCrossFifo(b, 16<<10, true) })
}

// BenchmarkQueueRoundTripCrossProcess: one op = one message there and back
// through two queues between two processes.
func BenchmarkQueueRoundTripCrossProcess(b *testing.B) {
	for _, mode := range []struct {
		name string
		spin time.Duration
	}{{"spin", time.Second}, {"blocking", 0}, {"default", DefaultSpin}} {
		b.Run(mode.name, func(b *testing.B) {
			seg := newSeg(b, 2*QueueFootprint(16))
			ab := newQueuePair(b, seg, 0, 16)
			ba := newQueuePair(b, seg, QueueFootprint(16), 16)
			ba.recv.Spin = mode.spin
			c := startChild(b, "queue-echo", seg, ab.recvBell, ba.sendBell,
				childArgs{"in": 0, "out": QueueFootprint(16), "slots": 16, "spin": int(mode.spin)}, nil)
			c.line(b, "READY")
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
			c.wait(b)
		})
	}
}

// BenchmarkEventfdPingPongCrossProcess: one op = an eventfd wake-up to a
// child process and back; the child waits with poll(2) (WaitFD) or through
// Go's netpoller; the parent always with WaitFD.
func BenchmarkEventfdPingPongCrossProcess(b *testing.B) {
	for _, np := range []int{0, 1} {
		b.Run(map[int]string{0: "poll", 1: "netpoller"}[np], func(b *testing.B) {
			seg := newSeg(b, 4096)
			a2b, b2a := mustEventFD(b), mustEventFD(b)
			c := startChild(b, "efd-echo", seg, a2b, b2a, childArgs{"n": b.N, "netpoller": np}, nil)
			c.line(b, "READY")
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				Signal(a2b)
				if err := WaitFD(b2a, time.Now().Add(stallTimeout)); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			c.wait(b)
		})
	}
}

// BenchmarkDoorbellPingPongCrossProcess: one op = a doorbell ring to a child
// process and back (each side polls its own end), to compare with
// BenchmarkEventfdPingPongCrossProcess/poll.
func BenchmarkDoorbellPingPongCrossProcess(b *testing.B) {
	seg := newSeg(b, 4096)
	mine, theirs := mustDoorbell(b)
	c := startChild(b, "bell-echo", seg, theirs, theirs, childArgs{"n": b.N}, nil)
	c.line(b, "READY")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		Ring(mine)
		if err := WaitBell(mine, time.Now().Add(stallTimeout)); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	c.wait(b)
}
