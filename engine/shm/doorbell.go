package shm

import (
	"errors"
	"fmt"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A doorbell is a pair of connected AF_UNIX SOCK_DGRAM sockets: each side of
// a relation (engine and app worker, or the two app workers of a cut-through
// segment) holds one end, its own open file description. Ringing sends one
// datagram from your end to the peer's; waiting polls your own end and
// drains it. Unlike an eventfd passed with SCM_RIGHTS, nothing the peer does
// to its end — clearing O_NONBLOCK, never reading, flooding, shutting it
// down, closing it — can make a Ring or a wait on the other end block or
// lose its wake-ups: the peer has no access to our description, every call
// is MSG_DONTWAIT, and a peer that stops reading only fills our send budget
// (EAGAIN: it has a wake-up pending anyway). A datagram pair is used rather
// than a stream pair because a stream peer could make our end permanently
// readable (EOF) for free, and rather than a pipe because a pipe's write end
// would again be one description shared by every writer.

// ErrPeerGone is returned by Ring when the other end of the doorbell was
// closed (the peer exited or dropped the relation).
var ErrPeerGone = errors.New("shm: doorbell peer gone")

// NewDoorbell returns the two ends of a new doorbell, both non-blocking and
// close-on-exec. Keep one, pass the other (and close your copy of it).
func NewDoorbell() (mine, theirs int, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, -1, fmt.Errorf("shm: doorbell socketpair: %w", err)
	}
	return fds[0], fds[1], nil
}

var ringByte = [1]byte{1}

// Ring wakes the holder of the other end of the doorbell whose end is fd. It
// never blocks: a full peer queue (EAGAIN) means a wake-up is pending there
// already, so it counts as success. ErrPeerGone when the peer end is closed.
func Ring(fd int) error {
	for {
		_, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&ringByte[0])), 1,
			unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL, 0, 0)
		switch e {
		case 0, unix.EAGAIN:
			return nil
		case unix.EINTR:
			continue
		case unix.ECONNREFUSED, unix.EPIPE, unix.ENOTCONN, unix.ECONNRESET:
			return ErrPeerGone
		}
		return fmt.Errorf("shm: ring doorbell: %w", e)
	}
}

// DrainBell takes one pending ring (or a socket error the peer set) from
// our end fd without blocking. One, not all: a ring is sent only when the
// waiter announced it sleeps, so one is what is normally there, and the
// second receive that would confirm the end is empty costs as much as the
// first. Rings left over keep the end readable: the next wait returns at
// once, the waiter re-checks and drains the next (a peer ringing in a loop
// cannot keep a waiter inside one drain).
func DrainBell(fd int) error {
	var b [8]byte
	for i := 0; i < 4; i++ {
		_, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
			unix.MSG_DONTWAIT, 0, 0)
		switch e {
		case 0, unix.EAGAIN:
			return nil
		case unix.EINTR, unix.ECONNRESET, unix.ECONNREFUSED:
			continue // interrupted, or a reported (and now cleared) socket error
		}
		return fmt.Errorf("shm: drain doorbell: %w", e)
	}
	return nil
}

// WaitBell blocks the calling OS thread in poll(2) until our end fd of a
// doorbell is rung, then drains it; ErrDeadline when the deadline (zero:
// none) passes first. Wake-ups may be spurious: re-check after it returns.
func WaitBell(fd int, deadline time.Time) error {
	return waitFDs([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, deadline, DrainBell)
}

// waitFDs polls fds until one is ready or the deadline passes, then calls
// drain for each ready one. POLLERR and POLLHUP count as ready (draining
// consumes a socket error); POLLNVAL is a caller bug.
func waitFDs(fds []unix.PollFd, deadline time.Time, drain func(int) error) error {
	for {
		timeout := -1
		if !deadline.IsZero() {
			d := time.Until(deadline)
			if d <= 0 {
				timeout = 0 // last look, without blocking
			} else {
				timeout = int((d + time.Millisecond - 1) / time.Millisecond)
			}
		}
		n, err := unix.Poll(fds, timeout)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return fmt.Errorf("shm: poll: %w", err)
		}
		if n == 0 {
			if timeout == 0 {
				return ErrDeadline
			}
			continue // recompute the remaining time
		}
		for _, p := range fds {
			if p.Revents&unix.POLLNVAL != 0 {
				return fmt.Errorf("shm: poll: fd %d is not open", p.Fd)
			}
			if p.Revents != 0 {
				if err := drain(int(p.Fd)); err != nil {
					return err
				}
			}
		}
		return nil
	}
}
