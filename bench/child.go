package main

// Child processes of the bench: the apps of the scale group (so the
// engine's threads and memory are told apart from the apps'), and the
// unrelated process that keeps a core busy for the busy group. The bench
// re-executes itself with the hidden first argument childArg; a child
// talks to the parent in lines on stdout (childLine) and ends when its
// stdin closes.

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/wire"
	"github.com/hoststack/hoststack/internal/echotest"
	"github.com/hoststack/hoststack/internal/netnstest"
)

const childArg = "-bench-child"

// Lines a child writes: "base <anon bytes> [<probe p50 ns> <mean ns>]" once set up
// (then it waits for a line on stdin), "progress <n>", "ready <n> <anon
// bytes> <retries> <error or ->" when done (then it holds everything until
// stdin closes; the sessions mode first answers one more line with "probe
// <p50 ns or -1> <mean ns or -1> <error or ->"), "spinning".
func childLine(w io.Writer, mu *sync.Mutex, format string, args ...any) {
	mu.Lock()
	defer mu.Unlock()
	fmt.Fprintf(w, format+"\n", args...)
}

// runChild is the child's main; it never returns.
func runChild(args []string) {
	fs := flag.NewFlagSet("bench child", flag.ExitOnError)
	mode := fs.String("mode", "", "spin, apps, sessions, listen, rr")
	sock := fs.String("socket", "", "attach socket")
	n := fs.Int("n", 0, "apps or sessions")
	fifo := fs.Int("fifo", defaultFifo, "fifo size the apps ask for")
	kernelPorts := fs.Int("kernel-ports", 8, "listen: kernel TCP listeners to open on 127.0.0.1")
	addrs := fs.String("addrs", "", "sessions: go through the engine's kernel transport to these comma-separated kernel listeners (empty: cut-through)")
	probe := fs.String("probe", "", "sessions with -addrs: the echo server for the probe session")
	budget := fs.Duration("budget", time.Minute, "sessions: stop opening after this long")
	addr := fs.String("addr", "", "rr: the echo server to dial")
	span := fs.Duration("d", time.Second, "rr: measuring time")
	netnsPath := fs.String("netns", "", "rr without -socket: dial a plain kernel socket from this network namespace")
	_ = fs.Parse(args)
	var err error
	switch *mode {
	case "spin":
		spin()
	case "apps":
		err = childApps(*sock, *n)
	case "sessions":
		var as []string
		if *addrs != "" {
			as = strings.Split(*addrs, ",")
		}
		err = childSessions(*sock, *n, *fifo, as, *probe, *budget)
	case "listen":
		err = childListen(*n, *kernelPorts)
	case "rr":
		err = childRR(*sock, *netnsPath, *addr, *span)
	default:
		err = fmt.Errorf("unknown mode %q", *mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench child:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// childRR is an app in a process of its own (as on a node) running 64 B
// round trips to the echo server at addr for span, through the engine at
// sock, or (no sock) over a plain kernel socket from the network namespace
// at netnsPath: "ready <p50 ns> <round trips>".
func childRR(sock, netnsPath, addr string, span time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), tGrace)
	defer cancel()
	var c net.Conn
	var err error
	if sock == "" {
		c, err = netnstest.Dial(netnsPath, "tcp", addr)
	} else {
		var app *client.App
		app, err = client.Attach(ctx, client.Options{Socket: sock, Name: "bench-rr", RxFifoSize: defaultFifo, TxFifoSize: defaultFifo})
		if err != nil {
			return fmt.Errorf("attach: %w", err)
		}
		defer app.Close()
		c, err = app.Dial(ctx, "tcp", addr)
	}
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	p50, n, err := roundTrips(c, span)
	if err != nil {
		return err
	}
	var mu sync.Mutex
	childLine(os.Stdout, &mu, "ready %d %d", p50.Nanoseconds(), n)
	return nil
}

// spin keeps one CPU busy until killed: one thread, never blocking.
func spin() {
	runtime.GOMAXPROCS(1)
	fmt.Println("spinning")
	x := uint64(1)
	for {
		x = x*6364136223846793005 + 1
		if x == 0 {
			fmt.Println(x) // never; keeps the loop from being dropped
		}
	}
}

// anonNow is the process's RssAnon after a collection that also returns
// the freed heap to the kernel: without it a delta between two samples
// counts whatever garbage the scavenger had not returned yet (and went
// negative when it returned an earlier phase's).
func anonNow() int64 {
	debug.FreeOSMemory()
	st, err := status("self")
	if err != nil {
		return -1
	}
	return st.Anon
}

// waitLine blocks until the parent writes a line (or closes stdin).
func waitLine(r *bufio.Reader) { _, _ = r.ReadString('\n') }

// childApps attaches n apps (default options, one worker each) and holds
// them until stdin closes.
func childApps(sock string, n int) error {
	in := bufio.NewReader(os.Stdin)
	var mu sync.Mutex
	childLine(os.Stdout, &mu, "base %d", anonNow())
	waitLine(in)
	apps := make([]*client.App, n)
	var next, done atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || firstErr.Load() != nil {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				a, err := client.Attach(ctx, client.Options{Socket: sock, Name: fmt.Sprintf("scale-%d", i), NoReattach: true})
				cancel()
				if err != nil {
					firstErr.CompareAndSwap(nil, fmt.Errorf("attach of app %d: %w", i, err))
					return
				}
				apps[i] = a
				if d := done.Add(1); d%100 == 0 {
					childLine(os.Stdout, &mu, "progress %d", d)
				}
			}
		})
	}
	wg.Wait()
	childLine(os.Stdout, &mu, "ready %d %d 0 %s", done.Load(), anonNow(), errText(firstErr.Load()))
	waitLine(in)
	for _, a := range apps {
		if a != nil {
			a.Close()
		}
	}
	return nil
}

func errText(v any) string {
	if err, ok := v.(error); ok && err != nil {
		return strings.ReplaceAll(err.Error(), "\n", " ")
	}
	return "-"
}

// holder accepts sessions on its listeners and holds them, counting them
// up to n.
type holder struct {
	mu       sync.Mutex
	accepted []net.Conn
	lns      []net.Listener
	got      chan struct{} // one per accepted session, up to n
}

func newHolder(n int) *holder { return &holder{got: make(chan struct{}, n)} }

func (h *holder) serve(ln net.Listener) {
	h.lns = append(h.lns, ln)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			h.mu.Lock()
			h.accepted = append(h.accepted, c)
			h.mu.Unlock()
			select {
			case h.got <- struct{}{}:
			default: // more than n: not counted
			}
		}
	}()
}

// wait waits for n accepted sessions, for at most d; it returns how many
// were missing.
func (h *holder) wait(n int64, d time.Duration) int64 {
	timeout := time.After(d)
	for a := range n {
		select {
		case <-h.got:
		case <-timeout:
			return n - a
		}
	}
	return 0
}

func (h *holder) close() {
	for _, ln := range h.lns {
		ln.Close()
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.accepted {
		c.Close()
	}
}

// childListen is the far end of the kernel-transport sessions: plain TCP
// listeners on kernelPorts loopback ports (one destination takes ~28k
// ephemeral ports) and an echo listener for the probe, in a process of
// their own so that the sessions' memory figures count hoststack's ends
// only. It prints "listening <anon bytes> <probe addr> <addr>...", then
// answers each line on stdin with "accepted <n missing> <anon bytes>" once
// n sessions were accepted (or 30 s passed), until stdin closes.
func childListen(n, kernelPorts int) error {
	if err := raiseFDLimit(uint64(n) + 4096); err != nil {
		fmt.Fprintln(os.Stderr, "bench child: cannot raise the fd limit:", err)
	}
	h := newHolder(n)
	defer h.close()
	probe, err := echoListener(nil)
	if err != nil {
		return err
	}
	defer probe.Close()
	addrs := []string{probe.Addr().String()}
	for range kernelPorts {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		h.serve(ln)
		addrs = append(addrs, ln.Addr().String())
	}
	var mu sync.Mutex
	childLine(os.Stdout, &mu, "listening %d %s", anonNow(), strings.Join(addrs, " "))
	in := bufio.NewReader(os.Stdin)
	for {
		if _, err := in.ReadString('\n'); err != nil {
			return nil
		}
		missing := h.wait(int64(n), 30*time.Second)
		n = 0 // counted once
		childLine(os.Stdout, &mu, "accepted %d %d", missing, anonNow())
	}
}

// childSessions opens n idle sessions from a client app, either with a
// server app of this process (cut-through; addrs empty) or through the
// engine's kernel transport to the kernel listeners at addrs (childListen,
// whose echo listener for the probe is at probeAddr), and holds them until
// stdin closes.
func childSessions(sock string, n, fifo int, addrs []string, probeAddr string, budget time.Duration) error {
	in := bufio.NewReader(os.Stdin)
	var mu sync.Mutex
	opts := func(name string) client.Options {
		return client.Options{Socket: sock, Name: name, RxFifoSize: fifo, TxFifoSize: fifo, NoReattach: true, Scope: client.ScopeLocal}
	}
	cli, err := client.Attach(context.Background(), opts("scale-client"))
	if err != nil {
		return err
	}
	defer cli.Close()

	cutThrough := len(addrs) == 0
	h := newHolder(n)
	defer h.close()
	if cutThrough {
		srv, err := client.Attach(context.Background(), opts("scale-server"))
		if err != nil {
			return err
		}
		defer srv.Close()
		ln, err := srv.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		h.serve(ln)
		addrs = append(addrs, ln.Addr().String())
		o := opts("scale-echo")
		echo, err := echoListener(&o)
		if err != nil {
			return fmt.Errorf("probe server: %w", err)
		}
		defer echo.Close()
		probeAddr = echo.Addr().String()
	}
	// The probe: one more session of the same app and worker, to an echo
	// server, whose 64 B round trip is timed before the idle sessions open
	// and again while they are: what an active session pays for many idle
	// ones beside it (their events, their wake-ups).
	before, beforeMean, err := probeRR(cli, probeAddr)
	if err != nil {
		return fmt.Errorf("probe before the idle sessions: %w", err)
	}
	childLine(os.Stdout, &mu, "base %d %d %d", anonNow(), before.Nanoseconds(), beforeMean.Nanoseconds())
	waitLine(in)

	conns := make([]net.Conn, n)
	var next, done, retries atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(budget)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || firstErr.Load() != nil {
					return
				}
				if time.Now().After(deadline) {
					firstErr.CompareAndSwap(nil, fmt.Errorf("time budget of %v spent", budget))
					return
				}
				c, err := dialRetry(cli, addrs[i%len(addrs)], deadline, &retries)
				if err != nil {
					firstErr.CompareAndSwap(nil, fmt.Errorf("dial of session %d: %w", i, err))
					return
				}
				conns[i] = c
				if d := done.Add(1); d%10000 == 0 {
					childLine(os.Stdout, &mu, "progress %d", d)
				}
			}
		})
	}
	wg.Wait()
	// Every dialled session must have reached Accept before the count (the
	// kernel listeners' process is asked by the parent).
	if cutThrough {
		if missing := h.wait(done.Load(), 30*time.Second); missing > 0 && firstErr.Load() == nil {
			firstErr.Store(fmt.Errorf("%d dialled sessions never reached Accept", missing))
		}
	}
	childLine(os.Stdout, &mu, "ready %d %d %d %s", done.Load(), anonNow(), retries.Load(), errText(firstErr.Load()))
	waitLine(in)
	if p50, mean, err := probeRR(cli, probeAddr); err != nil {
		childLine(os.Stdout, &mu, "probe -1 -1 %s", err)
	} else {
		childLine(os.Stdout, &mu, "probe %d %d -", p50.Nanoseconds(), mean.Nanoseconds())
	}
	waitLine(in)
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	return nil
}

// echoListener is an echo server: on the kernel (app nil), or in an app of
// its own attached with app.
func echoListener(app *client.Options) (net.Listener, error) {
	var ln net.Listener
	if app == nil {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ln = l
	} else {
		srv, err := client.Attach(context.Background(), *app)
		if err != nil {
			return nil, err
		}
		l, err := srv.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			srv.Close()
			return nil, err
		}
		ln = appListener{l, srv}
	}
	echotest.Serve(ln)
	return ln, nil
}

// appListener closes its app with the listener.
type appListener struct {
	net.Listener
	app *client.App
}

func (l appListener) Close() error {
	err := l.Listener.Close()
	l.app.Close()
	return err
}

// probeSpan is how long the probe's round trips are timed, each time.
const probeSpan = time.Second

// probeRR dials addr through cli and returns the p50 and the mean of its
// 64 B round trips over probeSpan (the mean shows the few slow ones that
// the p50 hides).
func probeRR(cli *client.App, addr string) (p50, mean time.Duration, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), tGrace)
	defer cancel()
	c, err := cli.Dial(ctx, "tcp", addr)
	if err != nil {
		return 0, 0, err
	}
	defer c.Close()
	start := time.Now()
	p50, n, err := roundTrips(c, probeSpan)
	if err != nil {
		return 0, 0, err
	}
	// roundTrips makes 1,000 untimed round trips first, then n timed ones
	return p50, time.Since(start) / time.Duration(n+1000), nil
}

// dialRetry dials addr through app; a connect the engine refuses because
// the listener's event queue is full is tried again after a millisecond,
// as a TCP client resends a SYN a full listen backlog dropped (counted in
// retries), until deadline.
func dialRetry(app *client.App, addr string, deadline time.Time, retries *atomic.Int64) (net.Conn, error) {
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		c, err := app.Dial(ctx, "tcp", addr)
		cancel()
		var ce *client.Error
		if err == nil || !errors.As(err, &ce) || ce.Code != wire.ErrQueueFull || time.Now().After(deadline) {
			return c, err
		}
		retries.Add(1)
		time.Sleep(time.Millisecond) // back-off before the retry
	}
}

// child is a running child process of the bench.
type child struct {
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Scanner
	Pid   int
	ended bool
}

// startChild re-executes this binary as a child in mode with args.
func startChild(mode string, args ...string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, append([]string{childArg, "-mode", mode}, args...)...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s child: %w", mode, err)
	}
	return &child{cmd: cmd, in: in, out: bufio.NewScanner(out), Pid: cmd.Process.Pid}, nil
}

// next returns the child's next line split into fields; progress lines go
// to onProgress.
func (c *child) next(onProgress func(n int)) ([]string, error) {
	for c.out.Scan() {
		f := strings.Fields(c.out.Text())
		if len(f) == 0 {
			continue
		}
		if f[0] == "progress" && len(f) == 2 {
			if n, err := strconv.Atoi(f[1]); err == nil && onProgress != nil {
				onProgress(n)
			}
			continue
		}
		return f, nil
	}
	if err := c.out.Err(); err != nil {
		return nil, err
	}
	return nil, errors.New("child ended without a word")
}

// expect reads the next line, which must start with word and have at
// least n fields after it.
func (c *child) expect(word string, n int, onProgress func(int)) ([]string, error) {
	f, err := c.next(onProgress)
	if err != nil {
		return nil, err
	}
	if f[0] != word || len(f) < n+1 {
		return nil, fmt.Errorf("child said %q, want %q", strings.Join(f, " "), word)
	}
	return f[1:], nil
}

// proceed lets a child that waits for a line go on.
func (c *child) proceed() error { _, err := io.WriteString(c.in, "go\n"); return err }

// end closes the child's stdin (it releases what it holds and exits) and
// waits for it; kill ends it by its pid at once.
func (c *child) end() error {
	if c.ended {
		return nil
	}
	c.ended = true
	c.in.Close()
	return c.cmd.Wait()
}

func (c *child) kill() {
	if c.ended {
		return
	}
	c.ended = true
	_ = c.cmd.Process.Kill()
	_ = c.cmd.Wait()
}
