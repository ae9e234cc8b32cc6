package kernel

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"

	"github.com/hoststack/hoststack/engine/session"
	"github.com/hoststack/hoststack/engine/shm"
	"github.com/hoststack/hoststack/engine/wire"
)

// ListenPacket opens a UDP socket in the app's host's network namespace and
// pumps datagram records between it and the flow's fifos.
func (t *Transport) ListenPacket(req session.PacketRequest) (netip.AddrPort, wire.Code, string) {
	var uc *net.UDPConn
	code, msg := t.bindIn(req.Host, req.App, "udp socket on "+req.Local.String(), func() (err error) {
		uc, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(req.Local))
		return err
	})
	if code != wire.OK {
		return netip.AddrPort{}, code, msg
	}
	bound := uc.LocalAddr().(*net.UDPAddr).AddrPort()
	bound = netip.AddrPortFrom(bound.Addr().Unmap(), bound.Port())
	go t.pumpPackets(req.Flow, uc, bound)
	return bound, wire.OK, ""
}

// pumpPackets runs both directions until the app releases the socket or
// sends a malformed record.
func (t *Transport) pumpPackets(f *session.Flow, uc *net.UDPConn, local netip.AddrPort) {
	stop := make(chan struct{})
	var once sync.Once
	halt := func() { once.Do(func() { close(stop); uc.Close() }) }
	done := make(chan error, 2)
	go func() { done <- t.datagramsToApp(f, uc, local, stop) }()
	go func() { done <- t.datagramsFromApp(f, uc, local, stop) }()
	var first error
	for pending := 2; pending > 0; pending-- {
		if err := <-done; err != nil && first == nil {
			first = err
		}
		halt()
	}
	if first != nil {
		f.Finish(wire.ErrReset, first.Error())
		return
	}
	f.Finish(wire.OK, "")
}

// datagramsToApp writes each received datagram as one record into the rx
// fifo; with no room it is dropped, as a full socket buffer drops it.
func (t *Transport) datagramsToApp(f *session.Flow, uc *net.UDPConn, local netip.AddrPort, stop <-chan struct{}) error {
	rx := f.Rx
	var hdr [wire.DgramHeaderSize]byte
	buf := make([]byte, wire.MaxDatagram)
	for {
		n, src, err := uc.ReadFromUDPAddrPort(buf)
		if err != nil {
			select {
			case <-stop:
				return nil
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("kernel transport: udp receive: %w", err)
		}
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		if ok, _ := f.Permit(session.Accept, local, src); !ok {
			t.stats.dgramDropped.Add(1)
			continue
		}
		need := wire.DgramHeaderSize + n
		free, err := rx.Free()
		if errors.Is(err, shm.ErrClosed) || rx.ReadClosed() {
			return nil
		}
		if err != nil {
			return err
		}
		if free < need {
			t.stats.dgramDropped.Add(1)
			continue
		}
		wire.DgramHeader{Len: n, Remote: src}.Put(hdr[:])
		if _, err := rx.WriteVec([][]byte{hdr[:], buf[:n]}); err != nil {
			return err
		}
		t.stats.dgramIn.Add(1)
		if rx.TakeReaderWaiting() {
			f.WakeApp()
		}
	}
}

// datagramsFromApp sends each record the app wrote. The records come from
// shared memory: a malformed or cut one ends the socket with a reset.
func (t *Transport) datagramsFromApp(f *session.Flow, uc *net.UDPConn, local netip.AddrPort, stop <-chan struct{}) error {
	tx := f.Tx
	var hdr [wire.DgramHeaderSize]byte
	buf := make([]byte, wire.MaxDatagram)
	for {
		a, b, err := tx.Peek()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if len(a)+len(b) > 0 {
			h, err := wire.PeekDgram(hdr[:], a, b)
			if err != nil {
				return fmt.Errorf("malformed datagram record from the app: %v", err)
			}
			p := buf[:h.Len]
			wire.Gather(p, a, b, wire.DgramHeaderSize)
			if err := tx.Consume(wire.DgramHeaderSize + h.Len); err != nil {
				return err
			}
			if tx.TakeWriterWaiting() {
				f.WakeApp()
			}
			dst := netip.AddrPortFrom(h.Remote.Addr().Unmap(), h.Remote.Port())
			if ok, _ := f.Permit(session.Connect, local, dst); !ok {
				t.stats.dgramDropped.Add(1)
				continue
			}
			if _, err := uc.WriteToUDPAddrPort(p, dst); err != nil {
				select {
				case <-stop:
					return nil
				default:
				}
				if errors.Is(err, net.ErrClosed) {
					return nil
				}
				// unreachable, wrong family, no route: the datagram is
				// lost, as it would be for a kernel socket's sendto
				// whose error nobody reads
				t.stats.dgramDropped.Add(1)
				continue
			}
			t.stats.dgramOut.Add(1)
			continue
		}
		tx.SetReaderWaiting()
		if n, lerr := tx.Len(); lerr == nil && n == 0 && !tx.WriteClosed() {
			select {
			case <-f.Kick():
			case <-stop:
				return nil
			case <-f.AppClosed():
				return nil
			}
		}
	}
}
