//go:build dpdk

#include "hs.h"


// rte_errno is a thread-local macro that Go cannot read.
int hs_errno(void) { return rte_errno; }

int hs_eal_init(int argc, char **argv) {
	int r = rte_eal_init(argc, argv);
	return r < 0 ? -rte_errno : r;
}

// hs_port_start configures one RX and one TX queue and starts the port.
// *stage names the step that failed.
int hs_port_start(uint16_t port, struct rte_mempool *mp, uint16_t nrx, uint16_t ntx, uint16_t mtu, int *stage) {
	struct rte_eth_conf conf;
	memset(&conf, 0, sizeof conf);
	conf.rxmode.mtu = mtu;
	*stage = 0;
	int r = rte_eth_dev_configure(port, 1, 1, &conf);
	if (r < 0) return r;
	*stage = 1;
	r = rte_eth_dev_adjust_nb_rx_tx_desc(port, &nrx, &ntx);
	if (r < 0) return r;
	int socket = rte_eth_dev_socket_id(port);
	if (socket < 0) socket = SOCKET_ID_ANY;
	*stage = 2;
	r = rte_eth_rx_queue_setup(port, 0, nrx, socket, NULL, mp);
	if (r < 0) return r;
	*stage = 3;
	r = rte_eth_tx_queue_setup(port, 0, ntx, socket, NULL);
	if (r < 0) return r;
	*stage = 4;
	r = rte_eth_dev_start(port);
	if (r < 0) return r;
	// Multicast (IPv6 neighbour discovery) must reach the stack; PMDs that
	// cannot filter (af_packet, af_xdp) return -ENOTSUP, which is fine.
	(void)rte_eth_allmulticast_enable(port);
	return 0;
}

void hs_mac(uint16_t port, uint8_t *out) {
	struct rte_ether_addr a;
	memset(&a, 0, sizeof a);
	rte_eth_macaddr_get(port, &a);
	memcpy(out, a.addr_bytes, 6);
}

// hs_port_release stops, closes and removes the port's device.
int hs_port_release(uint16_t port) {
	struct rte_eth_dev_info info;
	struct rte_device *dev = NULL;
	if (rte_eth_dev_info_get(port, &info) == 0) dev = info.device;
	int r = rte_eth_dev_stop(port);
	int r2 = rte_eth_dev_close(port);
	if (r == 0) r = r2;
	if (dev != NULL) {
		r2 = rte_dev_remove(dev);
		if (r == 0) r = r2;
	}
	return r;
}

// hs_rx frees the nfree mbufs the previous call returned (Go has copied
// them), then receives a burst, one cgo call per poll.
uint16_t hs_rx(uint16_t port, struct hs_burst *b, uint16_t nfree) {
	if (nfree > 0) rte_pktmbuf_free_bulk(b->m, nfree);
	uint16_t n = rte_eth_rx_burst(port, 0, b->m, HS_BURST);
	for (uint16_t i = 0; i < n; i++) {
		struct rte_mbuf *m = b->m[i];
		b->data[i] = rte_pktmbuf_mtod(m, void *);
		b->segs[i] = m->nb_segs;
		b->len[i] = m->nb_segs == 1 ? m->data_len : m->pkt_len;
	}
	return n;
}

// hs_rx_read copies a chained (multi-segment) mbuf into dst.
int hs_rx_read(struct hs_burst *b, uint16_t i, void *dst, uint32_t len) {
	const void *p = rte_pktmbuf_read(b->m[i], 0, len, dst);
	if (p == NULL) return -1;
	if (p != dst) memcpy(dst, p, len);
	return 0;
}

// hs_tx_alloc allocates n mbufs sized b->len[i] and returns their data
// pointers in b->data; 0 when the pool is short.
uint16_t hs_tx_alloc(struct rte_mempool *mp, struct hs_burst *b, uint16_t n) {
	if (rte_pktmbuf_alloc_bulk(mp, b->m, n) != 0) return 0;
	for (uint16_t i = 0; i < n; i++) {
		struct rte_mbuf *m = b->m[i];
		m->data_len = (uint16_t)b->len[i];
		m->pkt_len = b->len[i];
		b->data[i] = rte_pktmbuf_mtod(m, void *);
	}
	return n;
}

// hs_txq_add appends the k mbufs of b (filled by Go) to the pending queue;
// the caller has made room.
void hs_txq_add(struct hs_txq *q, struct hs_burst *b, uint16_t k) {
	memcpy(&q->m[q->n], b->m, k * sizeof(b->m[0]));
	q->n += k;
}

// hs_txq_flush transmits the pending queue in bursts, retrying a full queue
// a few times, frees what could not be sent and adds its bytes to
// *dropped_bytes. It returns how many were sent and empties the queue.
uint16_t hs_txq_flush(uint16_t port, struct hs_txq *q, uint64_t *dropped_bytes) {
	uint16_t n = q->n, sent = 0;
	int idle = 0;
	while (sent < n) {
		uint16_t k = rte_eth_tx_burst(port, 0, q->m + sent, n - sent);
		sent += k;
		if (k == 0 && ++idle > 256) break;
	}
	for (uint16_t i = sent; i < n; i++) {
		*dropped_bytes += q->m[i]->pkt_len;
		rte_pktmbuf_free(q->m[i]);
	}
	q->n = 0;
	return sent;
}

uint64_t hs_missed(uint16_t port) {
	struct rte_eth_stats st;
	if (rte_eth_stats_get(port, &st) != 0) return 0;
	return st.imissed + st.rx_nombuf;
}

// hs_port_debug describes the port's counters and pool, for test logs.
int hs_port_debug(uint16_t port, struct rte_mempool *mp, char *out, int n) {
	struct rte_eth_stats st;
	memset(&st, 0, sizeof st);
	rte_eth_stats_get(port, &st);
	return snprintf(out, n, "ipackets=%lu opackets=%lu ierrors=%lu oerrors=%lu imissed=%lu rx_nombuf=%lu pool_avail=%u pool_in_use=%u",
		(unsigned long)st.ipackets, (unsigned long)st.opackets, (unsigned long)st.ierrors, (unsigned long)st.oerrors,
		(unsigned long)st.imissed, (unsigned long)st.rx_nombuf,
		rte_mempool_avail_count(mp), rte_mempool_in_use_count(mp));
}

// hs_rx_fd guesses the file descriptor of an af_packet port's RX socket:
// in DPDK 22.11 the PMD's struct pkt_rx_queue starts with it. The caller
// verifies the guess (an AF_PACKET socket bound to the right interface)
// before using it, and only ever polls it.
int hs_rx_fd(uint16_t port) {
	void **qs = rte_eth_fp_ops[port].rxq.data;
	if (qs == NULL || qs[0] == NULL) return -1;
	return *(int *)qs[0];
}

// hs_pool_create is rte_pktmbuf_pool_create with RTE_MEMPOOL_F_NO_IOVA_CONTIG:
// objects are laid out back to back even across page boundaries. Without
// hugepages the default layout starts every object that would cross a 4 KiB
// page on the next page, so objects are not evenly spaced; the af_xdp PMD
// registers the pool as its UMEM assuming they are (populated objects times
// object size from the first one), and the kernel then rejects every
// descriptor past that size as invalid (seen as ~40% of frames lost). With
// IOVA as VA (no PCI device, no hugepages) the flag costs nothing.
struct rte_mempool *hs_pool_create(const char *name, unsigned n, unsigned cache, uint16_t data_room) {
	struct rte_pktmbuf_pool_private priv;
	unsigned elt = sizeof(struct rte_mbuf) + data_room;
	struct rte_mempool *mp = rte_mempool_create_empty(name, n, elt, cache,
		sizeof(priv), SOCKET_ID_ANY, RTE_MEMPOOL_F_NO_IOVA_CONTIG);
	if (mp == NULL) return NULL;
	int r = rte_mempool_set_ops_byname(mp, rte_mbuf_best_mempool_ops(), NULL);
	if (r != 0) {
		rte_mempool_free(mp);
		rte_errno = -r;
		return NULL;
	}
	memset(&priv, 0, sizeof priv);
	priv.mbuf_data_room_size = data_room;
	priv.mbuf_priv_size = 0;
	rte_pktmbuf_pool_init(mp, &priv);
	r = rte_mempool_populate_default(mp);
	if (r < 0) {
		rte_mempool_free(mp);
		rte_errno = -r;
		return NULL;
	}
	rte_mempool_obj_iter(mp, rte_pktmbuf_init, NULL);
	return mp;
}
