/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The interface between the two halves of the VNI module: the C glue
 * (vni_glue.c) and the Rust driver (vni_main.rs, whose `ffi` module
 * declares the same functions). Plain scalars and pointers only: no
 * structure is laid out on both sides.
 */
#ifndef VNI_H
#define VNI_H

#include <linux/types.h>

struct vni_priv;
struct sk_buff;
struct rtnl_link_stats64;

/* The virtio-net header every frame starts with (struct virtio_net_hdr). */
#define VNI_VNET_HDR_LEN 10

/* Implemented in Rust. */
void *vni_rs_new(struct vni_priv *p, int node, const u8 *mac, const char *notification,
		 u32 busy_poll_us, void *shm, u64 shm_len, u32 position);
void vni_rs_free(void *rs);
/* Non-zero: the frame was not taken (queue stopped), NETDEV_TX_BUSY. */
int vni_rs_xmit(void *rs, struct sk_buff *skb);
int vni_rs_poll(void *rs, int budget);
/* Returns the delay until the next round, microseconds. */
u32 vni_rs_housekeep(void *rs);
void vni_rs_link_stats(void *rs, struct rtnl_link_stats64 *s);
u32 vni_rs_stat_count(void);
const char *vni_rs_stat_name(u32 i);
void vni_rs_stat_values(void *rs, u64 *values, u32 n);
u32 vni_rs_max_mtu(void);
u32 vni_rs_max_gso(void);

/* Implemented in C, called from Rust. */
int vni_glue_init(void);
void vni_glue_exit(void);
void vni_lock(struct vni_priv *p);
void vni_unlock(struct vni_priv *p);
void vni_ring(struct vni_priv *p, u16 peer, u16 vector);
void vni_carrier(struct vni_priv *p, bool on);
bool vni_is_up(struct vni_priv *p);
void vni_queue_stop(struct vni_priv *p);
void vni_kick_after(struct vni_priv *p, u32 ns);
void vni_housekeeping_soon(struct vni_priv *p);
bool vni_napi_complete(struct vni_priv *p, int done);
void vni_napi_schedule(struct vni_priv *p);
/* Whether a NAPI poll is scheduled or running. */
bool vni_napi_scheduled(struct vni_priv *p);
bool vni_xmit_more(void);
u32 vni_skb_len(const struct sk_buff *skb);
int vni_skb_vnet_hdr(const struct sk_buff *skb, u8 *hdr);
int vni_skb_copy(const struct sk_buff *skb, u32 offset, void *to, u32 len);
void vni_skb_consume(struct sk_buff *skb);
void vni_skb_drop(struct sk_buff *skb);
/* An skb of `len` bytes (linear, or a head and pages), to fill with
 * vni_rx_store; NULL when memory is short. */
struct sk_buff *vni_rx_alloc(struct vni_priv *p, u32 len);
/* Copies `len` bytes from `from` to `offset` of the skb; non-zero when the
 * range is not inside it. */
int vni_rx_store(struct sk_buff *skb, u32 offset, const void *from, u32 len);
/* Consumes the skb; non-zero: dropped (a bad header). */
int vni_rx_deliver(struct vni_priv *p, struct sk_buff *skb);
void vni_set_link_stats(struct rtnl_link_stats64 *s, u64 rx_packets, u64 rx_bytes,
			u64 rx_dropped, u64 rx_errors, u64 tx_packets, u64 tx_bytes,
			u64 tx_dropped);

#endif
