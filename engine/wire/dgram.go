package wire

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// Datagram sessions (UDP) carry records in their fifos: a DgramHeaderSize
// header, then the payload. A writer publishes a whole record at once (the
// fifo's tail moves once per record), so a reader never sees half of one from
// an honest peer; a record that is cut or malformed comes from a broken or
// hostile peer and ends the session.
//
// Header layout (little endian): payload length u32, port u16, family u8 (4
// or 6), zero u8, 16 bytes of IP (IPv4 in the first 4, the rest zero). The
// address is the remote peer: the destination of a datagram the app sends,
// the source of one it receives.
const DgramHeaderSize = 24

// MaxDatagram is the largest UDP payload a record carries.
const MaxDatagram = 65535

// DgramHeader is a datagram record's header.
type DgramHeader struct {
	Len    int
	Remote netip.AddrPort
}

// Put encodes h into b (at least DgramHeaderSize bytes).
func (h DgramHeader) Put(b []byte) {
	_ = b[DgramHeaderSize-1]
	binary.LittleEndian.PutUint32(b[0:], uint32(h.Len))
	binary.LittleEndian.PutUint16(b[4:], h.Remote.Port())
	ip := h.Remote.Addr().Unmap()
	clear(b[8:24])
	b[7] = 0
	if ip.Is4() {
		b[6] = 4
		a := ip.As4()
		copy(b[8:], a[:])
	} else {
		b[6] = 6
		a := ip.As16()
		copy(b[8:], a[:])
	}
}

// ParseDgramHeader decodes and validates a header read from shared memory
// (untrusted: b is copied first, so the peer cannot change it under us).
func ParseDgramHeader(b []byte) (DgramHeader, error) {
	if len(b) < DgramHeaderSize {
		return DgramHeader{}, &Error{fmt.Sprintf("datagram header of %d bytes", len(b))}
	}
	var c [DgramHeaderSize]byte
	copy(c[:], b)
	n := binary.LittleEndian.Uint32(c[0:])
	if n > MaxDatagram {
		return DgramHeader{}, &Error{fmt.Sprintf("datagram of %d bytes (at most %d)", n, MaxDatagram)}
	}
	port := binary.LittleEndian.Uint16(c[4:])
	var ip netip.Addr
	switch c[6] {
	case 4:
		for _, x := range c[12:24] {
			if x != 0 {
				return DgramHeader{}, &Error{"datagram header: IPv4 address with non-zero padding"}
			}
		}
		ip = netip.AddrFrom4([4]byte(c[8:12]))
	case 6:
		ip = netip.AddrFrom16([16]byte(c[8:24]))
	default:
		return DgramHeader{}, &Error{fmt.Sprintf("datagram header: unknown address family %d", c[6])}
	}
	if c[7] != 0 {
		return DgramHeader{}, &Error{"datagram header: reserved byte is not zero"}
	}
	return DgramHeader{Len: int(n), Remote: netip.AddrPortFrom(ip, port)}, nil
}

// Gather copies len(dst) bytes starting off bytes into the two slices a, b
// of a ring (what a fifo's Peek returns).
func Gather(dst, a, b []byte, off int) {
	if off < len(a) {
		n := copy(dst, a[off:])
		copy(dst[n:], b)
		return
	}
	copy(dst, b[off-len(a):])
}

// PeekDgram decodes the datagram record at the head of the ring slices a,
// b, checking that all of it is there (writers publish whole records, so
// anything less is a broken or hostile peer). hdr is scratch space of
// DgramHeaderSize bytes.
func PeekDgram(hdr, a, b []byte) (DgramHeader, error) {
	avail := len(a) + len(b)
	if avail < DgramHeaderSize {
		return DgramHeader{}, &Error{fmt.Sprintf("datagram record of %d bytes, shorter than its header", avail)}
	}
	Gather(hdr[:DgramHeaderSize], a, b, 0)
	h, err := ParseDgramHeader(hdr)
	if err != nil {
		return h, err
	}
	if avail < DgramHeaderSize+h.Len {
		return h, &Error{fmt.Sprintf("datagram record announcing %d bytes holds %d", h.Len, avail-DgramHeaderSize)}
	}
	return h, nil
}
