package afpacket

import (
	"encoding/binary"
	"sync"

	"golang.org/x/sys/unix"
	"gvisor.dev/gvisor/pkg/rawfile"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
)

// txBatchMax is the most frames per sendmmsg(2). gVisor hands us at most
// a few dozen at a time; 64 keeps the scratch space small.
const txBatchMax = 64

// txBatch is the scratch space of one WritePackets call (calls run
// concurrently from several TCP goroutines, so it comes from a pool).
type txBatch struct {
	vnet  [txBatchMax][vnetHdrLen]byte
	msgs  [txBatchMax]rawfile.MMsgHdr
	iovs  []unix.Iovec
	first [txBatchMax]int // index in iovs of each message's first iovec
	size  [txBatchMax]int // each message's frame length
}

var txPool = sync.Pool{New: func() any { return new(txBatch) }}

// WritePackets implements stack.LinkEndpoint. Frames the kernel refuses
// (ENOBUFS from a full qdisc or peer backlog, EMSGSIZE) are dropped and
// counted, like a NIC dropping them; TCP retransmits. A full socket send
// buffer makes the caller wait instead: dropping there would only turn
// backpressure into loss.
func (e *Endpoint) WritePackets(pkts stack.PacketBufferList) (int, tcpip.Error) {
	e.fdMu.RLock()
	defer e.fdMu.RUnlock()
	if e.fd < 0 {
		return 0, &tcpip.ErrClosedForSend{}
	}
	b := txPool.Get().(*txBatch)
	defer func() {
		// Do not keep the packets' memory reachable from the pool.
		clear(b.iovs)
		clear(b.msgs[:])
		txPool.Put(b)
	}()
	all := pkts.AsSlice()
	done := 0
	for done < len(all) {
		n := min(len(all)-done, txBatchMax)
		b.build(all[done : done+n])
		sent, err := e.send(b, n)
		done += sent
		if err != nil {
			return done, err
		}
	}
	return done, nil
}

// build fills b with one message per packet: the virtio-net header, then
// the packet's views.
func (b *txBatch) build(pkts []*stack.PacketBuffer) {
	b.iovs = b.iovs[:0]
	for i, pkt := range pkts {
		putVnetHdr(b.vnet[i][:], pkt)
		b.first[i] = len(b.iovs)
		b.iovs = append(b.iovs, rawfile.IovecFromBytes(b.vnet[i][:]))
		size := 0
		for _, v := range pkt.AsSlices() {
			if len(v) == 0 {
				continue
			}
			b.iovs = append(b.iovs, rawfile.IovecFromBytes(v))
			size += len(v)
		}
		b.size[i] = size
	}
	// Point the headers at the iovecs only now: appending may have
	// moved them.
	for i := range pkts {
		end := len(b.iovs)
		if i+1 < len(pkts) {
			end = b.first[i+1]
		}
		b.msgs[i] = rawfile.MMsgHdr{}
		b.msgs[i].Msg.Iov = &b.iovs[b.first[i]]
		b.msgs[i].Msg.SetIovlen(end - b.first[i])
	}
}

// send writes b's first n messages and returns how many frames it is done
// with (sent or dropped).
func (e *Endpoint) send(b *txBatch, n int) (int, tcpip.Error) {
	i := 0
	for i < n {
		sent, errno := rawfile.NonBlockingSendMMsg(e.fd, b.msgs[i:n])
		switch errno {
		case 0:
			for k := i; k < i+sent; k++ {
				e.txBytes.Add(uint64(b.size[k]))
			}
			e.txPackets.Add(uint64(sent))
			i += sent
		case unix.EINTR:
		case unix.EAGAIN:
			if !e.waitWritable() {
				return i, &tcpip.ErrClosedForSend{}
			}
		case unix.ENOBUFS, unix.EMSGSIZE, unix.EINVAL, unix.EFAULT, unix.ENOMEM:
			// sendmmsg reports an error only for the first
			// message it could not send: drop that one.
			e.txDrops.Add(1)
			i++
		default:
			e.txDrops.Add(uint64(n - i))
			return n, tcpip.TranslateErrno(errno)
		}
	}
	return n, nil
}

// waitWritable waits until the socket has send-buffer space; false when
// the endpoint is closing.
func (e *Endpoint) waitWritable() bool {
	for !e.closing.Load() {
		fds := []unix.PollFd{{Fd: int32(e.fd), Events: unix.POLLOUT}}
		// The timeout only bounds how late we notice Close.
		if n, err := unix.Poll(fds, 20); err == nil && n > 0 {
			return true
		}
	}
	return false
}

// putVnetHdr writes the virtio-net header for an outgoing packet. gVisor
// sets GSOOptions on every TCP packet of a host-GSO endpoint: the TCP
// checksum field then holds the pseudo-header sum only and the kernel
// must finish it (NEEDS_CSUM at csum_start/csum_offset); a payload larger
// than the MSS is also to be segmented (gso_type, gso_size). Other packets
// carry complete checksums and an empty header.
func putVnetHdr(h []byte, pkt *stack.PacketBuffer) {
	clear(h)
	gso := pkt.GSOOptions
	if gso.Type == stack.GSONone {
		return
	}
	binary.LittleEndian.PutUint16(h[2:], uint16(pkt.HeaderSize())) // hdr_len
	if gso.NeedsCsum {
		h[0] = unix.VIRTIO_NET_HDR_F_NEEDS_CSUM
		start := len(pkt.LinkHeader().Slice()) + len(pkt.NetworkHeader().Slice())
		binary.LittleEndian.PutUint16(h[6:], uint16(start))
		binary.LittleEndian.PutUint16(h[8:], gso.CsumOffset)
	}
	if pkt.Data().Size() > int(gso.MSS) {
		switch gso.Type {
		case stack.GSOTCPv4:
			h[1] = unix.VIRTIO_NET_HDR_GSO_TCPV4
		case stack.GSOTCPv6:
			h[1] = unix.VIRTIO_NET_HDR_GSO_TCPV6
		default:
			// gVisor's software GSO is never requested by this
			// endpoint; send unsegmented (the kernel will refuse
			// it if too large, counted as a drop).
			return
		}
		binary.LittleEndian.PutUint16(h[4:], gso.MSS)
	}
}
