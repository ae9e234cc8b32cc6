package session

import (
	"bytes"
	"encoding/binary"
	"net"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/wire"
)

// sendRaw writes b as one attach-socket message.
func sendRaw(t *testing.T, c *net.UnixConn, b []byte) {
	t.Helper()
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
}

// recvAny reads one attach-socket message in whatever version it comes.
func recvAny(t *testing.T, c *net.UnixConn) (wire.Msg, uint8, []int) {
	t.Helper()
	b := make([]byte, wire.SocketMsgMax)
	oob := make([]byte, 256)
	n, oobn, _, _, err := c.ReadMsgUnix(b, oob)
	if err != nil {
		t.Fatalf("read attach socket: %v", err)
	}
	var fds []int
	if oobn > 0 {
		cms, _ := unix.ParseSocketControlMessage(oob[:oobn])
		for _, cm := range cms {
			f, _ := unix.ParseUnixRights(&cm)
			fds = append(fds, f...)
		}
	}
	t.Cleanup(func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	})
	m, v, err := wire.DecodeAny(b[:n])
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	return m, v, fds
}

// TestVersionNegotiation: the engine speaks the previous wire version with
// an app that offers only it (every message, on the socket and in the
// queues), the newest common one with a newer app, and refuses versions
// it does not speak with a reply the app can read.
func TestVersionNegotiation(t *testing.T) {
	_, path := newEngine(t, testCfg)

	// An app of the oldest version: its Attach has no version range.
	v2 := wire.Codec{V: wire.MinVersion}
	c := dialRaw(t, path)
	b, err := v2.Append(nil, &wire.Attach{Name: "old"})
	if err != nil {
		t.Fatal(err)
	}
	sendRaw(t, c, b)
	m, v, fds := recvAny(t, c)
	rep, ok := m.(*wire.AttachReply)
	if !ok || rep.Code != wire.OK || v != v2.V || rep.EngineVersion != v2.V || len(fds) != wire.AttachFDs {
		t.Fatalf("previous-version attach: version %d %#v", v, m)
	}
	mq, err := shm.OpenSegment(fds[0])
	if err != nil {
		t.Fatal(err)
	}
	defer mq.Close()
	evq, err := shm.OpenQueue(mq, int(rep.Worker.EvqOff), int(rep.Worker.EvqSlots), fds[1])
	if err != nil {
		t.Fatal(err)
	}
	rq, err := shm.OpenQueue(mq, int(rep.Worker.ReqOff), int(rep.Worker.ReqSlots), fds[2])
	if err != nil {
		t.Fatal(err)
	}
	req := make([]byte, wire.QueueMsgMax)
	n, _ := v2.Encode(req, &wire.Listen{Ctx: 7, Addr: lo(8081)})
	if err := rq.Send(req[:n]); err != nil {
		t.Fatal(err)
	}
	ev := make([]byte, shm.MsgSize)
	waitFor(t, "bound event", func() bool {
		n, _ = evq.TryRecv(ev)
		return n > 0
	})
	if ev[0] != v2.V {
		t.Fatalf("event in version %d, want %d", ev[0], v2.V)
	}
	if bm, err := v2.Decode(ev[:n]); err != nil || bm.(*wire.Bound).Code != wire.OK || bm.(*wire.Bound).Ctx != 7 {
		t.Fatalf("bound: %#v %v", bm, err)
	}

	// A newer app: header version 9, range 2..9, fields the engine does not
	// know appended to its Attach. The engine answers in its own newest.
	b, _ = wire.Current.Append(nil, &wire.Attach{Name: "new", MinVersion: wire.MinVersion, MaxVersion: 9})
	b[0] = 9
	b = append(b, bytes.Repeat([]byte{0xaa}, 16)...)
	binary.LittleEndian.PutUint16(b[2:], uint16(len(b)-wire.HeaderSize))
	c = dialRaw(t, path)
	sendRaw(t, c, b)
	if m, v, _ := recvAny(t, c); m.(*wire.AttachReply).Code != wire.OK || v != wire.Version || m.(*wire.AttachReply).EngineVersion != wire.Version {
		t.Fatalf("newer app: version %d %#v", v, m)
	}

	// An app too new (it no longer speaks ours) and one too old: refused,
	// naming both ranges, in a version the app can read.
	b, _ = wire.Current.Append(nil, &wire.Attach{Name: "future", MinVersion: 8, MaxVersion: 9})
	b[0] = 9
	c = dialRaw(t, path)
	sendRaw(t, c, b)
	m, v, _ = recvAny(t, c)
	if r := m.(*wire.AttachReply); r.Code != wire.ErrVersion || v != wire.Version || !strings.Contains(r.Msg, "app speaks wire versions 8 to 9") {
		t.Fatalf("too new: version %d %#v", v, m)
	}
	b, _ = v2.Append(nil, &wire.Attach{Name: "ancient"})
	b[0] = wire.MinVersion - 1
	c = dialRaw(t, path)
	sendRaw(t, c, b)
	m, v, _ = recvAny(t, c)
	if r := m.(*wire.AttachReply); r.Code != wire.ErrVersion || v != wire.MinVersion || !strings.Contains(r.Msg, "app speaks wire version 1;") {
		t.Fatalf("too old: version %d %#v", v, m)
	}
}
