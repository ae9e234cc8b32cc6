package session

// Design notes (the engine side of the protocol in engine/wire).
//
// # Attach
//
// Each app namespace gets a SOCK_SEQPACKET unix socket (AddNamespace), and
// more can be served with ServeAttach: the set of app namespaces a socket
// admits is a property of the listening socket, so the agent can serve one
// socket per pod restricted to the namespace the pod was admitted to. An app
// connects and sends wire.Attach (name, namespace, optional secret, fifo size
// wishes). The engine checks the socket's namespaces, the secret (constant
// time, on SHA-256 digests), maxApps, that the name is not taken in the
// app's host (names are unique per app namespace and host), and the
// node-wide caps (Limits), records SO_PEERCRED, creates the app's worker 0 and its
// own fifo segment, and answers wire.AttachReply with SCM_RIGHTS: the queue
// segment memfd, the app's ends of the worker's doorbell and transport
// doorbell, and the fifo segment memfd. Any error is an AttachReply with a code and a
// message that names the cause ("wrong secret for app namespace X",
// "app namespace X: maxApps (N) reached"). Descriptors sent by apps are
// closed unread.
//
// # Workers and queues
//
// A worker owns one queue segment with two wire-encoded message queues
// (engine→app events, app→engine requests) and two doorbells (shm
// NewDoorbell: a datagram socket pair, one end per side, each side's own
// open file description). The worker doorbell carries both directions: the
// engine rings its end for events, the app rings its end for requests, and
// each side sleeps on its own end. A fixed number of engine shards (about
// one per core; shard.go) serves the request queues of all workers: each
// waits in epoll_wait on the engine's doorbell ends of its workers and
// serves a ready worker's requests in a batch under one acquisition of the
// namespace mutex, so the engine's threads do not grow with apps and
// workers. The transport doorbell is rung by the app for its transport sessions (below).
// The engine creates both pairs, passes the app's ends and closes its copies
// at once: it never holds a description the app holds, so nothing the app
// does to its descriptors (blocking mode, full buffers) can block an engine
// thread. WorkerAdd/WorkerDel travel over the attach socket because they
// carry descriptors.
//
// The engine never blocks on an app, and never blocks under the namespace
// mutex: queue sends are non-blocking; an event that finds the queue full
// waits in the worker's backlog, retried by the flusher in order; an app that
// lets the backlog grow past four queues is detached with a notice naming the
// queue size. Accepts take the backlog only up to one queue's worth; past
// that the connect is refused (like a full listen backlog). Socket writes and
// doorbell rings use MSG_DONTWAIT on the engine's own descriptors. What may
// take long runs neither under the mutex nor on a shard: the worker is
// parked (its later requests wait, in order), the step runs on a goroutine
// of its own, and its result is re-checked under the mutex after: a
// transport's bind in the app's network namespace (a global-scope listen,
// whose key is reserved meanwhile as a pending listener that conflicts but
// takes no sessions; a UDP socket) and the TLS handshake of a cut-through
// session (the listener, both workers and the quotas are checked again
// after it).
//
// Every request gets an answer: its own reply event (bound, unlisten-reply,
// connected, cleanup for disconnect/reset) or wire.Reply with a code, also
// for requests that cannot be decoded. Accept-reply is answered only when it
// is wrong; sessions are accepted unless the app refuses them.
//
// # Cut-through sessions
//
// Every app lives in a host: the Host of the attach socket it came through
// (a pod, for a per-pod socket; "" for the node). A listener on the
// unspecified address belongs to its host, so two pods may listen on the
// same port. A connect looks up the listener table of the namespace for the
// host owning the destination (the app's own host for loopback, the
// transport's Host answer otherwise): exact address, then 0.0.0.0 for IPv4,
// then [::] which matches both families. Rules (Config.Rules) are consulted
// for the connect and the accept; with no listener the connect goes to
// Config.Transport, and with no transport it is refused (ECONNREFUSED in the
// client) with a message saying so.
//
// The fifo pair lives in a cut-through segment that belongs to exactly the
// two app workers involved (created on first use, announced to both apps
// over their attach sockets — before any event refers to it — each with its
// end of a doorbell pair made for that segment, and reused for later
// sessions of the same pair). No app ever maps another app's own segment or
// queues, or holds another app's descriptors: a peer can ring the segment's
// doorbell, but not read another app's wake-ups or stall them. The engine
// keeps no end of it, formats the fifos (shm.InitFifo), sends Accepted to
// the listener and Connected to the connecting app, and steps out of the
// data path: the apps move bytes through the fifos and ring each other when
// the peer's waiting flag is set, without the engine (so cut-through
// sessions need no engine thread at all to move data).
//
// # Transport sessions
//
// A connect that leaves through Config.Transport gets its fifo pair in the
// app's own segment, or, when that is full, in a transport segment added
// for the app on demand (up to maxSegmentsPerApp, own and cut-through ones
// included; announced with add-segment before any event refers to it and
// dropped with del-segment once empty), so maxSessionsPerApp is the limit
// that applies. The app rings its worker's transport doorbell after
// progress on such a fifo whose waiting flag the transport set, having set
// the session's bit in the worker's event bits first (wire version 5;
// events.go): the ring kicks the flows whose bits are set, each once, so an
// app with thousands of idle keep-alive sessions pays for the one that
// moved (an older app's ring kicks all of its flows). The ring is taken by
// the transport's loop that serves the worker's flows (BellWatcher), or by
// the worker's kicker goroutine (started with its first transport session,
// reading the engine's end through the netpoller); a kick reaches the flow
// on Flow.Kick, or through the function a transport gave Flow.Notify when
// it serves its flows from event loops. Flow.WakeApp rings the worker
// doorbell from the engine's end. When a fifo pair is freed its pages are
// punched out of the segment (segment.free). The
// session is registered before Transport.Connect is called with a
// Flow (see Flow): the transport completes it later (Flow.Connected → the
// app's connected event) and ends its side with Flow.Finish (disconnected
// or reset event, or the failed connect); an app's disconnect, reset or
// death reaches it through Flow.AppClosed. The pair is freed, and the own
// segment of a reaped app dropped, only once both sides are done.
//
// Listeners have scopes (the app's attach flags; both by default): local
// scope is the namespace's table above, global scope is the transport
// (StreamListener): it listens in the app's host's network namespace and
// hands each session it accepts to TransportListener.Accept, which judges it
// with the global rules and gives the app an accepted event. UDP sockets
// (Listen with UDP) are transport sessions too (PacketTransport): their
// fifos carry datagram records (wire.DgramHeader), and the transport asks
// Flow.Permit for each datagram.
//
// # Close, reset and reaping
//
// Disconnect/Reset end one side; the peer gets Disconnected (it reads the
// rest, then EOF, which travels in the fifo itself) or ResetEvt with the
// reason. The fifo pair is freed when both sides are done, so an app never
// sees its fifo memory reused under it. A detached or dead app (its attach
// socket closed: exit, SIGKILL) is reaped: listeners removed, sessions
// released with a reset to every peer ("app X closed its attach socket"),
// workers stopped, its own segment dropped; a cut-through segment is dropped
// (del-segment to the surviving app) once it holds no session. Stats report
// apps, workers, listeners, sessions, segments and their bytes per namespace.
//
// # Where things live
//
// One file per part, each with the state it owns and the requests that
// change it:
//
//   - engine.go: the Engine and its namespaces (add, update, remove,
//     statistics); config.go: their configuration, rules' types;
//     limits.go: node-wide caps
//   - attachsock.go: the attach sockets and who may attach through which;
//     app.go: an attachment (attach, attach-socket requests, reaping);
//     legacy.go: what wire version 2 apps get
//   - worker.go: a worker's queues and doorbells; shard.go: the shards
//     that serve the request queues
//   - sessions.go: request dispatch, connect, close and release;
//     listeners.go: the local listener table and ports; accept.go: which
//     worker takes an accepted session; peerpolicy.go: NetworkPolicy on
//     cut-through; tls.go: TLS contexts
//   - cutthrough.go: fifo segments and cut-through pairs
//   - flow.go: Flow, a session a transport carries; transport.go:
//     transport segments, connects, listeners and doorbell watching;
//     events.go: the transport event bits
