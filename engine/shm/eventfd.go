package shm

import (
	"encoding/binary"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// NewEventFD creates an eventfd with EFD_CLOEXEC|EFD_NONBLOCK.
//
// Eventfds are for wake-ups inside one process only (Queue.Wake, an event
// loop's own interruption): an eventfd passed to another process shares its
// open file description, so that process could clear O_NONBLOCK and fill
// the counter until our next Signal blocks. Between processes use a
// doorbell (NewDoorbell).
func NewEventFD() (int, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return -1, fmt.Errorf("shm: eventfd: %w", err)
	}
	return fd, nil
}

var one = func() (b [8]byte) { binary.NativeEndian.PutUint64(b[:], 1); return }()

// Signal adds 1 to the eventfd counter. A full counter (EAGAIN) already
// means "readable", so it counts as success.
func Signal(efd int) error {
	for {
		_, err := unix.Write(efd, one[:])
		switch err {
		case nil, unix.EAGAIN:
			return nil
		case unix.EINTR:
			continue
		}
		return fmt.Errorf("shm: eventfd write: %w", err)
	}
}

// WaitFD blocks until the eventfd is signalled (and resets its counter) or
// the deadline passes (ErrDeadline). A zero deadline waits forever. It blocks
// the calling OS thread in poll(2); call it from a goroutine that may block a
// thread (optionally runtime.LockOSThread'ed). Wake-ups may be spurious.
func WaitFD(efd int, deadline time.Time) error {
	return waitFDs([]unix.PollFd{{Fd: int32(efd), Events: unix.POLLIN}}, deadline, DrainEventFD)
}

// DrainEventFD resets the counter of an eventfd of this process without
// blocking.
func DrainEventFD(efd int) error { return drainFD(efd) }

// drainFD resets the eventfd counter (non-blocking read).
func drainFD(efd int) error {
	var b [8]byte
	for {
		_, err := unix.Read(efd, b[:])
		switch err {
		case nil, unix.EAGAIN:
			return nil
		case unix.EINTR:
			continue
		}
		return fmt.Errorf("shm: eventfd read: %w", err)
	}
}
