package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/engine/shm"
)

// benchNamespace is the AppNamespace API default sizing (1 GiB segments,
// 4 MiB FIFOs), with quotas raised for the benchmarks' many sessions. The
// "hoststack" variants ask for the default FIFOs, so their figures are what
// a user gets without tuning; "hoststack-1MiB" is the former default, to
// show what FIFO size buys.
var benchNamespace = session.NamespaceConfig{Namespace: "bench", Name: "bench",
	SegmentSize: 1 << 30, RxFifoSize: defaultFifo, TxFifoSize: defaultFifo,
	MaxSegmentsPerApp: 1024, MaxSessionsPerApp: 1 << 16}

const defaultFifo = 4 << 20 // the AppNamespace API default

// rig is an in-process engine with one app namespace and apps attached to
// it (a server app and a client app per variant, as two pods would be).
type rig struct {
	eng  *session.Engine
	sock string
	apps []*client.App
	dir  string
}

func newRig() (*rig, error) {
	dir, err := tempDir()
	if err != nil {
		return nil, err
	}
	eng, err := session.New(session.Config{RunDir: dir, Logf: func(string, ...any) {}})
	if err != nil {
		return nil, err
	}
	sock, err := eng.AddNamespace(benchNamespace)
	if err != nil {
		eng.Close()
		return nil, fmt.Errorf("engine: %w", err)
	}
	return &rig{eng: eng, sock: sock, dir: dir}, nil
}

func (r *rig) attach(name string, spin bool, fifo int) (*client.App, error) {
	a, err := client.Attach(context.Background(), client.Options{Socket: r.sock, Name: name, Spin: spin,
		RxFifoSize: fifo, TxFifoSize: fifo})
	if err == nil {
		r.apps = append(r.apps, a)
	}
	return a, err
}

func (r *rig) close() {
	for _, a := range r.apps {
		a.Close()
	}
	r.eng.Close()
	os.RemoveAll(r.dir)
}

func (r *rig) variant(name string, spin bool, fifo int) (variant, error) {
	srv, err := r.attach(name+"-server", spin, fifo)
	if err != nil {
		return variant{}, err
	}
	cli, err := r.attach(name+"-client", spin, fifo)
	if err != nil {
		return variant{}, err
	}
	return variant{
		name:   name,
		listen: func() (net.Listener, error) { return srv.Listen("tcp", "127.0.0.1:0") },
		dial: func(a net.Addr) (net.Conn, error) {
			return cli.Dial(context.Background(), "tcp", a.String())
		},
	}, nil
}

var theRig *rig

// setupVariants returns every transport to compare: hoststack (default and
// spin mode) and the kernel's TCP loopback and unix stream sockets.
func setupVariants() ([]variant, func(), error) {
	r, err := newRig()
	if err != nil {
		return nil, nil, err
	}
	theRig = r
	var vs []variant
	for _, c := range []struct {
		name string
		spin bool
		fifo int
	}{{"hoststack", false, defaultFifo}, {"hoststack-spin", true, defaultFifo}, {"hoststack-1MiB", false, 1 << 20}} {
		v, err := r.variant(c.name, c.spin, c.fifo)
		if err != nil {
			r.close()
			return nil, nil, fmt.Errorf("attaching: %w", err)
		}
		vs = append(vs, v)
	}
	// Kernel baselines right after the default variant, so the table reads
	// hoststack, tcp, unix, then the hoststack alternatives.
	vs = append([]variant{vs[0]}, append(kernelVariants(r.dir), vs[1:]...)...)
	return vs, r.close, nil
}

// memoryVariant is the memory group's variant named name (default mode
// and FIFO size) with a listener of its own.
func memoryVariant(name string) (variant, net.Listener, error) {
	v, err := theRig.variant(name, false, defaultFifo)
	if err != nil {
		return v, nil, err
	}
	ln, err := v.listen()
	return v, ln, err
}

// idleSessionMemory opens n idle sessions and reports what each costs: the
// resident memory of this process (engine and both apps, heap and touched
// shared memory) and the FIFO bytes the engine reserves in segments (mostly
// untouched, so not resident until data flows).
func idleSessionMemory() (resident, reserved float64, err error) {
	const n = 1000
	v, ln, err := memoryVariant("memory")
	if err != nil {
		return 0, 0, err
	}
	defer ln.Close()
	before, _ := theRig.eng.NamespaceStats(benchNamespace.Key())
	runtime.GC()
	rss0, err := rss()
	if err != nil {
		return 0, 0, err
	}
	conns, err := openSessions(v, ln, n, nil)
	defer closeAll(conns)
	if err != nil {
		return 0, 0, err
	}
	runtime.GC()
	rss1, err := rss()
	if err != nil {
		return 0, 0, err
	}
	after, _ := theRig.eng.NamespaceStats(benchNamespace.Key())
	return float64(rss1-rss0) / n, float64(after.FifoBytesInUse-before.FifoBytesInUse) / n, nil
}

// streamedSessionMemory streams a lap of the ring (the default FIFO size
// and a bit) through each of n fresh sessions and reports the fifo memory
// each holds right after (the ring it walked: FIFOs grow as a stream needs)
// and once the sessions have been quiet for shm.TrimAfter (what they give
// back), both from the engine's count of resident segment pages.
func streamedSessionMemory() (streamed, quiet float64, err error) {
	const n = 20 // streamed well within shm.TrimAfter: "right after" is before any page is given back
	v, ln, err := memoryVariant("memory-streamed")
	if err != nil {
		return 0, 0, err
	}
	defer ln.Close()
	resident := func() int64 {
		st, _ := theRig.eng.NamespaceStats(benchNamespace.Key())
		return st.SegmentResident
	}
	base := resident()
	// each session walks its ring once
	conns, err := openSessions(v, ln, n, func(c, s net.Conn) error {
		const lap = defaultFifo + 64<<10
		werr := make(chan error, 1)
		go func() {
			src := make([]byte, 64<<10)
			var err error
			for sent := 0; sent < lap && err == nil; sent += len(src) {
				_, err = c.Write(src)
			}
			werr <- err
		}()
		if _, err := io.ReadFull(s, make([]byte, lap)); err != nil {
			return err
		}
		return <-werr
	})
	defer closeAll(conns)
	if err != nil {
		return 0, 0, err
	}
	streamed = float64(resident()-base) / n
	// Quiet: the writers give their pages back shm.TrimAfter after their
	// last write; wait for that (bounded), then read.
	deadline := time.Now().Add(3 * shm.TrimAfter)
	for r := resident(); r-base > n*16<<10 && time.Now().Before(deadline); r = resident() {
		time.Sleep(50 * time.Millisecond)
	}
	return streamed, float64(resident()-base) / n, nil
}

// openSessions opens n sessions of v to ln, calling each (if set) with the
// two ends of every one; it returns the ends opened, also on error.
func openSessions(v variant, ln net.Listener, n int, each func(c, s net.Conn) error) ([]net.Conn, error) {
	var conns []net.Conn
	for i := 0; i < n; i++ {
		c, err := v.dial(ln.Addr())
		if err != nil {
			return conns, err
		}
		s, err := ln.Accept()
		if err != nil {
			c.Close()
			return conns, err
		}
		conns = append(conns, c, s)
		if each != nil {
			if err := each(c, s); err != nil {
				return conns, err
			}
		}
	}
	return conns, nil
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		c.Close()
	}
}

func rss() (int64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/self/status")
}
