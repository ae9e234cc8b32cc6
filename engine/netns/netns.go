// Package netns runs code inside another network namespace. Sockets keep the
// namespace they were created in, so a transport creates its sockets through
// Do and uses them from any goroutine afterwards.
package netns

import (
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// ErrNetns marks errors entering or leaving a namespace (as opposed to
// errors of fn itself).
var ErrNetns = errors.New("network namespace")

// Do calls fn on an OS thread that is inside the network namespace at path
// (a file such as /var/run/netns/x or /proc/<pid>/ns/net); "" calls fn in the
// process's own namespace. The thread returns to its namespace afterwards, or,
// when it cannot, stays locked so that it dies with its goroutine instead of
// serving others from the wrong namespace.
func Do(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("%w %s: %v", ErrNetns, path, err)
			return
		}
		defer unix.Close(target)
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("%w: own namespace: %v", ErrNetns, err)
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("%w: setns %s: %v", ErrNetns, path, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			ch <- errors.Join(ferr, fmt.Errorf("%w: cannot return from %s: %v", ErrNetns, path, err))
			return
		}
		runtime.UnlockOSThread()
		ch <- ferr
	}()
	return <-ch
}
