package netstack

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/wire"
)

// ListenPacket binds a UDP endpoint and pumps datagram records between it
// and the flow's fifos.
func (t *Transport) ListenPacket(req session.PacketRequest) (netip.AddrPort, wire.Code, string) {
	var wq waiter.Queue
	local := req.Local
	ep, terr := t.s.NewEndpoint(udp.ProtocolNumber, proto(local.Addr()), &wq)
	if terr != nil {
		return netip.AddrPort{}, wire.ErrInternal, fmt.Sprintf("netstack: udp endpoint: %v", terr)
	}
	if local.Addr().Is6() && local.Addr().IsUnspecified() {
		ep.SocketOptions().SetV6Only(false)
	}
	if terr := ep.Bind(fullAddr(local)); terr != nil {
		ep.Close()
		code := wire.ErrInternal
		switch terr.(type) {
		case *tcpip.ErrPortInUse:
			code = wire.ErrAddrInUse
		case *tcpip.ErrBadLocalAddress:
			code = wire.ErrInvalid
		}
		return netip.AddrPort{}, code, fmt.Sprintf("netstack: udp socket on %s for app %s: %v", local, req.App, terr)
	}
	la, _ := ep.GetLocalAddress()
	bound := netip.AddrPortFrom(local.Addr().Unmap(), la.Port)
	if !t.start(func() { t.pumpPackets(req.Flow, ep, &wq, bound) }) {
		ep.Close()
		return netip.AddrPort{}, wire.ErrNoTransport, "netstack: the transport is closed"
	}
	return bound, wire.OK, ""
}

// pumpPackets moves datagrams both ways on one goroutine until the app
// releases the socket (or sends a malformed record: a reset).
func (t *Transport) pumpPackets(f *session.Flow, ep tcpip.Endpoint, wq *waiter.Queue, local netip.AddrPort) {
	entry, events := waiter.NewChannelEntry(waiter.ReadableEvents | waiter.WritableEvents | waiter.EventErr)
	wq.EventRegister(&entry)
	defer wq.EventUnregister(&entry)
	defer ep.Close()
	rx, tx := f.Rx, f.Tx
	var hdr [wire.DgramHeaderSize]byte
	var in bytes.Buffer
	out := make([]byte, wire.MaxDatagram)
	var pending []byte // a datagram that did not fit the rx fifo yet
	var pendingFrom netip.AddrPort
	for {
		progress := false
		// stack → app, one datagram per record
		for {
			if pending == nil {
				in.Reset()
				res, terr := ep.Read(&in, tcpip.ReadOptions{NeedRemoteAddr: true})
				if terr != nil {
					if _, ok := terr.(*tcpip.ErrWouldBlock); !ok {
						t.opts.Logf("netstack: udp receive on %s: %v", local, terr)
					}
					break
				}
				from := addrPort(res.RemoteAddr)
				if ok, _ := f.Permit(session.Accept, local, from); !ok {
					progress = true
					continue
				}
				pending, pendingFrom = in.Bytes(), from
			}
			need := wire.DgramHeaderSize + len(pending)
			if need > rx.Cap() {
				pending = nil // can never fit: dropped
				continue
			}
			free, err := rx.Free()
			if errors.Is(err, shm.ErrClosed) || rx.ReadClosed() {
				f.Finish(wire.OK, "")
				return
			}
			if err != nil || free < need {
				rx.SetWriterWaiting()
				break
			}
			wire.DgramHeader{Len: len(pending), Remote: pendingFrom}.Put(hdr[:])
			if _, err := rx.WriteVec([][]byte{hdr[:], pending}); err != nil {
				f.Finish(wire.ErrReset, "netstack: rx fifo: "+err.Error())
				return
			}
			pending = nil
			progress = true
			if rx.TakeReaderWaiting() {
				f.WakeApp()
			}
		}
		// app → stack, one record per datagram
		for {
			a, b, err := tx.Peek()
			if err == io.EOF {
				f.Finish(wire.OK, "")
				return
			}
			if err != nil {
				f.Finish(wire.ErrReset, "netstack: tx fifo: "+err.Error())
				return
			}
			avail := len(a) + len(b)
			if avail == 0 {
				tx.SetReaderWaiting()
				if n, _ := tx.Len(); n > 0 {
					continue
				}
				break
			}
			h, err := wire.PeekDgram(hdr[:], a, b)
			if err != nil {
				f.Finish(wire.ErrReset, "malformed datagram record from the app: "+err.Error())
				return
			}
			p := out[:h.Len]
			wire.Gather(p, a, b, wire.DgramHeaderSize)
			dst := netip.AddrPortFrom(h.Remote.Addr().Unmap(), h.Remote.Port())
			if ok, _ := f.Permit(session.Connect, local, dst); ok {
				to := fullAddr(dst)
				if _, terr := ep.Write(bytes.NewReader(p), tcpip.WriteOptions{To: &to}); terr != nil {
					if _, ok := terr.(*tcpip.ErrWouldBlock); ok {
						break // the send buffer is full: retry on writable
					}
					// no route, wrong family: lost, as a sendto nobody checks
				}
			}
			if err := tx.Consume(wire.DgramHeaderSize + h.Len); err != nil {
				f.Finish(wire.ErrReset, "netstack: tx fifo: "+err.Error())
				return
			}
			progress = true
			if tx.TakeWriterWaiting() {
				f.WakeApp()
			}
		}
		if progress {
			continue
		}
		select {
		case <-events:
		case <-f.Kick():
		case <-f.AppClosed():
			f.Finish(wire.OK, "")
			return
		}
	}
}
