package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/engine/wire"
)

// variant is one way of getting a connected pair of net.Conns.
type variant struct {
	name   string
	listen func() (net.Listener, error)
	dial   func(addr net.Addr) (net.Conn, error)
}

func kernelVariants(dir string) []variant {
	return []variant{
		{
			name:   "tcp-loopback",
			listen: func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") },
			dial:   func(a net.Addr) (net.Conn, error) { return net.Dial("tcp", a.String()) },
		},
		{
			name: "unix-stream",
			listen: func() (net.Listener, error) {
				p := filepath.Join(dir, fmt.Sprintf("u%d.sock", time.Now().UnixNano()))
				return net.Listen("unix", p)
			},
			dial: func(a net.Addr) (net.Conn, error) { return net.Dial("unix", a.String()) },
		},
	}
}

type measurer struct {
	d time.Duration
	n int
}

// pair returns a connected (client, server) pair and a closer for the listener.
func pair(v variant) (c, s net.Conn, closeLn func(), err error) {
	ln, err := v.listen()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("listen: %w", err)
	}
	type res struct {
		c   net.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() { s, err := ln.Accept(); ch <- res{s, err} }()
	c, err = v.dial(ln.Addr())
	if err != nil {
		ln.Close()
		return nil, nil, nil, fmt.Errorf("dial: %w", err)
	}
	r := <-ch
	if r.err != nil {
		c.Close()
		ln.Close()
		return nil, nil, nil, fmt.Errorf("accept: %w", r.err)
	}
	return c, r.c, func() { ln.Close() }, nil
}

func median(xs []float64) float64 {
	sort.Float64s(xs)
	return xs[len(xs)/2]
}

// stream writes size-byte writes for m.d and returns the median GB/s the
// reader saw over m.n runs.
func (m measurer) stream(v variant, size int) (float64, error) {
	var rates []float64
	for i := 0; i < m.n; i++ {
		r, err := streamOnce(v, size, m.d)
		if err != nil {
			return 0, err
		}
		rates = append(rates, r)
	}
	return median(rates), nil
}

func streamOnce(v variant, size int, d time.Duration) (float64, error) {
	c, s, closeLn, err := pair(v)
	if err != nil {
		return 0, err
	}
	defer closeLn()
	defer s.Close()
	buf := make([]byte, size)
	var wg sync.WaitGroup
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer c.Close()
		// Check the clock every 64 writes: time.Now per 64 B write would
		// dominate the thing we measure.
		deadline := time.Now().Add(d)
		for {
			for j := 0; j < 64; j++ {
				if _, err := c.Write(buf); err != nil {
					werr = err
					return
				}
			}
			if time.Now().After(deadline) {
				return
			}
		}
	}()
	rbuf := make([]byte, 256<<10)
	var total int64
	start := time.Now()
	for {
		n, err := s.Read(rbuf)
		total += int64(n)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("read: %w", err)
		}
	}
	el := time.Since(start)
	wg.Wait()
	if werr != nil {
		return 0, fmt.Errorf("write: %w", werr)
	}
	return float64(total) / el.Seconds() / 1e9, nil
}

// memcpy is the single-thread copy reference: copy size-byte chunks from a
// 4 MiB source into a 4 MiB destination ring, as a FIFO's writer does.
func (m measurer) memcpy(size int) float64 {
	const ring = 4 << 20
	src := make([]byte, ring)
	dst := make([]byte, ring)
	var rates []float64
	for i := 0; i < m.n; i++ {
		var total int64
		start := time.Now()
		off := 0
		for time.Since(start) < m.d {
			for j := 0; j < 1024; j++ {
				if off+size > ring {
					off = 0
				}
				copy(dst[off:off+size], src[off:off+size])
				off += size
			}
			total += int64(1024 * size)
		}
		rates = append(rates, float64(total)/time.Since(start).Seconds()/1e9)
	}
	return median(rates)
}

// rr measures size-byte request/response round trips.
func (m measurer) rr(v variant, size int) (p50, p99 time.Duration, err error) {
	c, s, closeLn, err := pair(v)
	if err != nil {
		return 0, 0, err
	}
	defer closeLn()
	defer c.Close()
	go func() {
		defer s.Close()
		b := make([]byte, size)
		for {
			if _, err := io.ReadFull(s, b); err != nil {
				return
			}
			if _, err := s.Write(b); err != nil {
				return
			}
		}
	}()
	b := make([]byte, size)
	one := func() (time.Duration, error) {
		t := time.Now()
		if _, err := c.Write(b); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return 0, err
		}
		return time.Since(t), nil
	}
	for i := 0; i < 2000; i++ { // warm up
		if _, err := one(); err != nil {
			return 0, 0, err
		}
	}
	var lat []time.Duration
	deadline := time.Now().Add(time.Duration(m.n) * m.d)
	for time.Now().Before(deadline) && len(lat) < 2_000_000 {
		d, err := one()
		if err != nil {
			return 0, 0, err
		}
		lat = append(lat, d)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat[len(lat)/2], lat[len(lat)*99/100], nil
}

// connect measures dial + accept + close on both sides per second.
// connect measures connect+accept+close, one dialer and one acceptor. A
// connect refused because the listener's event queue is full (the acceptor
// fell behind) is tried again after a millisecond, inside the measured time,
// as a TCP client resends a SYN a full listen backlog dropped; retries says
// how often.
func (m measurer) connect(v variant) (rate float64, retries int, err error) {
	ln, err := v.listen()
	if err != nil {
		return 0, 0, err
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		for {
			s, err := ln.Accept()
			if err != nil {
				done <- nil
				return
			}
			s.Close()
		}
	}()
	var rates []float64
	for i := 0; i < m.n; i++ {
		count := 0
		start := time.Now()
		for time.Since(start) < m.d {
			c, err := v.dial(ln.Addr())
			var ce *client.Error
			if errors.As(err, &ce) && ce.Code == wire.ErrQueueFull {
				retries++
				time.Sleep(time.Millisecond)
				continue
			}
			if err != nil {
				return 0, retries, err
			}
			c.Close()
			count++
		}
		rates = append(rates, float64(count)/time.Since(start).Seconds())
	}
	ln.Close()
	<-done
	return median(rates), retries, nil
}

func tempDir() (string, error) { return os.MkdirTemp("", "hoststack-bench-") }
