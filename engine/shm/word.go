package shm

// The only file of the package that uses unsafe: turning a validated offset
// of a mapped segment into a pointer to a shared 64-bit atomic word.

import (
	"sync/atomic"
	"unsafe"
)

// wordAt returns the shared word at b[off:off+8]. The slice expression is
// bounds-checked; alignment is checked on the real address (a misaligned
// atomic would be a split lock, ~670x slower, and on some CPUs a fault).
// Callers validate off at Init/Open time, so the error is a programming
// error reported as ErrInvalid, never a panic.
func wordAt(b []byte, off int) (*atomic.Uint64, error) {
	if off < 0 || off > len(b)-8 {
		return nil, ErrInvalid
	}
	p := unsafe.Pointer(unsafe.SliceData(b[off : off+8 : off+8]))
	if uintptr(p)%8 != 0 {
		return nil, ErrInvalid
	}
	return (*atomic.Uint64)(p), nil
}

// addrAligned reports whether &b[off] is aligned to a.
func addrAligned(b []byte, off, a int) bool {
	if off < 0 || off >= len(b) {
		return false
	}
	return uintptr(unsafe.Pointer(unsafe.SliceData(b[off:])))%uintptr(a) == 0
}
