// Package shm is the shared-memory layer between the session engine and the
// apps: sealed memfd segments, an allocator for the engine's side of them,
// single-producer/single-consumer byte FIFOs and fixed-size message queues
// with eventfd wake-ups. The engine and the client both import it; nothing
// in it knows about sessions.
//
// # Segments
//
// CreateSegment makes a memfd (MFD_CLOEXEC|MFD_ALLOW_SEALING), sizes it once
// (rounded up to a page), seals it with F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL
// and maps it MAP_SHARED once. The fd (Segment.FD) is what the engine passes
// with SCM_RIGHTS. OpenSegment is the receiving side: it takes ownership of
// the fd and refuses (ErrNotSealed) anything that is not a memfd sealed
// against shrinking and growing — an unsealed file could be truncated by the
// peer and every later access would SIGBUS. Close unmaps; FIFOs and queues of
// a closed segment must not be used any more.
//
// # Allocator
//
// Allocator lives in the engine's private memory and hands out 64-byte
// aligned extents of a segment (first fit, coalescing free). Offsets the
// engine tells the app about come from it, so they are trusted on both
// sides; nothing about allocation is stored in the segment.
//
// # FIFOs
//
// A Fifo is a byte ring at a 64-byte aligned offset of a segment; its
// capacity is a power of two in [MinFifoCapacity, MaxFifoCapacity] and it
// occupies FifoFootprint(capacity) = 192 + capacity bytes:
//
//	+0    tail      producer line: bytes ever written (free-running uint64)
//	+8    eof       producer line: non-zero after CloseWrite
//	+64   head      consumer line: bytes ever consumed (free-running uint64)
//	+72   rclosed   consumer line: non-zero after CloseRead
//	+128  magic     shared line: written by InitFifo
//	+136  capacity  shared line: informational, never used for bounds
//	+144  rwait     shared line: reader waiting (consumer sets, producer clears)
//	+152  wwait     shared line: writer waiting (producer sets, consumer clears)
//	+192  data      byte i of the stream is at data[i & (capacity-1)]
//
// The producer's and the consumer's words are on separate cache lines, so
// neither side's index stores invalidate the line the other side writes.
// The wake flags sit on the third line, which is written only around
// sleeping, so checking them after every operation costs a load of a line
// that stays shared. Every shared word is 8-byte aligned (Init/Open check
// the real address); there are no split-lock atomics.
//
// Each side keeps its own index in private memory (the shared copy is only
// published, never read back) and caches the peer's index, re-reading it only
// when the cached value does not allow the operation (Write/WriteVec when the
// cached free space is smaller than the request, Read when the cached data is
// shorter than the buffer); Peek, Len and Free always re-read, as they report
// what is there. Write and WriteVec copy straight into the ring (WriteVec
// gathers several buffers with one index publication); Read copies out; Peek
// returns all readable bytes as at most two slices of the ring (two on
// wrap-around) and Consume commits, for zero-copy readers. Nothing blocks:
// blocking is built on the wake flags (below).
//
// End of stream: CloseWrite stores the eof word after the last tail store. A
// reader that finds the FIFO empty loads eof and, if set, loads the tail once
// more before reporting io.EOF, so everything written before the close is
// read first.
//
// # Trust
//
// The peer may write any value into any shared word at any time, including
// while we read it. Therefore every operation reads a peer index exactly
// once into a local, validates it, and uses only the local: the head may only
// move forward and never past our tail; the tail may only move forward and
// never more than capacity ahead of our head. Positions are always masked
// with the caller's capacity (from the engine's record or the engine's
// message, never from the segment), and every copy is bounded by the
// validated distance and by Go's slice bounds. An impossible value makes
// that side of that FIFO return ErrCorrupt from then on (sticky): a
// corrupted or hostile peer breaks its own sessions only, never the engine —
// no panic, no out-of-bounds access. The content of the ring is not
// validated (it is the peer's data); Peek's slices alias shared memory that
// the peer may change under the reader.
//
// # Wake-up protocol
//
// A consumer that finds a FIFO empty (a producer that finds it full works the
// same way with WriterWaiting and Free):
//
//	consumer                               producer
//	SetReaderWaiting()         // F        Write(...)                  // T: stores tail
//	Len() / Peek() again       // R        if f.TakeReaderWaiting() {  // L: load, then swap to 0
//	if data: ClearReaderWaiting()               Signal(readerEventfd)
//	else:    WaitFD(readerEventfd, deadline)}
//	re-check after every wake-up (they can be spurious)
//
// No wake-up is lost. Go's sync/atomic operations are sequentially
// consistent: all of them appear in one total order S consistent with each
// goroutine's program order (on amd64 every atomic store is an XCHG, a full
// barrier; atomics on a MAP_SHARED page are ordered between processes by
// the same hardware rules as between threads). F precedes R and T precedes L
// in program order. If T precedes R in S, R sees the new tail and the
// consumer does not sleep. Otherwise R precedes T, hence F < R < T < L in S
// and L sees the flag set; the swap returns the set value (the consumer
// clears the flag itself only on the path where it does not sleep) and the
// producer signals. An eventfd keeps its count, so a signal sent before the
// consumer reaches WaitFD makes WaitFD return at once. The swap also makes
// the signal happen at most once per SetReaderWaiting. Signals can be
// spurious (the consumer cleared the flag after the producer's swap, a
// hostile peer writes the eventfd); sleepers always re-check. The plain load
// in TakeReaderWaiting keeps the common case — nobody waiting — free of a
// locked read-modify-write.
//
// # Message queues
//
// A Queue is a single-sender/single-receiver ring of fixed slots (a power of
// two, up to MaxQueueSlot) at a 64-byte aligned offset: tail at +0, head at
// +64, magic/slots/rwait at +128/+136/+144, slots from +192, each an 8-byte
// length word followed by MsgSize bytes. Send refuses empty and oversized
// messages and returns ErrQueueFull rather than blocking (the caller
// decides). The receiver validates the tail like a FIFO reader and each
// length word (1..MsgSize) before copying.
//
// Recv polls for Queue.Spin (DefaultSpin, 20 µs; Gosched every 16 polls:
// the machine kind has 2 cores and a spinning receiver steals the sender's
// CPU), then follows the wake-up protocol above on the receiver's eventfd;
// Send signals only when the waiting flag was set. Wake makes a blocked Recv
// of the same process return ErrInterrupted (for shutdown).
//
// # Eventfds
//
// NewEventFD creates eventfds with EFD_CLOEXEC|EFD_NONBLOCK. The
// non-blocking mode is deliberate: an eventfd is shared with the peer, and
// with a blocking fd a peer that pushes the counter to its maximum would make
// our Signal block forever. Waiting is done by WaitFD with poll(2) followed by
// a non-blocking read: it blocks the calling OS thread directly (Go's
// netpoller adds tens of microseconds per wake-up), supports deadlines, and
// can be used from a goroutine that called runtime.LockOSThread. OpenQueue
// and InitQueue switch the eventfd they are given to non-blocking mode.
//
// WaitFD resets the counter, so an eventfd must have a single waiter: one
// eventfd per waiting thread (an app worker's wake eventfd can serve its
// event queue and all its FIFOs, and the engine can hand a cut-through peer
// the other app's wake eventfd), and the waiter re-checks everything it
// serves after each wake-up.
//
// # Testing
//
// Cross-process tests and benchmarks (the test binary re-executes itself as
// the peer) are built only without -race: the race detector cannot see the
// ordering that atomics in shared memory carry between processes
// (golang/go#16206). Everything else, including the concurrent same-process
// tests, runs under -race. FuzzFifoHostilePeer and FuzzQueueHostilePeer play
// the hostile peer.
package shm
