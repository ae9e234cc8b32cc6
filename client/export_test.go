package client

import "net"

// ConnWorker is the id of the worker that owns a session of this client
// (its requests and events go through that worker's queues).
func ConnWorker(c net.Conn) uint32 { return c.(*Conn).w.id }
