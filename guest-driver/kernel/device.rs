// SPDX-License-Identifier: GPL-2.0

//! The driver's safe boundary: every raw pointer the C glue hands over,
//! behind a few types, so that the driver's logic (`node.rs`, `rx.rs`,
//! `tx.rs`) is safe Rust, as in the kernel's in-tree Rust drivers.
//!
//! - [`NetDev`]: the glue's device, for what any context may do with it
//!   (ring a peer, the carrier, the kick timer, housekeeping, NAPI
//!   scheduling, the spinlock).
//! - [`Napi`] and [`Xmit`]: proof of being inside the NAPI poll or
//!   `ndo_start_xmit`, for what only those contexts may do (allocate and
//!   deliver received skbs, complete NAPI; `xmit_more`, stop the queue).
//!   Only the glue's callbacks in `vni_main.rs` make them.
//! - [`TxSkb`] and [`RxSkb`]: owned socket buffers, freed when dropped, so
//!   no path leaks or double-frees one.
//!
//! The copies between skbs and the region are here too: their pointers
//! into the region come only from the core's [`DirectSlots`] and
//! [`RxFrame`], which hand out validated ranges of the mapping, and no
//! Rust reference is made to them.

use core::ffi::c_int;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};

use crate::ffi::{self, SkBuff, VniPriv, VNET_HDR_LEN};
use crate::vni_core::{DirectSlots, RxFrame};

/// The glue's device (`struct vni_priv`): its net_device, NAPI context,
/// doorbell register, kick timer, housekeeping work and spinlock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NetDev(NonNull<VniPriv>);

// SAFETY: a `NetDev` is only an address; every method calls a glue helper
// that the kernel allows from any context and on any CPU (each says which
// kernel function it wraps), and the structure lives as long as the
// handle (the promise of `from_raw`).
unsafe impl Send for NetDev {}

// SAFETY: as for `Send`: the methods take `&self` and the helpers they
// call do their own synchronization (atomic bit operations, the
// workqueue's and the hrtimer's locks, the spinlock itself).
unsafe impl Sync for NetDev {}

impl NetDev {
    /// The glue's device at `p`; `None` for NULL.
    ///
    /// # Safety
    ///
    /// `p` must be the glue's device structure, with its spinlock, NAPI
    /// context, work and timer initialized, alive for as long as the
    /// returned handle or any copy of it.
    pub(crate) unsafe fn from_raw(p: *mut VniPriv) -> Option<Self> {
        NonNull::new(p).map(NetDev)
    }

    fn raw(self) -> *mut VniPriv {
        self.0.as_ptr()
    }

    /// Rings `peer`'s `vector` (a write to the ivshmem doorbell register).
    pub(crate) fn ring(self, peer: u16, vector: u16) {
        // SAFETY: `self` is alive (`from_raw`); iowrite32, any context.
        unsafe { ffi::vni_ring(self.raw(), peer, vector) }
    }

    /// Turns the carrier on or off (`netif_carrier_on`/`_off`: any
    /// context; the link watcher tells the stack later).
    pub(crate) fn carrier(self, on: bool) {
        // SAFETY: `self` is alive; any context.
        unsafe { ffi::vni_carrier(self.raw(), on) }
    }

    /// Whether the interface is up (`netif_running`).
    pub(crate) fn is_up(self) -> bool {
        // SAFETY: `self` is alive; a bit test, any context.
        unsafe { ffi::vni_is_up(self.raw()) }
    }

    /// Arms the kick timer (unless armed, or the device goes away): it
    /// wakes a stopped queue and schedules NAPI after `ns`.
    pub(crate) fn kick_after(self, ns: u32) {
        // SAFETY: `self` is alive; hrtimer_start, any context.
        unsafe { ffi::vni_kick_after(self.raw(), ns) }
    }

    /// Runs the housekeeping work now (unless the device goes away).
    pub(crate) fn housekeeping_soon(self) {
        // SAFETY: `self` is alive; mod_delayed_work, any context.
        unsafe { ffi::vni_housekeeping_soon(self.raw()) }
    }

    /// Schedules a NAPI poll (none while NAPI is disabled).
    pub(crate) fn napi_schedule(self) {
        // SAFETY: `self` is alive; napi_schedule, any context.
        unsafe { ffi::vni_napi_schedule(self.raw()) }
    }

    /// Whether a NAPI poll is scheduled or running.
    pub(crate) fn napi_scheduled(self) -> bool {
        // SAFETY: `self` is alive; a bit test, any context.
        unsafe { ffi::vni_napi_scheduled(self.raw()) }
    }

    /// Takes the glue's spinlock, bottom halves off.
    ///
    /// # Safety
    ///
    /// The caller releases it with [`NetDev::unlock`], once, in the same
    /// context.
    pub(crate) unsafe fn lock(self) {
        // SAFETY: `self` is alive; spin_lock_bh, the caller's promise.
        unsafe { ffi::vni_lock(self.raw()) }
    }

    /// Releases the glue's spinlock.
    ///
    /// # Safety
    ///
    /// The caller took it with [`NetDev::lock`] and has not released it.
    pub(crate) unsafe fn unlock(self) {
        // SAFETY: `self` is alive; spin_unlock_bh, the caller's promise.
        unsafe { ffi::vni_unlock(self.raw()) }
    }
}

/// Inside this device's NAPI poll, for the poll's duration: what only the
/// poll may do.
pub(crate) struct Napi<'a> {
    dev: NetDev,
    _poll: PhantomData<&'a ()>,
}

impl Napi<'_> {
    /// The poll of `dev`.
    ///
    /// # Safety
    ///
    /// Only the glue's NAPI poll callback of `dev` makes one, and the
    /// value does not outlive that call.
    pub(crate) unsafe fn new(dev: NetDev) -> Self {
        Napi {
            dev,
            _poll: PhantomData,
        }
    }

    /// An skb of `len` bytes to fill (`napi_alloc_skb`, and pages beyond
    /// one page); `None` when memory is short.
    pub(crate) fn alloc(&self, len: u32) -> Option<RxSkb<'_>> {
        // SAFETY: `dev` is alive; in its NAPI poll, as napi_alloc_skb needs.
        let skb = unsafe { ffi::vni_rx_alloc(self.dev.raw(), len) };
        NonNull::new(skb).map(|skb| RxSkb {
            skb,
            _poll: PhantomData,
        })
    }

    /// Hands a filled skb to GRO, without the driver's lock held (the
    /// stack may transmit from here). `Err` when its virtio-net header was
    /// refused (the skb is freed).
    pub(crate) fn deliver(&self, skb: RxSkb<'_>) -> Result<(), BadHeader> {
        let skb = skb.into_raw();
        // SAFETY: `dev` is alive, in its NAPI poll; the skb is ours, filled,
        // and vni_rx_deliver consumes it either way.
        match unsafe { ffi::vni_rx_deliver(self.dev.raw(), skb) } {
            0 => Ok(()),
            _ => Err(BadHeader),
        }
    }

    /// Ends the poll with `done` frames handled, fewer than its budget
    /// (`napi_complete_done`). False: NAPI keeps polling (busy polling, a
    /// poll scheduled meanwhile); the driver must not sleep then.
    pub(crate) fn complete(self, done: i32) -> bool {
        // SAFETY: `dev` is alive, in its NAPI poll, completed once (this
        // consumes the token).
        unsafe { ffi::vni_napi_complete(self.dev.raw(), done) }
    }
}

/// A received frame's virtio-net header was refused.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BadHeader;

/// Inside this device's `ndo_start_xmit`, for the call's duration.
pub(crate) struct Xmit<'a> {
    dev: NetDev,
    _call: PhantomData<&'a ()>,
}

impl Xmit<'_> {
    /// The transmit call of `dev`.
    ///
    /// # Safety
    ///
    /// Only the glue's `ndo_start_xmit` of `dev` makes one, and the value
    /// does not outlive that call.
    pub(crate) unsafe fn new(dev: NetDev) -> Self {
        Xmit {
            dev,
            _call: PhantomData,
        }
    }

    /// Whether the stack has more frames coming right away
    /// (`netdev_xmit_more`): flush and ring only when not.
    pub(crate) fn more(&self) -> bool {
        // SAFETY: in ndo_start_xmit, where xmit_more is defined.
        unsafe { ffi::vni_xmit_more() }
    }

    /// Stops the transmit queue (`netif_stop_queue`); the kick timer
    /// wakes it.
    pub(crate) fn stop_queue(&self) {
        // SAFETY: `dev` is alive; in its transmit path.
        unsafe { ffi::vni_queue_stop(self.dev.raw()) }
    }
}

/// An skb the stack handed to transmit: ours until it is consumed, given
/// back, or dropped (freed as a drop, `dev_kfree_skb_any`).
pub(crate) struct TxSkb(NonNull<SkBuff>);

impl TxSkb {
    /// The skb the stack passed to `ndo_start_xmit`.
    ///
    /// # Safety
    ///
    /// `skb` is that skb, not used by the caller afterwards other than as
    /// [`TxSkb::give_back`] says.
    pub(crate) unsafe fn from_raw(skb: *mut SkBuff) -> Option<Self> {
        NonNull::new(skb).map(TxSkb)
    }

    /// Bytes of the frame (linear part and fragments).
    pub(crate) fn len(&self) -> usize {
        // SAFETY: the skb is ours and alive.
        unsafe { ffi::vni_skb_len(self.0.as_ptr()) as usize }
    }

    /// Its virtio-net header (checksum and segmentation offload), or the
    /// kernel's error for an offload the header cannot describe.
    pub(crate) fn vnet_hdr(&self) -> Result<[u8; VNET_HDR_LEN], c_int> {
        let mut hdr = [0u8; VNET_HDR_LEN];
        // SAFETY: the skb is ours; `hdr` has room for the header.
        match unsafe { ffi::vni_skb_vnet_hdr(self.0.as_ptr(), hdr.as_mut_ptr()) } {
            0 => Ok(hdr),
            err => Err(err),
        }
    }

    /// Writes `hdr` and then the skb's bytes, `total` in all, into the
    /// memory `slots` covers. Returns the bytes written, or the kernel's
    /// error when the skb could not be read.
    pub(crate) fn copy_into(
        &self,
        slots: &DirectSlots<'_>,
        hdr: &[u8; VNET_HDR_LEN],
        total: usize,
    ) -> Result<usize, c_int> {
        let mut pos = 0usize;
        for seg in slots.segments() {
            let mut done = 0usize;
            while done < seg.len && pos < total {
                let end = if pos < VNET_HDR_LEN {
                    VNET_HDR_LEN
                } else {
                    total
                };
                let n = (seg.len - done).min(end - pos);
                let to = seg.ptr.wrapping_add(done);
                if pos < VNET_HDR_LEN {
                    let from = hdr.get(pos..pos + n).unwrap_or(&[]);
                    // SAFETY: `to..to + n` lies in a segment `slots` handed
                    // out (`done + n <= seg.len`): memory this node holds,
                    // mapped while `slots` is borrowed, which no Rust
                    // reference points to; `from` (at most `n` bytes) is a
                    // separate array.
                    unsafe { ptr::copy_nonoverlapping(from.as_ptr(), to, from.len()) };
                } else {
                    // SAFETY: as above for `to`; the skb is ours, and
                    // skb_copy_bits checks the offset and length against it.
                    let err = unsafe {
                        ffi::vni_skb_copy(
                            self.0.as_ptr(),
                            (pos - VNET_HDR_LEN) as u32,
                            to,
                            n as u32,
                        )
                    };
                    if err != 0 {
                        return Err(err);
                    }
                }
                pos += n;
                done += n;
            }
        }
        Ok(pos)
    }

    /// The frame was sent: freed as consumed (`dev_consume_skb_any`).
    pub(crate) fn consume(self) {
        let skb = self.into_raw();
        // SAFETY: the skb was ours, and is not used again.
        unsafe { ffi::vni_skb_consume(skb) }
    }

    /// Not taken: `ndo_start_xmit` returns `NETDEV_TX_BUSY`, and the stack
    /// keeps the skb and hands it over again later.
    pub(crate) fn give_back(self) {
        let _ = self.into_raw();
    }

    fn into_raw(self) -> *mut SkBuff {
        let skb = self.0.as_ptr();
        core::mem::forget(self);
        skb
    }
}

impl Drop for TxSkb {
    fn drop(&mut self) {
        // SAFETY: the skb is ours and is not used again.
        unsafe { ffi::vni_skb_drop(self.0.as_ptr()) }
    }
}

/// An skb the NAPI poll allocated for a received frame: delivered with
/// [`Napi::deliver`], or freed when dropped.
pub(crate) struct RxSkb<'a> {
    skb: NonNull<SkBuff>,
    _poll: PhantomData<&'a ()>,
}

impl RxSkb<'_> {
    /// Copies `frame` into the skb, segment by segment (a large skb is a
    /// head and pages). False when the skb refused a range (never, for an
    /// skb of the frame's length).
    pub(crate) fn store(&mut self, frame: &RxFrame<'_>) -> bool {
        let mut pos = 0usize;
        for seg in frame.raw_segments() {
            let n = seg.len.min(frame.len().saturating_sub(pos));
            if n == 0 {
                continue;
            }
            // SAFETY: `seg` is a validated range of the mapped region,
            // mapped while `frame` lives, read by the kernel's copy (no
            // Rust reference is made to it); the skb is ours, and
            // skb_store_bits checks `pos + n` against it.
            let err =
                unsafe { ffi::vni_rx_store(self.skb.as_ptr(), pos as u32, seg.ptr, n as u32) };
            if err != 0 {
                return false;
            }
            pos += n;
        }
        pos == frame.len()
    }

    fn into_raw(self) -> *mut SkBuff {
        let skb = self.skb.as_ptr();
        core::mem::forget(self);
        skb
    }
}

impl Drop for RxSkb<'_> {
    fn drop(&mut self) {
        // SAFETY: the skb is ours and is not used again.
        unsafe { ffi::vni_skb_drop(self.skb.as_ptr()) }
    }
}
