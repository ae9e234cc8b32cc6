package rules

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
)

// fuzzReader hands out fuzz bytes, zeros when they run out.
type fuzzReader struct {
	b []byte
	i int
}

func (r *fuzzReader) u8() uint8 {
	if r.i >= len(r.b) {
		return 0
	}
	r.i++
	return r.b[r.i-1]
}

// addr draws an address from a small space (so rules and tuples overlap)
// with an occasional arbitrary byte.
func (r *fuzzReader) addr(v4 bool) netip.Addr {
	sel := r.u8()
	if v4 {
		b := [4]byte{10, sel & 1, sel >> 1 & 3, sel >> 3 & 7}
		if sel&0x80 != 0 {
			b[3] = r.u8()
		}
		return netip.AddrFrom4(b)
	}
	var b [16]byte
	b[0], b[7], b[8], b[15] = 0xfd, sel&1, sel>>1&3, sel>>3&7
	if sel&0x80 != 0 {
		b[15] = r.u8()
	}
	return netip.AddrFrom16(b)
}

func (r *fuzzReader) prefix(v4 bool) netip.Prefix {
	max := uint8(128)
	if v4 {
		max = 32
	}
	n := int(r.u8() % (max + 1))
	return netip.PrefixFrom(r.addr(v4), n).Masked()
}

func (r *fuzzReader) port() uint16 { return uint16(r.u8() % 4) }

// FuzzLookup builds a rule set and tuples from the fuzz input and compares
// every lookup with the brute-force reference. Layout: byte 0 = number of
// rules (mod 64), then per rule a flags byte (family, scope, proto, action,
// age) and prefix/port bytes; the rest are tuples.
func FuzzLookup(f *testing.F) {
	f.Add([]byte{3, 0, 1, 24, 2, 8, 1, 2, 0x41, 5, 32, 7, 0, 0, 1, 0x12, 9, 0, 3, 16, 2, 3})
	f.Add([]byte{8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := &fuzzReader{b: data}
		n := int(r.u8() % 64)
		rs := make([]Rule, 0, n)
		for i := range n {
			fl := r.u8()
			v4 := fl&1 == 0
			rule := Rule{
				Namespace: "f/ns",
				Scope:     Scope(1 + fl>>1&1),
				Proto:     Proto(1 + fl>>2&1),
				Action:    Action(1 + fl>>3%3),
				Local:     r.prefix(v4), LocalPort: r.port(),
				Remote: r.prefix(v4), RemotePort: r.port(),
				Name:    fmt.Sprintf("f/r%d", i),
				Created: t0.Add(time.Duration(fl>>6) * time.Second),
			}
			if rule.Action == Redirect {
				rule.RedirectApp = "app"
			}
			rs = append(rs, rule)
		}
		s, _, err := Compile(rs)
		if err != nil {
			t.Fatal(err)
		}
		for r.i < len(r.b) {
			fl := r.u8()
			v4 := fl&1 == 0
			la, ra := r.addr(v4), r.addr(v4)
			if fl&2 != 0 && v4 {
				la = netip.AddrFrom16(la.As16())
			}
			l, rm := netip.AddrPortFrom(la, r.port()), netip.AddrPortFrom(ra, r.port())
			sc, pr := Scope(1+fl>>2&1), Proto(1+fl>>3&1)
			got, ok := s.Lookup("f/ns", sc, pr, l, rm)
			want, wok := refLookup(rs, "f/ns", sc, pr, l, rm)
			if ok != wok || (ok && got.Name != want.Name) {
				t.Fatalf("%s/%s %v -> %v: got %v, want %v", sc, pr, l, rm, got, want)
			}
		}
	})
}
