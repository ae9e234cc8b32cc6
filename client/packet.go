package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"time"

	"github.com/hoststack/hoststack/engine/wire"
)

// PacketConn is a UDP socket: a net.PacketConn whose datagrams travel as
// records through a fifo pair in shared memory; the engine's transport sends
// and receives them on a UDP socket in the pod's network namespace (so they
// are the pod's own traffic). Datagrams the app namespace's SessionRules deny
// are dropped, as a firewall drops them. Methods may be called concurrently.
type PacketConn struct {
	c     *Conn
	laddr *net.UDPAddr
}

var _ net.PacketConn = (*PacketConn)(nil)

// ListenPacket opens a UDP socket on address over "udp", "udp4" or "udp6"
// (an empty host is the unspecified address; port 0 picks one). It needs an
// engine with a transport; the error says so otherwise.
func (a *App) ListenPacket(network, address string) (net.PacketConn, error) {
	return a.ListenUDP(network, address)
}

// ListenUDP is ListenPacket with the concrete type.
func (a *App) ListenUDP(network, address string) (*PacketConn, error) {
	switch network {
	case "udp", "udp4", "udp6":
	default:
		return nil, &net.OpError{Op: "listen", Net: network, Err: net.UnknownNetworkError(network)}
	}
	if a.isClosed() {
		return nil, &net.OpError{Op: "listen", Net: network, Err: ErrAppClosed}
	}
	ta, err := resolve(context.Background(), "listen", network, address, true)
	if err != nil {
		return nil, err
	}
	la := net.UDPAddrFromAddrPort(ta.AddrPort())
	wctx, cancel := context.WithTimeout(context.Background(), listenWait)
	defer cancel()
	w, err := a.waitUp(wctx)
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Addr: la, Err: err}
	}
	id := a.ctx.Add(1)
	addr := wireAddr(ta)
	addr.Proto = wire.UDP
	r, err := w.call(context.Background(), id, &wire.Listen{Ctx: id, Addr: addr})
	if err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Addr: la, Err: err}
	}
	b, ok := r.(*wire.Bound)
	switch {
	case !ok:
		return nil, &net.OpError{Op: "listen", Net: network, Addr: la, Err: errors.New("unexpected reply")}
	case b.Code != wire.OK:
		return nil, &net.OpError{Op: "listen", Net: network, Addr: la, Err: engineError(b.Code, b.Msg)}
	case b.Session == 0:
		return nil, &net.OpError{Op: "listen", Net: network, Addr: la, Err: errors.New("engine answered a udp listen without a socket")}
	}
	c, err := w.newConn(b.Session, b.Fifos, b.Local, wire.Addr{})
	if err != nil {
		_ = w.request(&wire.Reset{Session: b.Session})
		return nil, &net.OpError{Op: "listen", Net: network, Addr: la, Err: err}
	}
	pc := &PacketConn{c: c, laddr: net.UDPAddrFromAddrPort(b.Local.AddrPort())}
	c.udp = pc.laddr
	return pc, nil
}

// LocalAddr returns the bound address (*net.UDPAddr).
func (p *PacketConn) LocalAddr() net.Addr { return p.laddr }

// SetDeadline sets both deadlines.
func (p *PacketConn) SetDeadline(t time.Time) error { return p.c.SetDeadline(t) }

// SetReadDeadline sets the read deadline; it also wakes a blocked read.
func (p *PacketConn) SetReadDeadline(t time.Time) error { return p.c.SetReadDeadline(t) }

// SetWriteDeadline sets the write deadline; it also wakes a blocked write.
func (p *PacketConn) SetWriteDeadline(t time.Time) error { return p.c.SetWriteDeadline(t) }

// Close closes the socket; blocked calls return net.ErrClosed.
func (p *PacketConn) Close() error { return p.c.Close() }

// ReadFrom reads one datagram; a p shorter than the datagram gets its
// beginning (the rest is discarded, as with a kernel UDP socket).
func (p *PacketConn) ReadFrom(b []byte) (int, net.Addr, error) {
	n, ap, err := p.ReadFromUDPAddrPort(b)
	if err != nil {
		return n, nil, err
	}
	return n, net.UDPAddrFromAddrPort(ap), nil
}

// ReadFromUDPAddrPort is ReadFrom returning a netip.AddrPort.
func (p *PacketConn) ReadFromUDPAddrPort(b []byte) (int, netip.AddrPort, error) {
	c := p.c
	c.rmu.Lock()
	defer c.rmu.Unlock()
	var hdr [wire.DgramHeaderSize]byte
	for {
		if err := c.readErr(); err != nil {
			return 0, netip.AddrPort{}, err
		}
		x, y, err := c.rx.Peek()
		if err != nil && err != io.EOF {
			return 0, netip.AddrPort{}, c.opErr("read", err)
		}
		if avail := len(x) + len(y); avail > 0 {
			h, err := wire.PeekDgram(hdr[:], x, y)
			if err != nil {
				return 0, netip.AddrPort{}, p.broken(err)
			}
			n := min(len(b), h.Len)
			wire.Gather(b[:n], x, y, wire.DgramHeaderSize)
			if err := c.rx.Consume(wire.DgramHeaderSize + h.Len); err != nil {
				return 0, netip.AddrPort{}, c.opErr("read", err)
			}
			if c.rx.TakeWriterWaiting() {
				c.ringPeer()
			}
			return n, h.Remote, nil
		}
		if err == io.EOF || c.peerClosed.Load() {
			return 0, netip.AddrPort{}, c.opErr("read", &Error{Code: wire.ErrShutdown, Msg: "the engine closed the udp socket", Errno: syscall.ESHUTDOWN})
		}
		if err := c.waitReadable(); err != nil {
			return 0, netip.AddrPort{}, err
		}
	}
}

// broken resets the socket after a malformed record: the fifo can no longer
// be trusted.
func (p *PacketConn) broken(err error) error {
	e := &Error{Code: wire.ErrReset, Msg: "malformed datagram from the engine: " + err.Error(), Errno: syscall.EPROTO}
	p.c.resetErr.CompareAndSwap(nil, e)
	_ = p.c.w.request(&wire.Reset{Session: p.c.h})
	return p.c.opErr("read", e)
}

// WriteTo sends one datagram to addr (a *net.UDPAddr). It waits while the
// fifo has no room for the whole datagram.
func (p *PacketConn) WriteTo(b []byte, addr net.Addr) (int, error) {
	ua, ok := addr.(*net.UDPAddr)
	if !ok || ua == nil {
		return 0, p.c.opErr("write", &net.AddrError{Err: "not a *net.UDPAddr", Addr: fmt.Sprint(addr)})
	}
	return p.WriteToUDPAddrPort(b, ua.AddrPort())
}

// WriteToUDPAddrPort is WriteTo with a netip.AddrPort.
func (p *PacketConn) WriteToUDPAddrPort(b []byte, addr netip.AddrPort) (int, error) {
	c := p.c
	if !addr.IsValid() || addr.Port() == 0 {
		return 0, c.opErr("write", &net.AddrError{Err: "missing address or port", Addr: addr.String()})
	}
	need := wire.DgramHeaderSize + len(b)
	if len(b) > wire.MaxDatagram || need > c.tx.Cap() {
		return 0, c.opErr("write", syscall.EMSGSIZE)
	}
	var hdr [wire.DgramHeaderSize]byte
	wire.DgramHeader{Len: len(b), Remote: addr}.Put(hdr[:])
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.wrote()
	room := func() bool {
		if c.closed.Load() || c.resetErr.Load() != nil || c.peerClosed.Load() {
			return true
		}
		n, err := c.tx.Free()
		return n >= need || err != nil
	}
	for {
		if err := c.writeErr(); err != nil {
			return 0, err
		}
		free, err := c.tx.Free()
		if err != nil {
			return 0, c.opErr("write", err)
		}
		if free >= need {
			if _, err := c.tx.WriteVec([][]byte{hdr[:], b}); err != nil {
				return 0, c.opErr("write", err)
			}
			if c.tx.TakeReaderWaiting() {
				c.ringPeer()
			}
			return len(b), nil
		}
		if err := c.wait(&c.wdl, &c.wwait, &c.wspin, room, c.tx.SetWriterWaiting, c.tx.ClearWriterWaiting); err != nil {
			return 0, err
		}
	}
}
