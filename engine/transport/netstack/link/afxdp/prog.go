package afxdp

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// XDP action codes (include/uapi/linux/bpf.h).
const (
	xdpPass = 2
)

// Offsets into an Ethernet frame without VLAN tags.
const (
	ethLen       = 14
	offEtherType = 12
	// IPv4: destination address.
	offIPv4Dst = ethLen + 16
	// ARP (Ethernet/IPv4): hardware type, protocol type, lengths, target
	// protocol address.
	offARPHType = ethLen + 0
	offARPHLen  = ethLen + 4
	offARPTPA   = ethLen + 24
	arpLen      = 28
	// IPv6: next header, destination address, and after the fixed header
	// the ICMPv6 type and the neighbour solicitation's target.
	offIPv6Next  = ethLen + 6
	offIPv6Dst   = ethLen + 24
	ipv6Len      = 40
	offICMP6Type = ethLen + ipv6Len
	offNSTarget  = offICMP6Type + 8
	nsLen        = 24
)

// be16/be32/be64 give the value a native-endian load of the given
// network-order bytes yields, so comparisons in the program need no byte
// swapping at run time.
func be16(b ...byte) int32 { return int32(binary.NativeEndian.Uint16(b)) }
func be32(b ...byte) int32 { return int32(binary.NativeEndian.Uint32(b)) }
func be64(b ...byte) int64 { return int64(binary.NativeEndian.Uint64(b)) }

// steering holds the XDP program and its maps.
type steering struct {
	xsks   *ebpf.Map // XSKMAP: RX queue -> AF_XDP socket
	addrs4 *ebpf.Map // owned IPv4 addresses (4-byte keys, network order)
	addrs6 *ebpf.Map // owned IPv6 addresses (16-byte keys)
	prog   *ebpf.Program
}

// maxAddrs bounds each address map; a node interface carries a handful.
const maxAddrs = 256

func newSteering(queue uint32, addrs []netip.Prefix) (st *steering, err error) {
	st = &steering{}
	defer func() {
		if err != nil {
			st.close()
		}
	}()
	if st.xsks, err = ebpf.NewMap(&ebpf.MapSpec{Name: "hs_xsks", Type: ebpf.XSKMap, KeySize: 4, ValueSize: 4, MaxEntries: queue + 1}); err != nil {
		return nil, fmt.Errorf("xskmap: %w", err)
	}
	if st.addrs4, err = ebpf.NewMap(&ebpf.MapSpec{Name: "hs_addrs4", Type: ebpf.Hash, KeySize: 4, ValueSize: 1, MaxEntries: maxAddrs}); err != nil {
		return nil, fmt.Errorf("ipv4 address map: %w", err)
	}
	if st.addrs6, err = ebpf.NewMap(&ebpf.MapSpec{Name: "hs_addrs6", Type: ebpf.Hash, KeySize: 16, ValueSize: 1, MaxEntries: maxAddrs}); err != nil {
		return nil, fmt.Errorf("ipv6 address map: %w", err)
	}
	for _, p := range addrs {
		a := p.Addr().Unmap()
		var m *ebpf.Map
		switch {
		case a.Is4():
			m = st.addrs4
		case a.Is6():
			m = st.addrs6
		default:
			return nil, fmt.Errorf("invalid address %v", p)
		}
		if err := m.Put(a.AsSlice(), uint8(1)); err != nil {
			return nil, fmt.Errorf("adding %v to the address map: %w", a, err)
		}
	}
	st.prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "hs_afxdp",
		Type:         ebpf.XDP,
		License:      "Dual MIT/GPL",
		Instructions: program(st.xsks.FD(), st.addrs4.FD(), st.addrs6.FD()),
	})
	if err != nil {
		return nil, fmt.Errorf("loading the XDP program: %w", err)
	}
	return st, nil
}

func (st *steering) close() {
	if st.prog != nil {
		st.prog.Close()
	}
	for _, m := range []*ebpf.Map{st.xsks, st.addrs4, st.addrs6} {
		if m != nil {
			m.Close()
		}
	}
}

// labelled puts a jump label on the first instruction of in.
func labelled(name string, in asm.Instructions) asm.Instructions {
	in[0] = in[0].WithSymbol(name)
	return in
}

// program assembles the steering program. Registers: R6 the xdp_md context,
// R7 the frame start, R8 the frame end (both kept across helper calls, which
// clobber R1-R5). Every load from the frame is preceded by a bounds check the
// verifier can see, and map keys point straight into the frame.
func program(xsks, addrs4, addrs6 int) asm.Instructions {
	// need jumps to "pass" unless the frame holds at least n bytes.
	need := func(n int32) asm.Instructions {
		return asm.Instructions{
			asm.Mov.Reg(asm.R2, asm.R7),
			asm.Add.Imm(asm.R2, n),
			asm.JGT.Reg(asm.R2, asm.R8, "pass"),
		}
	}
	// keyAt points R2 at the frame offset off.
	keyAt := func(off int32) asm.Instructions {
		return asm.Instructions{
			asm.Mov.Reg(asm.R2, asm.R7),
			asm.Add.Imm(asm.R2, off),
		}
	}
	var p asm.Instructions
	add := func(in ...asm.Instruction) { p = append(p, in...) }
	addAll := func(in asm.Instructions) { p = append(p, in...) }

	add(
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R7, asm.R6, 0, asm.Word), // xdp_md.data
		asm.LoadMem(asm.R8, asm.R6, 4, asm.Word), // xdp_md.data_end
	)
	addAll(need(ethLen))
	add(
		asm.LoadMem(asm.R2, asm.R7, offEtherType, asm.Half),
		asm.JEq.Imm(asm.R2, be16(0x08, 0x00), "ipv4"),
		asm.JEq.Imm(asm.R2, be16(0x86, 0xdd), "ipv6"),
		asm.JEq.Imm(asm.R2, be16(0x08, 0x06), "arp"),
		asm.Ja.Label("pass"),
	)

	// IPv4: destination owned?
	addAll(labelled("ipv4", need(offIPv4Dst+4)))
	addAll(keyAt(offIPv4Dst))
	add(asm.Ja.Label("lookup4"))

	// ARP for Ethernet/IPv4 whose target protocol address is owned.
	addAll(labelled("arp", need(ethLen+arpLen)))
	add(
		asm.LoadMem(asm.R2, asm.R7, offARPHType, asm.Word),
		asm.JNE.Imm32(asm.R2, be32(0x00, 0x01, 0x08, 0x00), "pass"),
		asm.LoadMem(asm.R2, asm.R7, offARPHLen, asm.Half),
		asm.JNE.Imm(asm.R2, be16(6, 4), "pass"),
	)
	addAll(keyAt(offARPTPA))

	add(
		asm.LoadMapPtr(asm.R1, addrs4).WithSymbol("lookup4"),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.Ja.Label("redirect"),
	)

	// IPv6: destination owned?
	addAll(labelled("ipv6", need(offIPv6Dst+16)))
	addAll(keyAt(offIPv6Dst))
	add(
		asm.LoadMapPtr(asm.R1, addrs6),
		asm.FnMapLookupElem.Call(),
		asm.JNE.Imm(asm.R0, 0, "redirect"),
	)
	// Neighbour solicitation (ICMPv6 135 right after the fixed header, as
	// RFC 4861 senders emit it) to a solicited-node group ff02::1:ffXX:XXXX,
	// whose target is owned.
	addAll(need(offNSTarget + 16))
	add(
		asm.LoadMem(asm.R2, asm.R7, offIPv6Next, asm.Byte),
		asm.JNE.Imm(asm.R2, 58, "pass"),
		asm.LoadMem(asm.R2, asm.R7, offICMP6Type, asm.Byte),
		asm.JNE.Imm(asm.R2, 135, "pass"),
		asm.LoadMem(asm.R2, asm.R7, offIPv6Dst, asm.DWord),
		asm.LoadImm(asm.R3, be64(0xff, 0x02, 0, 0, 0, 0, 0, 0), asm.DWord),
		asm.JNE.Reg(asm.R2, asm.R3, "pass"),
		asm.LoadMem(asm.R2, asm.R7, offIPv6Dst+8, asm.Word),
		asm.JNE.Imm32(asm.R2, be32(0, 0, 0, 1), "pass"),
		asm.LoadMem(asm.R2, asm.R7, offIPv6Dst+12, asm.Byte),
		asm.JNE.Imm(asm.R2, 0xff, "pass"),
	)
	addAll(keyAt(offNSTarget))
	add(
		asm.LoadMapPtr(asm.R1, addrs6),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
	)

	// Redirect to the socket of this RX queue; without one, XDP_PASS.
	add(
		asm.LoadMapPtr(asm.R1, xsks).WithSymbol("redirect"),
		asm.LoadMem(asm.R2, asm.R6, 16, asm.Word), // xdp_md.rx_queue_index
		asm.Mov.Imm(asm.R3, xdpPass),
		asm.FnRedirectMap.Call(),
		asm.Return(),

		asm.Mov.Imm(asm.R0, xdpPass).WithSymbol("pass"),
		asm.Return(),
	)
	return p
}
