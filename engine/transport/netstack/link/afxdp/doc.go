// Package afxdp is an AF_XDP link layer for the netstack transport: a gVisor
// stack.LinkEndpoint that moves Ethernet frames between a userspace TCP/IP
// stack and one RX queue of a Linux interface, without cgo.
//
// # Steering
//
// The userspace stack owns addresses the kernel does not have (Options.Addrs).
// An XDP program, assembled in Go with cilium/ebpf's asm package and attached
// with a bpf_link (link.AttachXDP), redirects to the AF_XDP socket only:
//
//   - IPv4 packets whose destination is an owned IPv4 address,
//   - ARP (Ethernet/IPv4) whose target protocol address is owned,
//   - IPv6 packets whose destination is an owned IPv6 address,
//   - IPv6 neighbour solicitations sent to a solicited-node multicast group
//     whose target is an owned address,
//
// and returns XDP_PASS for everything else, so the kernel keeps its own
// traffic, its own ARP and its own neighbour discovery. The program looks the
// addresses up in two hash maps and redirects with bpf_redirect_map on an
// XSKMAP keyed by RX queue, with XDP_PASS as the fallback action, so frames of
// a queue without a socket still reach the kernel. Because the program hangs
// off a bpf_link owned by this process, it is detached when the link is closed
// and also when the process dies: a crashed engine never leaves a program
// black-holing traffic.
//
// # Rings and frames
//
// gVisor's pkg/xdp sets up the UMEM and the four rings and provides the ring
// primitives. The UMEM has twice as many frames as any ring has slots, so the
// fill ring can never hold every frame and transmit always finds frames once
// completions are reaped: RX and TX cannot starve each other. Every
// descriptor read from the RX and completion rings is treated as untrusted:
// it must lie inside the UMEM and inside one frame, and its frame must be one
// the kernel may legitimately hand back (a TX frame on the completion ring,
// a non-TX frame not already returned on the RX ring); anything else is
// counted and ignored instead of being freed twice or indexing out of range.
//
// # Never stalling
//
// gVisor's own link/xdp endpoint stalled in about one bulk run in ten. The
// causes this package avoids:
//
//   - In copy mode the kernel transmits only inside sendto/poll, and at most
//     a small batch (32 frames) per call, answering EAGAIN while descriptors
//     remain. A single kick after a large batch leaves the rest in the TX ring
//     until the next write; if no write comes (the sender waits for ACKs of
//     exactly those segments) the connection stalls. WritePackets therefore
//     kicks until the kernel reports the ring drained, reaping completions in
//     between, and if it cannot drain it hands the rest to the I/O goroutine,
//     which keeps kicking.
//   - The fill ring is refilled after every RX batch, and when the driver asks
//     for a wake-up (XDP_RING_NEED_WAKEUP on the fill ring) it gets one.
//   - When idle the I/O goroutine blocks in poll(2) on the socket and an
//     eventfd instead of spinning (2 cores), after a short yield loop that
//     keeps latency low under load. poll on an AF_XDP socket is race-free
//     against the RX ring (it re-checks the ring after queueing the waiter).
//
// The ring headers (producer, consumer, flags) of the fill and TX rings are
// mapped a second time, read-only, because pkg/xdp does not expose the flags
// and consumer this logic needs.
//
// # Modes
//
// Options.ZeroCopy selects the AF_XDP mode: ModeAuto lets the kernel use
// zero-copy where the driver supports it and copy mode otherwise (veth: copy),
// ModeCopy forces copy mode and ModeZeroCopy fails where zero-copy is not
// available. Endpoint.Mode reports the mode in use.
//
// Checksums are computed by the userspace stack on transmit and verified on
// receive: a frame coming from a local sender whose checksum was left to
// offload (CHECKSUM_PARTIAL, e.g. a veth peer with tx checksumming on) reaches
// the socket with an incomplete checksum and is dropped by the stack, so such
// peers need `ethtool -K <dev> tx off`.
package afxdp
