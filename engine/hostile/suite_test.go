//go:build !race

package hostile

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hoststack/hoststack/client"
)

// Bounds of the suite. Nothing waits without one: a hung engine fails the
// attack that hung it, it does not hang the test binary.
const (
	probeBudget  = time.Second      // a fresh app attaches and moves data
	attackBudget = 15 * time.Second // the hostile app runs its attack
	resetBudget  = 3 * time.Second  // the hostile app's peers see their sessions end
	usageBudget  = 5 * time.Second  // goroutines, threads, fds back to the baseline
	stopBudget   = 5 * time.Second  // SIGTERM stops the engine
	// progressBudget: each good transfer moves progressBytes more (they
	// are paced at 32 MB/s each).
	progressBudget = 2 * time.Second
	progressBytes  = 1 << 20
	// threadSlack: Go keeps the OS threads it created for blocking system
	// calls as idle threads; an attack may leave a few behind without
	// anything leaking.
	threadSlack = 6
)

type attackCase struct {
	name string
	// anyEnd: the attack corrupts the fifos the good server reads, so its
	// sessions with the hostile app may end in a corruption error or a
	// forged end of stream rather than a reset; they must end all the same.
	anyEnd bool
}

var attackCases = []attackCase{
	{name: "shm-headers", anyEnd: true},
	{name: "blocking-fds"},
	{name: "steal-wakeup"},
	{name: "malformed"},
	{name: "wrong-fds"},
	{name: "quotas"},
	{name: "names-ports"},
	{name: "sigkill"},
	{name: "event-bits"},
}

// TestHostileApp runs each attack family against its own engine process
// while a good pair moves hash-checked data through it (cut-through and
// through the kernel transport), and checks after each: a fresh app
// attaches and moves data within a second (under attack and after the
// hostile app's death), the hostile app's peers see its sessions reset,
// the good transfers complete intact, the engine's goroutines, threads and
// descriptors return to their baseline, and SIGTERM stops it.
func TestHostileApp(t *testing.T) {
	for _, c := range attackCases {
		t.Run(c.name, func(t *testing.T) { runAttack(t, c) })
	}
}

func runAttack(t *testing.T, ac attackCase) {
	dir, err := os.MkdirTemp("", "hsh") // short: unix socket paths are short
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sink := startSink(t)

	eng := startProc(t, dir, "engine", envRunDir+"="+filepath.Join(dir, "run"))
	line, ok := eng.waitLine(hasPrefix("ready "), 10*time.Second)
	if !ok {
		t.Fatal("the engine did not start")
	}
	sock := strings.TrimPrefix(line, "ready ")
	srv := startProc(t, dir, "good-server", envSocket+"="+sock)
	if line, ok = srv.waitLine(hasPrefix("ready "), 10*time.Second); !ok {
		t.Fatal("the good server did not start")
	}
	port := strings.TrimPrefix(line, "ready ")
	cli := startProc(t, dir, "good-client", envSocket+"="+sock, envServer+"="+port, envSink+"="+strconv.Itoa(sink.port()))
	if _, ok := cli.waitLine(hasPrefix("ready"), 10*time.Second); !ok {
		t.Fatal("the good client did not start")
	}
	probes := 0
	probe := func(when string) {
		probes++
		start := time.Now()
		if err := probeEngine(sock, probes); err != nil {
			t.Errorf("%s: %s: %v", ac.name, when, err)
			return
		}
		t.Logf("%s: a fresh app attached and echoed 64 KiB in %v", when, time.Since(start).Round(time.Microsecond))
	}
	probe("before the attack")
	if t.Failed() {
		t.FailNow()
	}
	base, err := eng.settledUsage()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("engine baseline: %+v", base)

	hos := startProc(t, dir, "hostile", envSocket+"="+sock, envAttack+"="+ac.name, envServer+"="+port,
		envSink+"="+strconv.Itoa(sink.port()), envLow+"="+strconv.Itoa(freeLowPort()))
	line, ok = hos.waitLine(hasPrefix("sessions "), 10*time.Second)
	if !ok {
		t.Fatalf("%s: the hostile app did not set up its sessions", ac.name)
	}
	var nct, ntp int
	fmt.Sscanf(line, "sessions %d %d", &nct, &ntp)
	if _, ok := hos.waitLine(hasPrefix("attacked"), attackBudget); !ok {
		t.Errorf("%s: the hostile app did not complete its attack within %v (the engine stopped answering it)", ac.name, attackBudget)
	}
	for _, l := range hos.all(func(string) bool { return true }) {
		switch {
		case !strings.HasPrefix(l, "check "):
			t.Logf("hostile: %s", l)
		case strings.Contains(l, " FAIL "):
			t.Errorf("%s: %s", ac.name, strings.TrimPrefix(l, "check "))
		default:
			t.Logf("hostile: %s", l)
		}
	}
	probe("under attack")
	if err := cli.progress(progressBudget); err != nil {
		t.Errorf("%s: under attack: %v", ac.name, err)
	}

	hos.kill()
	probe("after the hostile app died")
	// The hostile app held sessions with the good server (and whatever it
	// opened during the attack) and through the transport: every one ends.
	sessionEnd := hasPrefix("end reset")
	if ac.anyEnd {
		// any end: a corrupted end-of-stream flag makes a clean end
		// ("done": the good client's own transfer is still running)
		sessionEnd = func(l string) bool { return strings.HasPrefix(l, "end ") || strings.HasPrefix(l, "done ") }
	}
	if got, ok := srv.waitCount(sessionEnd, nct, resetBudget); !ok {
		t.Errorf("%s: the good server saw %d of the hostile app's %d sessions end with a reset within %v (ends: %q)",
			ac.name, got, nct, resetBudget, srv.all(hasPrefix("end ")))
	}
	if got, ok := sink.waitEnds(ac.anyEnd, ntp, resetBudget); !ok {
		t.Errorf("%s: the TCP peer saw %d of the hostile app's %d transport sessions reset within %v", ac.name, got, ntp, resetBudget)
	}

	// The good transfers ran through all of it: stop them and check.
	cli.stdin.Close()
	for _, tr := range []string{"cut-through", "transport"} {
		l, ok := cli.waitLine(hasPrefix(tr+" "), 2*stallLimit+time.Second)
		switch {
		case !ok:
			t.Errorf("%s: the good %s transfer did not complete", ac.name, tr)
		case !strings.HasPrefix(l, tr+" ok "):
			t.Errorf("%s: the good %s transfer: %s", ac.name, tr, l)
		default:
			t.Logf("good %s transfer: %s bytes intact", tr, strings.TrimPrefix(l, tr+" ok "))
		}
	}

	// Nothing of the hostile app remains in the engine.
	var now usage
	deadline := time.Now().Add(usageBudget)
	for {
		now, err = eng.usage(time.Second)
		if err == nil && now.goroutines <= base.goroutines && now.fds <= base.fds && now.threads <= base.threads+threadSlack {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: the engine did not return to its baseline within %v: now %+v, baseline %+v (%v)",
				ac.name, usageBudget, now, base, err)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	eng.stop(t, ac.name)
}

// probeEngine attaches a fresh app, listens, dials itself and echoes 64 KiB
// through the engine, all within probeBudget.
func probeEngine(sock string, n int) error {
	res := make(chan error, 1)
	closed := make(chan error, 1)
	go func() {
		app, err := probeOnce(sock, n)
		res <- err
		if app != nil {
			closed <- app.Close()
		} else {
			closed <- nil
		}
	}()
	select {
	case err := <-res:
		if err != nil {
			return err
		}
	case <-time.After(probeBudget):
		return fmt.Errorf("a fresh app did not attach and move data within %v", probeBudget)
	}
	select {
	case <-closed:
		return nil
	case <-time.After(3 * time.Second):
		return errors.New("a fresh app moved data but could not detach within 3s")
	}
}

func probeOnce(sock string, n int) (*client.App, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), probeBudget)
	defer cancel()
	app, err := client.Attach(ctx, client.Options{Socket: sock, Name: fmt.Sprintf("probe-%d", n), Scope: client.ScopeLocal})
	if err != nil {
		return nil, fmt.Errorf("fresh app: %w", err)
	}
	ln, err := app.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return app, fmt.Errorf("fresh app: listen: %w", err)
	}
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		io.Copy(c, c)
	}()
	c, err := app.Dial(ctx, "tcp", ln.Addr().String())
	if err != nil {
		return app, fmt.Errorf("fresh app: dial: %w", err)
	}
	defer c.Close()
	c.SetDeadline(start.Add(probeBudget))
	data := make([]byte, 64<<10)
	rand.Read(data)
	go func() {
		c.Write(data)
		c.(interface{ CloseWrite() error }).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		return app, fmt.Errorf("fresh app: echo: %w", err)
	}
	if !bytes.Equal(got, data) {
		return app, fmt.Errorf("fresh app: echo returned %d bytes that differ", len(got))
	}
	return app, nil
}

// freeLowPort is a privileged port nothing listens on (0: none found).
func freeLowPort() int {
	for p := 1010; p < 1024; p++ {
		ln, err := net.Listen("tcp", "0.0.0.0:"+strconv.Itoa(p))
		if err == nil {
			ln.Close()
			return p
		}
	}
	return 0
}

func hasPrefix(p string) func(string) bool {
	return func(s string) bool { return strings.HasPrefix(s, p) }
}

// ---- processes ----

// proc is a process of the suite: this test binary in a role.
type proc struct {
	name  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	log   string

	mu      sync.Mutex
	lines   []string
	changed chan struct{} // closed and replaced at every new line
	exited  chan struct{}
	seq     int
}

func startProc(t *testing.T, dir, role string, env ...string) *proc {
	t.Helper()
	p := &proc{name: role, log: filepath.Join(dir, role+".log"), changed: make(chan struct{}), exited: make(chan struct{})}
	p.cmd = exec.Command(os.Args[0], "-test.run=^$")
	p.cmd.Env = append(append(os.Environ(), envRole+"="+role), env...)
	// a test binary killed before its cleanups takes its children along
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	logf, err := os.Create(p.log)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stderr = logf
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			p.mu.Lock()
			p.lines = append(p.lines, sc.Text())
			close(p.changed)
			p.changed = make(chan struct{})
			p.mu.Unlock()
		}
		p.cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			p.dump(t)
		}
	})
	return p
}

// kill SIGKILLs the process and waits for it (bounded: a process in an
// uninterruptible state is reported, not waited for forever).
func (p *proc) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
	}
}

func (p *proc) dump(t *testing.T) {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if i := slicesIndex(lines, "SIGQUIT: quit"); i >= 0 {
		// a goroutine dump of a hung engine: the engine's frames only
		var keep []string
		for _, l := range lines[i:] {
			if strings.HasPrefix(l, "goroutine ") || strings.Contains(l, "hoststack/engine/") {
				keep = append(keep, l)
			}
		}
		lines = append(lines[:i], keep...)
	}
	if len(lines) > 60 {
		lines = lines[len(lines)-60:]
	}
	p.mu.Lock()
	out := append([]string(nil), p.lines...)
	p.mu.Unlock()
	if len(out) > 20 {
		out = out[len(out)-20:]
	}
	t.Logf("--- %s stdout (tail):\n%s\n--- %s stderr (tail):\n%s", p.name, strings.Join(out, "\n"), p.name, strings.Join(lines, "\n"))
}

func slicesIndex(s []string, prefix string) int {
	for i, l := range s {
		if strings.HasPrefix(l, prefix) {
			return i
		}
	}
	return -1
}

// waitLine returns the first line match accepts, waiting up to d.
func (p *proc) waitLine(match func(string) bool, d time.Duration) (string, bool) {
	var found string
	_, ok := p.waitFor(func(lines []string) bool {
		for _, l := range lines {
			if match(l) {
				found = l
				return true
			}
		}
		return false
	}, d)
	return found, ok
}

// waitCount waits up to d for n lines match accepts; it returns how many
// there are.
func (p *proc) waitCount(match func(string) bool, n int, d time.Duration) (int, bool) {
	got := 0
	_, ok := p.waitFor(func(lines []string) bool {
		got = 0
		for _, l := range lines {
			if match(l) {
				got++
			}
		}
		return got >= n
	}, d)
	return got, ok
}

func (p *proc) waitFor(cond func([]string) bool, d time.Duration) (struct{}, bool) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		p.mu.Lock()
		ok := cond(p.lines)
		ch := p.changed
		p.mu.Unlock()
		if ok {
			return struct{}{}, true
		}
		select {
		case <-ch:
		case <-p.exited:
			p.mu.Lock()
			ok := cond(p.lines)
			p.mu.Unlock()
			return struct{}{}, ok
		case <-timer.C:
			return struct{}{}, false
		}
	}
}

func (p *proc) all(match func(string) bool) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []string
	for _, l := range p.lines {
		if match(l) {
			out = append(out, l)
		}
	}
	return out
}

// progress waits until both good transfers moved progressBytes more than
// the good client last reported.
func (p *proc) progress(d time.Duration) error {
	last := func(lines []string) (ct, tp int64) {
		for i := len(lines) - 1; i >= 0; i-- {
			if _, err := fmt.Sscanf(lines[i], "progress %d %d", &ct, &tp); err == nil {
				return ct, tp
			}
		}
		return 0, 0
	}
	p.mu.Lock()
	ct0, tp0 := last(p.lines)
	p.mu.Unlock()
	var ct, tp int64
	if _, ok := p.waitFor(func(lines []string) bool {
		ct, tp = last(lines)
		return ct >= ct0+progressBytes && tp >= tp0+progressBytes
	}, d); !ok {
		return fmt.Errorf("the good transfers stalled: in %v cut-through moved %d bytes, transport %d (want %d each)", d, ct-ct0, tp-tp0, progressBytes)
	}
	return nil
}

// usage is what the engine process holds.
type usage struct{ goroutines, threads, fds int }

// usage asks the engine for its goroutines and reads its threads and
// descriptors from /proc.
func (p *proc) usage(d time.Duration) (usage, error) {
	p.mu.Lock()
	p.seq++
	seq := p.seq
	p.mu.Unlock()
	var u usage
	if _, err := fmt.Fprintf(p.stdin, "stats %d\n", seq); err != nil {
		return u, err
	}
	l, ok := p.waitLine(hasPrefix(fmt.Sprintf("stats %d ", seq)), d)
	if !ok {
		return u, errors.New("the engine did not answer a stats request")
	}
	fmt.Sscanf(l, fmt.Sprintf("stats %d goroutines=%%d", seq), &u.goroutines)
	pid := p.cmd.Process.Pid
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, err
	}
	for _, l := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			u.threads, _ = strconv.Atoi(strings.TrimSpace(v))
		}
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return u, err
	}
	u.fds = len(ents)
	return u, nil
}

// settledUsage waits until two samples 50 ms apart agree (the probe's
// detach is reaped asynchronously), for a baseline.
func (p *proc) settledUsage() (usage, error) {
	prev, err := p.usage(time.Second)
	for i := 0; i < 40 && err == nil; i++ {
		time.Sleep(50 * time.Millisecond)
		var u usage
		if u, err = p.usage(time.Second); err == nil && u == prev {
			return u, nil
		}
		prev = u
	}
	return prev, err
}

// stop sends SIGTERM and expects a clean exit within stopBudget; a hung
// engine is made to dump its goroutines (SIGQUIT) for the failure report.
func (p *proc) stop(t *testing.T, attack string) {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		if _, ok := p.waitLine(hasPrefix("stopped"), 0); !ok || !p.cmd.ProcessState.Success() {
			t.Errorf("%s: the engine did not stop cleanly on SIGTERM: %v", attack, p.cmd.ProcessState)
		}
	case <-time.After(stopBudget):
		t.Errorf("%s: the engine did not stop within %v of SIGTERM", attack, stopBudget)
		p.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-p.exited:
		case <-time.After(2 * time.Second):
		}
	}
}

// ---- the TCP peer of transport sessions ----

// tcpSink is a kernel TCP server in the test process: it hashes what each
// connection sends until EOF and answers "<bytes> <sha256>", and records
// how every connection ended.
type tcpSink struct {
	ln      net.Listener
	mu      sync.Mutex
	ends    []string // "done", "reset", "error"
	changed chan struct{}
}

func startSink(t *testing.T) *tcpSink {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &tcpSink{ln: ln, changed: make(chan struct{})}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				n, sum, err := hashUntilEOF(c)
				end := "done"
				if err != nil {
					end = endKind(err)
				} else {
					fmt.Fprintf(c, "%d %x", n, sum)
				}
				s.mu.Lock()
				s.ends = append(s.ends, end)
				close(s.changed)
				s.changed = make(chan struct{})
				s.mu.Unlock()
			}()
		}
	}()
	return s
}

func (s *tcpSink) port() int { return s.ln.Addr().(*net.TCPAddr).Port }

// waitEnds waits for n connections to end with a reset (any: or any error).
func (s *tcpSink) waitEnds(anyErr bool, n int, d time.Duration) (int, bool) {
	timer := time.NewTimer(d)
	defer timer.Stop()
	for {
		s.mu.Lock()
		got := 0
		for _, e := range s.ends {
			if e == "reset" || (anyErr && e != "done") {
				got++
			}
		}
		ch := s.changed
		s.mu.Unlock()
		if got >= n {
			return got, true
		}
		select {
		case <-ch:
		case <-timer.C:
			return got, false
		}
	}
}
