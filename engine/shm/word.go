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

// wordsAt returns the n shared words at b[off:off+8n], checked as wordAt.
func wordsAt(b []byte, off, n int) ([]atomic.Uint64, error) {
	if n <= 0 || off < 0 || n > (len(b)-off)/8 {
		return nil, ErrInvalid
	}
	p := unsafe.Pointer(unsafe.SliceData(b[off : off+8*n : off+8*n]))
	if uintptr(p)%8 != 0 {
		return nil, ErrInvalid
	}
	return unsafe.Slice((*atomic.Uint64)(p), n), nil
}

// fifoHeader is the fifo header layout of fifo.go as a struct: one pointer
// to it in a Fifo handle instead of one per word.
type fifoHeader struct {
	tail, eof                     atomic.Uint64 // producer line
	_                             [6]uint64
	head, rclosed                 atomic.Uint64 // consumer line
	_                             [6]uint64
	magic, capacity, rwait, wwait atomic.Uint64 // shared line
	_                             [4]uint64
}

// The struct must match fifo.go's offsets: each index below is 0 or the
// package does not compile.
var (
	_ = [1]struct{}{}[unsafe.Offsetof(fifoHeader{}.tail)-fifoOffTail]
	_ = [1]struct{}{}[unsafe.Offsetof(fifoHeader{}.eof)-fifoOffEOF]
	_ = [1]struct{}{}[unsafe.Offsetof(fifoHeader{}.head)-fifoOffHead]
	_ = [1]struct{}{}[unsafe.Offsetof(fifoHeader{}.rclosed)-fifoOffRClosed]
	_ = [1]struct{}{}[unsafe.Offsetof(fifoHeader{}.magic)-fifoOffMagic]
	_ = [1]struct{}{}[unsafe.Offsetof(fifoHeader{}.capacity)-fifoOffCap]
	_ = [1]struct{}{}[unsafe.Offsetof(fifoHeader{}.rwait)-fifoOffRWait]
	_ = [1]struct{}{}[unsafe.Offsetof(fifoHeader{}.wwait)-fifoOffWWait]
	_ = [1]struct{}{}[unsafe.Sizeof(fifoHeader{})-fifoHeaderSize]
)

// headerAt returns the fifo header at b[off:off+fifoHeaderSize], or
// ErrInvalid when it does not fit or &b[off] is not 64-byte aligned.
func headerAt(b []byte, off int) (*fifoHeader, error) {
	if off < 0 || off > len(b)-fifoHeaderSize {
		return nil, ErrInvalid
	}
	p := unsafe.Pointer(unsafe.SliceData(b[off : off+fifoHeaderSize : off+fifoHeaderSize]))
	if uintptr(p)%Align != 0 {
		return nil, ErrInvalid
	}
	return (*fifoHeader)(p), nil
}

// addrAligned reports whether &b[off] is aligned to a.
func addrAligned(b []byte, off, a int) bool {
	if off < 0 || off >= len(b) {
		return false
	}
	return uintptr(unsafe.Pointer(unsafe.SliceData(b[off:])))%uintptr(a) == 0
}
