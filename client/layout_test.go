package client

import (
	"testing"
	"unsafe"
)

// TestConnLayout: a Conn takes a size class that is a multiple of the cache
// line (every class from 512 bytes is), so Conns never share a line, and
// the writer's fifo handle starts on a line after the reader's ends. It is
// exactly 512 bytes: one byte more takes the next class, 576, and every
// session of the app pays 64 bytes for it.
func TestConnLayout(t *testing.T) {
	var c Conn
	if size := unsafe.Sizeof(c); size != 512 {
		t.Errorf("Conn is %d bytes, want 512: below, its size class may not be a multiple of 64; above, it takes the 576-byte class", size)
	}
	rxEnd := unsafe.Offsetof(c.rx) + unsafe.Sizeof(c.rx) - 1
	if unsafe.Offsetof(c.tx)/64 <= rxEnd/64 {
		t.Errorf("tx (offset %d) shares a cache line with rx (ends at %d)", unsafe.Offsetof(c.tx), rxEnd)
	}
}
