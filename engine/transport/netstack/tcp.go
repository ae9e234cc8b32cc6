package netstack

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/netip"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/engine/shm"
	enginetls "github.com/hoststack/hoststack/engine/tls"
	"github.com/hoststack/hoststack/engine/transport/stream"
	"github.com/hoststack/hoststack/engine/wire"
)

// Connect starts a TCP connect from the stack; it never blocks.
func (t *Transport) Connect(req session.ConnectRequest) (wire.Code, string) {
	if req.Flow == nil {
		return wire.ErrInternal, "netstack: connect without a flow"
	}
	if req.Remote.Proto != wire.TCP || !req.Remote.IP.IsValid() || req.Remote.Port == 0 {
		return wire.ErrInvalid, "netstack: connect needs a tcp address and a port"
	}
	dst := netip.AddrPortFrom(req.Remote.IP.Unmap(), req.Remote.Port)
	var wq waiter.Queue
	ep, terr := t.s.NewEndpoint(tcp.ProtocolNumber, proto(dst.Addr()), &wq)
	if terr != nil {
		return wire.ErrInternal, fmt.Sprintf("netstack: tcp endpoint: %v", terr)
	}
	if !t.start(func() { t.connect(req.Flow, ep, &wq, dst) }) {
		ep.Close()
		return wire.ErrNoTransport, "netstack: the transport is closed"
	}
	return wire.OK, ""
}

func (t *Transport) connect(f *session.Flow, ep tcpip.Endpoint, wq *waiter.Queue, dst netip.AddrPort) {
	entry, ch := waiter.NewChannelEntry(waiter.WritableEvents | waiter.EventHUp | waiter.EventErr)
	wq.EventRegister(&entry)
	terr := ep.Connect(fullAddr(dst))
	if _, ok := terr.(*tcpip.ErrConnectStarted); ok {
		timer := time.NewTimer(t.opts.ConnectTimeout)
		select {
		case <-ch:
			terr = ep.LastError()
		case <-f.AppClosed():
			terr = &tcpip.ErrAborted{}
		case <-timer.C:
			terr = &tcpip.ErrTimeout{}
		}
		timer.Stop()
	}
	wq.EventUnregister(&entry)
	if terr != nil {
		ep.Abort()
		code := wire.ErrReset
		msg := fmt.Sprintf("netstack: connect to %s: %v", dst, terr)
		switch terr.(type) {
		case *tcpip.ErrConnectionRefused:
			code = wire.ErrRefused
			msg = fmt.Sprintf("connection refused: nothing listens on %s (netstack transport)", dst)
		case *tcpip.ErrTimeout:
			code = wire.ErrTimeout
			msg = fmt.Sprintf("netstack: connect to %s: no answer within %v", dst, t.opts.ConnectTimeout)
		case *tcpip.ErrHostUnreachable, *tcpip.ErrNetworkUnreachable:
			code = wire.ErrRefused
			msg = fmt.Sprintf("netstack: %s is unreachable: %v", dst, terr)
		}
		f.Finish(code, msg)
		return
	}
	la, _ := ep.GetLocalAddress()
	if cfg := f.TLSClient(); cfg != nil {
		// TLS: the stack's connection as a net.Conn under crypto/tls, and
		// the stream pump (the zero-copy path is for plaintext)
		tc := tls.Client(gonet.NewTCPConn(wq, ep), cfg)
		if err := enginetls.HandshakeUntil(tc, t.opts.ConnectTimeout, f.AppClosed()); err != nil {
			ep.Abort()
			code, msg := session.HandshakeError(err)
			f.Finish(code, fmt.Sprintf("tls with %s: %s", dst, msg))
			return
		}
		if !f.Connected(addrPort(la)) {
			ep.Abort()
			f.Finish(wire.ErrReset, "app went away")
			return
		}
		stream.Pump(f, tc, dst, stream.Options{CloseTimeout: t.opts.CloseTimeout, Name: "netstack", Abort: ep.Abort})
		return
	}
	if !f.Connected(addrPort(la)) {
		ep.Abort()
		f.Finish(wire.ErrReset, "app went away")
		return
	}
	if !t.serve(f, ep, wq, dst) {
		ep.Abort()
		f.Finish(wire.ErrShutdown, "the netstack transport is closed")
	}
}

// Listen binds a listening endpoint for a global-scope listener and hands
// each accepted session to the engine.
func (t *Transport) Listen(req session.ListenRequest) (netip.AddrPort, wire.Code, string) {
	var wq waiter.Queue
	local := req.Local
	ep, terr := t.s.NewEndpoint(tcp.ProtocolNumber, proto(local.Addr()), &wq)
	if terr != nil {
		return netip.AddrPort{}, wire.ErrInternal, fmt.Sprintf("netstack: tcp endpoint: %v", terr)
	}
	if local.Addr().Is6() && local.Addr().IsUnspecified() {
		ep.SocketOptions().SetV6Only(false) // [::] takes IPv4 too, as the engine's table does
	}
	ep.SocketOptions().SetReuseAddress(true)
	fail := func(code wire.Code, terr tcpip.Error) (netip.AddrPort, wire.Code, string) {
		ep.Close()
		return netip.AddrPort{}, code, fmt.Sprintf("netstack: listen on %s for app %s: %v", local, req.App, terr)
	}
	if terr := ep.Bind(fullAddr(local)); terr != nil {
		code := wire.ErrInternal
		switch terr.(type) {
		case *tcpip.ErrPortInUse:
			code = wire.ErrAddrInUse
		case *tcpip.ErrBadLocalAddress:
			code = wire.ErrInvalid
		}
		return fail(code, terr)
	}
	if terr := ep.Listen(1024); terr != nil {
		return fail(wire.ErrInternal, terr)
	}
	la, _ := ep.GetLocalAddress()
	bound := netip.AddrPortFrom(local.Addr().Unmap(), la.Port)
	if !t.start(func() { t.acceptLoop(req, ep, &wq) }) {
		ep.Close()
		return netip.AddrPort{}, wire.ErrNoTransport, "netstack: the transport is closed"
	}
	return bound, wire.OK, ""
}

func (t *Transport) acceptLoop(req session.ListenRequest, ep tcpip.Endpoint, wq *waiter.Queue) {
	defer ep.Close()
	entry, ch := waiter.NewChannelEntry(waiter.ReadableEvents)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	tl := req.Listener
	for {
		var peer tcpip.FullAddress
		nep, nwq, terr := ep.Accept(&peer)
		if _, ok := terr.(*tcpip.ErrWouldBlock); ok {
			select {
			case <-ch:
				continue
			case <-tl.Closed():
				return
			}
		}
		if terr != nil {
			t.opts.Logf("netstack: accept for app %s: %v", req.App, terr)
			return
		}
		la, _ := nep.GetLocalAddress()
		remote := addrPort(peer)
		if cfg := tl.TLS(); cfg != nil {
			if !t.start(func() { t.acceptTLS(req, nep, nwq, cfg, addrPort(la), remote) }) {
				nep.Abort()
				return
			}
			continue
		}
		f, code, msg := tl.Accept(addrPort(la), remote)
		if code != wire.OK {
			nep.Abort() // a reset: the peer learns it was refused
			if code != wire.ErrDenied {
				t.opts.Logf("netstack: session from %s for app %s refused: %s", remote, req.App, msg)
			}
			continue
		}
		if !t.serve(f, nep, nwq, remote) {
			nep.Abort()
			f.Finish(wire.ErrShutdown, "the netstack transport is closed")
			return
		}
	}
}

// acceptTLS runs the server handshake of an accepted connection, then
// hands it to the app and pumps plaintext.
func (t *Transport) acceptTLS(req session.ListenRequest, ep tcpip.Endpoint, wq *waiter.Queue, cfg *tls.Config, local, remote netip.AddrPort) {
	tl := req.Listener
	tc := tls.Server(gonet.NewTCPConn(wq, ep), cfg)
	if err := enginetls.HandshakeUntil(tc, t.opts.ConnectTimeout, tl.Closed()); err != nil {
		ep.Abort()
		_, msg := session.HandshakeError(err)
		t.opts.Logf("netstack: tls from %s for app %s: %s", remote, req.App, msg)
		return
	}
	f, code, msg := tl.Accept(local, remote)
	if code != wire.OK {
		ep.Abort()
		if code != wire.ErrDenied {
			t.opts.Logf("netstack: session from %s for app %s refused: %s", remote, req.App, msg)
		}
		return
	}
	stream.Pump(f, tc, remote, stream.Options{CloseTimeout: t.opts.CloseTimeout, Name: "netstack", Abort: ep.Abort})
}

func resetMessage(terr tcpip.Error, peer netip.AddrPort) string {
	switch terr.(type) {
	case *tcpip.ErrConnectionReset, *tcpip.ErrConnectionAborted:
		return fmt.Sprintf("connection reset by %s (netstack transport)", peer)
	}
	return fmt.Sprintf("netstack: session with %s: %v", peer, terr)
}

// fifoWriter writes into a fifo; the caller bounds the total with a
// tcpip.LimitedWriter to the room it saw, so a write never comes up short.
type fifoWriter struct{ f *shm.Fifo }

func (w *fifoWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if err == nil && n < len(p) {
		err = io.ErrShortWrite
	}
	return n, err
}

// ringReader reads the two slices a fifo's Peek returned (a tcpip.Payloader).
type ringReader struct{ a, b []byte }

func (r *ringReader) reset(a, b []byte) { r.a, r.b = a, b }

func (r *ringReader) Read(p []byte) (int, error) {
	if len(r.a) == 0 && len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.a)
	r.a = r.a[n:]
	if n < len(p) {
		m := copy(p[n:], r.b)
		r.b = r.b[m:]
		n += m
	}
	return n, nil
}

func (r *ringReader) Len() int { return len(r.a) + len(r.b) }
