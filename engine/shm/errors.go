package shm

import (
	"errors"
	"os"
)

var (
	// ErrCorrupt reports that a value read from shared memory is impossible
	// (an index moving backwards or past the capacity, a message length
	// larger than a slot, a bad header). It is sticky: the side that saw it
	// keeps returning it, so a hostile peer can only break its own session.
	ErrCorrupt = errors.New("shm: shared memory corrupted by peer")
	// ErrClosed is returned by writes after CloseWrite and by operations on
	// a closed Segment.
	ErrClosed = errors.New("shm: closed")
	// ErrNoSpace is returned by Allocator.Alloc when no free extent fits.
	ErrNoSpace = errors.New("shm: no space left in segment")
	// ErrQueueFull is returned by Queue.Send when every slot is taken.
	ErrQueueFull = errors.New("shm: message queue full")
	// ErrMsgSize is returned by Queue.Send for a message longer than MsgSize.
	ErrMsgSize = errors.New("shm: message larger than MsgSize")
	// ErrInterrupted is returned by Queue.Recv after Queue.Wake.
	ErrInterrupted = errors.New("shm: receive interrupted")
	// ErrInvalid reports a caller error (bad offset, size, alignment,
	// Consume beyond what Peek returned, ...).
	ErrInvalid = errors.New("shm: invalid argument")
	// ErrNotSealed is returned by OpenSegment for a memfd that is not sealed
	// against shrinking and growing.
	ErrNotSealed = errors.New("shm: segment fd not sealed against shrink/grow")
	// ErrDeadline is returned by waits whose deadline passed. It is
	// os.ErrDeadlineExceeded so net.Conn code can test for it unchanged.
	ErrDeadline = os.ErrDeadlineExceeded
)
