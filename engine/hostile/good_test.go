//go:build !race

package hostile

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hoststack/hoststack/client"
)

// Good apps use the client library as any app would.

// Names of the good apps: the hostile app tries to attach under them.
const (
	goodServerName = "good-server"
	goodClientName = "good-client"
)

// runGoodServer listens on 0.0.0.0 (cut-through for the apps of the app
// namespace) and, for every session, hashes what arrives until the end of
// stream and answers "<bytes> <sha256>". A session that ends otherwise
// prints "end reset <err>" (a reset: what the hostile app's sessions must
// end with) or "end error <err>".
func runGoodServer() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	app, err := client.Attach(ctx, client.Options{Socket: os.Getenv(envSocket), Name: goodServerName})
	if err != nil {
		return err
	}
	ln, err := app.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		return err
	}
	out := newLines()
	out.printf("ready %d", ln.Addr().(*net.TCPAddr).Port)
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			n, sum, err := hashUntilEOF(c)
			if err != nil {
				out.printf("end %s %v", endKind(err), err)
				return
			}
			fmt.Fprintf(c, "%d %x", n, sum)
			out.printf("done %d", n)
		}()
	}
}

func hashUntilEOF(r io.Reader) (int64, []byte, error) {
	h := sha256.New()
	buf := make([]byte, 64<<10)
	var n int64
	for {
		m, err := r.Read(buf)
		h.Write(buf[:m])
		n += int64(m)
		if err == io.EOF {
			return n, h.Sum(nil), nil
		}
		if err != nil {
			return n, nil, err
		}
	}
}

func endKind(err error) string {
	if errors.Is(err, syscall.ECONNRESET) {
		return "reset"
	}
	return "error"
}

// runGoodClient runs two hash-checked transfers at once: cut-through to the
// good server and through the kernel transport to the test's TCP sink. It
// prints "ready" once both sessions are up, "progress <ct bytes> <tp bytes>"
// every 20 ms, writes until its stdin closes,
// then half-closes each session, reads the peer's "<bytes> <sha256>" and
// prints "<transfer> ok <bytes>" or "<transfer> FAIL <why>".
func runGoodClient() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	app, err := client.Attach(ctx, client.Options{Socket: os.Getenv(envSocket), Name: goodClientName})
	if err != nil {
		return err
	}
	ct, err := app.Dial(ctx, "tcp", "127.0.0.1:"+os.Getenv(envServer))
	if err != nil {
		return fmt.Errorf("cut-through dial: %w", err)
	}
	tp, err := app.Dial(ctx, "tcp", "127.0.0.1:"+os.Getenv(envSink))
	if err != nil {
		return fmt.Errorf("transport dial: %w", err)
	}
	out := newLines()
	stop := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(stop)
	}()
	out.printf("ready")
	// progress lines let the test see the transfers move under attack
	var sent [2]atomic.Int64
	go func() {
		for range time.Tick(20 * time.Millisecond) {
			out.printf("progress %d %d", sent[0].Load(), sent[1].Load())
		}
	}()
	var wg sync.WaitGroup
	for _, tr := range []struct {
		name string
		c    net.Conn
		seed uint64
	}{{"cut-through", ct, 0}, {"transport", tp, 1}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := transfer(tr.c, tr.seed, stop, &sent[tr.seed])
			if err != nil {
				out.printf("%s FAIL %v", tr.name, err)
				return
			}
			out.printf("%s ok %d", tr.name, n)
		}()
	}
	wg.Wait()
	return nil
}

// stallLimit bounds every write and the final answer of a good transfer:
// a stalled transfer fails instead of hanging.
const stallLimit = 5 * time.Second

// transfer writes pseudo-random data, paced so that the good pair leaves
// the two cores to the engine and the attacker, until stop closes; then
// it half-closes and checks the peer's count and digest against its own.
func transfer(c net.Conn, seed uint64, stop <-chan struct{}, sent *atomic.Int64) (int64, error) {
	rng := rand.NewChaCha8([32]byte{byte(seed)})
	h := sha256.New()
	buf := make([]byte, 32<<10)
	var n int64
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case <-stop:
			done = true
			continue
		case <-tick.C:
		}
		rng.Read(buf)
		c.SetWriteDeadline(time.Now().Add(stallLimit))
		if _, err := c.Write(buf); err != nil {
			return n, fmt.Errorf("write after %d bytes: %w", n, err)
		}
		h.Write(buf)
		n += int64(len(buf))
		sent.Store(n)
	}
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		return n, fmt.Errorf("close write: %w", err)
	}
	return n, checkAnswer(c, n, h)
}

func checkAnswer(c net.Conn, n int64, h hash.Hash) error {
	c.SetReadDeadline(time.Now().Add(stallLimit))
	ans, err := io.ReadAll(c)
	if err != nil {
		return fmt.Errorf("reading the peer's digest: %w", err)
	}
	want := fmt.Sprintf("%d %x", n, h.Sum(nil))
	if string(ans) != want {
		return fmt.Errorf("peer got %q, sent %q", ans, want)
	}
	return nil
}

// lines prints whole lines to stdout from any goroutine.
type lines struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func newLines() *lines { return &lines{w: bufio.NewWriter(os.Stdout)} }

func (l *lines) printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := fmt.Sprintf(format, args...)
	l.w.WriteString(strings.ReplaceAll(s, "\n", " ") + "\n")
	l.w.Flush()
}
