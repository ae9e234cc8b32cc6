package client

import "net"

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
