//go:build !race

package hostile

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/wire"
)

// hostile is the hostile app process: it attaches as "hostile", opens
// sessions with the good server (cut-through) and with the test's TCP sink
// (kernel transport), runs one attack, prints "attacked" and waits to be
// killed. Checks of the engine's answers are "check <what> ok" or
// "check <what> FAIL <why>" lines the test turns into failures.
type hostile struct {
	sock   string
	server netip.AddrPort
	sink   netip.AddrPort
	low    uint16
	out    *lines
	app    *rawApp
	ct     []*rawSess // sessions with the good server
	tp     []*rawSess // sessions through the transport
	// listeners it opened (their handles are its own)
	listeners []uint64
}

// attacks are the hostile app's attack families by name.
var attacks = map[string]func(h *hostile) error{
	"shm-headers":  (*hostile).corruptHeaders,
	"blocking-fds": (*hostile).blockFDs,
	"steal-wakeup": (*hostile).stealWakeups,
	"malformed":    (*hostile).malformed,
	"wrong-fds":    (*hostile).wrongFDs,
	"quotas":       (*hostile).quotas,
	"names-ports":  (*hostile).namesAndPorts,
	"sigkill":      (*hostile).killedMidTransfer,
	"event-bits":   (*hostile).lieInEventBits,
}

const (
	ctSessions = 3
	tpSessions = 1
)

func runHostile(attack string) error {
	fn := attacks[attack]
	if fn == nil {
		return fmt.Errorf("unknown attack %q", attack)
	}
	port := func(env string) uint16 { p, _ := strconv.Atoi(os.Getenv(env)); return uint16(p) }
	lo := netip.AddrFrom4([4]byte{127, 0, 0, 1})
	h := &hostile{sock: os.Getenv(envSocket), server: netip.AddrPortFrom(lo, port(envServer)),
		sink: netip.AddrPortFrom(lo, port(envSink)), low: port(envLow), out: newLines()}
	var err error
	if h.app, err = attachRaw(h.sock, "hostile", 0); err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	for i := 0; i < ctSessions; i++ {
		s, err := h.app.connect(h.server)
		if err != nil {
			return fmt.Errorf("session with the good server: %w", err)
		}
		s.write([]byte("hostile hello"))
		h.ct = append(h.ct, s)
	}
	for i := 0; i < tpSessions; i++ {
		s, err := h.app.connect(h.sink)
		if err != nil {
			return fmt.Errorf("session through the transport: %w", err)
		}
		s.write([]byte("hostile hello"))
		h.tp = append(h.tp, s)
	}
	h.out.printf("sessions %d %d", len(h.ct), len(h.tp))
	if err := fn(h); err != nil {
		return err
	}
	h.out.printf("attacked")
	select {} // until killed
}

func (h *hostile) check(what string, err error) {
	if err != nil {
		h.out.printf("check %s FAIL %v", what, err)
		return
	}
	h.out.printf("check %s ok", what)
}

func (h *hostile) sessions() []*rawSess { return append(append([]*rawSess(nil), h.ct...), h.tp...) }

// word is the shared 64-bit word at b[off:] (a scratch word when off is
// not a word of b: the engine gave a layout we cannot follow).
func word(b []byte, off int) *atomic.Uint64 {
	w, err := wire.Word(b, off)
	if err != nil {
		return new(atomic.Uint64)
	}
	return w
}

// Header layouts, as engine/shm documents them (offsets from the base).
const (
	queueHeader = 192 // tail, head, magic, slots, rwait
	queueRWait  = 144
	slotStride  = 8 + shm.MsgSize
	fifoHeader  = 192 // tail, eof, head, rclosed, magic, capacity, rwait, wwait
	fifoRWait   = 144
	fifoWWait   = 152
)

var extremes = []uint64{0, 1, 63, 64, 1<<31 - 1, 1<<32 - 1, 1 << 32, 1 << 40, 1<<63 - 1, 1 << 63, 1<<64 - 2, 1<<64 - 1}

// corruptHeaders lies in every header word it can reach. First, one app per
// kind of lie, so that each is the first thing the engine reads from that
// app: a request slot length past the slot, request indices more than a
// queue apart or going backwards, an event queue head ahead of the
// engine's tail, garbage magic, slot count and wait words in the event
// queue and the control line, and impossible indices, end flags and
// capacities in the fifos of a transport session. Then the main app writes
// random and extreme values over every header word of its queues, its
// control line and both fifos of every session it holds (the good
// server's included), ringing every doorbell after each round, for 400 ms.
func (h *hostile) corruptHeaders() error {
	rng := rand.New(rand.NewPCG(13, 6))
	val := func() uint64 {
		if rng.IntN(2) == 0 {
			return extremes[rng.IntN(len(extremes))]
		}
		return rng.Uint64()
	}
	type lie struct {
		what   string
		detach bool // the engine must detach the liar (it cannot serve it)
		tell   func(x *rawApp) error
	}
	reqTail := func(x *rawApp) (mq []byte, off int, tail uint64) {
		mq, off = x.mq.Bytes(), int(x.info.ReqOff)
		return mq, off, word(mq, off).Load()
	}
	var lies []lie
	for _, n := range []uint64{shm.MsgSize + 1, 1 << 32, 1<<64 - 1} {
		lies = append(lies, lie{fmt.Sprintf("request slot length %d", n), true, func(x *rawApp) error {
			mq, off, tail := reqTail(x)
			slot := off + queueHeader + int(tail&uint64(x.info.ReqSlots-1))*slotStride
			word(mq, slot).Store(n)
			word(mq, off).Store(tail + 1)
			x.ringEngine()
			return nil
		}})
	}
	lies = append(lies,
		lie{"request tail a queue and more ahead", true, func(x *rawApp) error {
			mq, off, tail := reqTail(x)
			word(mq, off).Store(tail + uint64(x.info.ReqSlots) + 1)
			x.ringEngine()
			return nil
		}},
		lie{"request tail going backwards", true, func(x *rawApp) error {
			if err := x.request(&wire.Shutdown{Session: 1 << 50}); err != nil {
				return err
			}
			if _, err := x.await(func(m wire.Msg) bool { _, ok := m.(*wire.Reply); return ok }, time.Second); err != nil {
				return err
			}
			mq, off, tail := reqTail(x)
			word(mq, off).Store(tail - 1)
			x.ringEngine()
			return nil
		}},
		lie{"event queue head ahead of the engine's tail", false, func(x *rawApp) error {
			mq, off := x.mq.Bytes(), int(x.info.EvqOff)
			word(mq, off+64).Store(word(mq, off).Load() + 1000)
			for i := 0; i < 4; i++ {
				x.request(&wire.Shutdown{Session: 1 << 50})
			}
			return nil
		}},
		lie{"event queue magic, slots, wait word and the control line", false, func(x *rawApp) error {
			mq, off := x.mq.Bytes(), int(x.info.EvqOff)
			for o := 128; o < queueHeader; o += 8 {
				word(mq, off+o).Store(val())
			}
			for o := 0; o < wire.CtlSize; o += 8 {
				word(mq, int(x.info.CtlOff)+o).Store(1<<64 - 1)
			}
			for i := 0; i < 4; i++ {
				x.request(&wire.Shutdown{Session: 1 << 50})
			}
			return nil
		}},
		lie{"transport fifo indices, end flags and capacities", false, func(x *rawApp) error {
			s, err := x.connect(h.sink)
			if err != nil {
				return err
			}
			s.write(make([]byte, 1000))
			b := s.seg.seg.Bytes()
			word(b, s.txOff).Store(1 << 62)     // tail far past the head
			word(b, s.txOff+8).Store(7)         // eof, not a boolean
			word(b, s.txOff+136).Store(1 << 40) // capacity
			word(b, s.rxOff+64).Store(1 << 62)  // head past the engine's tail
			word(b, s.rxOff+72).Store(3)        // read-closed
			s.ringPeer()
			x.ringEngine()
			return nil
		}},
	)
	for i, l := range lies {
		x, err := attachRaw(h.sock, fmt.Sprintf("hostile-liar-%d", i), 0)
		if err != nil {
			return fmt.Errorf("attach: %w", err)
		}
		if err := l.tell(x); err != nil {
			h.check("lie: "+l.what, fmt.Errorf("setting it up: %w", err))
			continue
		}
		if l.detach {
			h.check("lie: "+l.what+": the liar is detached", x.waitDetached())
		}
	}

	type region struct {
		b      []byte
		off, n int
	}
	mq := h.app.mq.Bytes()
	info := h.app.info
	regions := []region{
		{mq, int(info.EvqOff), queueHeader}, {mq, int(info.ReqOff), queueHeader}, {mq, int(info.CtlOff), wire.CtlSize},
	}
	for _, q := range []struct {
		off   uint64
		slots uint32
	}{{info.EvqOff, info.EvqSlots}, {info.ReqOff, info.ReqSlots}} {
		for i := 0; i < int(q.slots); i++ {
			regions = append(regions, region{mq, int(q.off) + queueHeader + i*slotStride, 8})
		}
	}
	for _, s := range h.sessions() {
		b := s.seg.seg.Bytes()
		regions = append(regions, region{b, s.rxOff, fifoHeader}, region{b, s.txOff, fifoHeader})
	}
	deadline := time.Now().Add(400 * time.Millisecond)
	for time.Now().Before(deadline) {
		for _, r := range regions {
			for o := 0; o+8 <= r.n; o += 8 {
				word(r.b, r.off+o).Store(val())
			}
		}
		h.app.ringEngine()
		for _, s := range h.sessions() {
			s.ringPeer()
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}

// lieInEventBits writes every bit of its worker's transport event bits
// (wire version 5), summary bits past the last word included, then random
// and extreme words over the whole region, ringing the transport doorbell
// after each round, for 400 ms: each ring may make the engine look at this
// app's own transport sessions, at nothing else, and at no index past its
// bits.
func (h *hostile) lieInEventBits() error {
	a := h.app
	n := int(a.info.EvBits)
	size := shm.EventBitsSize(n)
	b := a.mq.Bytes()
	off := int(a.info.EvOff)
	if size < 0 || off < 0 || off > len(b)-size {
		return fmt.Errorf("the engine gave event bits %d at %d in a %d-byte queue segment (wire version %d)", n, off, len(b), a.reply.EngineVersion)
	}
	rng := rand.New(rand.NewPCG(5, 16))
	deadline := time.Now().Add(400 * time.Millisecond)
	for round := 0; time.Now().Before(deadline); round++ {
		for o := 0; o+8 <= size; o += 8 {
			v := ^uint64(0)
			if round%2 == 1 {
				v = rng.Uint64()
				if rng.IntN(2) == 0 {
					v = extremes[rng.IntN(len(extremes))]
				}
			}
			word(b, off+o).Store(v)
		}
		h.app.ringEngine()
		time.Sleep(time.Millisecond)
	}
	h.out.printf("event bits %d", n)
	return nil
}

// saturate clears O_NONBLOCK on fd after filling it: an eventfd's counter
// to its maximum (the next write(2) of anyone blocks), a socket's buffer
// until it takes no more. It returns what it did, for the log.
func saturate(fd int) string {
	kind := fdKind(fd)
	unix.SetNonblock(fd, true)
	switch kind {
	case "eventfd":
		var b [8]byte
		unix.Read(fd, b[:])
		binary.NativeEndian.PutUint64(b[:], 0xfffffffffffffffe)
		unix.Write(fd, b[:])
	case "socket":
		buf := make([]byte, 4096)
		for i := 0; i < 1<<16; i++ {
			if _, err := unix.SendmsgN(fd, buf, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL); err != nil {
				if errors.Is(err, unix.EMSGSIZE) && len(buf) > 1 {
					buf = buf[:len(buf)/2]
					continue
				}
				break
			}
		}
	}
	unix.SetNonblock(fd, false)
	return kind
}

// blockFDs clears O_NONBLOCK on and saturates every descriptor it was
// given, keeps every sleeping and waiting flag it can reach set, and then
// makes the engine and the good server signal it: a listen (the engine
// answers through the event queue), new sessions with the good server
// (the engine tells the server), data on its sessions.
func (h *hostile) blockFDs() error {
	var kinds []string
	for _, fd := range h.app.allFDs() {
		kinds = append(kinds, saturate(fd))
	}
	// The attach socket too: stop reading it and send requests the engine
	// answers until it takes no more, so its answers find a full buffer.
	a := h.app
	a.deaf.Store(true)
	req, _ := wire.Append(nil, &wire.WorkerDel{Ctx: 1, Worker: 1 << 30})
	sent := 0
	if raw, err := a.c.SyscallConn(); err == nil {
		raw.Write(func(fd uintptr) bool {
			for ; sent < 1<<16; sent++ {
				if err := unix.Sendmsg(int(fd), req, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL); err != nil {
					break
				}
			}
			return true
		})
	}
	kinds = append(kinds, fmt.Sprintf("attach socket (%d requests unread)", sent))
	h.out.printf("saturated %s", strings.Join(kinds, ","))
	mq := h.app.mq.Bytes()
	flags := []*atomic.Uint64{word(mq, int(h.app.info.CtlOff)+wire.CtlSleeping), word(mq, int(h.app.info.EvqOff)+queueRWait)}
	for _, s := range h.sessions() {
		b := s.seg.seg.Bytes()
		for _, off := range []int{s.rxOff + fifoRWait, s.rxOff + fifoWWait, s.txOff + fifoRWait, s.txOff + fifoWWait} {
			flags = append(flags, word(b, off))
		}
	}
	go func() {
		for {
			for _, f := range flags {
				f.Store(1)
			}
			time.Sleep(100 * time.Microsecond)
		}
	}()
	time.Sleep(time.Millisecond)
	// Provoke: every one of these makes someone signal a saturated fd.
	h.app.listen(netip.MustParseAddrPort("127.0.0.1:0"))
	for i := 0; i < 3; i++ {
		if s, err := h.app.connect(h.server); err == nil {
			s.write(make([]byte, 1024))
			h.ct = append(h.ct, s)
		}
	}
	for _, s := range h.sessions() {
		s.write(make([]byte, 70<<10))
	}
	return nil
}

// stealWakeups reads, with O_NONBLOCK cleared, every wake-up descriptor the
// engine passed with its segments (a cut-through peer's, the engine's own),
// forever: whoever sleeps on them would never wake.
func (h *hostile) stealWakeups() error {
	h.app.mu.Lock()
	var fds []int
	for _, s := range h.app.segs {
		for _, fd := range s.fds[1:] {
			if k := fdKind(fd); k == "eventfd" || k == "socket" {
				fds = append(fds, fd)
			}
		}
	}
	h.app.mu.Unlock()
	for _, fd := range fds {
		unix.SetNonblock(fd, false)
		go func() {
			b := make([]byte, 4096)
			for {
				if _, err := unix.Read(fd, b); err != nil && err != unix.EINTR && err != unix.EAGAIN {
					return
				}
			}
		}()
	}
	h.out.printf("stealing %d", len(fds))
	// keep the good server busy on our sessions too
	for _, s := range h.ct {
		s.write(make([]byte, 4096))
	}
	return nil
}

// malformed sends garbage, truncated, oversized, wrong-version and
// wrong-direction messages through its request queue, requests naming
// every handle it does not own, then garbage on fresh attach connections
// and on its own attach socket (the last one gets it detached).
func (h *hostile) malformed() error {
	rng := rand.New(rand.NewPCG(7, 7))
	a := h.app
	var msgs [][]byte
	for i := 0; i < 300; i++ {
		b := make([]byte, 1+rng.IntN(shm.MsgSize))
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		if i%3 == 0 && len(b) >= wire.HeaderSize {
			b[0] = wire.Version // plausible header, garbage after it
		}
		msgs = append(msgs, b)
	}
	enc := func(m wire.Msg) []byte {
		b, err := wire.Append(nil, m)
		if err != nil {
			panic(err)
		}
		return b
	}
	samples := []wire.Msg{
		&wire.Listen{Ctx: 1, Addr: wire.Addr{Proto: wire.TCP, IP: netip.IPv4Unspecified(), Port: 1}},
		&wire.Connect{Ctx: 2, Remote: wire.Addr{Proto: wire.TCP, IP: netip.IPv6Loopback(), Port: 2}},
		newAttach("on-the-queue", 0), &wire.WorkerAdd{Ctx: 3},
		&wire.Accepted{Session: 1, Fifos: wire.FifoPair{RxCap: 64, TxCap: 64}},
		&wire.Reply{Code: wire.OK}, &wire.Disconnect{Session: 1},
	}
	for _, m := range samples {
		full := enc(m)
		if len(full) > shm.MsgSize {
			full = full[:shm.MsgSize]
		}
		for cut := 1; cut < len(full); cut += 5 {
			msgs = append(msgs, full[:cut])
		}
		wrongVer := append([]byte(nil), full...)
		wrongVer[0] = wire.Version + 1
		longer := append([]byte(nil), full...)
		binary.LittleEndian.PutUint16(longer[2:], 0xffff)
		trailing := append(append([]byte(nil), full...), 0xff)
		reserved := append([]byte(nil), full...)
		reserved[5] = 1
		msgs = append(msgs, wrongVer, longer, trailing, reserved)
	}
	for t := 0; t < 256; t++ {
		b := make([]byte, 64)
		b[0], b[1] = wire.Version, byte(t)
		binary.LittleEndian.PutUint16(b[2:], uint16(rng.IntN(300)))
		msgs = append(msgs, b)
	}
	for _, m := range msgs {
		if len(m) > shm.MsgSize {
			m = m[:shm.MsgSize]
		}
		if err := a.requestRaw(m); err != nil {
			return fmt.Errorf("queueing garbage: %w", err)
		}
	}
	h.check("queue garbage answered, app still served", h.stillServed())

	// Requests naming handles of others: the good apps' sessions and
	// listeners, their segments.
	own := map[uint64]bool{a.reply.Segment: true}
	for _, s := range h.sessions() {
		own[s.handle] = true
	}
	for _, l := range h.listeners {
		own[l] = true
	}
	const maxHandle = 400
	for hd := uint64(1); hd <= maxHandle; hd++ {
		if own[hd] {
			continue
		}
		for _, m := range []wire.Msg{&wire.Shutdown{Session: hd}, &wire.AcceptReply{Session: hd, Code: wire.ErrRefused},
			&wire.Unlisten{Ctx: 1 << 40, Listener: hd}, &wire.Disconnect{Session: hd}, &wire.Reset{Session: hd}} {
			if err := a.request(m); err != nil {
				return fmt.Errorf("queueing foreign-handle requests: %w", err)
			}
		}
	}
	if err := h.stillServed(); err != nil {
		h.check("foreign handles refused", err)
	} else {
		a.qmu.Lock()
		var bad []string
		for _, m := range a.events {
			switch m := m.(type) {
			case *wire.Cleanup:
				if !own[m.Session] {
					bad = append(bad, fmt.Sprintf("cleanup of session %d", m.Session))
				}
			case *wire.UnlistenReply:
				if m.Code == wire.OK {
					bad = append(bad, fmt.Sprintf("unlisten of listener %d", m.Listener))
				}
			case *wire.Reply:
				if m.Code == wire.OK && !own[m.Handle] {
					bad = append(bad, fmt.Sprintf("%v of handle %d", m.Req, m.Handle))
				}
			}
		}
		a.qmu.Unlock()
		var err error
		if len(bad) > 0 {
			err = fmt.Errorf("the engine did: %s", strings.Join(bad[:min(5, len(bad))], ", "))
		}
		h.check("foreign handles refused", err)
	}

	// Before attaching: garbage as the first message.
	goodAttach := enc(newAttach("late", 0))
	// versions no engine speaks (a newer one may be negotiated down)
	oldVer := append([]byte(nil), goodAttach...)
	oldVer[0] = 1
	zeroVer := append([]byte(nil), goodAttach...)
	zeroVer[0] = 0
	first := []struct {
		what string
		b    []byte
		want wire.Code // OK: any refusal or a close
	}{
		{"version-1 attach", oldVer, wire.ErrVersion},
		{"version-0 attach", zeroVer, wire.ErrVersion},
		{"truncated attach", goodAttach[:len(goodAttach)/2], wire.ErrInvalid},
		{"oversized attach", append(append([]byte(nil), goodAttach...), make([]byte, 60000)...), wire.ErrInvalid},
		{"garbage", []byte("GET / HTTP/1.1\r\nHost: engine\r\n\r\n"), wire.OK},
		{"worker-add first", enc(&wire.WorkerAdd{Ctx: 1}), wire.ErrInvalid},
		{"empty message", []byte{}, wire.OK},
	}
	for _, f := range first {
		h.check("pre-attach "+f.what+" refused", refusedFirst(h.sock, f.b, f.want))
	}

	// On its own attach socket: a queue message, a worker that is not
	// there, TLS for certificates nobody has; then a truncated message,
	// which ends the attachment.
	a.sendSock(&wire.Listen{Ctx: 9, Addr: wire.Addr{Proto: wire.TCP, IP: netip.IPv4Unspecified(), Port: 9}})
	for _, w := range []uint32{0, 1, 99, 1<<32 - 1} {
		a.sendSock(&wire.WorkerDel{Ctx: uint64(100 + w), Worker: w})
	}
	a.sendSock(&wire.TLSContextAdd{Ctx: 5, CertKeyPair: "team/not-mine", Trust: "../../etc"})
	b := enc(&wire.WorkerAdd{Ctx: 77})
	sendRaw(a.c, b[:len(b)-3])
	h.check("truncated attach-socket message ends the attachment", h.waitDetached())
	return nil
}

// stillServed checks the engine still answers this app's requests (and,
// the queue being in order, answered everything queued before).
func (h *hostile) stillServed() error {
	b, err := h.app.listen(netip.MustParseAddrPort("127.0.0.1:0"))
	if err == nil {
		h.listeners = append(h.listeners, b.Listener)
	}
	return err
}

// waitDetached waits for the engine to close the attach socket.
func (h *hostile) waitDetached() error { return h.app.waitDetached() }

func (a *rawApp) waitDetached() error {
	deadline := time.Now().Add(3 * time.Second)
	a.mu.Lock()
	defer a.mu.Unlock()
	for a.sockErr == nil {
		if time.Now().After(deadline) {
			return errors.New("still attached 3s later")
		}
		a.mu.Unlock()
		time.Sleep(time.Millisecond)
		a.mu.Lock()
	}
	return nil
}

// refusedFirst sends b as the first message of a fresh attach connection:
// the engine must answer with a refusal (code want, unless OK) or close
// the connection, never attach.
func refusedFirst(sock string, b []byte, want wire.Code, fds ...int) error {
	c, err := dialAttach(sock)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := sendRaw(c, b, fds...); err != nil {
		if errors.Is(err, unix.EMSGSIZE) {
			return nil // the kernel refused it already
		}
		return err
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	m, rfds, err := readSock(c)
	closeFDs(rfds)
	if err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return errors.New("no answer within 3s")
		}
		return nil // closed
	}
	r, ok := m.(*wire.AttachReply)
	switch {
	case !ok:
		return fmt.Errorf("answered with %v", m.Type())
	case r.Code == wire.OK:
		return errors.New("the engine attached it")
	case want != wire.OK && r.Code != want:
		return fmt.Errorf("refused with %v (%s), want %v", r.Code, r.Msg, want)
	}
	return nil
}

// wrongFDs passes descriptors of every other kind with attach-socket
// messages, then more than any message may carry, before attaching and
// after: the engine closes them unread and refuses the oversized ones.
func (h *hostile) wrongFDs() error {
	a := h.app
	var fds []int
	add := func(fd int, err error) {
		if err == nil {
			fds = append(fds, fd)
		}
	}
	add(unix.MemfdCreate("hostile-unsealed", unix.MFD_CLOEXEC))
	add(unix.Eventfd(0, unix.EFD_CLOEXEC))
	if sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0); err == nil {
		fds = append(fds, sp[0], sp[1])
	}
	var p [2]int
	if unix.Pipe2(p[:], unix.O_CLOEXEC) == nil {
		fds = append(fds, p[0], p[1])
	}
	add(unix.Open("/dev/null", unix.O_RDWR|unix.O_CLOEXEC, 0))
	add(unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0))
	add(unix.EpollCreate1(unix.EPOLL_CLOEXEC))
	add(unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_CLOEXEC))
	mine := len(fds)
	fds = append(fds, a.allFDs()...) // the engine's own, back to it
	h.out.printf("descriptors %d", len(fds))

	enc := func(m wire.Msg) []byte { b, _ := wire.Append(nil, m); return b }
	// Before attaching: an attach with four wrong descriptors attaches
	// (they are closed unread), one with a flood of them is refused.
	c, err := dialAttach(h.sock)
	if err == nil {
		err = sendRaw(c, enc(newAttach("hostile-fds", 0)), fds[:4]...)
		if err == nil {
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			m, rfds, rerr := readSock(c)
			closeFDs(rfds)
			if r, ok := m.(*wire.AttachReply); rerr == nil && (!ok || r.Code != wire.OK) {
				err = fmt.Errorf("refused: %v", m)
			} else {
				err = rerr
			}
		}
		c.Close()
	}
	h.check("attach carrying descriptors: attached, descriptors dropped", err)
	flood := make([]int, 0, 250)
	for len(flood) < 250 {
		flood = append(flood, fds[len(flood)%len(fds)])
	}
	h.check("pre-attach descriptor flood refused", refusedFirst(h.sock, enc(newAttach("hostile-flood", 0)), wire.ErrInvalid, flood...))

	// Attached: every request with descriptors of the wrong kind.
	for i := 0; i+4 <= len(fds); i += 4 {
		a.sendSock(&wire.TLSContextAdd{Ctx: uint64(i), CertKeyPair: "x"}, fds[i:i+4]...)
	}
	_, err = a.addWorker()
	h.check("worker add with foreign descriptors still served", err)
	sendRaw(a.c, enc(&wire.WorkerAdd{Ctx: 1 << 20}), flood...)
	h.check("descriptor flood on the attach socket ends the attachment", h.waitDetached())
	closeFDs(fds[:mine])
	return nil
}

var listenerLimit = regexp.MustCompile(`(?i)listener`)

// quotas exceeds every limit: sessions, listeners, workers, pending
// attaches, apps. Each refusal must name its limit.
func (h *hostile) quotas() error {
	a := h.app
	// sessions: connect to its own listener until refused
	b, err := a.listen(netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	self := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), b.Local.Port)
	err = exceed(2*nsMaxSessions, func() error { _, err := a.connect(self); return err })
	h.check("maxSessionsPerApp", quotaErr(err, "maxSessionsPerApp"))

	// sessions through the transport: the limit is maxSessionsPerApp, not
	// the room in the app's first segment
	ta, err := attachRaw(h.sock, "hostile-transport", 0)
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	err = exceed(2*nsMaxSessions, func() error { _, err := ta.connect(h.sink); return err })
	h.check("maxSessionsPerApp through the transport", quotaErr(err, "maxSessionsPerApp"))

	// workers
	err = exceed(2*nsMaxWorkers, func() error { _, err := a.addWorker(); return err })
	h.check("maxWorkersPerApp", quotaErr(err, "maxWorkersPerApp"))

	// listeners: of a local-scope app (no kernel sockets involved)
	la, err := attachRaw(h.sock, "hostile-listeners", wire.FlagScopeLocal)
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	err = exceed(3000, func() error { _, err := la.listen(netip.MustParseAddrPort("127.0.0.1:0")); return err })
	if err == nil || codeOf(err) != wire.ErrQuota || !listenerLimit.MatchString(err.Error()) {
		err = fmt.Errorf("no listener quota: %v", orAccepted(err, 3000, "listens"))
	} else {
		err = nil
	}
	h.check("listeners per app", err)

	// apps: attach until refused, then let them go
	var extra []*rawApp
	err = exceed(2*nsMaxApps, func() error {
		x, err := attachRaw(h.sock, fmt.Sprintf("hostile-%d", len(extra)), wire.FlagScopeLocal)
		if err == nil {
			extra = append(extra, x)
		}
		return err
	})
	h.check("maxApps", quotaErr(err, "maxApps"))
	for _, x := range extra {
		x.close()
	}

	// pending attaches: connections that never send Attach
	h.check("pending attaches per socket", pendingLimited(h.sock, 400))
	return nil
}

// exceed calls op up to n times and returns its first error (nil: never
// refused).
func exceed(n int, op func() error) error {
	for i := 0; i < n; i++ {
		if err := op(); err != nil {
			return fmt.Errorf("after %d: %w", i, err)
		}
	}
	return nil
}

func orAccepted(err error, n int, what string) error {
	if err == nil {
		return fmt.Errorf("%d %s accepted", n, what)
	}
	return err
}

// quotaErr checks err is a quota refusal whose message names limit.
func quotaErr(err error, limit string) error {
	switch {
	case err == nil:
		return fmt.Errorf("never refused")
	case codeOf(err) != wire.ErrQuota:
		return fmt.Errorf("refused, but not as a quota: %v", err)
	case !strings.Contains(err.Error(), limit):
		return fmt.Errorf("refusal does not name %s: %v", limit, err)
	}
	return nil
}

// pendingLimited opens n attach connections that send nothing: the engine
// must not hold them all. Past its limit it refuses them at once, with a
// refusal that names the limit (a connect the kernel refuses, or a close,
// count as refusals too; an answer that names nothing does not).
func pendingLimited(sock string, n int) error {
	var conns []*net.UnixConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	refused := 0
	for i := 0; i < n; i++ {
		c, err := net.DialTimeout("unixpacket", sock, 100*time.Millisecond)
		if err != nil {
			refused++
			continue
		}
		conns = append(conns, c.(*net.UnixConn))
	}
	// all read at once: a deadline that passed fails a read without looking
	deadline := time.Now().Add(2 * time.Second)
	errs := make(chan error, len(conns))
	for _, c := range conns {
		go func() {
			c.SetReadDeadline(deadline)
			m, fds, err := readSock(c)
			closeFDs(fds)
			var ne net.Error
			switch {
			case err != nil && errors.As(err, &ne) && ne.Timeout():
				errs <- ne
			case err != nil:
				errs <- nil // closed: refused
			default:
				r, ok := m.(*wire.AttachReply)
				if !ok || r.Code != wire.ErrQuota || !pendingLimit.MatchString(r.Msg) {
					errs <- fmt.Errorf("a connection that never attached was answered %v, not a quota refusal naming the pending-attach limit", m)
					return
				}
				errs <- nil
			}
		}()
	}
	for range conns {
		err := <-errs
		var ne net.Error
		switch {
		case err == nil:
			refused++
		case !errors.As(err, &ne):
			return err
		}
	}
	if refused == 0 {
		return fmt.Errorf("%d connections that never attached are all held open", n)
	}
	return nil
}

var pendingLimit = regexp.MustCompile(`(?i)pending`)

// namesAndPorts takes what is not its own: the good server's app name, a
// specific address on the good server's wildcard port, a privileged port.
func (h *hostile) namesAndPorts() error {
	// anyone who can open the attach socket can attach under any name
	if st, err := os.Stat(h.sock); err != nil {
		h.check("attach socket not open to every user", err)
	} else if m := st.Mode().Perm(); m&0o006 != 0 {
		h.check("attach socket not open to every user", fmt.Errorf("mode %v", m))
	} else {
		h.check("attach socket not open to every user", nil)
	}

	x, err := attachRaw(h.sock, goodServerName, 0)
	switch {
	case err == nil:
		x.close()
		err = fmt.Errorf("attached under the name of the running app %s", goodServerName)
	case !strings.Contains(err.Error(), goodServerName):
		err = fmt.Errorf("refused, but the refusal does not name %s: %v", goodServerName, err)
	default:
		err = nil
	}
	h.check("taken app name refused", err)

	// 127.0.0.1:P while the good server listens on 0.0.0.0:P
	la, err := attachRaw(h.sock, "hostile-local", wire.FlagScopeLocal)
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	_, err = la.listen(h.server)
	switch {
	case err == nil:
		err = fmt.Errorf("listening on %v while %s holds 0.0.0.0:%d", h.server, goodServerName, h.server.Port())
	case codeOf(err) != wire.ErrAddrInUse:
		err = fmt.Errorf("refused, but not as address in use: %v", err)
	default:
		err = nil
	}
	h.check("specific address on a taken wildcard port refused", err)
	// and the good server's port still reaches the good server
	if s, cerr := h.app.connect(h.server); cerr == nil {
		h.ct = append(h.ct, s)
		if _, aerr := la.await(func(m wire.Msg) bool { _, ok := m.(*wire.Accepted); return ok }, 300*time.Millisecond); aerr == nil {
			h.check("connects to the good server's port reach it", errors.New("the hostile app accepted it"))
		} else {
			h.check("connects to the good server's port reach it", nil)
		}
	}

	// a privileged port in global scope: the engine runs as root here
	if h.low != 0 {
		_, err = h.app.listen(netip.AddrPortFrom(netip.IPv4Unspecified(), h.low))
		if err == nil {
			err = fmt.Errorf("listening on privileged port %d", h.low)
		} else {
			err = nil
		}
		h.check("privileged port refused", err)
	}
	return nil
}

// killedMidTransfer writes into all its sessions as fast as they take it;
// the test kills it in the middle.
func (h *hostile) killedMidTransfer() error {
	for _, s := range h.sessions() {
		go func() {
			buf := make([]byte, 16<<10)
			for {
				if n, err := s.write(buf); err != nil {
					return
				} else if n == 0 {
					time.Sleep(100 * time.Microsecond)
				}
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	return nil
}
