// Package wire is hoststack's own message format between the session engine and
// the apps attached to it: the attach conversation over the SOCK_SEQPACKET unix
// socket, and the fixed-size requests and events exchanged through the shared
// memory message queues.
//
// Every message is a fixed-size little-endian record: an 8-byte header
// (version, type, body length, reserved) followed by a body whose size depends
// only on the type. Variable-length text (names, secrets, error messages) sits
// in fixed-size fields with a length byte. Queue messages fit in one queue slot
// (QueueMsgMax bytes); attach-socket messages fit in SocketMsgMax bytes.
//
// The conversation:
//
//	app → engine (socket)  Attach{name, namespace, secret, fifo sizes}
//	engine → app (socket)  AttachReply{ids, queue layout, sizes} + fds: queue
//	                       segment, worker doorbell, transport doorbell, fifo
//	                       segment
//	app → engine (socket)  WorkerAdd / WorkerDel / Detach     (replies + fds)
//	engine → app (socket)  AddSegment + fds: segment, and for a cut-through
//	                       segment the app's end of its doorbell
//	                       (always before any event that refers to the segment)
//	engine → app (socket)  Notice{code, reason} before the engine closes it
//	app → engine (queue)   Listen, Unlisten, Connect, AcceptReply, Disconnect,
//	                       Reset, Shutdown
//	engine → app (queue)   Bound, UnlistenReply, Connected, Accepted,
//	                       Disconnected, ResetEvt, Migrated, Cleanup,
//	                       DelSegment, Reply
//
// Requests carry a context (Ctx) echoed by their reply; sessions and
// listeners are named by engine-assigned 64-bit handles. Results are a Code
// (mapped to an errno by the client) plus a message meant for humans.
//
// # Versions
//
// The first header byte is the wire version. An app's Attach is written in
// the newest version it speaks and, from version 3 on, carries the range it
// speaks ([MinVersion, MaxVersion]; a version-2 Attach means [2, 2]). The
// engine answers in the newest version both speak (Negotiate), names it in
// AttachReply.EngineVersion, and both sides then use that version (a Codec)
// for every message of the attachment, on the socket and in the queues. An
// engine speaks its own version and the one before it, so apps built
// against the previous client keep working after an agent upgrade. A
// client that meets an engine one version older (it answers ErrVersion
// naming its version, in that version) attaches again in that version.
//
// A new version number that keeps the previous one spoken (a "minor"
// change) may only add: new message types (sent only to a peer that
// negotiated the version), fields appended at the end of a message's body,
// new flags and result codes (likewise only towards a peer that knows
// them). Every message of every supported version is encoded and decoded
// in its own layout (the Msg methods branch on the version), and the Attach
// of a newer version must start with the layout of every older one (so an
// engine can read a newer app's range). A change beyond that (moving or
// removing a field, changing what a descriptor is) keeps the previous
// version only if the engine serves that version its own way, as version 3
// does for version 2's descriptors (engine/session legacy.go); otherwise it
// raises MinVersion, and apps built against a client that old are refused
// at attach with ErrVersion and a message naming both ranges.
//
// Version 3 adds the version range to Attach and replaces the shared
// eventfds by doorbells (see Doorbells). An engine serves a version-2 app
// with the descriptors that version expects: its worker doorbell end as both
// its wake and its engine descriptor, its transport doorbell end with the
// add-segment of its own segment, and for a cut-through segment its end of
// the segment's doorbell to ring; since such an app waits on its worker
// descriptor only, the engine relays its peer's rings of that segment to
// its worker doorbell.
//
// Version 4 changes no layout: it lets the engine hand a listener's
// sessions to any worker of the app (Accepted comes on the chosen worker's
// event queue, naming the listener's handle, and the session belongs to
// that worker), where older versions get every Accepted on the worker that
// listened. Its client looks a listener up by handle across its workers.
//
// Version 5 adds transport event bits (below): WorkerInfo's EvOff and
// EvBits, appended to AttachReply and WorkerAddReply, and FifoPair's Event,
// appended to Accepted, Connected and Bound. An app of an older version
// gets neither; its rings of a transport doorbell kick all of its
// transport sessions, as before.
//
// Decode treats its input as hostile: a version other than the session's, unknown type, a body
// length that does not match the type, out-of-range lengths, non-canonical
// padding, invalid UTF-8, bad address families and unknown enum values are all
// rejected with an error, never a panic.
//
// # Doorbells (version 3)
//
// Wake-ups between the engine and an app, and between the two apps of a
// cut-through segment, go through doorbells (engine/shm NewDoorbell): a
// connected pair of AF_UNIX datagram sockets of which each side holds one
// end, its own open file description. Whoever created the pair passes one
// end and closes its copy. Ringing sends a datagram from your end
// (MSG_DONTWAIT), waiting polls your own end. Version 2 passed eventfds,
// whose description (O_NONBLOCK, counter) the receiver shared with the
// engine and, for cut-through, with another app: a hostile app could block
// the engine's writes or steal a peer's wake-ups. The descriptors:
//
//   - worker doorbell (WorkerInfo's second fd): the engine rings it for
//     events (when the control line's sleeping flag is set) and for progress
//     of transport sessions; the app rings it for requests (when the request
//     queue's waiting flag is set). Both queues of the worker use it.
//   - transport doorbell (WorkerInfo's third fd): the app rings it after
//     progress on a fifo of a transport session (in one of its own
//     segments) whose waiting flag is set.
//   - cut-through doorbell (AddSegment with HasPeerWake): one pair per
//     cut-through segment, one end to each of its two app workers; each
//     rings the other after progress on a fifo whose waiting flag is set.
//     A worker that is its own peer gets both ends (rings the first, waits
//     on the second). The engine keeps no end: cut-through wake-ups do not
//     involve it.
//
// # Transport events (version 5)
//
// A ring of the transport doorbell says that some transport session of
// the worker moved; the event bits (engine/shm EventBits in the worker's
// queue segment) say which, as VPP's per-session I/O events do, so each
// side serves exactly those sessions however many others sit idle. A
// worker has two sets of WorkerInfo.EvBits bits: the app's at
// WorkerInfo.EvOff, which it sets before ringing the transport doorbell for
// a transport session (the session's bit is FifoPair.Event), and the
// engine's right after it, which the engine sets before ringing the worker
// doorbell for a transport session's progress (the app's worker then
// re-checks the calls blocked on the sessions named, not all of them). Bit
// 0 is shared by the sessions that got no bit of their own (a worker has
// EvBits-1 to give; maxSessionsPerApp raised after it was made): it names
// all of them. The bits are written by both sides and the engine trusts
// none of them: a bit names at most a session of the worker that set it,
// and costs the engine one look at it.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"unicode/utf8"
)

// Version is the newest wire version this side speaks, MinVersion the
// oldest. An engine and an app agree on one version at attach (see the
// package doc, "Versions") and both use it for every later message.
const (
	Version    = 5
	MinVersion = 2
	// VersionAcceptAnyWorker is the first version whose apps take a
	// listener's accepted sessions on any of their workers.
	VersionAcceptAnyWorker = 4
	// VersionEvents is the first version with transport event bits.
	VersionEvents = 5
)

const (
	// HeaderSize is the size of the common message header.
	HeaderSize = 8
	// QueueMsgMax is the largest message allowed through a shared-memory
	// message queue (one slot of engine/shm's Queue).
	QueueMsgMax = 256
	// SocketMsgMax is the largest message sent over the attach socket.
	SocketMsgMax = 1024
	// MaxFDs is the most file descriptors one attach-socket message carries.
	MaxFDs = 4
)

// Limits of the text fields.
const (
	MaxNameLen      = 63  // app name
	MaxNamespaceLen = 253 // "<kubernetes namespace>/<AppNamespace name>"
	MaxSecretLen    = 128
	MaxMessageLen   = 128 // error / notice text in queue events
)

// Type identifies a message.
type Type uint8

// Attach-socket messages.
const (
	TAttach Type = 1 + iota
	TAttachReply
	TWorkerAdd
	TWorkerAddReply
	TWorkerDel
	TWorkerDelReply
	TDetach
	TDetachReply
	TAddSegment // engine → app, carries the segment fd and a doorbell end
	TNotice     // engine → app: the engine or the namespace is going away, with a reason
	TTLSContextAdd
	TTLSContextReply
)

// Requests, app → engine, through the worker's request queue.
const (
	TListen Type = 32 + iota
	TUnlisten
	TConnect
	TAcceptReply
	TDisconnect
	TReset
	TShutdown
)

// Events, engine → app, through the worker's event queue.
const (
	TAccepted Type = 64 + iota
	TConnected
	TBound
	TUnlistenReply
	TDisconnected
	TResetEvt
	TMigrated
	TCleanup
	TDelSegment
	TReply // generic reply: the outcome of a request that has no dedicated reply
)

var typeNames = map[Type]string{
	TAttach: "attach", TAttachReply: "attach-reply", TWorkerAdd: "worker-add",
	TWorkerAddReply: "worker-add-reply", TWorkerDel: "worker-del", TWorkerDelReply: "worker-del-reply",
	TDetach: "detach", TDetachReply: "detach-reply", TAddSegment: "add-segment", TNotice: "notice",
	TTLSContextAdd: "tls-context-add", TTLSContextReply: "tls-context-reply",
	TListen: "listen", TUnlisten: "unlisten", TConnect: "connect", TAcceptReply: "accept-reply",
	TDisconnect: "disconnect", TReset: "reset", TShutdown: "shutdown",
	TAccepted: "accepted", TConnected: "connected", TBound: "bound", TUnlistenReply: "unlisten-reply",
	TDisconnected: "disconnected", TResetEvt: "reset-event", TMigrated: "migrated", TCleanup: "cleanup",
	TDelSegment: "del-segment", TReply: "reply",
}

func (t Type) String() string {
	if s, ok := typeNames[t]; ok {
		return s
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Code is a result code carried by replies and events. Zero is success.
type Code uint16

// Result codes. Each comes with a human-readable message in the reply.
const (
	OK             Code = iota
	ErrInvalid          // malformed or out-of-range request
	ErrVersion          // wire version mismatch
	ErrAuth             // wrong or missing secret
	ErrNoNamespace      // unknown app namespace, or not allowed through this socket
	ErrQuota            // a limit of the app namespace is exhausted; the message names it
	ErrRefused          // nothing listens on the address
	ErrNoTransport      // no transport for a non-local address
	ErrAddrInUse        // listen on an address already bound
	ErrDenied           // a session rule denied it; the message names the rule
	ErrNoSession        // unknown session or listener handle
	ErrReset            // the session was reset (peer died, peer reset, queue full...)
	ErrQueueFull        // an app's event queue was full
	ErrShutdown         // the engine or namespace is shutting down
	ErrInternal         // engine-side failure
	ErrNoWorker         // unknown worker
	ErrTLS              // the TLS handshake failed; the message says why
	ErrTimeout          // the peer did not answer in time
	codeMax
)

var codeNames = [...]string{
	OK: "ok", ErrInvalid: "invalid request", ErrVersion: "version mismatch", ErrAuth: "authentication failed",
	ErrNoNamespace: "no such app namespace", ErrQuota: "quota exhausted", ErrRefused: "connection refused",
	ErrNoTransport: "no transport", ErrAddrInUse: "address already in use", ErrDenied: "denied by session rule",
	ErrNoSession: "no such session", ErrReset: "connection reset", ErrQueueFull: "event queue full",
	ErrShutdown: "shutting down", ErrInternal: "internal error", ErrNoWorker: "no such worker",
	ErrTLS: "tls handshake failed", ErrTimeout: "timed out",
}

func (c Code) String() string {
	if c < codeMax {
		return codeNames[c]
	}
	return fmt.Sprintf("code(%d)", uint16(c))
}

// Valid reports whether c is a known code.
func (c Code) Valid() bool { return c < codeMax }

// Proto is the transport protocol of an address.
type Proto uint8

// Transport protocols (IANA numbers).
const (
	TCP Proto = 6
	UDP Proto = 17
)

// Addr is an endpoint: protocol, IP and port. The zero IP (invalid netip.Addr)
// is not allowed on the wire; use the unspecified address of a family instead.
type Addr struct {
	Proto Proto
	IP    netip.Addr
	Port  uint16
}

func (a Addr) String() string {
	return netip.AddrPortFrom(a.IP, a.Port).String()
}

// AddrPort returns the IP and port.
func (a Addr) AddrPort() netip.AddrPort { return netip.AddrPortFrom(a.IP, a.Port) }

const addrSize = 20 // proto, family, port, 16 bytes of IP

// Msg is any message of this package.
type Msg interface {
	Type() Type
	size(v uint8) int // body size, constant per type and version
	encode(e *enc)    // e.v is the version being written
	decode(d *dec)    // d.v is the version being read
}

// Error is a decoding failure.
type Error struct{ Reason string }

func (e *Error) Error() string { return "wire: " + e.Reason }

// ErrShort is returned by Encode when the buffer is too small.
var ErrShort = errors.New("wire: buffer too small")

// Codec encodes and decodes the messages of one wire version: the one an
// app and the engine negotiated at attach.
type Codec struct{ V uint8 }

// Current is the codec of this side's newest version.
var Current = Codec{V: Version}

// Supported reports whether v is a version this side speaks.
func Supported(v uint8) bool { return v >= MinVersion && v <= Version }

// Size returns the encoded size of m in the newest version, header included.
func Size(m Msg) int { return Current.Size(m) }

// Encode writes m in the newest version (see Codec.Encode).
func Encode(buf []byte, m Msg) (int, error) { return Current.Encode(buf, m) }

// Decode parses a message of the newest version (see Codec.Decode).
func Decode(buf []byte) (Msg, error) { return Current.Decode(buf) }

// Append encodes m in the newest version and appends it to buf.
func Append(buf []byte, m Msg) ([]byte, error) { return Current.Append(buf, m) }

// Size returns the encoded size of m in version c.V, header included.
func (c Codec) Size(m Msg) int { return HeaderSize + m.size(c.V) }

// Encode writes m into buf in version c.V and returns the number of bytes
// written.
func (c Codec) Encode(buf []byte, m Msg) (int, error) {
	if !Supported(c.V) {
		return 0, fmt.Errorf("wire: cannot encode version %d (this side speaks %d to %d)", c.V, MinVersion, Version)
	}
	n := c.Size(m)
	if len(buf) < n {
		return 0, ErrShort
	}
	buf = buf[:n]
	buf[0] = c.V
	buf[1] = byte(m.Type())
	binary.LittleEndian.PutUint16(buf[2:], uint16(m.size(c.V)))
	binary.LittleEndian.PutUint32(buf[4:], 0)
	// The messages of a session's life go through concrete calls, so that
	// neither the encoder nor the caller's buffer escapes to the heap (an
	// encoder passed to an interface method does, and takes buf with it:
	// two allocations per message on the engine's and the client's hot
	// paths). Other messages are encoded into a scratch buffer and copied,
	// which keeps buf from escaping for them too.
	var err error // outside e: returning e's own field would take buf along
	e := enc{b: buf, off: HeaderSize, v: c.V, err: &err}
	switch m := m.(type) {
	case *Connect:
		m.encode(&e)
	case *Connected:
		m.encode(&e)
	case *Accepted:
		m.encode(&e)
	case *AcceptReply:
		m.encode(&e)
	case *Disconnect:
		m.encode(&e)
	case *Disconnected:
		m.encode(&e)
	case *Reset:
		m.encode(&e)
	case *ResetEvt:
		m.encode(&e)
	case *Cleanup:
		m.encode(&e)
	case *Reply:
		m.encode(&e)
	default:
		var herr error
		h := &enc{b: make([]byte, n), off: HeaderSize, v: c.V, err: &herr}
		m.encode(h)
		copy(buf[HeaderSize:], h.b[HeaderSize:])
		e.off, err = h.off, herr
	}
	if err != nil {
		return 0, err
	}
	if e.off != n {
		panic(fmt.Sprintf("wire: %v encoded %d bytes, want %d", m.Type(), e.off, n))
	}
	return n, nil
}

// Append encodes m in version c.V and appends it to buf.
func (c Codec) Append(buf []byte, m Msg) ([]byte, error) {
	n := c.Size(m)
	out := append(buf, make([]byte, n)...)
	_, err := c.Encode(out[len(buf):], m)
	if err != nil {
		return buf, err
	}
	return out, nil
}

func newMsg(t Type) Msg {
	switch t {
	case TAttach:
		return new(Attach)
	case TAttachReply:
		return new(AttachReply)
	case TWorkerAdd:
		return new(WorkerAdd)
	case TWorkerAddReply:
		return new(WorkerAddReply)
	case TWorkerDel:
		return new(WorkerDel)
	case TWorkerDelReply:
		return new(WorkerDelReply)
	case TDetach:
		return new(Detach)
	case TDetachReply:
		return new(DetachReply)
	case TAddSegment:
		return new(AddSegment)
	case TNotice:
		return new(Notice)
	case TTLSContextAdd:
		return new(TLSContextAdd)
	case TTLSContextReply:
		return new(TLSContextReply)
	case TListen:
		return new(Listen)
	case TUnlisten:
		return new(Unlisten)
	case TConnect:
		return new(Connect)
	case TAcceptReply:
		return new(AcceptReply)
	case TDisconnect:
		return new(Disconnect)
	case TReset:
		return new(Reset)
	case TShutdown:
		return new(Shutdown)
	case TAccepted:
		return new(Accepted)
	case TConnected:
		return new(Connected)
	case TBound:
		return new(Bound)
	case TUnlistenReply:
		return new(UnlistenReply)
	case TDisconnected:
		return new(Disconnected)
	case TResetEvt:
		return new(ResetEvt)
	case TMigrated:
		return new(Migrated)
	case TCleanup:
		return new(Cleanup)
	case TDelSegment:
		return new(DelSegment)
	case TReply:
		return new(Reply)
	}
	return nil
}

// IsQueueMsg reports whether messages of type t travel through the queues
// (as opposed to the attach socket).
func IsQueueMsg(t Type) bool { return t >= TListen }

// Decode parses one message of version c.V. buf must hold exactly the
// message; trailing bytes are rejected unless they are zero (queue slots are
// zero-padded).
func (c Codec) Decode(buf []byte) (Msg, error) {
	if len(buf) < HeaderSize {
		return nil, &Error{fmt.Sprintf("message of %d bytes is shorter than the %d-byte header", len(buf), HeaderSize)}
	}
	if buf[0] != c.V {
		return nil, &Error{fmt.Sprintf("version %d, this session speaks %d", buf[0], c.V)}
	}
	return decodeBody(buf, c.V, false)
}

// DecodeAny parses one message of any version this side speaks and returns
// that version: for the first message of a conversation (the attach reply),
// whose version is not agreed yet.
func DecodeAny(buf []byte) (Msg, uint8, error) {
	if len(buf) < HeaderSize {
		return nil, 0, &Error{fmt.Sprintf("message of %d bytes is shorter than the %d-byte header", len(buf), HeaderSize)}
	}
	v := buf[0]
	if !Supported(v) {
		return nil, v, &VersionError{Peer: v}
	}
	m, err := decodeBody(buf, v, false)
	return m, v, err
}

// VersionError is a message of a wire version this side does not speak.
type VersionError struct{ Peer uint8 }

func (e *VersionError) Error() string {
	return fmt.Sprintf("wire: version %d, this side speaks %d to %d", e.Peer, MinVersion, Version)
}

// DecodeAttach parses the first message of an app, the Attach, in any
// version: one this side speaks, or a newer one, whose Attach starts with
// the newest layout this side knows (versions only append to it) and whose
// extra bytes and unknown flags are ignored. For a version-2 Attach, which
// carries no range, MinVersion and MaxVersion are both 2. The caller picks
// the version with Negotiate. A version older than MinVersion is a
// *VersionError.
func DecodeAttach(buf []byte) (*Attach, error) {
	if len(buf) < HeaderSize {
		return nil, &Error{fmt.Sprintf("message of %d bytes is shorter than the %d-byte header", len(buf), HeaderSize)}
	}
	v := buf[0]
	if v < MinVersion {
		return nil, &VersionError{Peer: v}
	}
	if Type(buf[1]) != TAttach {
		if !Supported(v) {
			return nil, &VersionError{Peer: v}
		}
		m, err := decodeBody(buf, v, false)
		if err != nil {
			return nil, err
		}
		return nil, &Error{fmt.Sprintf("expected attach, got %v", m.Type())}
	}
	m, err := decodeBody(buf, min(v, Version), v > Version)
	if err != nil {
		return nil, err
	}
	at := m.(*Attach)
	if v == 2 {
		at.MinVersion, at.MaxVersion = 2, 2
	} else if at.MaxVersion != v || at.MinVersion > at.MaxVersion || at.MinVersion < 2 {
		return nil, &Error{fmt.Sprintf("attach: version range %d..%d does not fit its header's version %d", at.MinVersion, at.MaxVersion, v)}
	}
	return at, nil
}

// Negotiate picks the version an engine speaks with an app whose Attach
// offers [min, max]: the newest both speak. ok is false when the ranges do
// not meet.
func Negotiate(min, max uint8) (v uint8, ok bool) {
	v = max
	if v > Version {
		v = Version
	}
	return v, v >= min && v >= MinVersion
}

// decodeBody decodes a message whose header says version v (or, with
// newer, a newer version whose body starts with version v's layout).
func decodeBody(buf []byte, v uint8, newer bool) (Msg, error) {
	t := Type(buf[1])
	m := newMsg(t)
	if m == nil {
		return nil, &Error{fmt.Sprintf("unknown message type %d", buf[1])}
	}
	bl := int(binary.LittleEndian.Uint16(buf[2:]))
	want := m.size(v)
	if bl != want && !(newer && bl > want) {
		return nil, &Error{fmt.Sprintf("%v: body length %d, want %d", t, bl, want)}
	}
	if binary.LittleEndian.Uint32(buf[4:]) != 0 {
		return nil, &Error{fmt.Sprintf("%v: reserved header bytes not zero", t)}
	}
	if len(buf) < HeaderSize+bl {
		return nil, &Error{fmt.Sprintf("%v: truncated: %d bytes, want %d", t, len(buf), HeaderSize+bl)}
	}
	for _, c := range buf[HeaderSize+bl:] {
		if c != 0 {
			return nil, &Error{fmt.Sprintf("%v: non-zero trailing bytes", t)}
		}
	}
	// concrete calls for the messages of a session's life: the decoder
	// stays on the stack (see Encode)
	d := dec{b: buf[:HeaderSize+want], off: HeaderSize, t: t, v: v, newer: newer}
	switch m := m.(type) {
	case *Connect:
		m.decode(&d)
	case *Connected:
		m.decode(&d)
	case *Accepted:
		m.decode(&d)
	case *AcceptReply:
		m.decode(&d)
	case *Disconnect:
		m.decode(&d)
	case *Disconnected:
		m.decode(&d)
	case *Reset:
		m.decode(&d)
	case *ResetEvt:
		m.decode(&d)
	case *Cleanup:
		m.decode(&d)
	case *Reply:
		m.decode(&d)
	default:
		h := &dec{b: buf[:HeaderSize+want], off: HeaderSize, t: t, v: v, newer: newer}
		m.decode(h)
		d.err = h.err
	}
	if d.err != nil {
		return nil, d.err
	}
	return m, nil
}

// --- encoding helpers -------------------------------------------------------

type enc struct {
	b   []byte
	off int
	v   uint8
	err *error // the first error (a variable of Encode's)
}

func (e *enc) u8(v uint8)   { e.b[e.off] = v; e.off++ }
func (e *enc) u16(v uint16) { binary.LittleEndian.PutUint16(e.b[e.off:], v); e.off += 2 }
func (e *enc) u32(v uint32) { binary.LittleEndian.PutUint32(e.b[e.off:], v); e.off += 4 }
func (e *enc) u64(v uint64) { binary.LittleEndian.PutUint64(e.b[e.off:], v); e.off += 8 }
func (e *enc) boolean(v bool) {
	if v {
		e.u8(1)
	} else {
		e.u8(0)
	}
}

// str writes a length byte and a field of max bytes, zero-padded. Text longer
// than max is an encoding error for names and secrets; messages are truncated
// at a rune boundary by the constructors (see Msgf).
func (e *enc) str(s string, max int, what string) {
	if len(s) > max {
		if *e.err == nil {
			*e.err = fmt.Errorf("wire: %s is %d bytes, at most %d", what, len(s), max)
		}
		s = ""
	}
	e.u8(uint8(len(s)))
	n := copy(e.b[e.off:e.off+max], s)
	clear(e.b[e.off+n : e.off+max])
	e.off += max
}

func (e *enc) addr(a Addr) {
	e.u8(uint8(a.Proto))
	var fam uint8
	var ip [16]byte
	switch {
	case a.IP.Is4():
		fam = 4
		b := a.IP.As4()
		copy(ip[:], b[:])
	case a.IP.Is6():
		fam = 6
		ip = a.IP.As16()
	}
	e.u8(fam)
	e.u16(a.Port)
	copy(e.b[e.off:], ip[:])
	e.off += 16
}

type dec struct {
	b     []byte
	off   int
	t     Type
	v     uint8
	newer bool // the peer's version is newer than v: tolerate what it adds
	err   error
}

func (d *dec) fail(format string, args ...any) {
	if d.err == nil {
		d.err = &Error{d.t.String() + ": " + fmt.Sprintf(format, args...)}
	}
}

func (d *dec) u8() uint8 { v := d.b[d.off]; d.off++; return v }
func (d *dec) u16() uint16 {
	v := binary.LittleEndian.Uint16(d.b[d.off:])
	d.off += 2
	return v
}
func (d *dec) u32() uint32 {
	v := binary.LittleEndian.Uint32(d.b[d.off:])
	d.off += 4
	return v
}
func (d *dec) u64() uint64 {
	v := binary.LittleEndian.Uint64(d.b[d.off:])
	d.off += 8
	return v
}
func (d *dec) boolean(what string) bool {
	switch d.u8() {
	case 0:
		return false
	case 1:
		return true
	}
	d.fail("%s is not a boolean", what)
	return false
}

func (d *dec) str(max int, what string) string {
	n := int(d.u8())
	field := d.b[d.off : d.off+max]
	d.off += max
	if n > max {
		d.fail("%s length %d exceeds %d", what, n, max)
		return ""
	}
	for _, c := range field[n:] {
		if c != 0 {
			d.fail("%s has non-zero padding", what)
			return ""
		}
	}
	s := string(field[:n])
	if !utf8.ValidString(s) {
		d.fail("%s is not valid UTF-8", what)
		return ""
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			d.fail("%s contains control characters", what)
			return ""
		}
	}
	return s
}

func (d *dec) code(what string) Code {
	c := Code(d.u16())
	if !c.Valid() {
		d.fail("%s: unknown result code %d", what, uint16(c))
		return ErrInternal
	}
	return c
}

func (d *dec) addr(what string, required bool) Addr {
	var a Addr
	a.Proto = Proto(d.u8())
	fam := d.u8()
	a.Port = d.u16()
	var ip [16]byte
	copy(ip[:], d.b[d.off:d.off+16])
	d.off += 16
	switch fam {
	case 0:
		if a.Proto != 0 || a.Port != 0 || ip != [16]byte{} {
			d.fail("%s: no address family but non-zero fields", what)
		} else if required {
			d.fail("%s: address is required", what)
		}
		return Addr{}
	case 4:
		for _, c := range ip[4:] {
			if c != 0 {
				d.fail("%s: IPv4 address with non-zero padding", what)
				return Addr{}
			}
		}
		a.IP = netip.AddrFrom4([4]byte(ip[:4]))
	case 6:
		a.IP = netip.AddrFrom16(ip)
	default:
		d.fail("%s: unknown address family %d", what, fam)
		return Addr{}
	}
	if a.Proto != TCP && a.Proto != UDP {
		d.fail("%s: unknown transport protocol %d", what, uint8(a.Proto))
		return Addr{}
	}
	return a
}

// Msgf builds an error/notice text that fits MaxMessageLen, cut at a rune
// boundary.
func Msgf(format string, args ...any) string {
	return Truncate(fmt.Sprintf(format, args...), MaxMessageLen)
}

// Truncate cuts s to at most max bytes at a rune boundary and replaces
// control characters with spaces so that the result always encodes.
func Truncate(s string, max int) string {
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c == 0x7f {
			b[i] = ' '
		}
	}
	s = string(b)
	if !utf8.ValidString(s) {
		s = string([]rune(s)) // replaces invalid bytes with U+FFFD
	}
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}
