package shm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// NewEventFD creates an eventfd with EFD_CLOEXEC|EFD_NONBLOCK.
//
// Non-blocking on purpose: the eventfd is shared with the peer, and with a
// blocking fd a peer that pushes the counter to its maximum would block our
// Signal forever. Waiters block in poll(2) instead (WaitFD), on their own OS
// thread, not through Go's netpoller (which adds ~30 µs per wake-up).
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
	fds := []unix.PollFd{{Fd: int32(efd), Events: unix.POLLIN}}
	for {
		timeout := -1
		if !deadline.IsZero() {
			d := time.Until(deadline)
			if d <= 0 {
				// last look, without blocking
				timeout = 0
			} else {
				timeout = int((d + time.Millisecond - 1) / time.Millisecond)
			}
		}
		n, err := unix.Poll(fds, timeout)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("shm: poll eventfd: %w", err)
		}
		if n == 0 {
			if timeout == 0 {
				return ErrDeadline
			}
			continue // recompute the remaining time
		}
		if fds[0].Revents&(unix.POLLERR|unix.POLLNVAL) != 0 {
			return fmt.Errorf("shm: poll eventfd: revents %#x", fds[0].Revents)
		}
		return drainFD(efd)
	}
}

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
