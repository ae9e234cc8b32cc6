// C side of the dpdk link layer: small wrappers so that each burst is one
// cgo call and Go never needs DPDK's inline functions or mbuf layout.
#ifndef HS_DPDK_H
#define HS_DPDK_H
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_dev.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_mbuf_pool_ops.h>

// HS_BURST is the most frames one RX or TX burst call moves.
#define HS_BURST 64

// hs_burst is a burst's worth of mbufs with their data pointers and lengths,
// kept in C memory so that Go can fill and read it without cgo pointer checks.
struct hs_burst {
	struct rte_mbuf *m[HS_BURST];
	void *data[HS_BURST];
	uint32_t len[HS_BURST];
	uint16_t segs[HS_BURST];
};

// HS_TXQ is the most frames waiting to be flushed in one TX burst series.
#define HS_TXQ 256

// hs_txq holds filled mbufs not yet handed to the PMD: transmits are
// coalesced so that the PMD's per-burst kick (a sendto for af_packet)
// covers many frames.
struct hs_txq {
	uint16_t n;
	struct rte_mbuf *m[HS_TXQ];
};

int hs_errno(void);
int hs_eal_init(int argc, char **argv);
int hs_port_start(uint16_t port, struct rte_mempool *mp, uint16_t nrx, uint16_t ntx, uint16_t mtu, int *stage);
void hs_mac(uint16_t port, uint8_t *out);
int hs_port_release(uint16_t port);
uint16_t hs_rx(uint16_t port, struct hs_burst *b, uint16_t nfree);
int hs_rx_read(struct hs_burst *b, uint16_t i, void *dst, uint32_t len);
uint16_t hs_tx_alloc(struct rte_mempool *mp, struct hs_burst *b, uint16_t n);
void hs_txq_add(struct hs_txq *q, struct hs_burst *b, uint16_t k);
uint16_t hs_txq_flush(uint16_t port, struct hs_txq *q, uint64_t *dropped_bytes);
uint64_t hs_missed(uint16_t port);
int hs_rx_fd(uint16_t port);
struct rte_mempool *hs_pool_create(const char *name, unsigned n, unsigned cache, uint16_t data_room);
int hs_port_debug(uint16_t port, struct rte_mempool *mp, char *out, int n);

#endif
