//go:build !race

package client_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/engine/shm"
)

// TestHostilePeerScribbles: a peer that writes garbage into the shared fifo
// headers breaks only that session: the victim's Read returns an error (no
// panic, no out-of-bounds access), and its other sessions keep working.
func TestHostilePeerScribbles(t *testing.T) {
	_, sock := startEngine(t, testNS)
	victim := attach(t, sock, "victim")
	peer := attach(t, sock, "hostile")
	ln, err := victim.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	acc := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			acc <- c
		}
	}()
	bad, err := peer.Dial(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	vbad := <-acc
	good, err := peer.Dial(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	vgood := <-acc
	bad.Write([]byte("ok"))
	b := make([]byte, 2)
	io.ReadFull(vbad, b)

	// Map the cut-through segment like a hostile app would and move the
	// tail of the first fifo (the one "bad" writes) far past the head. A
	// segment of an earlier test may still be mapped here (its last user
	// unmaps it): scribble on every one of that name, or the wrong one
	// leaves the Read below blocked for good.
	for _, seg := range findSegments(t, "hs-ct-") {
		defer seg.Close()
		binary.LittleEndian.PutUint64(seg.Bytes()[0:], 1<<40)
	}
	if _, err := vbad.Read(b); err == nil || !errors.Is(err, shm.ErrCorrupt) {
		t.Fatalf("read of a corrupted fifo: %v", err)
	}
	vbad.Close()
	// the other session of the same pair of apps is unaffected
	good.Write([]byte("fine"))
	b = make([]byte, 4)
	if _, err := io.ReadFull(vgood, b); err != nil || string(b) != "fine" {
		t.Fatalf("%q %v", b, err)
	}
}

// findSegments opens this process's mappings of segments by memfd name.
func findSegments(t *testing.T, prefix string) []*shm.Segment {
	var segs []*shm.Segment
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		l, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil || !strings.HasPrefix(l, "/memfd:"+prefix) {
			continue
		}
		fd, err := unix.Open(filepath.Join("/proc/self/fd", e.Name()), unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		s, err := shm.OpenSegment(fd)
		if err != nil {
			t.Fatal(err)
		}
		segs = append(segs, s)
	}
	if len(segs) == 0 {
		t.Fatal("no segment " + prefix)
	}
	return segs
}
