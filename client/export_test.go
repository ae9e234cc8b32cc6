package client

import (
	"net"
	"time"
)

// ConnWorker is the id of the worker that owns a session of this client
// (its requests and events go through that worker's queues).
func ConnWorker(c net.Conn) uint32 { return c.(*Conn).w.id }

// BlockedCalls is the number of Read/Write calls blocked on the first
// worker of a.
func BlockedCalls(a *App) int {
	w := a.workers[0]
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, set := range w.waiters {
		n += len(set)
	}
	return n
}

// Rechecked is how many blocked calls the first worker of a re-checked
// after rings so far.
func Rechecked(a *App) uint64 {
	w := a.workers[0]
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.checked
}

// SetTrimAfter sets how long written fifo pages stay before a's workers give
// back those the fifo no longer holds. Call before a's sessions write.
func SetTrimAfter(a *App, d time.Duration) { a.trimAfter = d }

// SegmentResident is the resident memory of the segment that holds c's fifos.
func SegmentResident(c net.Conn) (int64, error) { return c.(*Conn).seg.seg.Resident() }
