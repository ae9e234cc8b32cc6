package main

// The transport group: hoststack's transports to the outside world against
// a plain kernel TCP socket, over one veth between two network namespaces.
//
// A (10.99.0.1) holds the sender: a kernel socket ("kernel"), or an app of
// this process attached to an engine whose transport is a userspace stack
// at 10.99.0.11/24 on A's veth over AF_PACKET ("netstack-afpacket") or
// AF_XDP ("netstack-afxdp"), or an engine on the kernel transport in A
// ("engine-kernel"). B (10.99.0.2) holds kernel TCP servers
// of this process: a sink reading into io.Discard, an echo, a counter, a
// stock crypto/tls sink. Every figure is measured by the same code for
// every variant; only the sender's transport differs.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime/pprof"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/netns"
	"github.com/hoststack/hoststack/engine/session"
	enginetls "github.com/hoststack/hoststack/engine/tls"
	"github.com/hoststack/hoststack/engine/transport/kernel"
	"github.com/hoststack/hoststack/engine/transport/netstack"
	"github.com/hoststack/hoststack/engine/transport/netstack/link/afpacket"
	"github.com/hoststack/hoststack/engine/transport/netstack/link/afxdp"
	"github.com/hoststack/hoststack/internal/netnstest"
)

const (
	tChunk       = 1 << 20          // each write of a bulk sender
	tStallRuns   = 20               // consecutive bulk runs per netstack variant
	tStallBytes  = 64 << 20         // per stall run
	tStallLimit  = 20 * time.Second // a run not done by then has stalled
	tStallGiveUp = 3                // stop the stall runs after this many failures
	tGrace       = 30 * time.Second // beyond the measuring time, for anything to end
	tNS          = "bench"          // the engines' Kubernetes namespace
	tTrust       = "bench-ca"       // the CertKeyPair whose CA an app's DialTLS trusts
	tSinkName    = "sink.bench"     // the TLS sink's certificate name
)

// tVariant is one sender in A. dialTLS is nil where TLS is not measured.
type tVariant struct {
	name    string
	sock    string // an engine variant's attach socket (apps in child processes)
	dial    func(ctx context.Context, addr string) (net.Conn, error)
	dialTLS func(ctx context.Context, addr string) (net.Conn, error)
}

// topo is the veth pair and what every variant shares.
type topo struct {
	pair    *netnstest.Pair
	m       measurer
	certs   *tCerts
	failed  []string // "variant: error", reported at the end
	results []Result // added to the report at the end, after the kernel's
	refs    []Result // references for targets (not printed)
	kernel  struct { // every kernel flow run
		one, four []float64
		cpu       time.Duration
		bits      float64
	}
	wrote   []byte // one chunk, shared by all senders (only read)
	cleanup []func()
}

// runTransport measures the transport group into rep. Without the means to
// build the topology (root, ip(8), ethtool(8)) it says why and records
// nothing, so the group's targets read "not measured"; a variant that
// fails is reported on stderr and its figures are missing.
func runTransport(rep *Report, m measurer) {
	tp, err := newTopo(m)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: transport: cannot build the veth topology, not measured: %v\n", err)
		return
	}
	defer tp.close()
	fmt.Fprintf(os.Stderr, "  (veth %s in %s <-> %s in %s)\n", tp.pair.A.Dev, tp.pair.A.NS, tp.pair.B.Dev, tp.pair.B.NS)

	// Labels name the variant on every goroutine it starts (engine, stack,
	// link, app), and the phase on those started per measurement, so a
	// -cpuprofile splits: go tool pprof -tagfocus variant=netstack-afxdp.
	kern := &tVariant{name: "kernel", dial: func(_ context.Context, addr string) (net.Conn, error) {
		return netnstest.Dial(tp.pair.A.Path(), "tcp", addr)
	}}
	labelled("kernel", func() { tp.measure(*kern, nil) })
	for _, kind := range []string{"afpacket", "afxdp"} {
		name := "netstack-" + kind
		labelled(name, func() {
			v, closeV, err := tp.netstackVariant(kind)
			if err != nil {
				tp.fail(name, err)
				return
			}
			defer closeV()
			tp.measure(v, kern)
			if kind == "afpacket" {
				tp.tlsFlows(v)
			}
		})
	}
	labelled("engine-kernel", func() {
		v, closeV, err := tp.kernelEngineVariant()
		if err != nil {
			tp.fail("engine-kernel", err)
			return
		}
		defer closeV()
		tp.measure(v, kern) // the kernel transport against a plain socket
		tp.tlsFlows(v)
	})

	// The kernel's flow figures are of all its runs: its own, and those
	// alternating with each netstack variant's, so the ratios compare
	// figures taken back to back on this noisy machine. (While a netstack
	// variant is up its link still sees the kernel runs' frames from B:
	// AF_PACKET copies them into its ring and the stack drops them, the
	// XDP program passes them on; that cost falls on the kernel's runs.)
	k := tp.kernel
	if len(k.one) > 0 {
		rep.add("transport", "1flow", "kernel", median(k.one), "Gbit/s")
		rep.add("transport", "cpu-1flow", "kernel", cpuPerGbit(k.cpu, k.bits), "cpu-ms/Gbit")
	}
	if len(k.four) > 0 {
		rep.add("transport", "4flow", "kernel", median(k.four), "Gbit/s")
	}
	for _, r := range tp.results {
		rep.add(r.Group, r.Case, r.Variant, r.Value, r.Unit)
	}
	rep.Results = append(rep.Results, tp.refs...)
	for _, f := range tp.failed {
		fmt.Fprintln(os.Stderr, "bench: transport FAILED:", f)
	}
}

func labelled(variant string, f func()) {
	pprof.Do(context.Background(), pprof.Labels("variant", variant), func(context.Context) { f() })
}

// phase runs f labelled with the variant and the phase (for the
// goroutines f starts).
func phase(variant, name string, f func()) {
	pprof.Do(context.Background(), pprof.Labels("variant", variant, "phase", name), func(context.Context) { f() })
}

func cpuPerGbit(cpu time.Duration, bits float64) float64 {
	return float64(cpu.Microseconds()) / 1e3 / (bits / 1e9)
}

func newTopo(m measurer) (tp *topo, err error) {
	if _, err := exec.LookPath("ethtool"); err != nil {
		return nil, fmt.Errorf("ethtool(8) is needed to turn off tx checksum offload: %w", err)
	}
	p, err := netnstest.Create()
	if err != nil {
		return nil, err
	}
	tp = &topo{pair: p, m: m, wrote: make([]byte, tChunk)}
	tp.cleanup = append(tp.cleanup, p.Delete)
	defer func() {
		if err != nil {
			tp.close()
		}
	}()
	// As the netstack tests do: senders compute checksums, so an XDP program
	// sees frames as sent (veth would pass checksum-partial ones). The same
	// for every variant, the kernel one included.
	for _, e := range []netnstest.End{p.A, p.B} {
		if out, err := exec.Command("ip", "netns", "exec", e.NS, "ethtool", "-K", e.Dev, "tx", "off").CombinedOutput(); err != nil {
			return tp, fmt.Errorf("ethtool -K %s tx off: %v: %s", e.Dev, err, out)
		}
	}
	if tp.certs, err = newCerts(); err != nil {
		return tp, err
	}
	return tp, nil
}

func (tp *topo) close() {
	for i := len(tp.cleanup) - 1; i >= 0; i-- {
		tp.cleanup[i]()
	}
	tp.cleanup = nil
}

func (tp *topo) fail(variant string, err error) {
	fmt.Fprintf(os.Stderr, "bench: transport %s: %v\n", variant, err)
	tp.failed = append(tp.failed, variant+": "+err.Error())
}

func (tp *topo) record(cs, variant string, v float64, unit string) {
	tp.results = append(tp.results, Result{"transport", cs, variant, v, unit})
}

// progress shows the runs behind a median as they are taken.
func progress(variant, cs string, runs []float64, unit string) {
	fmt.Fprintf(os.Stderr, "    %s %s: runs %.3f %s\n", variant, cs, runs, unit)
}

// measure records the single-flow, 4-flow, request/response, CPU and (for
// netstack variants) stall figures of v; on the first error it reports it
// and leaves the rest of v's figures unmeasured. With kern, every flow run
// of v follows one of kern, for the kernel's figures.
func (tp *topo) measure(v tVariant, kern *tVariant) {
	err := func() error {
		isKernel := v.name == "kernel"
		run := func(v tVariant, k int) (flowResult, error) {
			var r flowResult
			var err error
			phase(v.name, fmt.Sprintf("%dflow", k), func() { r, err = tp.flows(v.dial, nil, k) })
			if err == nil && v.name == "kernel" {
				if k == 1 {
					tp.kernel.one = append(tp.kernel.one, r.gbps)
					tp.kernel.cpu += r.cpu
					tp.kernel.bits += r.bits
				} else {
					tp.kernel.four = append(tp.kernel.four, r.gbps)
				}
			}
			return r, err
		}
		for _, k := range []int{1, 4} {
			var rates []float64
			var cpu time.Duration
			var bits float64
			for range tp.m.n {
				if kern != nil {
					if _, err := run(*kern, k); err != nil {
						return fmt.Errorf("kernel %d flow(s) alongside: %w", k, err)
					}
				}
				r, err := run(v, k)
				if err != nil {
					return fmt.Errorf("%d flow(s): %w", k, err)
				}
				rates = append(rates, r.gbps)
				cpu += r.cpu
				bits += r.bits
			}
			progress(v.name, fmt.Sprintf("%dflow", k), rates, "Gbit/s")
			if kern != nil {
				along := tp.kernel.one
				if k == 4 {
					along = tp.kernel.four
				}
				progress("kernel", fmt.Sprintf("%dflow alongside", k), along[len(along)-tp.m.n:], "Gbit/s")
			}
			if isKernel {
				continue // recorded at the end, with the kernel runs alongside the others
			}
			tp.record(fmt.Sprintf("%dflow", k), v.name, median(rates), "Gbit/s")
			if k == 1 {
				// CPU of this whole process (user+system, getrusage) while
				// the flow ran, per gigabit moved. It includes the kernel
				// sink in B, which is in this process too, equally for every
				// variant, and the kernel's softirq work charged to this
				// process's threads.
				tp.record("cpu-1flow", v.name, cpuPerGbit(cpu, bits), "cpu-ms/Gbit")
			}
		}

		var rate float64
		var p50 time.Duration
		var err error
		phase(v.name, "rr", func() { rate, p50, err = tp.rr(v.dial) })
		if err != nil {
			return fmt.Errorf("64 B request/response: %w", err)
		}
		tp.record("rr-rate", v.name, rate, "trans/s")
		tp.record("rr-p50", v.name, float64(p50.Nanoseconds())/1e3, "us")
		if v.sock != "" || isKernel {
			// Cross-process wake-ups cost this kind of machine anything
			// from 20 to 100 us from run to run: an engine variant's round
			// trips from an app process are paired with the plain socket's
			// from a process, taken right before (row ...-kernel-alongside).
			if kern != nil {
				var k time.Duration
				phase("kernel", "rr from an app process", func() { k, err = tp.rrChild(*kern) })
				if err != nil {
					return fmt.Errorf("kernel 64 B request/response from an app process alongside: %w", err)
				}
				tp.record("rr-p50-app-process-kernel-alongside", v.name, float64(k.Nanoseconds())/1e3, "us")
			}
			var p50 time.Duration
			phase(v.name, "rr from an app process", func() { p50, err = tp.rrChild(v) })
			if err != nil {
				return fmt.Errorf("64 B request/response from an app process: %w", err)
			}
			tp.record("rr-p50-app-process", v.name, float64(p50.Nanoseconds())/1e3, "us")
		}

		if !isKernel {
			var stalled, done int
			phase(v.name, "stalls", func() { stalled, done = tp.stalls(v) })
			tp.record("stalled", v.name, float64(stalled), "runs")
			tp.record("stall-free", v.name, float64(done), "runs")
			tp.refs = append(tp.refs, Result{"transport", "ref-stall-runs", v.name, tStallRuns, "runs"})
		}
		return nil
	}()
	if err != nil {
		tp.fail(v.name, err)
	}
}

// tlsFlows records v's single-flow throughput to the plaintext sink and,
// with DialTLS, to a stock crypto/tls sink, alternating run by run.
func (tp *topo) tlsFlows(v tVariant) {
	var plain, enc []float64
	for range tp.m.n {
		var r flowResult
		var err error
		phase(v.name, "tls-plain", func() { r, err = tp.flows(v.dial, nil, 1) })
		if err != nil {
			tp.fail(v.name, fmt.Errorf("plaintext flow for TLS: %w", err))
			return
		}
		plain = append(plain, r.gbps)
		phase(v.name, "tls", func() { r, err = tp.flows(v.dialTLS, tp.certs.server, 1) })
		if err != nil {
			tp.fail(v.name, fmt.Errorf("TLS flow: %w", err))
			return
		}
		enc = append(enc, r.gbps)
	}
	progress(v.name, "tls-plain", plain, "Gbit/s")
	progress(v.name, "tls", enc, "Gbit/s")
	tp.record("tls-plain", v.name, median(plain), "Gbit/s")
	tp.record("tls", v.name, median(enc), "Gbit/s")
}

// server is a kernel TCP server in B; close ends it and every connection
// it accepted, and waits for their goroutines.
type server struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func (tp *topo) serve(tlsConf *tls.Config, handle func(net.Conn)) (*server, error) {
	var ln net.Listener
	if err := netns.Do(tp.pair.B.Path(), func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(tp.pair.B.Addr4, "0"))
		return err
	}); err != nil {
		return nil, fmt.Errorf("listen in B: %w", err)
	}
	if tlsConf != nil {
		ln = tls.NewListener(ln, tlsConf)
	}
	s := &server{ln: ln, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			if s.conns == nil { // closed
				s.mu.Unlock()
				c.Close()
				return
			}
			s.conns[c] = struct{}{}
			s.wg.Add(1)
			s.mu.Unlock()
			go func() {
				defer s.wg.Done()
				defer func() {
					s.mu.Lock()
					delete(s.conns, c)
					s.mu.Unlock()
					c.Close()
				}()
				handle(c)
			}()
		}
	}()
	return s, nil
}

func (s *server) addr() string { return s.ln.Addr().String() }

func (s *server) close() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.conns = nil
	s.mu.Unlock()
	s.wg.Wait()
}

// sinkResult is what the sink saw of one session: its bytes, and when the
// first and the last arrived.
type sinkResult struct {
	n           int64
	first, last time.Time
	err         error
}

// sink reads c to its end into io.Discard and reports what it saw.
func sink(c net.Conn, out chan<- sinkResult) {
	buf := make([]byte, 256<<10)
	var r sinkResult
	for {
		k, err := c.Read(buf)
		if k > 0 {
			if r.n == 0 {
				r.first = time.Now()
			}
			r.n += int64(k)
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				r.err = err
			}
			break
		}
	}
	r.last = time.Now()
	out <- r // buffered for every session the measurement opens
}

type flowResult struct {
	gbps float64       // aggregate, as the sink saw it
	bits float64       // moved
	cpu  time.Duration // this process's user+system CPU meanwhile
}

// flows runs k sessions in parallel to a fresh sink (TLS when tlsConf is
// set), each writing tChunk-byte writes for m.d and then half-closing, and
// returns the aggregate rate from the first byte the sink read to the last.
func (tp *topo) flows(dial func(context.Context, string) (net.Conn, error), tlsConf *tls.Config, k int) (flowResult, error) {
	results := make(chan sinkResult, k+8) // room for strays: the sink never blocks
	srv, err := tp.serve(tlsConf, func(c net.Conn) { sink(c, results) })
	if err != nil {
		return flowResult{}, err
	}
	defer srv.close()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	cpu0 := cpuTime()
	for range k {
		c, err := dialTimeout(dial, srv.addr())
		if err != nil {
			return flowResult{}, fmt.Errorf("dial: %w", err)
		}
		conns = append(conns, c)
	}
	werr := make(chan error, k)
	for _, c := range conns {
		go func() {
			end := time.Now().Add(tp.m.d)
			_ = c.SetWriteDeadline(end.Add(tGrace))
			for time.Now().Before(end) {
				if _, err := c.Write(tp.wrote); err != nil {
					werr <- fmt.Errorf("write: %w", err)
					return
				}
			}
			werr <- closeWrite(c)
		}()
	}
	timeout := time.NewTimer(tp.m.d + tGrace)
	defer timeout.Stop()
	var total int64
	var first, last time.Time
	for i := 0; i < 2*k; i++ {
		select {
		case err := <-werr:
			if err != nil {
				return flowResult{}, err
			}
		case r := <-results:
			if r.err != nil {
				return flowResult{}, fmt.Errorf("sink: %w", r.err)
			}
			total += r.n
			if first.IsZero() || !r.first.IsZero() && r.first.Before(first) {
				first = r.first
			}
			if r.last.After(last) {
				last = r.last
			}
		case <-timeout.C:
			return flowResult{}, fmt.Errorf("the sink saw no end of %d sessions within %v", k, tp.m.d+tGrace)
		}
	}
	cpu := cpuTime() - cpu0
	if total == 0 || !last.After(first) {
		return flowResult{}, fmt.Errorf("nothing arrived")
	}
	bits := float64(total) * 8
	return flowResult{gbps: bits / last.Sub(first).Seconds() / 1e9, bits: bits, cpu: cpu}, nil
}

// rr runs 64-byte request/response transactions against an echo in B for
// m.n×m.d after a warm-up, and returns their rate and median latency.
func (tp *topo) rr(dial func(context.Context, string) (net.Conn, error)) (float64, time.Duration, error) {
	srv, err := tp.serve(nil, func(c net.Conn) { _, _ = io.Copy(c, c) })
	if err != nil {
		return 0, 0, err
	}
	defer srv.close()
	c, err := dialTimeout(dial, srv.addr())
	if err != nil {
		return 0, 0, fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	span := time.Duration(tp.m.n) * tp.m.d
	start := time.Now()
	p50, n, err := roundTrips(c, span)
	if err != nil {
		return 0, 0, err
	}
	return float64(n) / time.Since(start).Seconds(), p50, nil
}

// rrChild is tp.rr from an app in a child process attached to sock (as on
// a node: the app's polling and the engine's loops do not share a Go
// scheduler), or for v the kernel variant from a child process with a
// plain socket in A; it returns the p50.
func (tp *topo) rrChild(v tVariant) (time.Duration, error) {
	srv, err := tp.serve(nil, func(c net.Conn) { _, _ = io.Copy(c, c) })
	if err != nil {
		return 0, err
	}
	defer srv.close()
	span := time.Duration(tp.m.n) * tp.m.d
	args := []string{"-socket", v.sock, "-addr", srv.addr(), "-d", span.String()}
	if v.sock == "" {
		args = []string{"-netns", tp.pair.A.Path(), "-addr", srv.addr(), "-d", span.String()}
	}
	ch, err := startChild("rr", args...)
	if err != nil {
		return 0, err
	}
	defer ch.kill()
	f, err := ch.expect("ready", 2, nil)
	if err != nil {
		return 0, err
	}
	ns, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("child said p50 %q: %w", f[0], err)
	}
	return time.Duration(ns), ch.end()
}

// roundTrips runs 64 B round trips on c for span (after 1,000 to warm
// up) and returns their p50 and count.
func roundTrips(c net.Conn, span time.Duration) (time.Duration, int, error) {
	_ = c.SetDeadline(time.Now().Add(span + tGrace))
	b := make([]byte, 64)
	one := func() error {
		if _, err := c.Write(b); err != nil {
			return err
		}
		_, err := io.ReadFull(c, b)
		return err
	}
	for range 1000 {
		if err := one(); err != nil {
			return 0, 0, err
		}
	}
	lat := make([]time.Duration, 0, 1<<16)
	start := time.Now()
	end := start.Add(span)
	for t := start; t.Before(end); {
		if err := one(); err != nil {
			return 0, 0, err
		}
		now := time.Now()
		lat = append(lat, now.Sub(t))
		t = now
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat[len(lat)/2], len(lat), nil
}

// stalls runs tStallRuns consecutive tStallBytes transfers, each of which
// must be acknowledged (the server's count of what it read) within
// tStallLimit, and returns how many failed and how many completed. After
// tStallGiveUp failures it stops: the rest are neither.
func (tp *topo) stalls(v tVariant) (stalled, done int) {
	srv, err := tp.serve(nil, func(c net.Conn) {
		// Hide io.Discard's ReadFrom, which would read 8 KiB at a time.
		n, err := io.CopyBuffer(struct{ io.Writer }{io.Discard}, c, make([]byte, 256<<10))
		if err != nil {
			return
		}
		_, _ = c.Write(binary.BigEndian.AppendUint64(nil, uint64(n)))
	})
	if err != nil {
		tp.fail(v.name, fmt.Errorf("stall runs: %w", err))
		return tStallRuns, 0
	}
	defer srv.close()
	one := func() error {
		c, err := dialTimeout(v.dial, srv.addr())
		if err != nil {
			return fmt.Errorf("dial: %w", err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(tStallLimit))
		for range tStallBytes / tChunk {
			if _, err := c.Write(tp.wrote); err != nil {
				return fmt.Errorf("write: %w", err)
			}
		}
		if err := closeWrite(c); err != nil {
			return err
		}
		ack := make([]byte, 8)
		if _, err := io.ReadFull(c, ack); err != nil {
			return fmt.Errorf("reading the server's count: %w", err)
		}
		if n := binary.BigEndian.Uint64(ack); n != tStallBytes {
			return fmt.Errorf("the server read %d bytes of %d", n, tStallBytes)
		}
		return nil
	}
	start := time.Now()
	for run := 1; run <= tStallRuns; run++ {
		t := time.Now()
		if err := one(); err != nil {
			stalled++
			fmt.Fprintf(os.Stderr, "bench: transport %s: stall run %d of %d failed after %v: %v\n",
				v.name, run, tStallRuns, time.Since(t).Round(time.Millisecond), err)
			if stalled >= tStallGiveUp {
				fmt.Fprintf(os.Stderr, "bench: transport %s: giving up the stall runs after %d failures\n", v.name, stalled)
				break
			}
			continue
		}
		done++
	}
	fmt.Fprintf(os.Stderr, "  (%s: %d stall runs of %d MiB in %v)\n", v.name, done+stalled, tStallBytes>>20,
		time.Since(start).Round(time.Millisecond))
	return stalled, done
}

func dialTimeout(dial func(context.Context, string) (net.Conn, error), addr string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), tGrace)
	defer cancel()
	return dial(ctx, addr)
}

func closeWrite(c net.Conn) error {
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		return fmt.Errorf("%T cannot half-close", c)
	}
	if err := cw.CloseWrite(); err != nil {
		return fmt.Errorf("close write: %w", err)
	}
	return nil
}

// cpuTime is this process's user+system CPU so far (all threads).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// tNamespace is the engines' app namespace; apps ask for the AppNamespace
// API default FIFOs (defaultFifo), as in the other groups.
var tNamespace = session.NamespaceConfig{Namespace: tNS, Name: "transport", SegmentSize: 256 << 20,
	RxFifoSize: 4 << 20, TxFifoSize: 4 << 20}

// engineVariant attaches an app to a new engine on tr (which it closes
// after the engine) with the TLS store, and makes a variant of it.
func (tp *topo) engineVariant(name string, tr session.Transport, closeTr func()) (v tVariant, closeV func(), err error) {
	dir, err := tempDir()
	if err != nil {
		closeTr()
		return v, nil, err
	}
	var closers []func()
	closeV = func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
		closers = nil
	}
	closers = append(closers, func() { os.RemoveAll(dir) }, closeTr)
	defer func() {
		if err != nil {
			closeV()
		}
	}()
	store := &enginetls.Store{}
	if err := store.Set(tNS, tTrust, tp.certs.clientCert, tp.certs.clientKey); err != nil {
		return v, nil, err
	}
	if err := store.SetCA(tNS, tTrust, tp.certs.caPEM); err != nil {
		return v, nil, err
	}
	eng, err := session.New(session.Config{RunDir: dir, Transport: tr, TLS: store, Logf: func(string, ...any) {}})
	if err != nil {
		return v, nil, fmt.Errorf("engine: %w", err)
	}
	closers = append(closers, func() { eng.Close() })
	sock, err := eng.AddNamespace(tNamespace)
	if err != nil {
		return v, nil, fmt.Errorf("engine: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), tGrace)
	defer cancel()
	app, err := client.Attach(ctx, client.Options{Socket: sock, Name: "bench", RxFifoSize: defaultFifo, TxFifoSize: defaultFifo})
	if err != nil {
		return v, nil, fmt.Errorf("attach: %w", err)
	}
	closers = append(closers, func() { app.Close() })
	return tVariant{
		name: name,
		sock: sock,
		dial: func(ctx context.Context, addr string) (net.Conn, error) { return app.Dial(ctx, "tcp", addr) },
		dialTLS: func(ctx context.Context, addr string) (net.Conn, error) {
			return app.DialTLS(ctx, "tcp", addr, client.TLSConfig{ServerName: tSinkName, Trust: tTrust})
		},
	}, closeV, nil
}

// netstackVariant is an app on an engine whose transport is a userspace
// stack at 10.99.0.11/24 on A's veth over the link layer kind.
func (tp *topo) netstackVariant(kind string) (tVariant, func(), error) {
	a := tp.pair.A
	ps := []netip.Prefix{netip.MustParsePrefix("10.99.0.11/24")}
	var tr *netstack.Transport
	var err error
	var stats func() any // the link's counters, shown when the variant ends
	switch kind {
	case "afpacket":
		ep, lerr := afpacket.New(afpacket.Options{Interface: a.Dev, Netns: a.Path(), Addrs: ps})
		if lerr != nil {
			return tVariant{}, nil, fmt.Errorf("afpacket: %w", lerr)
		}
		stats = func() any { return ep.Stats() }
		tr, err = netstack.New(netstack.Options{Link: ep, Addrs: ps})
	case "afxdp":
		ep, lerr := afxdp.New(afxdp.Options{Interface: a.Dev, Netns: a.Path(), Addrs: ps})
		if lerr != nil {
			return tVariant{}, nil, fmt.Errorf("afxdp: %w", lerr)
		}
		stats = func() any { return fmt.Sprintf("mode %v, %+v", ep.Mode(), ep.Stats()) }
		tr, err = netstack.New(netstack.Options{Link: ep, Addrs: ps})
	default:
		return tVariant{}, nil, fmt.Errorf("unknown link %q", kind)
	}
	if err != nil {
		return tVariant{}, nil, err
	}
	return tp.engineVariant("netstack-"+kind, tr, func() {
		fmt.Fprintf(os.Stderr, "    netstack-%s link counters: %+v\n", kind, stats())
		tr.Close()
	})
}

// kernelEngineVariant is an app on an engine whose transport is the
// kernel's, in A.
func (tp *topo) kernelEngineVariant() (tVariant, func(), error) {
	tr := kernel.New(kernel.Options{Netns: func(string) (string, error) { return tp.pair.A.Path(), nil }})
	return tp.engineVariant("engine-kernel", tr, func() {})
}

// tCerts are a throwaway CA, the TLS sink's certificate, and the
// CertKeyPair (whose CA bundle the apps trust) in the engines' TLS store.
type tCerts struct {
	caPEM, clientCert, clientKey []byte
	server                       *tls.Config
}

func newCerts() (*tCerts, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	leaf := func(serial int64, name string) (certPEM, keyPEM []byte, err error) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			DNSNames: []string{name}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			return nil, nil, err
		}
		kd, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return nil, nil, err
		}
		return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), nil
	}
	c := &tCerts{caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})}
	if c.clientCert, c.clientKey, err = leaf(2, "client.bench"); err != nil {
		return nil, err
	}
	sc, sk, err := leaf(3, tSinkName)
	if err != nil {
		return nil, err
	}
	pair, err := tls.X509KeyPair(sc, sk)
	if err != nil {
		return nil, err
	}
	c.server = &tls.Config{Certificates: []tls.Certificate{pair}}
	return c, nil
}
