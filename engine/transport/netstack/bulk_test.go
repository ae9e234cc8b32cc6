//go:build !race

// Long transfers run only without the race detector (make test runs this
// package again without it): under -race they take minutes.

package netstack_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hoststack/hoststack/client"
	"github.com/hoststack/hoststack/internal/netnstest"
	"github.com/hoststack/hoststack/internal/stacktest"
)

// hashSink serves ln: each session is read to its end, hashed, and the
// SHA-256 sent back before the server closes.
func hashSink(ln net.Listener) {
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				h := sha256.New()
				if _, err := io.Copy(h, c); err != nil {
					return
				}
				_, _ = c.Write(h.Sum(nil))
			}()
		}
	}()
}

// send writes n pseudo-random bytes (seed) through a new session to addr,
// half-closes, and checks the server's hash of what it received. The whole
// transfer must end within limit: a stalled flow fails instead of hanging.
func send(app *client.App, addr string, n int64, seed uint64, limit time.Duration) error {
	c, err := dial(app, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(limit))
	src := stacktest.NewSource(n, seed)
	if _, err := io.CopyBuffer(c, src, make([]byte, 256<<10)); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		return err
	}
	sum, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("reading the server's hash: %w", err)
	}
	if !bytes.Equal(sum, src.Sum()) {
		return fmt.Errorf("the server's sha256 of %d bytes differs from what was sent", n)
	}
	return nil
}

// TestBulk: per link layer, 1 GiB verified by hash, 16 parallel flows, and
// 20 consecutive 64 MiB runs none of which may stall.
func TestBulk(t *testing.T) {
	for _, kind := range links {
		t.Run(kind, func(t *testing.T) {
			p := pair(t)
			n := newNode(t, kind, p.A, "10.99.0.11/24")
			app := n.attach(t, "bulk")
			ln := netnstest.Listen(t, p.B.Path(), "tcp", "10.99.0.2:0")
			hashSink(ln)
			addr := ln.Addr().String()

			start := time.Now()
			if err := send(app, addr, 1<<30, 1, 5*time.Minute); err != nil {
				t.Fatalf("1 GiB: %v", err)
			}
			t.Logf("1 GiB intact in %v (%.1f Gbit/s)", time.Since(start).Round(time.Millisecond),
				float64(8<<30)/time.Since(start).Seconds()/1e9)

			var wg sync.WaitGroup
			errs := make(chan error, 16)
			for i := range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := send(app, addr, 32<<20, uint64(100+i), 2*time.Minute); err != nil {
						errs <- fmt.Errorf("flow %d: %w", i, err)
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}

			for run := range 20 {
				if err := send(app, addr, 64<<20, uint64(1000+run), time.Minute); err != nil {
					t.Fatalf("run %d of 20: %v", run+1, err)
				}
			}
		})
	}
}

// TestLoss: with 1% of the packets dropped both ways, a 64 MiB transfer
// still arrives intact.
func TestLoss(t *testing.T) {
	for _, kind := range links {
		t.Run(kind, func(t *testing.T) {
			p := pair(t)
			n := newNode(t, kind, p.A, "10.99.0.11/24")
			app := n.attach(t, "lossy")
			ln := netnstest.Listen(t, p.B.Path(), "tcp", "10.99.0.2:0")
			hashSink(ln)
			netnstest.Loss(t, p.B, 1)
			if err := send(app, ln.Addr().String(), 64<<20, 7, 3*time.Minute); err != nil {
				t.Fatalf("64 MiB with 1%% loss: %v", err)
			}
			t.Logf("loss rules after the transfer:\n%s", netnstest.Dropped(t, p.B))
		})
	}
}
