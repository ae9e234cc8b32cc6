package dpdk

import (
	"errors"
	"net/netip"
)

// ErrNotBuilt is returned by New in a build without the dpdk tag.
var ErrNotBuilt = errors.New("hoststack was built without DPDK support; build with -tags dpdk and libdpdk-dev installed")

// Driver names for Options.Driver.
const (
	DriverAFPacket = "af_packet"
	DriverAFXDP    = "af_xdp"
)

// Options configure a DPDK port on a Linux interface.
type Options struct {
	// Interface is the Linux interface the PMD attaches to (the iface=
	// argument of the net_af_packet or net_af_xdp virtual device).
	Interface string
	// Netns is the path of the network namespace holding Interface
	// ("" = this process's namespace).
	Netns string
	// Addrs are the addresses the userspace stack owns on Interface. The
	// link layer does not filter on them; they are recorded for callers and
	// checked for validity.
	Addrs []netip.Prefix
	// MTU is the IP MTU the stack uses; 0 = the interface's MTU. It may not
	// exceed the interface's MTU.
	MTU uint32
	// Driver is the virtual PMD: "af_packet" (default) or "af_xdp". Both are
	// for tests and NIC-less nodes; driving a real PCI port with its own PMD
	// is future work.
	Driver string
}

// Stats are the endpoint's counters since New.
type Stats struct {
	RxPackets uint64 // frames handed to the stack
	RxBytes   uint64 // their bytes, Ethernet header included
	RxDrops   uint64 // frames dropped: filtered, runt, no stack attached, or missed by the PMD/kernel ring
	TxPackets uint64 // frames the PMD accepted
	TxBytes   uint64 // their bytes, Ethernet header included
	TxDrops   uint64 // frames dropped: no mbuf, too large, or TX queue full
}

func (o Options) driver() (string, error) {
	switch o.Driver {
	case "", DriverAFPacket:
		return DriverAFPacket, nil
	case DriverAFXDP:
		return DriverAFXDP, nil
	}
	return "", errors.New(`dpdk: unknown Driver ` + o.Driver + ` (want "af_packet" or "af_xdp")`)
}
