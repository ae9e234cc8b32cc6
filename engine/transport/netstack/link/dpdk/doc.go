// Package dpdk is a link layer for the netstack transport: a gVisor
// stack.LinkEndpoint whose frames go in and out through a DPDK ethdev port.
//
// # Build
//
// The DPDK code is behind the build tag dpdk and uses cgo with
// `#cgo pkg-config: libdpdk` (Debian 12's libdpdk-dev, DPDK 22.11). Without
// the tag the package still compiles, needs neither cgo nor DPDK, and New
// returns ErrNotBuilt, so callers compile either way. hack/test-dpdk.sh
// installs the Debian packages and runs the tests with the tag.
//
// # Ports
//
// A port is a virtual DPDK device on a Linux interface: net_af_packet (the
// default, a TPACKET_V2 ring on a packet socket) or net_af_xdp (an AF_XDP
// socket and an XDP program on one queue), chosen by Options.Driver. These
// let a node without a DPDK-capable NIC, and the tests on a veth, run the
// DPDK data path. Taking over a real PCI port (vfio-pci binding, hugepages,
// the NIC's own PMD) is future work: the EAL runs with --no-pci.
//
// # EAL
//
// DPDK's Environment Abstraction Layer can be initialised once per process
// and never again, not even after rte_eal_cleanup. The first New initialises
// it with --no-huge -m 512 --no-pci --in-memory --no-telemetry and a
// file prefix unique to the process (hoststack-<pid>), and without any
// device; every New then adds its own device with rte_dev_probe (hotplug)
// and every Close removes it with rte_dev_remove, so ports come and go
// while the EAL stays. An EAL that failed to start fails every later New
// with the same error. Other DPDK users in the same process must share this
// EAL; a second rte_eal_init would fail.
//
// The EAL is started on a locked OS thread that is thrown away afterwards:
// rte_eal_init makes its calling thread lcore 0 (its mempool cache and
// per-lcore state belong to that thread) and sets that thread's CPU
// affinity, and neither must leak into Go's scheduler, which would run
// arbitrary goroutines on it. lcore 0 is given every CPU the process may
// use (--lcores=0@(...)), so the control threads the EAL spawns (the
// interrupt thread) are not pinned either.
//
// # Network namespaces
//
// Options.Netns names the namespace that holds Options.Interface. The
// af_packet PMD opens and binds its packet socket when the device is probed,
// the af_xdp PMD creates its AF_XDP socket and attaches its XDP program when
// the queues are set up, and both do interface ioctls (flags, MTU, link
// state) in whatever namespace the calling thread is in. So probing,
// configuring, starting, stopping, closing and removing the port all run
// through engine/netns.Do on a thread inside Options.Netns. The EAL itself
// holds no sockets (no telemetry, no multi-process channel with
// --in-memory), so it is started in the process's own namespace and serves
// ports in any number of namespaces; the threads it spawns never touch the
// network. The data path needs no namespace: bursts only read and write
// the rings and send on file descriptors that already exist.
//
// # Threads and the data path
//
// Each port has one RX queue and one TX queue.
//
// RX runs on a goroutine locked to its OS thread (runtime.LockOSThread),
// registered with DPDK as a non-EAL lcore (rte_thread_register) so that its
// mempool operations use a per-lcore cache. It polls rte_eth_rx_burst; these
// virtual PMDs have no RX interrupts, so when the queue stays empty it spins
// a little (longer right after a transmit, when a reply is due), then
// sleeps with growing nanosleeps (timer slack 1 µs, up to 200 µs), the
// compromise a poll-mode driver has to make on a two-core node. Received
// frames are filtered (our MAC, broadcast and multicast in; our own
// outgoing frames, which a packet socket also sees, out) and handed to the
// stack on that thread.
//
// TX runs in the goroutine that calls WritePackets, under a mutex that
// serialises the one TX queue. gVisor transmits synchronously from its own
// goroutines; handing packets to the polling thread would add a cross-thread
// wake-up per batch (or a second spinning thread), and the af_packet and
// af_xdp PMDs kick the kernel with a syscall inside rte_eth_tx_burst anyway.
//
// # Copies
//
// Each direction copies a frame exactly once in this package. RX: the
// bytes in the mbuf are copied straight into a gVisor buffer chunk
// (buffer.MakeWithData), and the mbuf goes back to the pool in the next
// burst call; gVisor's PacketBuffer cannot hold foreign memory with a
// release callback, so wrapping the mbuf is not possible. TX: the slices of
// the PacketBuffer (headers and payload views, no flattening first) are
// copied straight into the data room of a freshly allocated mbuf. The PMDs
// add their own copy (af_packet: mbuf to and from the TPACKET ring; af_xdp in
// copy mode: the kernel copies into UMEM). Going further needs mbufs with
// external buffers pinned in Go memory on TX, whose lifetime the PMD
// controls (af_xdp frees them on completion), and is not done.
//
// Frames are at most MTU+14 bytes: these PMDs have no TSO/GSO and no
// checksum offload, so gVisor segments and checksums in software, and the
// peer must not send partially checksummed frames (on a veth, turn TX
// checksum offload off on the peer: ethtool -K <peer> tx off).
package dpdk
