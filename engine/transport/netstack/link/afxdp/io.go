package afxdp

import (
	"runtime"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

const (
	// idleYields is how many empty RX checks (each after a Gosched) the RX
	// goroutine makes before blocking in poll: enough to catch the next
	// packet of a busy flow without a syscall, short enough not to burn a
	// core when the link goes quiet.
	idleYields = 32
	// kickLinger is how many empty checks (each after a Gosched) the TX
	// kicker makes before it sleeps, so a stream of writes is kicked in
	// batches without a wake-up per packet.
	kickLinger = 16
	// txWaitLimit is how long WritePackets waits for TX room before it
	// drops what is left (TCP retransmits it).
	txWaitLimit = 200 * time.Millisecond
)

// rxLoop receives frames. It is the only consumer of the RX ring and the
// only producer of the fill ring.
func (e *Endpoint) rxLoop() {
	defer e.wg.Done()
	b := newRXBatch(e.ringSize)
	idle := 0
	for !e.closed.Load() {
		n := e.receive(b)
		if n > 0 {
			idle = 0
			continue
		}
		if idle++; idle < idleYields {
			runtime.Gosched()
			continue
		}
		idle = 0
		e.block()
	}
}

// block waits for RX frames or the close wake-up, parked in the netpoller
// (rxWait; see shm.Epoll: a thread asleep in poll(2) keeps its P). Before it
// sleeps it reaps completions and tops up the fill ring, so frames the TX
// side released since the last batch are back with the kernel: the kernel
// can always deliver the frame that wakes us.
func (e *Endpoint) block() {
	e.cb.UMEM.Lock()
	e.reap()
	e.fill()
	e.cb.UMEM.Unlock()
	if e.fillH.needWakeup() {
		e.c.fillWakeups.Add(1)
		unix.Recvfrom(e.fd, nil, unix.MSG_DONTWAIT)
	}
	e.c.polls.Add(1)
	var evs [2]unix.EpollEvent
	n, err := e.rxWait.Wait(evs[:], time.Time{})
	if err != nil {
		return // loop and look again
	}
	for _, ev := range evs[:n] {
		if ev.Fd == rxWaitClose {
			var buf [8]byte
			unix.Read(e.evfd, buf[:])
		}
	}
}

type rxBatch struct {
	descs []unix.XDPDesc
	ok    []bool
	pkts  []*stack.PacketBuffer
}

func newRXBatch(n uint32) *rxBatch {
	return &rxBatch{descs: make([]unix.XDPDesc, 0, n), ok: make([]bool, 0, n), pkts: make([]*stack.PacketBuffer, 0, n)}
}

// receive takes one batch off the RX ring: validate the descriptors, copy
// the frames out, give the frames back through the fill ring, then deliver.
// It returns the number of descriptors consumed.
func (e *Endpoint) receive(b *rxBatch) int {
	n, idx := e.cb.RX.Peek()
	if n == 0 {
		return 0
	}
	// A producer more than a ring ahead is corrupt: look at one ring's
	// worth and skip the rest.
	look := min(n, e.ringSize)
	if n > look {
		e.c.rxBad.Add(uint64(n - look))
	}
	b.descs, b.ok, b.pkts = b.descs[:0], b.ok[:0], b.pkts[:0]

	um := &e.cb.UMEM
	um.Lock()
	for i := uint32(0); i < look; i++ {
		d := e.cb.RX.Get(idx + i)
		// The kernel cannot return more frames than the fill ring gave
		// it, whatever the descriptors say.
		ok := e.inKernel > 0 && e.validRX(d)
		if ok {
			e.frames[d.Addr/frameSize] = frameRX
			e.inKernel--
		} else {
			e.c.rxBad.Add(1)
		}
		b.descs = append(b.descs, d)
		b.ok = append(b.ok, ok)
	}
	um.Unlock()

	// Copy outside the lock: frames marked frameRX are ours alone.
	e.mu.RLock()
	mac := e.mac
	e.mu.RUnlock()
	for i, d := range b.descs {
		if !b.ok[i] {
			continue
		}
		data := um.Get(d)
		if !forUs(data, mac) {
			e.c.rxDrops.Add(1)
			continue
		}
		b.pkts = append(b.pkts, stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(data)}))
		e.c.rxBytes.Add(uint64(d.Len))
	}

	um.Lock()
	for i, d := range b.descs {
		if b.ok[i] {
			f := d.Addr / frameSize
			e.frames[f] = frameKernel
			um.FreeFrame(f * frameSize)
		}
	}
	e.cb.RX.Release(n)
	e.fill()
	um.Unlock()
	if e.fillH.needWakeup() {
		// A zero-copy driver that ran out of fill buffers sleeps until
		// told there are new ones.
		e.c.fillWakeups.Add(1)
		unix.Recvfrom(e.fd, nil, unix.MSG_DONTWAIT)
	}

	e.mu.RLock()
	d := e.dispatcher
	e.mu.RUnlock()
	for _, pkt := range b.pkts {
		if d == nil || !e.ParseHeader(pkt) {
			e.c.rxDrops.Add(1)
			pkt.DecRef()
			continue
		}
		proto := header.Ethernet(pkt.LinkHeader().Slice()).Type()
		e.c.rxPackets.Add(1)
		d.DeliverNetworkPacket(proto, pkt)
		pkt.DecRef()
	}
	for i := range b.pkts {
		b.pkts[i] = nil
	}
	return int(n)
}

// fill moves free frames to the fill ring and counts them as the kernel's.
// FillAll publishes the producer it advanced, so the published producer's
// movement is the number of frames it handed over. Called with the UMEM lock.
func (e *Endpoint) fill() {
	before := atomic.LoadUint32(e.fillH.producer)
	e.cb.Fill.FillAll(&e.cb.UMEM)
	e.inKernel += atomic.LoadUint32(e.fillH.producer) - before
}

// validRX checks an RX descriptor from the kernel before anything trusts
// it: inside the UMEM, inside one frame, long enough for an Ethernet
// header, and naming a frame the kernel may hand back (not one on the TX
// ring, not one already returned in this batch). Called with the UMEM lock.
func (e *Endpoint) validRX(d unix.XDPDesc) bool {
	if d.Addr >= e.umemLen || d.Len < header.EthernetMinimumSize || d.Len > frameSize {
		return false
	}
	if d.Addr%frameSize+uint64(d.Len) > frameSize {
		return false
	}
	return e.frames[d.Addr/frameSize] == frameKernel
}

// forUs drops unicast frames for another MAC (the program steers by IP
// address only).
func forUs(frame []byte, mac tcpip.LinkAddress) bool {
	dst := frame[:6]
	if dst[0]&1 != 0 {
		return true // broadcast or multicast
	}
	return string(dst) == string(mac)
}

// reap returns transmitted frames from the completion ring to the UMEM.
// Each address must be a frame we put on the TX ring and have not had back
// yet. Called with the UMEM lock.
func (e *Endpoint) reap() {
	n, idx := e.cb.Completion.Peek()
	if n == 0 {
		return
	}
	look := min(n, e.ringSize)
	if n > look {
		e.c.compBad.Add(uint64(n - look))
	}
	for i := uint32(0); i < look; i++ {
		addr := e.cb.Completion.Get(idx + i)
		if addr >= e.umemLen || addr%frameSize != 0 || e.frames[addr/frameSize] != frameTX {
			e.c.compBad.Add(1)
			continue
		}
		e.frames[addr/frameSize] = frameKernel
		e.cb.UMEM.FreeFrame(addr)
	}
	e.cb.Completion.Release(n)
}

// reserveTX reaps completions and reserves up to n TX slots, each with a
// frame. It returns the frames and the first ring index; none when the ring
// or the UMEM is full.
func (e *Endpoint) reserveTX(n uint32, frames []uint64) ([]uint64, uint32) {
	um := &e.cb.UMEM
	um.Lock()
	defer um.Unlock()
	e.reap()
	for ; n > 0; n /= 2 {
		got, idx := e.cb.TX.Reserve(um, n)
		if got == 0 {
			continue
		}
		frames = frames[:0]
		for range got {
			a := um.AllocFrame()
			e.frames[a/frameSize] = frameTX
			frames = append(frames, a)
		}
		return frames, idx
	}
	return frames[:0], 0
}

// WritePackets implements stack.LinkEndpoint. It copies each packet into a
// UMEM frame and publishes it on the TX ring; the TX kicker goroutine makes
// the kernel transmit, so a stream of writes costs one sendto per batch, not
// per packet. When the ring or the frames run out, the writer kicks and
// reaps itself and waits briefly rather than dropping at the first sign of
// back-pressure.
func (e *Endpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	list := pkts.AsSlice()
	e.txMu.Lock()
	defer e.txMu.Unlock()
	if e.closed.Load() {
		e.c.txDrops.Add(uint64(len(list)))
		return 0, &tcpip.ErrClosedForSend{}
	}
	if len(list) == 0 {
		return 0, nil
	}
	var (
		frames   [64]uint64
		written  int
		i, seg   int                 // next frame: segment seg of list[i]
		cur      = txFrames(list[0]) // frames of list[i]; 0: cannot be sent
		deadline time.Time
		backoff  = 20 * time.Microsecond
	)
	for i < len(list) {
		// Packets that cannot be sent are dropped one by one.
		if cur == 0 {
			e.c.txDrops.Add(1)
			if i++; i < len(list) {
				cur = txFrames(list[i])
			}
			continue
		}
		// The rest of this packet, then whole packets, up to a batch.
		want := cur - seg
		for j := i + 1; want < len(frames) && j < len(list); j++ {
			want += txFrames(list[j])
		}
		want = min(want, len(frames))
		got, idx := e.reserveTX(uint32(want), frames[:0])
		if len(got) == 0 {
			e.c.txRingFull.Add(1)
			e.kick()
			if got, idx = e.reserveTX(uint32(want), frames[:0]); len(got) == 0 {
				now := time.Now()
				if deadline.IsZero() {
					deadline = now.Add(txWaitLimit)
				} else if now.After(deadline) {
					e.c.txDrops.Add(uint64(len(list) - i))
					break
				}
				// The kernel holds every frame or slot (zero-copy:
				// completions come later); they have no poll event, so
				// back off briefly and reap again.
				time.Sleep(backoff)
				backoff = min(2*backoff, time.Millisecond)
				continue
			}
		}
		deadline = time.Time{}
		var bytes uint64
		for j, addr := range got {
			// want counted only frames of sendable packets, so one is
			// left for every frame reserved.
			for cur == 0 {
				e.c.txDrops.Add(1)
				i++
				cur = txFrames(list[i])
			}
			size := writeFrame(e.cb.UMEM.Get(unix.XDPDesc{Addr: addr, Len: frameSize}), list[i], seg, cur)
			e.cb.TX.Set(idx+uint32(j), unix.XDPDesc{Addr: addr, Len: size})
			bytes += uint64(size)
			if seg++; seg == cur {
				written++
				seg = 0
				if i++; i < len(list) {
					cur = txFrames(list[i])
				}
			}
		}
		// Publish the descriptors. TXQueue.Notify would also kick, one
		// syscall per call; the kicker batches instead. Reserve advanced
		// the queue's private producer to exactly idx+len(got).
		atomic.StoreUint32(e.txH.producer, idx+uint32(len(got)))
		e.c.txPackets.Add(uint64(len(got)))
		e.c.txBytes.Add(bytes)
	}
	e.wakeKicker()
	return written, nil
}

// wakeKicker hands the TX ring to the kicker if it sleeps.
func (e *Endpoint) wakeKicker() {
	if e.kickerIdle.CompareAndSwap(true, false) {
		select {
		case e.kickCh <- struct{}{}:
		default:
		}
	}
}

// kickResult says how a kick ended.
type kickResult int

const (
	kickDone  kickResult = iota // drained, or a zero-copy driver is awake
	kickBusy                    // the kernel makes no progress (device queue full): retry soon
	kickError                   // hard error (e.g. ENETDOWN): retry later
)

// Retry delays of the kicker after kickBusy and kickError.
const (
	busyRetry  = 200 * time.Microsecond
	errorRetry = 10 * time.Millisecond
	// busyKicks is how many EAGAINs without the kernel consuming anything
	// a kick tolerates before it reports kickBusy instead of spinning.
	busyKicks = 16
)

// txNeedsKick reports whether the TX ring holds frames the kernel will not
// send without a kick: in copy mode any queued frame; in zero-copy mode
// only while the driver sets NEED_WAKEUP (otherwise it is running and will
// take the frames itself, re-checking the ring before it sleeps).
func (e *Endpoint) txNeedsKick() bool {
	if e.txH.queued() == 0 {
		return false
	}
	return e.mode != ModeZeroCopy || e.txH.needWakeup()
}

// kick makes the kernel drain the TX ring. In copy mode the kernel
// transmits only inside sendto/poll, at most a small batch (32) per call,
// answering EAGAIN while descriptors remain (also when the completion ring is
// full, which reaping fixes) and 0 once the ring is empty: so kick until it
// answers 0. In zero-copy mode one sendto wakes the driver.
func (e *Endpoint) kick() kickResult {
	stuck := 0
	for e.txNeedsKick() {
		before := atomic.LoadUint32(e.txH.consumer)
		_, _, errno := unix.Syscall6(unix.SYS_SENDTO, uintptr(e.fd), 0, 0, unix.MSG_DONTWAIT, 0, 0)
		e.c.txKicks.Add(1)
		switch errno {
		case 0:
			return kickDone
		case unix.EAGAIN, unix.EBUSY, unix.ENOBUFS, unix.EINTR:
		default:
			e.c.txKickErrors.Add(1)
			return kickError
		}
		if e.closed.Load() {
			return kickDone
		}
		// EAGAIN may mean a full completion ring: make room.
		e.cb.UMEM.Lock()
		e.reap()
		e.cb.UMEM.Unlock()
		if atomic.LoadUint32(e.txH.consumer) != before {
			stuck = 0
		} else if stuck++; stuck >= busyKicks {
			return kickBusy
		}
	}
	return kickDone
}

// txLoop is the TX kicker: woken by WritePackets, it kicks until nothing
// needs a kick, lingers a little for more, then sleeps. When the kernel
// cannot take frames (device queue full, device down) it retries after a
// pause instead of spinning, so queued frames go out as soon as the device
// can take them.
func (e *Endpoint) txLoop() {
	defer e.wg.Done()
	for {
		select {
		case <-e.kickCh:
		case <-e.done:
			return
		}
		for linger := 0; linger < kickLinger; {
			if e.closed.Load() {
				return
			}
			if !e.txNeedsKick() {
				linger++
				runtime.Gosched()
				continue
			}
			linger = 0
			var wait time.Duration
			switch e.kick() {
			case kickBusy:
				wait = busyRetry
			case kickError:
				wait = errorRetry
			}
			if wait > 0 {
				select {
				case <-time.After(wait):
				case <-e.done:
					return
				}
			}
		}
		e.kickerIdle.Store(true)
		// A write published between the last check and the flag store
		// saw the kicker busy and did not wake it: look once more.
		if e.txNeedsKick() && e.kickerIdle.CompareAndSwap(true, false) {
			select {
			case e.kickCh <- struct{}{}:
			default:
			}
		}
	}
}
