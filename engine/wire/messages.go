package wire

// Attach flags.
const (
	// FlagSpin asks for nothing from the engine; it is recorded for stats.
	FlagSpin uint64 = 1 << iota
	// FlagScopeLocal and FlagScopeGlobal choose where the app's listeners
	// are reachable (VPP's attach scope options): local scope is the app
	// namespace's own table (cut-through from its other apps), global scope
	// is the transport (the outside world). Neither flag means both.
	FlagScopeLocal
	FlagScopeGlobal
	flagsKnown = FlagSpin | FlagScopeLocal | FlagScopeGlobal
)

// Attach is the first message of an app on the attach socket.
type Attach struct {
	Name       string // app name, for stats and logs
	Namespace  string // "<namespace>/<name>"; empty = the only one the socket serves
	Secret     string // optional shared secret of the app namespace
	Flags      uint64
	RxFifoSize uint32 // requested, 0 = the namespace default; clamped by the engine
	TxFifoSize uint32
	// MinVersion and MaxVersion (version 3 on) are the wire versions the
	// app speaks; MaxVersion is also its header's version. Left zero, they
	// encode as MinVersion and the version written. A version-2 Attach
	// decodes with both set to 2.
	MinVersion, MaxVersion uint8
}

// WorkerInfo describes a worker's message queues: both live in the worker's
// queue segment. Its file descriptors travel with the message, in this order:
// queue segment memfd, the app's end of the worker doorbell (it waits on it
// for events and rings it for requests), the app's end of the worker's
// transport doorbell (it rings it for transport sessions). See Doorbells.
type WorkerInfo struct {
	ID       uint32
	MQSize   uint64 // size of the queue segment
	EvqOff   uint64 // engine → app events
	EvqSlots uint32
	ReqOff   uint64 // app → engine requests
	ReqSlots uint32
	CtlOff   uint64 // the worker's control line (see CtlSize)
	// EvOff and EvBits (version 5 on; appended at the end of the message
	// that carries the WorkerInfo) locate the worker's transport event bits
	// in the queue segment: two engine/shm EventBits of EvBits bits each,
	// the app's at EvOff and the engine's right after it. Zero EvBits: none
	// (an older engine); see the package doc, "Transport events".
	EvOff  uint64
	EvBits uint32
}

// WorkerFDs is the number of fds that come with a WorkerInfo.
const WorkerFDs = 3

// AttachReply answers Attach. On success the fds are WorkerInfo's three then
// the app's own fifo segment memfd (AttachFDs in all).
type AttachReply struct {
	Code Code
	Msg  string
	// EngineVersion is the version the engine speaks with this app from
	// now on (the reply is written in it); on ErrVersion it is the newest
	// the engine speaks.
	EngineVersion uint8
	AppID         uint32
	Worker        WorkerInfo
	Segment       uint64 // handle of the app's own fifo segment
	SegmentSize   uint64
	RxFifoSize    uint32 // effective sizes
	TxFifoSize    uint32
	MaxSessions   uint32
}

// AttachFDs is the number of fds passed with a successful AttachReply.
const AttachFDs = WorkerFDs + 1

// WorkerAdd asks for one more worker (its own queue pair and doorbells).
type WorkerAdd struct{ Ctx uint64 }

// WorkerAddReply answers WorkerAdd; on success WorkerFDs fds come with it.
type WorkerAddReply struct {
	Ctx    uint64
	Code   Code
	Msg    string
	Worker WorkerInfo
}

// WorkerDel removes a worker; its sessions and listeners are reaped.
type WorkerDel struct {
	Ctx    uint64
	Worker uint32
}

// WorkerDelReply answers WorkerDel.
type WorkerDelReply struct {
	Ctx  uint64
	Code Code
	Msg  string
}

// Detach ends the attachment; everything the app holds is reaped.
type Detach struct{}

// DetachReply answers Detach; the engine closes the socket after it.
type DetachReply struct{ Code Code }

// AddSegment maps one more segment for a worker. Its fds: the segment memfd,
// and, when HasPeerWake (a cut-through segment, shared by exactly two app
// workers), the app's end of the segment's doorbell with the peer worker —
// both ends when Worker is its own peer. Without HasPeerWake it is one more
// of the app's own segments (transport sessions: the worker's transport
// doorbell serves them).
type AddSegment struct {
	Segment     uint64
	Size        uint64
	Worker      uint32 // the local worker this segment serves
	PeerApp     uint32
	PeerWorker  uint32
	HasPeerWake bool
}

// Notice tells the app something happened to its attachment (namespace
// removed, engine shutting down); the socket closes after it.
type Notice struct {
	Code Code
	Msg  string
}

// Listen asks for a listener. TLS, when not zero, is a TLS context of the
// app (TLSContextAdd) naming the CertKeyPair the engine serves: sessions
// are TLS on the wire, plaintext in the fifos.
type Listen struct {
	Ctx  uint64
	Addr Addr
	TLS  uint32
}

// Unlisten removes a listener.
type Unlisten struct {
	Ctx      uint64
	Listener uint64
}

// Connect opens a session to Remote; TLS, when not zero, is a TLS context
// of the app: the engine is the TLS client.
type Connect struct {
	Ctx    uint64
	Remote Addr
	TLS    uint32
}

// MaxTLSRef is the longest CertKeyPair reference ("name" or
// "namespace/name") or server name a TLS context carries.
const MaxTLSRef = 255

// TLSContextAdd registers TLS parameters for the app's listens and
// connects (VPP's app cert/key pair add), on the attach socket. The engine
// checks that the app may use the CertKeyPairs (only those of its own
// Kubernetes namespace) and answers a handle.
type TLSContextAdd struct {
	Ctx uint64
	// CertKeyPair is served by listeners, and presented as client
	// certificate by connects; optional for connects.
	CertKeyPair string
	// ServerName is what a connect verifies the server's certificate
	// against (and sends as SNI); empty: the address dialled.
	ServerName string
	// Trust names a CertKeyPair whose CA bundle (the Secret's ca.crt) a
	// connect trusts; empty: the system roots.
	Trust string
}

// TLSContextReply answers TLSContextAdd.
type TLSContextReply struct {
	Ctx    uint64
	Code   Code
	Msg    string
	Handle uint32
}

// AcceptReply answers an Accepted event. A session is accepted unless the
// app refuses it with a non-OK code (the connecting peer then sees a reset);
// sending OK is allowed but not needed.
type AcceptReply struct {
	Session uint64
	Code    Code
}

// Disconnect closes a session gracefully; the reply is Cleanup.
type Disconnect struct{ Session uint64 }

// Reset aborts a session; the reply is Cleanup.
type Reset struct{ Session uint64 }

// Shutdown half-closes a session (no more writes); the reply is Reply.
type Shutdown struct{ Session uint64 }

// FifoPair locates a session's fifos in a segment, from the receiving app's
// point of view (Rx: it reads, Tx: it writes).
type FifoPair struct {
	Segment uint64
	RxOff   uint64
	TxOff   uint64
	RxCap   uint32
	TxCap   uint32
	// Event (version 5 on; appended at the end of the message) is a
	// transport session's bit in its worker's two sets of event bits; 0 is
	// the bit shared by the sessions that have none of their own
	// (cut-through sessions ignore it).
	Event uint32
}

// Accepted tells a listening app about a new session.
type Accepted struct {
	Listener uint64
	Session  uint64
	Fifos    FifoPair
	Local    Addr
	Remote   Addr
}

// Connected answers Connect: a session, or an error.
type Connected struct {
	Ctx     uint64
	Code    Code
	Msg     string
	Session uint64
	Fifos   FifoPair
	Local   Addr
	Remote  Addr
}

// Bound answers Listen. A stream listener gets Listener; a datagram socket
// (a UDP Listen) is a session: Session and its Fifos, which carry datagram
// records (see DgramHeader), with Listener zero.
type Bound struct {
	Ctx      uint64
	Code     Code
	Msg      string
	Listener uint64
	Local    Addr
	Session  uint64
	Fifos    FifoPair
}

// UnlistenReply answers Unlisten.
type UnlistenReply struct {
	Ctx      uint64
	Code     Code
	Msg      string
	Listener uint64
}

// Disconnected: the peer closed the session (after draining, reads see EOF).
type Disconnected struct{ Session uint64 }

// ResetEvt: the session was reset (peer reset or died, or the engine aborted
// it); the reason is in Code and Msg. The app must still Disconnect or Reset
// the session to release it.
type ResetEvt struct {
	Session uint64
	Code    Code
	Msg     string
}

// Migrated: the session now belongs to another worker of the app.
type Migrated struct {
	Session uint64
	Worker  uint32
}

// Cleanup: the engine released the session; the app must drop its fifos.
type Cleanup struct{ Session uint64 }

// DelSegment: the segment holds no more sessions of this app and is removed;
// unmap it once no local session refers to it.
type DelSegment struct{ Segment uint64 }

// Reply is the outcome of a request that has no dedicated reply. Req is 0
// when the request could not even be decoded.
type Reply struct {
	Ctx    uint64
	Req    Type
	Handle uint64
	Code   Code
	Msg    string
}

func strSize(max int) int { return 1 + max }

func (*Attach) Type() Type { return TAttach }
func (*Attach) size(v uint8) int {
	n := strSize(MaxNameLen) + strSize(MaxNamespaceLen) + strSize(MaxSecretLen) + 8 + 4 + 4
	if v >= 3 {
		n += 2 // MinVersion, MaxVersion
	}
	return n
}
func (m *Attach) encode(e *enc) {
	e.str(m.Name, MaxNameLen, "app name")
	e.str(m.Namespace, MaxNamespaceLen, "namespace")
	e.str(m.Secret, MaxSecretLen, "secret")
	e.u64(m.Flags)
	e.u32(m.RxFifoSize)
	e.u32(m.TxFifoSize)
	if e.v >= 3 {
		lo, hi := m.MinVersion, m.MaxVersion
		if lo == 0 && hi == 0 {
			lo, hi = MinVersion, e.v // unset: what this side speaks, up to the version written
		}
		e.u8(lo)
		e.u8(hi)
	}
}
func (m *Attach) decode(d *dec) {
	m.Name = d.str(MaxNameLen, "app name")
	m.Namespace = d.str(MaxNamespaceLen, "namespace")
	m.Secret = d.str(MaxSecretLen, "secret")
	m.Flags = d.u64()
	if m.Flags&^flagsKnown != 0 {
		if d.newer {
			m.Flags &= flagsKnown // flags of a newer version; it learns ours from the reply
		} else {
			d.fail("unknown attach flags %#x", m.Flags&^flagsKnown)
		}
	}
	m.RxFifoSize = d.u32()
	m.TxFifoSize = d.u32()
	if d.v >= 3 {
		m.MinVersion = d.u8()
		m.MaxVersion = d.u8()
	}
}

const workerInfoSize = 4 + 8 + 8 + 4 + 8 + 4 + 8

func (e *enc) worker(w WorkerInfo) {
	e.u32(w.ID)
	e.u64(w.MQSize)
	e.u64(w.EvqOff)
	e.u32(w.EvqSlots)
	e.u64(w.ReqOff)
	e.u32(w.ReqSlots)
	e.u64(w.CtlOff)
}
func (d *dec) worker() WorkerInfo {
	return WorkerInfo{ID: d.u32(), MQSize: d.u64(), EvqOff: d.u64(), EvqSlots: d.u32(), ReqOff: d.u64(), ReqSlots: d.u32(), CtlOff: d.u64()}
}

func (*AttachReply) Type() Type { return TAttachReply }
func (*AttachReply) size(v uint8) int {
	return 2 + strSize(MaxMessageLen) + 1 + 4 + workerInfoSize + 8 + 8 + 4 + 4 + 4 + workerEventsSize(v)
}
func (m *AttachReply) encode(e *enc) {
	e.u16(uint16(m.Code))
	e.str(m.Msg, MaxMessageLen, "message")
	e.u8(m.EngineVersion)
	e.u32(m.AppID)
	e.worker(m.Worker)
	e.u64(m.Segment)
	e.u64(m.SegmentSize)
	e.u32(m.RxFifoSize)
	e.u32(m.TxFifoSize)
	e.u32(m.MaxSessions)
	e.workerEvents(m.Worker)
}
func (m *AttachReply) decode(d *dec) {
	m.Code = d.code("attach reply")
	m.Msg = d.str(MaxMessageLen, "message")
	m.EngineVersion = d.u8()
	m.AppID = d.u32()
	m.Worker = d.worker()
	m.Segment = d.u64()
	m.SegmentSize = d.u64()
	m.RxFifoSize = d.u32()
	m.TxFifoSize = d.u32()
	m.MaxSessions = d.u32()
	d.workerEvents(&m.Worker)
}

func (*WorkerAdd) Type() Type      { return TWorkerAdd }
func (*WorkerAdd) size(uint8) int  { return 8 }
func (m *WorkerAdd) encode(e *enc) { e.u64(m.Ctx) }
func (m *WorkerAdd) decode(d *dec) { m.Ctx = d.u64() }
func (*WorkerAddReply) Type() Type { return TWorkerAddReply }
func (*WorkerAddReply) size(v uint8) int {
	return 8 + 2 + strSize(MaxMessageLen) + workerInfoSize + workerEventsSize(v)
}
func (m *WorkerAddReply) encode(e *enc) {
	e.u64(m.Ctx)
	e.u16(uint16(m.Code))
	e.str(m.Msg, MaxMessageLen, "message")
	e.worker(m.Worker)
	e.workerEvents(m.Worker)
}
func (m *WorkerAddReply) decode(d *dec) {
	m.Ctx = d.u64()
	m.Code = d.code("worker-add reply")
	m.Msg = d.str(MaxMessageLen, "message")
	m.Worker = d.worker()
	d.workerEvents(&m.Worker)
}

// workerEventsSize is the size of a WorkerInfo's event bits fields, which
// version 5 appends to the message carrying it.
func workerEventsSize(v uint8) int {
	if v >= VersionEvents {
		return 8 + 4
	}
	return 0
}
func (e *enc) workerEvents(w WorkerInfo) {
	if e.v >= VersionEvents {
		e.u64(w.EvOff)
		e.u32(w.EvBits)
	}
}
func (d *dec) workerEvents(w *WorkerInfo) {
	if d.v >= VersionEvents {
		w.EvOff = d.u64()
		w.EvBits = d.u32()
		if w.EvBits%64 != 0 || w.EvOff%8 != 0 {
			d.fail("event bits: %d bits at offset %d are not whole aligned words", w.EvBits, w.EvOff)
		}
	}
}

// fifoEventSize is the size of a FifoPair's Event, which version 5
// appends to the message carrying it.
func fifoEventSize(v uint8) int {
	if v >= VersionEvents {
		return 4
	}
	return 0
}
func (e *enc) fifoEvent(f FifoPair) {
	if e.v >= VersionEvents {
		e.u32(f.Event)
	}
}
func (d *dec) fifoEvent(f *FifoPair) {
	if d.v >= VersionEvents {
		f.Event = d.u32()
	}
}

func (*WorkerDel) Type() Type          { return TWorkerDel }
func (*WorkerDel) size(uint8) int      { return 12 }
func (m *WorkerDel) encode(e *enc)     { e.u64(m.Ctx); e.u32(m.Worker) }
func (m *WorkerDel) decode(d *dec)     { m.Ctx = d.u64(); m.Worker = d.u32() }
func (*WorkerDelReply) Type() Type     { return TWorkerDelReply }
func (*WorkerDelReply) size(uint8) int { return 8 + 2 + strSize(MaxMessageLen) }
func (m *WorkerDelReply) encode(e *enc) {
	e.u64(m.Ctx)
	e.u16(uint16(m.Code))
	e.str(m.Msg, MaxMessageLen, "message")
}
func (m *WorkerDelReply) decode(d *dec) {
	m.Ctx = d.u64()
	m.Code = d.code("worker-del reply")
	m.Msg = d.str(MaxMessageLen, "message")
}

func (*Detach) Type() Type           { return TDetach }
func (*Detach) size(uint8) int       { return 0 }
func (*Detach) encode(*enc)          {}
func (*Detach) decode(*dec)          {}
func (*DetachReply) Type() Type      { return TDetachReply }
func (*DetachReply) size(uint8) int  { return 2 }
func (m *DetachReply) encode(e *enc) { e.u16(uint16(m.Code)) }
func (m *DetachReply) decode(d *dec) { m.Code = d.code("detach reply") }

func (*AddSegment) Type() Type     { return TAddSegment }
func (*AddSegment) size(uint8) int { return 8 + 8 + 4 + 4 + 4 + 1 }
func (m *AddSegment) encode(e *enc) {
	e.u64(m.Segment)
	e.u64(m.Size)
	e.u32(m.Worker)
	e.u32(m.PeerApp)
	e.u32(m.PeerWorker)
	e.boolean(m.HasPeerWake)
}
func (m *AddSegment) decode(d *dec) {
	m.Segment = d.u64()
	m.Size = d.u64()
	m.Worker = d.u32()
	m.PeerApp = d.u32()
	m.PeerWorker = d.u32()
	m.HasPeerWake = d.boolean("has-peer-wake")
}

func (*Notice) Type() Type     { return TNotice }
func (*Notice) size(uint8) int { return 2 + strSize(MaxMessageLen) }
func (m *Notice) encode(e *enc) {
	e.u16(uint16(m.Code))
	e.str(m.Msg, MaxMessageLen, "message")
}
func (m *Notice) decode(d *dec) {
	m.Code = d.code("notice")
	m.Msg = d.str(MaxMessageLen, "message")
}

func (*Listen) Type() Type      { return TListen }
func (*Listen) size(uint8) int  { return 8 + addrSize + 4 }
func (m *Listen) encode(e *enc) { e.u64(m.Ctx); e.addr(m.Addr); e.u32(m.TLS) }
func (m *Listen) decode(d *dec) {
	m.Ctx = d.u64()
	m.Addr = d.addr("listen address", true)
	m.TLS = d.u32()
}
func (*Unlisten) Type() Type      { return TUnlisten }
func (*Unlisten) size(uint8) int  { return 16 }
func (m *Unlisten) encode(e *enc) { e.u64(m.Ctx); e.u64(m.Listener) }
func (m *Unlisten) decode(d *dec) { m.Ctx = d.u64(); m.Listener = d.u64() }
func (*Connect) Type() Type       { return TConnect }
func (*Connect) size(uint8) int   { return 8 + addrSize + 4 }
func (m *Connect) encode(e *enc)  { e.u64(m.Ctx); e.addr(m.Remote); e.u32(m.TLS) }
func (m *Connect) decode(d *dec) {
	m.Ctx = d.u64()
	m.Remote = d.addr("remote address", true)
	m.TLS = d.u32()
}

func (*TLSContextAdd) Type() Type     { return TTLSContextAdd }
func (*TLSContextAdd) size(uint8) int { return 8 + 3*strSize(MaxTLSRef) }
func (m *TLSContextAdd) encode(e *enc) {
	e.u64(m.Ctx)
	e.str(m.CertKeyPair, MaxTLSRef, "certkeypair")
	e.str(m.ServerName, MaxTLSRef, "server name")
	e.str(m.Trust, MaxTLSRef, "trust")
}
func (m *TLSContextAdd) decode(d *dec) {
	m.Ctx = d.u64()
	m.CertKeyPair = d.str(MaxTLSRef, "certkeypair")
	m.ServerName = d.str(MaxTLSRef, "server name")
	m.Trust = d.str(MaxTLSRef, "trust")
}
func (*TLSContextReply) Type() Type     { return TTLSContextReply }
func (*TLSContextReply) size(uint8) int { return 8 + 2 + strSize(MaxMessageLen) + 4 }
func (m *TLSContextReply) encode(e *enc) {
	e.u64(m.Ctx)
	e.u16(uint16(m.Code))
	e.str(m.Msg, MaxMessageLen, "message")
	e.u32(m.Handle)
}
func (m *TLSContextReply) decode(d *dec) {
	m.Ctx = d.u64()
	m.Code = d.code("tls context reply")
	m.Msg = d.str(MaxMessageLen, "message")
	m.Handle = d.u32()
}

func (*AcceptReply) Type() Type       { return TAcceptReply }
func (*AcceptReply) size(uint8) int   { return 10 }
func (m *AcceptReply) encode(e *enc)  { e.u64(m.Session); e.u16(uint16(m.Code)) }
func (m *AcceptReply) decode(d *dec)  { m.Session = d.u64(); m.Code = d.code("accept reply") }
func (*Disconnect) Type() Type        { return TDisconnect }
func (*Disconnect) size(uint8) int    { return 8 }
func (m *Disconnect) encode(e *enc)   { e.u64(m.Session) }
func (m *Disconnect) decode(d *dec)   { m.Session = d.u64() }
func (*Reset) Type() Type             { return TReset }
func (*Reset) size(uint8) int         { return 8 }
func (m *Reset) encode(e *enc)        { e.u64(m.Session) }
func (m *Reset) decode(d *dec)        { m.Session = d.u64() }
func (*Shutdown) Type() Type          { return TShutdown }
func (*Shutdown) size(uint8) int      { return 8 }
func (m *Shutdown) encode(e *enc)     { e.u64(m.Session) }
func (m *Shutdown) decode(d *dec)     { m.Session = d.u64() }
func (*Disconnected) Type() Type      { return TDisconnected }
func (*Disconnected) size(uint8) int  { return 8 }
func (m *Disconnected) encode(e *enc) { e.u64(m.Session) }
func (m *Disconnected) decode(d *dec) { m.Session = d.u64() }
func (*Cleanup) Type() Type           { return TCleanup }
func (*Cleanup) size(uint8) int       { return 8 }
func (m *Cleanup) encode(e *enc)      { e.u64(m.Session) }
func (m *Cleanup) decode(d *dec)      { m.Session = d.u64() }
func (*DelSegment) Type() Type        { return TDelSegment }
func (*DelSegment) size(uint8) int    { return 8 }
func (m *DelSegment) encode(e *enc)   { e.u64(m.Segment) }
func (m *DelSegment) decode(d *dec)   { m.Segment = d.u64() }
func (*Migrated) Type() Type          { return TMigrated }
func (*Migrated) size(uint8) int      { return 12 }
func (m *Migrated) encode(e *enc)     { e.u64(m.Session); e.u32(m.Worker) }
func (m *Migrated) decode(d *dec)     { m.Session = d.u64(); m.Worker = d.u32() }

const fifoPairSize = 8 + 8 + 8 + 4 + 4

func (e *enc) fifos(f FifoPair) {
	e.u64(f.Segment)
	e.u64(f.RxOff)
	e.u64(f.TxOff)
	e.u32(f.RxCap)
	e.u32(f.TxCap)
}
func (d *dec) fifosRaw() FifoPair {
	return FifoPair{Segment: d.u64(), RxOff: d.u64(), TxOff: d.u64(), RxCap: d.u32(), TxCap: d.u32()}
}

func (d *dec) fifos() FifoPair {
	f := d.fifosRaw()
	if f.RxCap == 0 || f.TxCap == 0 || f.RxCap&(f.RxCap-1) != 0 || f.TxCap&(f.TxCap-1) != 0 {
		d.fail("fifo capacities %d/%d are not non-zero powers of two", f.RxCap, f.TxCap)
	}
	return f
}

func (*Accepted) Type() Type       { return TAccepted }
func (*Accepted) size(v uint8) int { return 16 + fifoPairSize + 2*addrSize + fifoEventSize(v) }
func (m *Accepted) encode(e *enc) {
	e.u64(m.Listener)
	e.u64(m.Session)
	e.fifos(m.Fifos)
	e.addr(m.Local)
	e.addr(m.Remote)
	e.fifoEvent(m.Fifos)
}
func (m *Accepted) decode(d *dec) {
	m.Listener = d.u64()
	m.Session = d.u64()
	m.Fifos = d.fifos()
	m.Local = d.addr("local address", true)
	m.Remote = d.addr("remote address", true)
	d.fifoEvent(&m.Fifos)
}

func (*Connected) Type() Type { return TConnected }
func (*Connected) size(v uint8) int {
	return 8 + 2 + strSize(MaxMessageLen) + 8 + fifoPairSize + 2*addrSize + fifoEventSize(v)
}
func (m *Connected) encode(e *enc) {
	e.u64(m.Ctx)
	e.u16(uint16(m.Code))
	e.str(m.Msg, MaxMessageLen, "message")
	e.u64(m.Session)
	e.fifos(m.Fifos)
	e.addr(m.Local)
	e.addr(m.Remote)
	e.fifoEvent(m.Fifos)
}
func (m *Connected) decode(d *dec) {
	m.Ctx = d.u64()
	m.Code = d.code("connected")
	m.Msg = d.str(MaxMessageLen, "message")
	m.Session = d.u64()
	if m.Code == OK {
		m.Fifos = d.fifos()
	} else if m.Fifos = d.fifosRaw(); m.Fifos != (FifoPair{}) {
		d.fail("failed connect carries fifos")
	}
	m.Local = d.addr("local address", m.Code == OK)
	m.Remote = d.addr("remote address", false)
	d.fifoEvent(&m.Fifos)
	if m.Code != OK && m.Fifos.Event != 0 {
		d.fail("failed connect carries an event bit")
	}
}

func (*Bound) Type() Type { return TBound }
func (*Bound) size(v uint8) int {
	return 8 + 2 + strSize(MaxMessageLen) + 8 + addrSize + 8 + fifoPairSize + fifoEventSize(v)
}
func (m *Bound) encode(e *enc) {
	e.u64(m.Ctx)
	e.u16(uint16(m.Code))
	e.str(m.Msg, MaxMessageLen, "message")
	e.u64(m.Listener)
	e.addr(m.Local)
	e.u64(m.Session)
	e.fifos(m.Fifos)
	e.fifoEvent(m.Fifos)
}
func (m *Bound) decode(d *dec) {
	m.Ctx = d.u64()
	m.Code = d.code("bound")
	m.Msg = d.str(MaxMessageLen, "message")
	m.Listener = d.u64()
	m.Local = d.addr("local address", m.Code == OK)
	m.Session = d.u64()
	if m.Code == OK && m.Session != 0 {
		m.Fifos = d.fifos()
	} else {
		m.Fifos = d.fifosRaw()
	}
	d.fifoEvent(&m.Fifos)
}

func (*UnlistenReply) Type() Type     { return TUnlistenReply }
func (*UnlistenReply) size(uint8) int { return 8 + 2 + strSize(MaxMessageLen) + 8 }
func (m *UnlistenReply) encode(e *enc) {
	e.u64(m.Ctx)
	e.u16(uint16(m.Code))
	e.str(m.Msg, MaxMessageLen, "message")
	e.u64(m.Listener)
}
func (m *UnlistenReply) decode(d *dec) {
	m.Ctx = d.u64()
	m.Code = d.code("unlisten reply")
	m.Msg = d.str(MaxMessageLen, "message")
	m.Listener = d.u64()
}

func (*ResetEvt) Type() Type     { return TResetEvt }
func (*ResetEvt) size(uint8) int { return 8 + 2 + strSize(MaxMessageLen) }
func (m *ResetEvt) encode(e *enc) {
	e.u64(m.Session)
	e.u16(uint16(m.Code))
	e.str(m.Msg, MaxMessageLen, "message")
}
func (m *ResetEvt) decode(d *dec) {
	m.Session = d.u64()
	m.Code = d.code("reset")
	m.Msg = d.str(MaxMessageLen, "message")
}

func (*Reply) Type() Type     { return TReply }
func (*Reply) size(uint8) int { return 8 + 1 + 8 + 2 + strSize(MaxMessageLen) }
func (m *Reply) encode(e *enc) {
	e.u64(m.Ctx)
	e.u8(uint8(m.Req))
	e.u64(m.Handle)
	e.u16(uint16(m.Code))
	e.str(m.Msg, MaxMessageLen, "message")
}
func (m *Reply) decode(d *dec) {
	m.Ctx = d.u64()
	m.Req = Type(d.u8())
	if m.Req != 0 && (m.Req < TListen || m.Req > TShutdown) {
		d.fail("reply to %v, which is not a request", m.Req)
	}
	m.Handle = d.u64()
	m.Code = d.code("reply")
	m.Msg = d.str(MaxMessageLen, "message")
}
