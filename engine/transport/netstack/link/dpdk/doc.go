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
// The mbuf pool is laid out back to back (RTE_MEMPOOL_F_NO_IOVA_CONTIG)
// rather than as rte_pktmbuf_pool_create would without hugepages (no object
// across a 4 KiB page, so unevenly spaced): the af_xdp PMD registers the
// pool as its UMEM assuming even spacing, and with the default layout the
// kernel rejected ~40% of transmitted descriptors as invalid.
//
// # EAL
//
// DPDK's Environment Abstraction Layer can be initialised once per process
// and never again, not even after rte_eal_cleanup. The first New initialises
// it with --no-huge -m 512 --no-pci --no-shconf --no-telemetry, a file
// prefix unique to the process (hoststack-<pid>) and no device; every New
// then adds its own device with rte_dev_probe (hotplug) and every Close
// removes it with rte_dev_remove, so ports come and go while the EAL stays.
// An EAL that failed to start fails every later New with the same error.
// Other DPDK users in the same process must share this EAL; a second
// rte_eal_init would fail. (--in-memory, which implies --no-shconf, is
// rejected by DPDK 22.11 together with --no-huge: no-huge implies legacy
// memory, which in-memory refuses. --no-shconf is what it would have added:
// no runtime files, no multi-process socket.)
//
// The EAL is started on a locked OS thread that is thrown away afterwards:
// rte_eal_init makes its calling thread lcore 0 (its mempool cache and
// per-lcore state belong to that thread) and sets that thread's CPU
// affinity, and neither must leak into Go's scheduler, which would run
// arbitrary goroutines on it. lcore 0 is given every CPU the process may
// use (--lcores=0@(...)), so the control threads the EAL spawns (the
// interrupt thread) are not pinned either. The -m 512 heap is reserved,
// not touched. Measured resident cost: ~27 MB for the EAL (Debian's EAL
// loads every PMD plugin in its driver directory) and ~50 MB per port (the
// mbuf pool ~20 MB, the af_packet PMD's RX and TX rings 8 MB each); a
// closed port's pool memory stays in DPDK's heap for the next port.
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
// holds no sockets (no telemetry, no multi-process channel), so it is
// started in the process's own namespace and serves ports in any number of
// namespaces; the threads it spawns never touch the network. The tests
// verify this: their interface exists only inside the namespace, and the
// same New without Netns fails to find it. The data path needs no
// namespace: bursts only read and write the rings and send on file
// descriptors that already exist.
//
// # Threads and the data path
//
// Each port has one RX queue and one TX queue, and one RX thread: a
// goroutine locked to its OS thread (runtime.LockOSThread) from the first
// Attach until Close, registered with DPDK as a non-EAL lcore
// (rte_thread_register) so that its mempool operations use a per-lcore
// cache. It polls rte_eth_rx_burst and hands received frames to the stack
// on that thread, after filtering (our MAC, broadcast and multicast in; our
// own and the kernel's outgoing frames, which a packet socket also sees
// and which carry our MAC as source, out). It polls without pause while
// bursts keep coming; these virtual PMDs have no RX interrupts, so when the
// queue is empty, for af_packet it blocks in poll(2) on the PMD's packet
// socket (the kernel wakes it when a frame lands in the ring) and on an
// eventfd that stops it, and for af_xdp it sleeps in growing nanosleeps
// (timer slack 1 µs, 5 to 200 µs). It does not spin on an empty queue: on
// two cores spinning took the CPU the stack's goroutines needed (see
// spinWindow). The packet socket's descriptor is not in DPDK's API: it is
// read from the PMD's RX queue (DPDK 22.11 keeps it as the first field) and
// used only after checking that it is an AF_PACKET socket bound to our
// interface; otherwise the thread sleeps as for af_xdp. The same socket
// carries the TX ring, and its send buffer is raised to the ring's size:
// a sent frame stays charged to it until the receiver frees the skb, and
// the default buffer (~200 KB) made the kernel refuse frames long before
// the ring was full.
//
// Attach(nil) and Wait do not wait for the RX thread, because gVisor calls
// them with the stack's lock held and a delivery in progress may need that
// lock (a reset for a closed endpoint looks up a route); Close, which gVisor
// calls after releasing the lock, stops the thread and waits for it.
//
// TX runs in the goroutines that call WritePackets: each packet is copied
// into an mbuf and queued under a mutex. While the RX thread is busy
// (bursts are arriving), the queue is handed to the PMD when 32 frames are
// waiting or the oldest has waited 10 µs, by whichever of the writer or the
// RX thread notices first; when the RX thread is blocked, asleep or not
// running, the writer hands it over at once. The point is the PMD's
// per-burst cost: the af_packet PMD kicks the kernel with one sendto per rte_eth_tx_burst, and
// on a veth here a frame sent alone costs 8.8 µs against 3.3 µs in bursts of
// 32. Handing every transmit to the RX thread instead would add a wake-up
// per packet whenever that thread is blocked.
//
// # Copies
//
// Each direction copies a frame exactly once in this package. RX: the
// bytes in the mbuf are copied straight into a gVisor buffer chunk
// (buffer.MakeWithData), and the mbuf goes back to the pool in the next
// burst call (a chained mbuf, which a frame larger than one mbuf would
// need and which these PMDs do not produce at our sizes, is gathered into
// Go memory first); gVisor's PacketBuffer cannot hold foreign memory with a
// release callback, so wrapping the mbuf is not possible. TX: the slices of
// the PacketBuffer (headers and payload views, no flattening first) are
// copied straight into the data room of a freshly allocated mbuf. The PMDs
// add their own copy (af_packet: mbuf to and from the TPACKET ring; af_xdp in
// copy mode: the kernel copies into UMEM). Going further needs mbufs with
// external buffers pinned in Go memory on TX, whose lifetime the PMD
// controls (af_xdp frees them on completion), and is not done.
//
// # Sharp edges
//
//   - Close has no error result, because stack.LinkEndpoint's Close has
//     none; Shutdown is the same operation returning the error.
//   - The stack shares the interface and its MAC with the kernel. With
//     af_packet the kernel also receives every frame for the stack's
//     addresses; it drops them unless IP forwarding is on in that
//     namespace, in which case it forwards them too. With af_xdp the XDP
//     program takes every frame of the queue, so the kernel's own traffic
//     on that interface stops.
//   - The af_packet PMD's rte_eth_tx_burst blocks in poll(2), without a
//     timeout, when its next TX frame is still owned by the kernel; that
//     happens only once the 4096-frame TX ring is full, and it holds the
//     endpoint's TX lock while it waits.
//   - With af_xdp, libbpf and libxdp print notices to stderr when the PMD
//     loads its XDP program (no bpffs, no dispatcher): harmless.
//   - Debian's EAL loads every PMD in its plugin directory (~130 shared
//     objects) at startup; the first New takes a fraction of a second
//     longer for it.
//
// Frames are at most MTU+14 bytes: these PMDs have no TSO/GSO and no
// checksum offload, so gVisor segments and checksums in software, and the
// peer must not send partially checksummed frames (on a veth, turn TX
// checksum offload off on the peer: ethtool -K <peer> tx off).
package dpdk
