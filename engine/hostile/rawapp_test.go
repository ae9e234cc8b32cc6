//go:build !race

package hostile

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/wire"
)

// rawApp is an app that speaks engine/wire by hand over the attach socket
// and the queues, with none of the client library's manners: the hostile
// app is made of these.
type rawApp struct {
	name  string
	c     *net.UnixConn
	reply wire.AttachReply
	mq    *shm.Segment
	own   *shm.Segment
	evq   *shm.Queue
	rq    *shm.Queue
	info  wire.WorkerInfo
	// ring are the worker's descriptors that are not memory: the app
	// rings them after queueing a request, whatever kind the engine uses
	ring []int

	mu       sync.Mutex
	cond     *sync.Cond
	fds      []int // every descriptor the engine passed, in order
	segs     map[uint64]*rawSeg
	sockMsgs []wire.Msg  // attach-socket messages other than segments
	sockErr  error       // why the attach socket ended
	deaf     atomic.Bool // stop reading the attach socket
	qmu      sync.Mutex  // the queues: one user at a time
	events   []wire.Msg  // queue events nobody waited for
	ctx      uint64
}

// rawSeg is a segment the engine announced, with its descriptors.
type rawSeg struct {
	handle uint64
	seg    *shm.Segment
	fds    []int
}

// wireError is a refusal from the engine.
type wireError struct {
	code wire.Code
	msg  string
}

func (e *wireError) Error() string { return fmt.Sprintf("%v: %s", e.code, e.msg) }

func codeOf(err error) wire.Code {
	var we *wireError
	if errors.As(err, &we) {
		return we.code
	}
	return wire.OK
}

func dialAttach(sock string) (*net.UnixConn, error) {
	c, err := net.DialTimeout("unixpacket", sock, 2*time.Second)
	if err != nil {
		return nil, err
	}
	return c.(*net.UnixConn), nil
}

// newAttach is the Attach of a raw app. From wire version 3 on an Attach
// names the range of versions the app speaks: a raw app speaks only this
// one. (Set by name while the branches with and without the range are
// being merged; plain fields once main has version 3.)
func newAttach(name string, flags uint64) *wire.Attach {
	at := &wire.Attach{Name: name, Flags: flags}
	v := reflect.ValueOf(at).Elem()
	for _, f := range []string{"MinVersion", "MaxVersion"} {
		if fv := v.FieldByName(f); fv.IsValid() && fv.CanSet() {
			fv.SetUint(wire.Version)
		}
	}
	return at
}

// attachRaw attaches under name with the given attach flags.
func attachRaw(sock, name string, flags uint64) (*rawApp, error) {
	c, err := dialAttach(sock)
	if err != nil {
		return nil, err
	}
	var b [wire.SocketMsgMax]byte
	n, err := wire.Encode(b[:], newAttach(name, flags))
	if err != nil {
		c.Close()
		return nil, err
	}
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write(b[:n]); err != nil {
		c.Close()
		return nil, err
	}
	m, fds, err := readSock(c)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("attach reply: %w", err)
	}
	c.SetDeadline(time.Time{})
	rep, ok := m.(*wire.AttachReply)
	if !ok {
		closeFDs(fds)
		c.Close()
		return nil, fmt.Errorf("attach answered with %v", m.Type())
	}
	if rep.Code != wire.OK {
		closeFDs(fds)
		c.Close()
		return nil, &wireError{rep.Code, rep.Msg}
	}
	if len(fds) != wire.AttachFDs {
		closeFDs(fds)
		c.Close()
		return nil, fmt.Errorf("attach reply with %d descriptors, want %d", len(fds), wire.AttachFDs)
	}
	a := &rawApp{name: name, c: c, reply: *rep, info: rep.Worker, segs: map[uint64]*rawSeg{}}
	a.cond = sync.NewCond(&a.mu)
	// keep our own copies of every descriptor: the segments own theirs
	for _, fd := range fds {
		d, _ := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		a.fds = append(a.fds, d)
	}
	if a.mq, err = shm.OpenSegment(fds[0]); err != nil {
		return nil, fmt.Errorf("queue segment: %w", err)
	}
	if a.own, err = shm.OpenSegment(fds[wire.AttachFDs-1]); err != nil {
		return nil, fmt.Errorf("fifo segment: %w", err)
	}
	for _, fd := range fds[1 : wire.AttachFDs-1] {
		if fdKind(fd) != "memfd" {
			a.ring = append(a.ring, fd)
		}
	}
	if a.evq, err = shm.OpenQueue(a.mq, int(a.info.EvqOff), int(a.info.EvqSlots), -1); err != nil {
		return nil, fmt.Errorf("event queue: %w", err)
	}
	if a.rq, err = shm.OpenQueue(a.mq, int(a.info.ReqOff), int(a.info.ReqSlots), -1); err != nil {
		return nil, fmt.Errorf("request queue: %w", err)
	}
	go a.readLoop()
	return a, nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// readSock reads one attach-socket message and its descriptors.
func readSock(c *net.UnixConn) (wire.Msg, []int, error) {
	buf := make([]byte, wire.SocketMsgMax+1)
	oob := make([]byte, unix.CmsgSpace(4*16))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	var fds []int
	if oobn > 0 {
		if cms, perr := unix.ParseSocketControlMessage(oob[:oobn]); perr == nil {
			for _, cm := range cms {
				if f, ferr := unix.ParseUnixRights(&cm); ferr == nil {
					fds = append(fds, f...)
				}
			}
		}
	}
	if err != nil {
		closeFDs(fds)
		return nil, nil, err
	}
	if n == 0 {
		closeFDs(fds)
		return nil, nil, errors.New("the engine closed the attach socket")
	}
	m, err := wire.Decode(buf[:n])
	if err != nil {
		closeFDs(fds)
		return nil, nil, err
	}
	return m, fds, nil
}

// readLoop maps announced segments and keeps every other socket message.
func (a *rawApp) readLoop() {
	for {
		for a.deaf.Load() {
			time.Sleep(10 * time.Millisecond)
		}
		m, fds, err := readSock(a.c)
		a.mu.Lock()
		if err != nil {
			a.sockErr = err
			a.cond.Broadcast()
			a.mu.Unlock()
			return
		}
		if as, ok := m.(*wire.AddSegment); ok && len(fds) > 0 {
			var own []int
			for _, fd := range fds {
				d, _ := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
				own = append(own, d)
			}
			a.fds = append(a.fds, own...)
			if seg, err := shm.OpenSegment(fds[0]); err == nil {
				a.segs[as.Segment] = &rawSeg{handle: as.Segment, seg: seg, fds: own}
			}
			closeFDs(fds[1:])
		} else {
			a.fds = append(a.fds, fds...)
			a.sockMsgs = append(a.sockMsgs, m)
		}
		a.cond.Broadcast()
		a.mu.Unlock()
	}
}

// allFDs returns every descriptor the engine passed so far.
func (a *rawApp) allFDs() []int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]int(nil), a.fds...)
}

// segment waits for the announcement of segment h.
func (a *rawApp) segment(h uint64) (*rawSeg, error) {
	if h == a.reply.Segment {
		a.mu.Lock()
		s := a.segs[h]
		a.mu.Unlock()
		if s != nil {
			return s, nil
		}
		return &rawSeg{handle: h, seg: a.own}, nil
	}
	deadline := time.Now().Add(2 * time.Second)
	a.mu.Lock()
	defer a.mu.Unlock()
	for a.segs[h] == nil {
		if a.sockErr != nil || time.Now().After(deadline) {
			return nil, fmt.Errorf("segment %d was never announced", h)
		}
		a.mu.Unlock()
		time.Sleep(time.Millisecond)
		a.mu.Lock()
	}
	return a.segs[h], nil
}

func (a *rawApp) nextCtx() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ctx++
	return a.ctx
}

// request queues m on the request queue and rings the engine.
func (a *rawApp) request(m wire.Msg) error {
	var b [wire.QueueMsgMax]byte
	n, err := wire.Encode(b[:], m)
	if err != nil {
		return err
	}
	return a.requestRaw(b[:n])
}

// requestRaw queues any bytes as a request, waiting up to a second for room.
func (a *rawApp) requestRaw(b []byte) error {
	a.qmu.Lock()
	defer a.qmu.Unlock()
	deadline := time.Now().Add(time.Second)
	for {
		err := a.rq.Send(b)
		if errors.Is(err, shm.ErrQueueFull) && time.Now().Before(deadline) {
			a.drainLocked()
			time.Sleep(100 * time.Microsecond)
			continue
		}
		a.ringEngine()
		// consume the answers as they come: an app that lets its event
		// queue overflow is detached, and that is not the attack here
		a.drainLocked()
		if err != nil && !strings.Contains(err.Error(), "eventfd") {
			return err
		}
		return nil
	}
}

func (a *rawApp) ringEngine() {
	for _, fd := range a.ring {
		ringFD(fd)
	}
}

// drainLocked moves queued events into a.events.
func (a *rawApp) drainLocked() {
	buf := make([]byte, shm.MsgSize)
	for {
		n, err := a.evq.TryRecv(buf)
		if n == 0 || err != nil {
			return
		}
		if m, err := wire.Decode(buf[:n]); err == nil {
			if len(a.events) >= 1<<16 {
				a.events = append(a.events[:0], a.events[1<<15:]...)
			}
			a.events = append(a.events, m)
		}
	}
}

// await returns the first event match accepts, waiting up to d.
func (a *rawApp) await(match func(wire.Msg) bool, d time.Duration) (wire.Msg, error) {
	deadline := time.Now().Add(d)
	for {
		a.qmu.Lock()
		a.drainLocked()
		for i, m := range a.events {
			if match(m) {
				a.events = append(a.events[:i], a.events[i+1:]...)
				a.qmu.Unlock()
				return m, nil
			}
		}
		a.qmu.Unlock()
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no answer from the engine within %v", d)
		}
		time.Sleep(50 * time.Microsecond)
	}
}

// rawSess is a session of a raw app.
type rawSess struct {
	a      *rawApp
	handle uint64
	seg    *rawSeg
	rxOff  int
	txOff  int
	rx, tx *shm.Fifo
}

// connect opens a session to addr.
func (a *rawApp) connect(addr netip.AddrPort) (*rawSess, error) {
	ctx := a.nextCtx()
	if err := a.request(&wire.Connect{Ctx: ctx, Remote: wire.Addr{Proto: wire.TCP, IP: addr.Addr(), Port: addr.Port()}}); err != nil {
		return nil, err
	}
	m, err := a.await(func(m wire.Msg) bool { c, ok := m.(*wire.Connected); return ok && c.Ctx == ctx }, 3*time.Second)
	if err != nil {
		return nil, fmt.Errorf("connect %v: %w", addr, err)
	}
	c := m.(*wire.Connected)
	if c.Code != wire.OK {
		return nil, &wireError{c.Code, c.Msg}
	}
	seg, err := a.segment(c.Fifos.Segment)
	if err != nil {
		return nil, err
	}
	s := &rawSess{a: a, handle: c.Session, seg: seg, rxOff: int(c.Fifos.RxOff), txOff: int(c.Fifos.TxOff)}
	if s.rx, err = shm.OpenFifo(seg.seg, s.rxOff, int(c.Fifos.RxCap)); err != nil {
		return nil, err
	}
	if s.tx, err = shm.OpenFifo(seg.seg, s.txOff, int(c.Fifos.TxCap)); err != nil {
		return nil, err
	}
	return s, nil
}

// write writes what fits and rings the peer when it waits.
func (s *rawSess) write(p []byte) (int, error) {
	n, err := s.tx.Write(p)
	if s.tx.TakeReaderWaiting() {
		s.ringPeer()
	}
	return n, err
}

func (s *rawSess) ringPeer() {
	s.a.mu.Lock()
	seg := s.a.segs[s.seg.handle]
	s.a.mu.Unlock()
	if seg == nil {
		return
	}
	for _, fd := range seg.fds[min(1, len(seg.fds)):] {
		ringFD(fd)
	}
}

// listen asks for a listener on addr.
func (a *rawApp) listen(addr netip.AddrPort) (*wire.Bound, error) {
	ctx := a.nextCtx()
	if err := a.request(&wire.Listen{Ctx: ctx, Addr: wire.Addr{Proto: wire.TCP, IP: addr.Addr(), Port: addr.Port()}}); err != nil {
		return nil, err
	}
	m, err := a.await(func(m wire.Msg) bool { b, ok := m.(*wire.Bound); return ok && b.Ctx == ctx }, 3*time.Second)
	if err != nil {
		return nil, fmt.Errorf("listen %v: %w", addr, err)
	}
	b := m.(*wire.Bound)
	if b.Code != wire.OK {
		return b, &wireError{b.Code, b.Msg}
	}
	return b, nil
}

// sendSock sends m with fds on the attach socket.
func (a *rawApp) sendSock(m wire.Msg, fds ...int) error {
	var b [wire.SocketMsgMax]byte
	n, err := wire.Encode(b[:], m)
	if err != nil {
		return err
	}
	return sendRaw(a.c, b[:n], fds...)
}

func sendRaw(c *net.UnixConn, b []byte, fds ...int) error {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	c.SetWriteDeadline(time.Now().Add(time.Second))
	_, _, err := c.WriteMsgUnix(b, oob, nil)
	return err
}

// addWorker asks for one more worker.
func (a *rawApp) addWorker() (*wire.WorkerAddReply, error) {
	ctx := a.nextCtx()
	if err := a.sendSock(&wire.WorkerAdd{Ctx: ctx}); err != nil {
		return nil, err
	}
	deadline := time.Now().Add(3 * time.Second)
	a.mu.Lock()
	defer a.mu.Unlock()
	for {
		for _, m := range a.sockMsgs {
			if r, ok := m.(*wire.WorkerAddReply); ok && r.Ctx == ctx {
				if r.Code != wire.OK {
					return r, &wireError{r.Code, r.Msg}
				}
				return r, nil
			}
		}
		if a.sockErr != nil {
			return nil, a.sockErr
		}
		if time.Now().After(deadline) {
			return nil, errors.New("no worker-add reply within 3s")
		}
		a.mu.Unlock()
		time.Sleep(time.Millisecond)
		a.mu.Lock()
	}
}

// close drops the attachment (the engine reaps the app).
func (a *rawApp) close() { a.c.Close() }

// fdKind says what a descriptor is: "eventfd", "socket", "memfd", "pipe"
// or "other".
func fdKind(fd int) string {
	l, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	switch {
	case err != nil:
		return "closed"
	case strings.Contains(l, "eventfd"):
		return "eventfd"
	case strings.HasPrefix(l, "socket:"):
		return "socket"
	case strings.HasPrefix(l, "/memfd:"):
		return "memfd"
	case strings.HasPrefix(l, "pipe:"):
		return "pipe"
	}
	return "other"
}

// ringFD rings a doorbell without ever blocking the caller, whatever the
// descriptor's O_NONBLOCK says.
func ringFD(fd int) {
	switch fdKind(fd) {
	case "eventfd":
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		if n, _ := unix.Poll(pfd, 0); n == 1 && pfd[0].Revents&unix.POLLOUT != 0 {
			var one [8]byte
			binary.NativeEndian.PutUint64(one[:], 1)
			unix.Write(fd, one[:])
		}
	case "socket":
		unix.Send(fd, []byte{1}, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
	}
}
