package client

// Design notes.
//
// # Data path
//
// A session is two SPSC fifos: in a cut-through segment shared by exactly
// the two app workers involved, or, for a session through a transport, in
// the app's own segment with the engine's transport at the other end (it
// wakes and is woken the same way a cut-through peer is). Write copies into the tx fifo and publishes the
// tail; Read copies out of the rx fifo and publishes the head. Neither enters
// the kernel unless the other side sleeps: after publishing, the writer
// checks-and-clears the reader's waiting flag in the fifo header and only if
// it was set writes the peer worker's wake eventfd (passed by the engine with
// the segment); the reader does the same for a writer blocked on a full fifo.
//
// # Sleeping
//
// A Read (Write) that finds nothing to do polls for Options.SpinFor (20µs;
// forever with Options.Spin, yielding the CPU now and then), then registers
// with its worker's event loop, sets the fifo's waiting flag, re-checks, and
// parks on a channel (with the deadline and the close channel in the same
// select). Each worker has one event loop goroutine sleeping in poll(2) on
// the worker's wake eventfd (its own thread, not Go's netpoller, which would
// add ~30µs per wake-up). The engine writes that eventfd after each event
// (the event queue shares it), and fifo peers write it as above. On every
// wake-up the loop drains the event queue, then checks each registered
// waiter; a waiter that is not ready gets its waiting flag set again and is
// re-checked, because the wake-up may have consumed the flag for progress
// the waiter had already seen. The loop then yields its P so the goroutines
// it readied run at once.
//
// # Memory safety
//
// The app never touches a fifo after telling the engine it is done with the
// session (Close holds the read and write locks while it marks the session
// closed), and the engine frees a fifo pair only when both ends are done. A
// segment is unmapped only when the engine deleted it and no local session
// refers to it. App.Close closes every session before unmapping anything.
// Events come from the engine, which is trusted; fifo contents and indices
// come from the peer app and are validated by engine/shm (a corrupted fifo
// fails that session with an error, nothing else).

// # Engine loss
//
// When the attach socket ends (the agent died, stopped or is being
// upgraded) the attachment is lost, not the app (unless
// Options.NoReattach): App.lost moves the attachment's workers to the
// orphans, resets the sessions whose other end was the engine (those in the
// app's own segment, and UDP sockets), fails pending requests, and starts
// re-attaching with back-off. Orphaned workers keep their event loops: a
// cut-through session needs only its fifos and the peer's wake-up
// descriptor, both held by the two apps, so its Read and Write go on; its
// end travels in the fifos (a write after the peer's CloseRead fails with
// EPIPE, since no engine will say the peer closed), and Close releases it
// locally. A worker retires, and a segment of the old engine is unmapped,
// with the last local session using it. The new attachment gets fresh
// tables (the new engine's handles may repeat the old one's); listeners
// are bound again on their addresses by restoreListeners.
