// Package shm is the shared-memory layer between the session engine and the
// apps: sealed memfd segments, an allocator for the engine's side of them,
// single-producer/single-consumer byte FIFOs and fixed-size message queues
// with doorbell wake-ups. The engine and the client both import it; nothing
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
// # Memory
//
// A segment is sparse: its size is address space, and a page costs memory
// only once someone writes it (Segment.Resident counts those pages). So a
// FIFO grows as a stream needs: its capacity is how far the producer may
// run ahead, and a session that moves small messages touches a few pages.
// But the indices walk the whole ring whatever the FIFO holds, so every
// page it ever wrote would stay. Trim gives them back: the producer — the
// only writer of the free space [tail, head+capacity), which the consumer
// never reads — removes that space's whole pages from the memfd
// (MADV_REMOVE; they read as zeros and fault in fresh on the next write).
// No cooperation from the consumer is needed, and a consumer that lies
// about head only loses its own bytes. Producers trim after TrimAfter of
// quiet (the client per worker, the engine's transport pumps as they
// loop), so an idle session holds its header pages and a stream refaults
// its ring at most once per period. Segment.Punch gives back a freed
// extent.
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
//	if data: ClearReaderWaiting()               Ring(producerEnd)       // D
//	else:    WaitBell(consumerEnd, deadline)}
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
// producer rings (D). A ring is a datagram queued on the consumer's end of
// the doorbell until the consumer drains it, so a ring sent before the
// consumer reaches WaitBell makes WaitBell return at once; and a ring that
// finds the consumer's end full (EAGAIN, counted as success) finds datagrams
// there already, which equally make WaitBell return. Only the consumer
// drains its own end, and only after it returns from the wait, so nobody
// else can consume a ring meant for it. The swap also makes the ring happen
// at most once per SetReaderWaiting. Wake-ups can be spurious (the consumer
// cleared the flag after the producer's swap, a hostile peer rings in a
// loop); sleepers always re-check. The plain load in TakeReaderWaiting keeps
// the common case — nobody waiting — free of a locked read-modify-write.
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
// CPU), then follows the wake-up protocol above on its own doorbell end;
// Send rings only when the waiting flag was set. Each side opens the queue
// with its own end of the doorbell. Wake makes a blocked Recv of the same
// process return ErrInterrupted (for shutdown): it signals a process-private
// eventfd (EnableWake) that Recv polls besides the doorbell, since a
// doorbell cannot be rung from the waiter's own end.
//
// # Doorbells
//
// A descriptor passed with SCM_RIGHTS shares its open file description, and
// with it O_NONBLOCK, an eventfd's counter and a socket's queues. Wire version 2
// woke peers through eventfds held by both sides: an app could clear
// O_NONBLOCK and fill the counter so that the engine's next write blocked
// forever, and a cut-through app got the other app's wake eventfd and could
// read its wake-ups away. A doorbell (NewDoorbell) is instead a connected
// pair of AF_UNIX SOCK_DGRAM sockets, one end per side, each its holder's
// own description. Ring sends one byte from your end with
// MSG_DONTWAIT|MSG_NOSIGNAL (EAGAIN: the peer has unread rings already, a
// success; a closed peer: ErrPeerGone); WaitBell blocks the calling OS
// thread in poll(2) on your own end (Go's netpoller adds tens of
// microseconds per wake-up), then takes one ring with a MSG_DONTWAIT
// receive (rings left over make the next wait return at once, so a peer
// ringing in a loop cannot keep the waiter in a drain). Whatever
// the peer does to its end (blocking mode, never reading, flooding, a
// disconnect, closing it) changes nothing about ours: our calls never
// block, and the rings meant for us reach only our end. Datagram rather than
// stream sockets, because a stream peer could make our end readable forever
// (EOF) at no cost; not a pipe, because every writer of a pipe shares one
// description; not a futex word, because a waiter must watch several
// doorbells at once (an app worker: the engine and each cut-through peer)
// and futex_waitv stops at 128.
//
// One end has one waiter (the thread that drains it), which re-checks
// everything the doorbell serves after each wake-up. Eventfds (NewEventFD,
// Signal, WaitFD) remain for wake-ups inside one process only.
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
