package wire

import (
	"net/netip"
	"testing"
)

func TestDgramHeaderRoundTrip(t *testing.T) {
	for _, h := range []DgramHeader{
		{Len: 0, Remote: netip.MustParseAddrPort("10.0.0.1:53")},
		{Len: MaxDatagram, Remote: netip.MustParseAddrPort("[fd00::1]:65535")},
		{Len: 1200, Remote: netip.MustParseAddrPort("[::ffff:192.0.2.7]:443")},
	} {
		var b [DgramHeaderSize]byte
		h.Put(b[:])
		got, err := ParseDgramHeader(b[:])
		if err != nil {
			t.Fatalf("%+v: %v", h, err)
		}
		want := DgramHeader{Len: h.Len, Remote: netip.AddrPortFrom(h.Remote.Addr().Unmap(), h.Remote.Port())}
		if got != want {
			t.Fatalf("round trip: got %+v, want %+v", got, want)
		}
	}
}

func TestDgramHeaderRejectsGarbage(t *testing.T) {
	good := func() []byte {
		var b [DgramHeaderSize]byte
		DgramHeader{Len: 10, Remote: netip.MustParseAddrPort("10.0.0.1:53")}.Put(b[:])
		return b[:]
	}
	cases := map[string]func(b []byte) []byte{
		"short":        func(b []byte) []byte { return b[:DgramHeaderSize-1] },
		"too long":     func(b []byte) []byte { b[2] = 1; return b }, // 65536+10
		"family":       func(b []byte) []byte { b[6] = 5; return b },
		"reserved":     func(b []byte) []byte { b[7] = 1; return b },
		"ipv4 padding": func(b []byte) []byte { b[20] = 1; return b },
		"huge length":  func(b []byte) []byte { b[3] = 0xff; return b },
	}
	for name, mangle := range cases {
		if _, err := ParseDgramHeader(mangle(good())); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestPeekDgramAcrossTheWrap(t *testing.T) {
	var rec [DgramHeaderSize + 5]byte
	DgramHeader{Len: 5, Remote: netip.MustParseAddrPort("10.0.0.1:53")}.Put(rec[:])
	copy(rec[DgramHeaderSize:], "hello")
	hdr := make([]byte, DgramHeaderSize)
	for cut := 0; cut <= len(rec); cut++ { // the ring wraps after cut bytes
		a, b := rec[:cut], rec[cut:]
		h, err := PeekDgram(hdr, a, b)
		if err != nil || h.Len != 5 {
			t.Fatalf("wrap at %d: %+v, %v", cut, h, err)
		}
		p := make([]byte, h.Len)
		Gather(p, a, b, DgramHeaderSize)
		if string(p) != "hello" {
			t.Fatalf("wrap at %d: payload %q", cut, p)
		}
	}
	for n := 0; n < len(rec); n++ { // anything short of the whole record
		if _, err := PeekDgram(hdr, rec[:n], nil); err == nil {
			t.Fatalf("a record cut at %d bytes was accepted", n)
		}
	}
}
