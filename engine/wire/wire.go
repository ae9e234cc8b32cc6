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
//	                       segment, wake eventfd, engine eventfd, fifo segment
//	app → engine (socket)  WorkerAdd / WorkerDel / Detach     (replies + fds)
//	engine → app (socket)  AddSegment + fds: segment, peer worker's wake eventfd
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
// Decode treats its input as hostile: wrong version, unknown type, a body
// length that does not match the type, out-of-range lengths, non-canonical
// padding, invalid UTF-8, bad address families and unknown enum values are all
// rejected with an error, never a panic.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"unicode/utf8"
)

// Version is the wire format version. An engine and an app must agree on it;
// the attach reply reports the engine's version when they do not.
const Version = 2

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
	TAddSegment // engine → app, carries the segment fd and the peer worker's wake eventfd
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
	size() int // body size, constant per type
	encode(e *enc)
	decode(d *dec)
}

// Error is a decoding failure.
type Error struct{ Reason string }

func (e *Error) Error() string { return "wire: " + e.Reason }

// ErrShort is returned by Encode when the buffer is too small.
var ErrShort = errors.New("wire: buffer too small")

// Size returns the encoded size of m, header included.
func Size(m Msg) int { return HeaderSize + m.size() }

// Encode writes m into buf and returns the number of bytes written.
func Encode(buf []byte, m Msg) (int, error) {
	n := Size(m)
	if len(buf) < n {
		return 0, ErrShort
	}
	buf = buf[:n]
	buf[0] = Version
	buf[1] = byte(m.Type())
	binary.LittleEndian.PutUint16(buf[2:], uint16(m.size()))
	binary.LittleEndian.PutUint32(buf[4:], 0)
	e := enc{b: buf, off: HeaderSize}
	m.encode(&e)
	if e.err != nil {
		return 0, e.err
	}
	if e.off != n {
		panic(fmt.Sprintf("wire: %v encoded %d bytes, want %d", m.Type(), e.off, n))
	}
	return n, nil
}

// Append encodes m and appends it to buf.
func Append(buf []byte, m Msg) ([]byte, error) {
	n := Size(m)
	out := append(buf, make([]byte, n)...)
	_, err := Encode(out[len(buf):], m)
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

// Decode parses one message. buf must hold exactly the message; trailing bytes
// are rejected unless they are zero (queue slots are zero-padded).
func Decode(buf []byte) (Msg, error) {
	if len(buf) < HeaderSize {
		return nil, &Error{fmt.Sprintf("message of %d bytes is shorter than the %d-byte header", len(buf), HeaderSize)}
	}
	if buf[0] != Version {
		return nil, &Error{fmt.Sprintf("version %d, this side speaks %d", buf[0], Version)}
	}
	t := Type(buf[1])
	m := newMsg(t)
	if m == nil {
		return nil, &Error{fmt.Sprintf("unknown message type %d", buf[1])}
	}
	bl := int(binary.LittleEndian.Uint16(buf[2:]))
	if bl != m.size() {
		return nil, &Error{fmt.Sprintf("%v: body length %d, want %d", t, bl, m.size())}
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
	d := dec{b: buf[:HeaderSize+bl], off: HeaderSize, t: t}
	m.decode(&d)
	if d.err != nil {
		return nil, d.err
	}
	return m, nil
}

// --- encoding helpers -------------------------------------------------------

type enc struct {
	b   []byte
	off int
	err error
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
		if e.err == nil {
			e.err = fmt.Errorf("wire: %s is %d bytes, at most %d", what, len(s), max)
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
	b   []byte
	off int
	t   Type
	err error
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
