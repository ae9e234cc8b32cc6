package shm

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Epoll is an epoll set for an event loop whose sleeps park its goroutine
// in Go's netpoller (an epoll descriptor is itself pollable) instead of
// blocking an OS thread in epoll_wait or poll.
//
// Why: a goroutine blocked in a system call keeps its P (the right to run
// Go code) until the runtime's monitor takes it back, 20 µs at the
// earliest; on a 2-core node two sleeping loops hold both Ps, and every
// goroutine the netpoller readies meanwhile (a transport's socket, another
// loop's doorbell) waits for that. Measured on 64 B round trips through
// the engine's userspace stack: 148 → 67 µs (AF_PACKET) and 196 → 41-57 µs
// (AF_XDP) once its receive loops parked here (with the client's adaptive
// poll, client.spinner). A parked loop also holds no thread.
//
// The cost: the netpoller is consulted only when a P runs out of work (or
// every 10 ms), so goroutines that poll with runtime.Gosched delay a
// parked loop's wake-up. The loops on the cut-through path, the client's
// worker loop and the engine shards, keep sleeping in epoll_wait
// (client/worker.go, engine/session/shard.go); the transports' loops park.
type Epoll struct {
	fd   int
	file *os.File        // fd, registered with the netpoller
	raw  syscall.RawConn // its raw access
	set  time.Time       // the deadline last given to file
}

// NewEpoll creates an empty set.
func NewEpoll() (*Epoll, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("shm: epoll_create: %w", err)
	}
	// Non-blocking, so that os.NewFile registers it with the netpoller.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("shm: epoll descriptor: %w", err)
	}
	file := os.NewFile(uintptr(fd), "epoll")
	raw, err := file.SyscallConn()
	if err != nil {
		file.Close()
		return nil, fmt.Errorf("shm: epoll descriptor: %w", err)
	}
	return &Epoll{fd: fd, file: file, raw: raw}, nil
}

// Add watches fd for events (EPOLLIN, ...; level triggered unless
// EPOLLET is among them); key is what Wait reports for it.
func (e *Epoll) Add(fd int, events uint32, key int32) error {
	if err := unix.EpollCtl(e.fd, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: events, Fd: key}); err != nil {
		return fmt.Errorf("shm: epoll_ctl add: %w", err)
	}
	return nil
}

// Del stops watching fd.
func (e *Epoll) Del(fd int) error {
	if err := unix.EpollCtl(e.fd, unix.EPOLL_CTL_DEL, fd, nil); err != nil {
		return fmt.Errorf("shm: epoll_ctl del: %w", err)
	}
	return nil
}

// Poll returns the ready events without waiting.
func (e *Epoll) Poll(events []unix.EpollEvent) (int, error) {
	for {
		n, err := unix.EpollWait(e.fd, events, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("shm: epoll_wait: %w", err)
		}
		return n, nil
	}
}

// Wait returns the ready events, parking the goroutine until there are
// some or the deadline passes (zero: none): then it returns 0 and
// ErrDeadline. After Close it returns os.ErrClosed.
func (e *Epoll) Wait(events []unix.EpollEvent, deadline time.Time) (int, error) {
	if !deadline.Equal(e.set) {
		if err := e.file.SetReadDeadline(deadline); err != nil {
			return 0, os.ErrClosed // a pollable descriptor's only failure here
		}
		e.set = deadline
	}
	var n int
	var werr error
	err := e.raw.Read(func(fd uintptr) bool {
		for {
			n, werr = unix.EpollWait(int(fd), events, 0)
			if werr != unix.EINTR {
				// nothing ready: park until the set signals (an edge:
				// the set was just seen empty)
				return n != 0 || werr != nil
			}
		}
	})
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return 0, ErrDeadline
	case err != nil:
		// the only other failure of a pollable descriptor's wait: closed
		// (before or during it)
		return 0, os.ErrClosed
	case werr != nil:
		return 0, fmt.Errorf("shm: epoll_wait: %w", werr)
	}
	return n, nil
}

// Close closes the set; a Wait parked on it returns os.ErrClosed.
func (e *Epoll) Close() error { return e.file.Close() }
