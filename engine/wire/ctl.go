package wire

import (
	"errors"
	"sync/atomic"
	"unsafe"
)

// Worker control line. Besides its two queues, a worker's queue segment
// holds one 64-byte line at WorkerInfo.CtlOff:
//
//	+0  sleeping   set by the app's event loop before it sleeps on the wake
//	               eventfd (then it re-checks the event queue), cleared when
//	               it wakes; the engine swaps it to 0 after queueing an event
//	               and writes the eventfd only if it was set
//
// so the engine makes no system call for events that find the loop awake.
// It is the same waiting-flag protocol as the fifos' (see engine/shm).
const (
	CtlSize     = 64
	CtlSleeping = 0
)

// Word returns the shared 64-bit word at b[off:off+8] for atomic access. off
// must be 8-byte aligned on the real address and in bounds.
func Word(b []byte, off int) (*atomic.Uint64, error) {
	if off < 0 || off > len(b)-8 {
		return nil, errors.New("wire: control word out of bounds")
	}
	p := unsafe.Pointer(unsafe.SliceData(b[off : off+8 : off+8]))
	if uintptr(p)%8 != 0 {
		return nil, errors.New("wire: control word not aligned")
	}
	return (*atomic.Uint64)(p), nil
}
