package client_test

import (
	"context"
	"io"
	"testing"
	"time"
)

// TestBulk moves 256 MiB between two apps of this process through 1 MiB
// fifos with a writer that blocks on full fifos all the time (it caught a
// lost wake-up once).
func TestBulk(t *testing.T) {
	cfg := testNS
	cfg.RxFifoSize, cfg.TxFifoSize = 1<<20, 1<<20
	_, sock := startEngine(t, cfg)
	a := attach(t, sock, "a")
	b := attach(t, sock, "b")
	ln, _ := b.Listen("tcp", "127.0.0.1:0")
	done := make(chan int64)
	go func() {
		c, _ := ln.Accept()
		n, _ := io.Copy(io.Discard, c)
		done <- n
	}()
	c, err := a.Dial(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	block := make([]byte, 4<<20)
	start := time.Now()
	for i := 0; i < 64; i++ {
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(block); err != nil {
			t.Fatalf("block %d: %v", i, err)
		}
	}
	c.Close()
	t.Log(<-done, time.Since(start))
}
