// SPDX-License-Identifier: GPL-2.0

//! The C glue's helpers (`vni_glue.c`, declared in `vni.h`), as Rust sees
//! them. Only plain scalars and pointers cross; the glue's structures stay
//! opaque here.

use core::ffi::c_int;

/// The glue's per-device structure (`struct vni_priv`), opaque.
#[repr(C)]
pub(crate) struct VniPriv {
    _opaque: [u8; 0],
}

/// A socket buffer (`struct sk_buff`), opaque: only the glue touches its
/// fields.
#[repr(C)]
pub(crate) struct SkBuff {
    _opaque: [u8; 0],
}

/// `struct rtnl_link_stats64`, opaque.
#[repr(C)]
pub(crate) struct LinkStats64 {
    _opaque: [u8; 0],
}

/// The virtio-net header every frame starts with (`VNI_VNET_HDR_LEN`,
/// `struct virtio_net_hdr`): the same header the user-space driver's TAP
/// reads and writes, so kernel and user-space nodes exchange frames.
pub(crate) const VNET_HDR_LEN: usize = 10;

extern "C" {
    pub(crate) fn vni_glue_init() -> c_int;
    pub(crate) fn vni_glue_exit();
    pub(crate) fn vni_lock(p: *mut VniPriv);
    pub(crate) fn vni_unlock(p: *mut VniPriv);
    pub(crate) fn vni_ring(p: *mut VniPriv, peer: u16, vector: u16);
    pub(crate) fn vni_carrier(p: *mut VniPriv, on: bool);
    pub(crate) fn vni_is_up(p: *mut VniPriv) -> bool;
    pub(crate) fn vni_queue_stop(p: *mut VniPriv);
    pub(crate) fn vni_kick_after(p: *mut VniPriv, ns: u32);
    pub(crate) fn vni_housekeeping_soon(p: *mut VniPriv);
    pub(crate) fn vni_napi_complete(p: *mut VniPriv, done: c_int) -> bool;
    pub(crate) fn vni_napi_schedule(p: *mut VniPriv);
    pub(crate) fn vni_napi_scheduled(p: *mut VniPriv) -> bool;
    pub(crate) fn vni_xmit_more() -> bool;
    pub(crate) fn vni_skb_len(skb: *const SkBuff) -> u32;
    pub(crate) fn vni_skb_vnet_hdr(skb: *const SkBuff, hdr: *mut u8) -> c_int;
    pub(crate) fn vni_skb_copy(skb: *const SkBuff, offset: u32, to: *mut u8, len: u32) -> c_int;
    pub(crate) fn vni_skb_consume(skb: *mut SkBuff);
    pub(crate) fn vni_skb_drop(skb: *mut SkBuff);
    pub(crate) fn vni_rx_alloc(p: *mut VniPriv, len: u32) -> *mut SkBuff;
    pub(crate) fn vni_rx_store(skb: *mut SkBuff, offset: u32, from: *const u8, len: u32) -> c_int;
    pub(crate) fn vni_rx_deliver(p: *mut VniPriv, skb: *mut SkBuff) -> c_int;
    pub(crate) fn vni_set_link_stats(
        s: *mut LinkStats64,
        rx_packets: u64,
        rx_bytes: u64,
        rx_dropped: u64,
        rx_errors: u64,
        tx_packets: u64,
        tx_bytes: u64,
        tx_dropped: u64,
    );
}
