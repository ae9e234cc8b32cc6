package wire

import (
	"bytes"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

var v4 = Addr{Proto: TCP, IP: netip.MustParseAddr("10.1.2.3"), Port: 8080}
var v6 = Addr{Proto: TCP, IP: netip.MustParseAddr("fd00::1"), Port: 443}
var fp = FifoPair{Segment: 7, RxOff: 4096, TxOff: 8192, RxCap: 65536, TxCap: 1 << 20, Event: 5}

func samples() []Msg {
	return []Msg{
		&Attach{Name: "web", Namespace: "team-a/default", Secret: "s3cret", Flags: FlagSpin, RxFifoSize: 1 << 16, MinVersion: MinVersion, MaxVersion: Version},
		&AttachReply{Code: OK, EngineVersion: Version, AppID: 3, Worker: WorkerInfo{ID: 1, MQSize: 1 << 20, EvqOff: 64, EvqSlots: 128, ReqOff: 4096, ReqSlots: 64, EvOff: 8192, EvBits: 4096}, Segment: 9, SegmentSize: 1 << 24, RxFifoSize: 1 << 16, TxFifoSize: 1 << 16, MaxSessions: 100},
		&AttachReply{Code: ErrAuth, Msg: "wrong secret for app namespace team-a/default"},
		&WorkerAdd{Ctx: 1},
		&WorkerAddReply{Ctx: 1, Worker: WorkerInfo{ID: 2, EvOff: 64, EvBits: 128}},
		&WorkerDel{Ctx: 2, Worker: 2},
		&WorkerDelReply{Ctx: 2, Code: ErrNoWorker, Msg: "no worker 2"},
		&Detach{},
		&DetachReply{},
		&AddSegment{Segment: 12, Size: 1 << 22, Worker: 0, PeerApp: 4, PeerWorker: 1, HasPeerWake: true},
		&Notice{Code: ErrShutdown, Msg: "engine stopping"},
		&TLSContextAdd{Ctx: 12, CertKeyPair: "team-a/web", ServerName: "api.example.com", Trust: "corp-ca"},
		&TLSContextReply{Ctx: 12, Handle: 1},
		&TLSContextReply{Ctx: 12, Code: ErrDenied, Msg: "certkeypair belongs to another namespace"},
		&Listen{Ctx: 5, Addr: v4},
		&Listen{Ctx: 5, Addr: v4, TLS: 1},
		&Unlisten{Ctx: 6, Listener: 99},
		&Connect{Ctx: 7, Remote: v6},
		&Connect{Ctx: 7, Remote: v6, TLS: 2},
		&Bound{Ctx: 9, Local: Addr{Proto: UDP, IP: v4.IP, Port: 53}, Session: 4, Fifos: fp},
		&AcceptReply{Session: 1, Code: OK},
		&Disconnect{Session: 2},
		&Reset{Session: 3},
		&Shutdown{Session: 4},
		&Accepted{Listener: 1, Session: 2, Fifos: fp, Local: v4, Remote: v4},
		&Connected{Ctx: 8, Session: 2, Fifos: fp, Local: v6, Remote: v6},
		&Connected{Ctx: 8, Code: ErrRefused, Msg: "nothing listens on 10.1.2.3:8080", Remote: v4},
		&Bound{Ctx: 9, Listener: 3, Local: v4},
		&Bound{Ctx: 9, Code: ErrAddrInUse, Msg: "in use"},
		&UnlistenReply{Ctx: 10, Listener: 3},
		&Disconnected{Session: 5},
		&ResetEvt{Session: 5, Code: ErrReset, Msg: "peer app died"},
		&Migrated{Session: 5, Worker: 2},
		&Cleanup{Session: 5},
		&DelSegment{Segment: 12},
		&Reply{Ctx: 11, Req: TShutdown, Handle: 5, Code: OK},
	}
}

func TestRoundTrip(t *testing.T) {
	for _, m := range samples() {
		buf := make([]byte, SocketMsgMax)
		n, err := Encode(buf, m)
		if err != nil {
			t.Fatalf("%v: %v", m.Type(), err)
		}
		limit := SocketMsgMax
		if IsQueueMsg(m.Type()) {
			limit = QueueMsgMax
		}
		if n > limit {
			t.Errorf("%v: %d bytes exceeds %d", m.Type(), n, limit)
		}
		got, err := Decode(buf[:n])
		if err != nil {
			t.Fatalf("%v: decode: %v", m.Type(), err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("%v: round trip\n got %#v\nwant %#v", m.Type(), got, m)
		}
		// zero padding (as in a queue slot) is accepted
		if _, err := Decode(buf[:n+8]); err != nil {
			t.Errorf("%v: zero padding rejected: %v", m.Type(), err)
		}
		// every truncation is rejected
		for i := 0; i < n; i++ {
			if _, err := Decode(buf[:i]); err == nil {
				t.Fatalf("%v: truncated to %d accepted", m.Type(), i)
			}
		}
	}
}

func TestRejects(t *testing.T) {
	buf := make([]byte, 64)
	n, _ := Encode(buf, &Listen{Ctx: 1, Addr: v4})
	cases := map[string]func([]byte){
		"version":  func(b []byte) { b[0] = 9 },
		"type":     func(b []byte) { b[1] = 200 },
		"length":   func(b []byte) { b[2]++ },
		"reserved": func(b []byte) { b[5] = 1 },
		"family":   func(b []byte) { b[HeaderSize+8+1] = 5 },
		"proto":    func(b []byte) { b[HeaderSize+8] = 1 },
		"v4pad":    func(b []byte) { b[HeaderSize+8+4+10] = 1 },
		"trailing": func(b []byte) { b[n] = 1 },
	}
	for name, mut := range cases {
		b := bytes.Clone(buf)
		mut(b)
		if _, err := Decode(b[:n+1]); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// strings: too long, control characters, invalid UTF-8, dirty padding
	if _, err := Encode(make([]byte, SocketMsgMax), &Attach{Name: strings.Repeat("x", MaxNameLen+1)}); err == nil {
		t.Error("over-long name encoded")
	}
	m := make([]byte, SocketMsgMax)
	n, _ = Encode(m, &Attach{Name: "ab"})
	for name, mut := range map[string]func([]byte){
		"len":     func(b []byte) { b[HeaderSize] = MaxNameLen + 1 },
		"control": func(b []byte) { b[HeaderSize+1] = '\n' },
		"utf8":    func(b []byte) { b[HeaderSize+1] = 0xff },
		"padding": func(b []byte) { b[HeaderSize+5] = 'x' },
		"flags":   func(b []byte) { b[HeaderSize+3*1+MaxNameLen+MaxNamespaceLen+MaxSecretLen+7] = 0x80 },
	} {
		b := bytes.Clone(m)
		mut(b)
		if _, err := Decode(b[:n]); err == nil {
			t.Errorf("attach %s: accepted", name)
		}
	}
}

func TestTruncate(t *testing.T) {
	s := Truncate(strings.Repeat("é", 100)+"\x00\n", MaxMessageLen)
	if len(s) > MaxMessageLen || strings.ContainsAny(s, "\x00\n") {
		t.Fatalf("bad truncate %q", s)
	}
	if _, err := Encode(make([]byte, QueueMsgMax), &Reply{Req: TListen, Msg: Msgf("%s", strings.Repeat("\xff", 300))}); err != nil {
		t.Fatal(err)
	}
}

// FuzzWireDecode feeds arbitrary bytes to Decode: it must never panic, and
// whatever it accepts must re-encode to a message that decodes to the same
// value and fits its transport's size limit.
func FuzzWireDecode(f *testing.F) {
	for _, m := range samples() {
		b := make([]byte, SocketMsgMax)
		n, _ := Encode(b, m)
		f.Add(b[:n])
	}
	f.Add([]byte{})
	f.Add([]byte{Version, byte(TListen), 0xff, 0xff, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Decode(data)
		if err != nil {
			if m != nil {
				t.Fatal("message returned with an error")
			}
			return
		}
		buf := make([]byte, SocketMsgMax)
		n, err := Encode(buf, m)
		if err != nil {
			t.Fatalf("accepted %v does not re-encode: %v", m.Type(), err)
		}
		if IsQueueMsg(m.Type()) && n > QueueMsgMax {
			t.Fatalf("%v: %d bytes", m.Type(), n)
		}
		m2, err := Decode(buf[:n])
		if err != nil {
			t.Fatalf("re-encoded %v rejected: %v", m.Type(), err)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("unstable: %#v vs %#v", m, m2)
		}
		if !bytes.Equal(buf[:n], data[:n]) {
			t.Fatalf("%v: non-canonical encoding accepted", m.Type())
		}
	})
}

// TestAttachVersions: an Attach is written in each version's own layout,
// an unset range means this side's, and DecodeAttach reads every version
// from the oldest spoken on, a newer one by its known prefix.
// TestEventFields: version 5's appended fields travel in version 5 and
// are absent (zero) in version 4, the rest of each message unchanged.
func TestEventFields(t *testing.T) {
	for _, m := range []Msg{samples()[1], samples()[4], &Accepted{Listener: 1, Session: 2, Fifos: fp, Local: v4, Remote: v4},
		&Connected{Ctx: 8, Session: 2, Fifos: fp, Local: v6, Remote: v6}, &Bound{Ctx: 9, Local: Addr{Proto: UDP, IP: v4.IP, Port: 53}, Session: 4, Fifos: fp}} {
		for _, v := range []uint8{VersionEvents - 1, VersionEvents} {
			c := Codec{V: v}
			b, err := c.Append(nil, m)
			if err != nil {
				t.Fatalf("%v v%d: %v", m.Type(), v, err)
			}
			got, err := c.Decode(b)
			if err != nil {
				t.Fatalf("%v v%d: decode: %v", m.Type(), v, err)
			}
			want := reflect.ValueOf(m).Elem()
			if v < VersionEvents {
				w := reflect.New(want.Type())
				w.Elem().Set(want)
				for _, f := range []string{"Fifos", "Worker"} {
					if fv := w.Elem().FieldByName(f); fv.IsValid() {
						for _, g := range []string{"Event", "EvOff", "EvBits"} {
							if x := fv.FieldByName(g); x.IsValid() {
								x.SetZero()
							}
						}
					}
				}
				want = w.Elem()
			}
			if !reflect.DeepEqual(reflect.ValueOf(got).Elem().Interface(), want.Interface()) {
				t.Errorf("%v v%d: got %+v, want %+v", m.Type(), v, got, want.Interface())
			}
		}
	}
	// a failed connect names no event bit; event bits are whole words
	for _, m := range []Msg{
		&Connected{Ctx: 8, Code: ErrRefused, Remote: v4, Fifos: FifoPair{Event: 3}},
		&WorkerAddReply{Ctx: 1, Worker: WorkerInfo{EvOff: 64, EvBits: 100}},
		&WorkerAddReply{Ctx: 1, Worker: WorkerInfo{EvOff: 65, EvBits: 128}},
	} {
		b, err := Current.Append(nil, m)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := Current.Decode(b); err == nil {
			t.Errorf("decoded %+v", got)
		}
	}
}

func TestAttachVersions(t *testing.T) {
	at := &Attach{Name: "a", Flags: FlagScopeLocal}
	v2, err := Codec{V: 2}.Append(nil, at)
	if err != nil {
		t.Fatal(err)
	}
	v3, err := Current.Append(nil, at)
	if err != nil {
		t.Fatal(err)
	}
	if len(v3) != len(v2)+2 || v2[0] != 2 || v3[0] != Version {
		t.Fatalf("v2 %d bytes (version %d), v3 %d bytes (version %d)", len(v2), v2[0], len(v3), v3[0])
	}
	for _, c := range []struct {
		b      []byte
		lo, hi uint8
	}{{v2, 2, 2}, {v3, MinVersion, Version}} {
		got, err := DecodeAttach(c.b)
		if err != nil {
			t.Fatal(err)
		}
		if got.MinVersion != c.lo || got.MaxVersion != c.hi || got.Name != "a" || got.Flags != FlagScopeLocal {
			t.Fatalf("decoded %+v", got)
		}
		if v, ok := Negotiate(got.MinVersion, got.MaxVersion); !ok || v != c.hi {
			t.Fatalf("negotiated %d %v, want %d", v, ok, c.hi)
		}
	}
	// a message of one version is not one of another
	if _, err := (Codec{V: 2}).Decode(v3); err == nil {
		t.Fatal("version-3 bytes decoded as version 2")
	}
	if _, err := Current.Decode(v2); err == nil {
		t.Fatal("version-2 bytes decoded as version 3")
	}
	// too old
	old := append([]byte(nil), v2...)
	old[0] = 1
	var ve *VersionError
	if _, err := DecodeAttach(old); !errors.As(err, &ve) || ve.Peer != 1 {
		t.Fatalf("version 1: %v", err)
	}
	// a range that does not match its header
	bad := append([]byte(nil), v3...)
	bad[len(bad)-1] = Version + 1
	if _, err := DecodeAttach(bad); err == nil {
		t.Fatal("range above its header's version accepted")
	}
}
