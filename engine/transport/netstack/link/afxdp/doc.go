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
// gVisor's pkg/xdp sets up the UMEM (32 MiB: 8192 frames of 4 KiB) and the
// four rings (4096 slots each) and provides the ring primitives. The kernel
// charges the UMEM to RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK;
// without it New raises the soft limit as far as it may (process-wide) and,
// where that is not enough, falls back to an 8 MiB UMEM and 1024-slot rings
// (the default limit is 8 MiB). The UMEM has
// twice as many frames as a ring has slots, so the fill ring can never hold
// every frame and transmit always finds frames once completions are reaped:
// RX and TX cannot starve each other. Every descriptor read from the RX and
// completion rings is treated as untrusted: it must lie inside the UMEM and
// inside one frame, and its frame must be one the kernel may legitimately
// hand back (a TX frame on the completion ring, a non-TX frame not already
// returned on the RX ring); anything else is counted and ignored instead of
// being freed twice or indexing out of range. A producer index more than a
// ring ahead is treated the same way.
//
// # Never stalling
//
// gVisor's own link/xdp endpoint stalled in about one bulk run in ten. In
// copy mode (all veth, most virtual NICs) the kernel transmits only inside
// sendto/poll, at most 32 frames per call (256 here on kernels that take
// XDP_MAX_TX_SKB_BUDGET), answering EAGAIN while
// descriptors remain; one kick after a larger batch leaves the rest in the
// TX ring until the next write, and if the sender is waiting for ACKs of
// exactly those segments, nothing comes. Here:
//
//   - WritePackets copies packets (cutting GSO segments) into frames and
//     publishes them on the TX ring; a kicker goroutine then calls sendto until the kernel reports the
//     ring drained (0), reaping completions on EAGAIN (a full completion ring
//     also answers EAGAIN); when the kernel stops consuming (device queue
//     full, device down) it pauses (200 µs, 10 ms) instead of spinning. It lingers briefly (yielding) for more work, then
//     sleeps on a channel; the sleep/wake hand-off re-checks the ring after
//     announcing it sleeps, so a write can never be left unkicked. A stream of
//     writes costs one sendto per ~32 frames instead of one per packet, and
//     the kernel's transmit work (for veth: the peer's whole receive path)
//     runs on another core than the stack. In zero-copy mode the kicker only
//     kicks while the driver sets XDP_RING_NEED_WAKEUP.
//   - A writer that finds no slot or frame kicks and reaps itself, then
//     backs off (20 µs doubling to 1 ms) for at most 200 ms before dropping
//     the rest; TCP retransmits.
//   - The RX goroutine refills the fill ring after every batch and before it
//     sleeps, and wakes a zero-copy driver that flags the fill ring
//     NEED_WAKEUP.
//   - When idle the RX goroutine blocks in poll(2) on the socket and an
//     eventfd instead of spinning (2 cores), after a short yield loop that
//     keeps latency low under load. poll on an AF_XDP socket re-checks the RX
//     ring after queueing the waiter, so no frame is missed.
//
// The fill and TX ring headers (producer, consumer, flags) are mapped a
// second time, because pkg/xdp keeps the flags and consumer private and its
// TXQueue.Notify kicks on every call; the TX producer is published through
// that mapping with the value TXQueue.Reserve computed.
//
// # Offloads
//
// The endpoint offers host GSO: gVisor's TCP hands WritePackets segments of
// up to 64 KiB with TCP GSO options, and WritePackets cuts each into
// MSS-sized frames right in the UMEM, as a NIC's TSO would (gso.go): every
// frame gets its own IP length, IPv4 ID and header checksum, sequence
// number, flags (FIN and PSH on the last segment only, CWR on the first
// only) and a full TCP checksum computed in software, so frames are
// complete and correct on the wire. This spares the stack a packet buffer
// and a trip through IP and the NIC per MTU frame (measured ~15% less CPU
// per byte than gVisor GSO). Otherwise there is no checksum offload:
// AF_XDP frames carry no offload metadata, so the stack computes checksums
// on transmit and verifies them on receive.
//
// # Modes
//
// Options.ZeroCopy selects the AF_XDP mode: ModeAuto lets the kernel use
// zero-copy where the driver supports it and copy mode otherwise (veth: copy),
// ModeCopy forces copy mode and ModeZeroCopy fails where zero-copy is not
// available. Endpoint.Mode reports the mode in use.
//
// A frame from a local sender whose checksum was left to offload
// (CHECKSUM_PARTIAL, e.g. a veth peer with tx checksumming on) reaches the
// socket with an incomplete checksum and is dropped by the stack, so such
// peers need `ethtool -K <dev> tx off`.
//
// # Limits
//
// One endpoint per interface: the program is attached with a bpf_link, and a
// second attach on the same device fails. Frames must fit one 4 KiB frame
// (MTU up to 3826; no multi-buffer XDP). VLAN-tagged frames, IPv4 broadcast
// and IPv6 multicast other than neighbour solicitations go to the kernel. On
// multi-queue NICs only Options.Queue is served: steer the owned addresses
// to it. Where the driver has no native XDP the program runs in generic mode,
// where GRO-merged packets larger than a frame are dropped by the kernel.
package afxdp
