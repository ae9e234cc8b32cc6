package standalone

import (
	"context"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// watchDir delivers a value when a file of dir is written, created, removed
// or renamed into place (inotify), coalescing bursts: an editor's
// write-temp-then-rename, or `cp` of several files, reloads once.
func watchDir(ctx context.Context, dir string) (<-chan struct{}, error) {
	// Non-blocking, wrapped in an *os.File: reads park in Go's netpoller and
	// Close wakes them, so the watcher ends with ctx instead of leaking a
	// thread blocked in read(2).
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("watching %s: %w", dir, err)
	}
	const mask = unix.IN_CLOSE_WRITE | unix.IN_CREATE | unix.IN_DELETE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM
	if _, err := unix.InotifyAddWatch(fd, dir, mask); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("watching %s: %w", dir, err)
	}
	f := os.NewFile(uintptr(fd), "inotify:"+dir)
	raw := make(chan struct{}, 1)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := f.Read(buf)
			if n <= 0 || err != nil {
				close(raw)
				return
			}
			select {
			case raw <- struct{}{}:
			default:
			}
		}
	}()
	out := make(chan struct{}, 1)
	go func() {
		defer f.Close()
		const settle = 200 * time.Millisecond // debounce, not synchronisation
		var timer <-chan time.Time
		for {
			select {
			case <-ctx.Done():
				return
			case _, ok := <-raw:
				if !ok {
					return
				}
				timer = time.After(settle)
			case <-timer:
				timer = nil
				select {
				case out <- struct{}{}:
				default:
				}
			}
		}
	}()
	return out, nil
}
