// SPDX-License-Identifier: GPL-2.0

//! Mint's VNI as a Linux kernel module: an Ethernet device whose frames
//! cross an ivshmem region shared by every node of the lab.
//!
//! The module is two halves in one `vni.ko`: this Rust crate, which runs
//! the protocol (the same core the user-space driver runs, included below
//! by path, so both speak one region format), and `vni_glue.c`, the C that
//! the kernel's Rust does not offer a network driver yet: the PCI driver,
//! the net_device and its NAPI context, interrupts, a work item and a
//! timer. The glue calls the `vni_rs_*` functions below; they call back
//! the glue's helpers (`ffi`).
//!
//! Every value another node wrote is untrusted here as in user space: the
//! core validates what it reads and never panics on it (its lints deny
//! indexing, unwrap and unchecked arithmetic), and this crate never makes
//! a Rust reference into the region.

use core::ffi::{c_int, c_void, CStr};
use core::time::Duration;

use kernel::alloc::{flags::GFP_KERNEL, KBox};
// (The kernel's `char` is unsigned, as its C is built.)
use kernel::ffi::c_char;
use kernel::prelude::*;
use kernel::sync::Arc;

// The core's crate-level attributes are this crate's already, and a
// kernel module uses only part of the core.
#[allow(
    unused_attributes,
    unused_imports,
    dead_code,
    unreachable_pub,
    missing_docs
)]
#[allow(clippy::all, rustdoc::all)]
#[path = "../core/src/lib.rs"]
mod vni_core;

mod device;
mod ffi;
mod lock;
mod node;
mod platform;
mod rx;
mod stats;
mod tx;

use device::{Napi, NetDev, TxSkb, Xmit};
use ffi::{LinkStats64, SkBuff, VniPriv, VNET_HDR_LEN};
use node::{Config, Vni};
use vni_core::{MacAddr, Notification, Region, MAX_FRAME};

module! {
    type: VniModule,
    name: "vni",
    authors: ["vni-lab"],
    description: "Mint's virtual network interface: Ethernet over an ivshmem shared region",
    license: "GPL",
}

struct VniModule;

impl kernel::Module for VniModule {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        // SAFETY: registers the glue's PCI driver, once; `drop` undoes it.
        kernel::error::to_result(unsafe { ffi::vni_glue_init() })?;
        Ok(VniModule)
    }
}

impl Drop for VniModule {
    fn drop(&mut self) {
        // SAFETY: the driver was registered by `init`; unregistering
        // removes every device (their `vni_rs_free` runs) first.
        unsafe { ffi::vni_glue_exit() };
    }
}

/// The device behind the glue's pointer.
///
/// # Safety
///
/// `rs` must come from [`vni_rs_new`] and not yet be passed to
/// [`vni_rs_free`]; the glue guarantees both for its callbacks.
unsafe fn device<'a>(rs: *mut c_void) -> &'a Vni {
    // SAFETY: the caller's promise; `Vni` is `Sync` (`Vni::new` says
    // why): shared (`&`) between contexts, its mutable state behind the
    // glue's spinlock.
    unsafe { &*rs.cast::<Vni>() }
}

/// Creates the device state for the glue's `p` (at probe): checks the
/// parameters and the region's mapping. NULL, with a message, when they
/// are not usable. Attaching happens in the housekeeping work.
///
/// # Safety
///
/// `p` is the glue's device structure, alive with its spinlock until
/// [`vni_rs_free`]; `mac` points to 6 readable bytes; `notification` is a
/// NUL-terminated string; `shm` maps `shm_len` bytes of the region for as
/// long as the returned state lives.
#[no_mangle]
#[allow(private_interfaces)] // the glue's types, opaque
pub unsafe extern "C" fn vni_rs_new(
    p: *mut VniPriv,
    node: c_int,
    mac: *const u8,
    notification: *const c_char,
    busy_poll_us: u32,
    shm: *mut c_void,
    shm_len: u64,
    position: u32,
) -> *mut c_void {
    // SAFETY: the glue passes a 6-byte address it parsed.
    let mac = MacAddr(unsafe { mac.cast::<[u8; 6]>().read() });
    // SAFETY: the glue passes its module parameter, a NUL-terminated string.
    let notification = unsafe { CStr::from_char_ptr(notification) }
        .to_str()
        .ok()
        .and_then(|s| s.parse::<Notification>().ok());
    let Some(notification) = notification else {
        pr_err!("notification= must be interrupt or polling\n");
        return core::ptr::null_mut();
    };
    let (Ok(node), Ok(position)) = (usize::try_from(node), u16::try_from(position)) else {
        pr_err!(
            "node={} or the device's IVPosition {} is out of range\n",
            node,
            position
        );
        return core::ptr::null_mut();
    };
    let len = usize::try_from(shm_len).unwrap_or(0);
    // SAFETY: the glue mapped BAR2 (`shm_len` bytes at `shm`, write-back)
    // and unmaps it only after `vni_rs_free`, which drops every handle to
    // this region first; this crate never makes a reference into it.
    let region = match unsafe { Region::from_raw_parts(shm.cast(), len) } {
        Ok(region) => region,
        Err(e) => {
            pr_err!(
                "the shared region (BAR2) is not usable: {}\n",
                platform::Shown(&e)
            );
            return core::ptr::null_mut();
        }
    };
    let Ok(region) = Arc::new(region, GFP_KERNEL) else {
        return core::ptr::null_mut();
    };
    // SAFETY: `p` is the glue's device, with its spinlock, NAPI context,
    // work and timer initialized, and it outlives this state (freed by
    // `vni_rs_free` before the device).
    let Some(dev) = (unsafe { NetDev::from_raw(p) }) else {
        return core::ptr::null_mut();
    };
    let config = Config {
        node,
        mac,
        notification,
        busy_poll: Duration::from_micros(busy_poll_us.into()),
        position,
    };
    match KBox::new(Vni::new(dev, config, region), GFP_KERNEL) {
        Ok(vni) => KBox::into_raw(vni).cast(),
        Err(_) => core::ptr::null_mut(),
    }
}

/// Detaches from the region and frees the device state (when the device
/// goes away, after every callback stopped).
///
/// # Safety
///
/// `rs` came from [`vni_rs_new`], is passed here once, and no callback
/// uses it any more.
#[no_mangle]
#[allow(private_interfaces)] // the glue's types, opaque
pub unsafe extern "C" fn vni_rs_free(rs: *mut c_void) {
    // SAFETY: `rs` came from `vni_rs_new` (KBox::into_raw) and the glue
    // passes it here once, when nothing else uses it.
    let mut vni = unsafe { KBox::from_raw(rs.cast::<Vni>()) };
    vni.detach();
}

/// `ndo_start_xmit`: non-zero when the skb was not taken.
///
/// # Safety
///
/// `rs` came from [`vni_rs_new`] and [`vni_rs_free`] was not called yet
/// (the glue calls its callbacks only between the two).
/// `skb` is an skb the stack hands to this device's transmit, which the
/// stack keeps only when this returns non-zero.
#[no_mangle]
#[allow(private_interfaces)] // the glue's types, opaque
pub unsafe extern "C" fn vni_rs_xmit(rs: *mut c_void, skb: *mut SkBuff) -> c_int {
    // SAFETY: the glue's callback, between new and free.
    let vni = unsafe { device(rs) };
    // SAFETY: the stack's skb for this call: ours from here, given back
    // only with a non-zero return.
    let Some(skb) = (unsafe { TxSkb::from_raw(skb) }) else {
        return 0;
    };
    // SAFETY: this is the device's ndo_start_xmit; the token lives in it.
    let xmit = unsafe { Xmit::new(vni.dev) };
    match vni.xmit(&xmit, skb) {
        Ok(()) => 0,
        Err(skb) => {
            skb.give_back();
            1
        }
    }
}

/// The NAPI poll.
///
/// # Safety
///
/// `rs` came from [`vni_rs_new`] and [`vni_rs_free`] was not called yet
/// (the glue calls its callbacks only between the two).
#[no_mangle]
#[allow(private_interfaces)] // the glue's types, opaque
pub unsafe extern "C" fn vni_rs_poll(rs: *mut c_void, budget: c_int) -> c_int {
    // SAFETY: the glue's callback, between new and free.
    let vni = unsafe { device(rs) };
    // SAFETY: this is the device's NAPI poll; the token lives in it.
    let napi = unsafe { Napi::new(vni.dev) };
    vni.poll(napi, budget)
}

/// The housekeeping work; returns microseconds until the next round.
///
/// # Safety
///
/// `rs` came from [`vni_rs_new`] and [`vni_rs_free`] was not called yet
/// (the glue calls its callbacks only between the two).
#[no_mangle]
#[allow(private_interfaces)] // the glue's types, opaque
pub unsafe extern "C" fn vni_rs_housekeep(rs: *mut c_void) -> u32 {
    // SAFETY: the glue's callback, between new and free.
    unsafe { device(rs) }.housekeep()
}

/// `ndo_get_stats64`.
///
/// # Safety
///
/// `rs` came from [`vni_rs_new`] and [`vni_rs_free`] was not called yet
/// (the glue calls its callbacks only between the two).
/// `out` is the stack's statistics structure for this call.
#[no_mangle]
#[allow(private_interfaces)] // the glue's types, opaque
pub unsafe extern "C" fn vni_rs_link_stats(rs: *mut c_void, out: *mut LinkStats64) {
    // SAFETY: the glue's callback, between new and free.
    let vni = unsafe { device(rs) };
    let [rx_packets, rx_bytes, rx_dropped, rx_errors, tx_packets, tx_bytes, tx_dropped] = {
        let s = vni.state.lock();
        stats::link(&s.stats, s.ep.as_deref())
    };
    // SAFETY: `out` is the stack's stats structure for this call.
    unsafe {
        ffi::vni_set_link_stats(
            out, rx_packets, rx_bytes, rx_dropped, rx_errors, tx_packets, tx_bytes, tx_dropped,
        )
    };
}

/// How many statistics `ethtool -S` shows.
#[no_mangle]
pub extern "C" fn vni_rs_stat_count() -> u32 {
    stats::NAMES.len() as u32
}

/// The name of statistic `i` (NUL-terminated, static), or "".
#[no_mangle]
pub extern "C" fn vni_rs_stat_name(i: u32) -> *const c_char {
    stats::NAMES
        .get(i as usize)
        .map_or(c"".as_char_ptr(), |name| name.as_char_ptr())
}

/// The values of the first `n` statistics into `values`.
///
/// # Safety
///
/// `rs` came from [`vni_rs_new`] and [`vni_rs_free`] was not called yet
/// (the glue calls its callbacks only between the two).
/// `values` has room for `n` values.
#[no_mangle]
#[allow(private_interfaces)] // the glue's types, opaque
pub unsafe extern "C" fn vni_rs_stat_values(rs: *mut c_void, values: *mut u64, n: u32) {
    // SAFETY: the glue's callback, between new and free.
    let vni = unsafe { device(rs) };
    let all = {
        let s = vni.state.lock();
        stats::values(&vni.region, &s.stats, s.ep.as_deref())
    };
    for (i, value) in all.iter().take(n as usize).enumerate() {
        // SAFETY: ethtool passes room for `n` (our count) values.
        unsafe { values.add(i).write(*value) };
    }
}

/// The largest MTU: a largest frame less its virtio-net and Ethernet
/// (with a VLAN tag) headers.
#[no_mangle]
pub extern "C" fn vni_rs_max_mtu() -> u32 {
    (MAX_FRAME - VNET_HDR_LEN - 18) as u32
}

/// The largest segmentation-offload frame the stack may hand over.
#[no_mangle]
pub extern "C" fn vni_rs_max_gso() -> u32 {
    (MAX_FRAME - VNET_HDR_LEN) as u32
}
