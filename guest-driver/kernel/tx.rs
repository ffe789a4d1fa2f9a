// SPDX-License-Identifier: GPL-2.0

//! Transmit: an skb from the stack becomes one frame in the region, its
//! virtio-net header (checksum and segmentation offload, as the
//! user-space driver's TAP writes it) and then its bytes, linear part and
//! fragments, copied straight into the slots. Flushed and rung when the
//! stack has no more frames coming (`xmit_more`); a full pool or queue
//! stops the queue, which the kick timer wakes again.

use core::ptr;

use kernel::prelude::*;

use crate::ffi::{self, SkBuff, VNET_HDR_LEN};
use crate::node::Vni;
use crate::vni_core::{DirectSlots, SendError, MAX_FRAME};

/// How long a stopped queue waits before it tries again, nanoseconds.
const RETRY_NS: u32 = 50_000;

impl Vni {
    /// Sends `skb`. True when it was not taken (the queue is stopped now;
    /// the stack gives it back later); otherwise the skb is consumed,
    /// sent or dropped.
    pub(crate) fn xmit(&self, skb: *mut SkBuff) -> bool {
        // SAFETY: the stack hands us a valid skb, ours until we consume it.
        let len = unsafe { ffi::vni_skb_len(skb) } as usize;
        let total = len.saturating_add(VNET_HDR_LEN);
        let mut hdr = [0u8; VNET_HDR_LEN];
        let mut guard = self.state.lock();
        let s = &mut *guard;
        let Some(ep) = s.ep.as_mut().filter(|_| !s.trouble) else {
            s.stats.tx_no_link += 1;
            // SAFETY: the skb is ours and not used again.
            unsafe { ffi::vni_skb_drop(skb) };
            return false;
        };
        // SAFETY: `hdr` has room for a virtio-net header.
        if total > MAX_FRAME || unsafe { ffi::vni_skb_vnet_hdr(skb, hdr.as_mut_ptr()) } != 0 {
            s.stats.tx_bad_offload += 1;
            // SAFETY: as above.
            unsafe { ffi::vni_skb_drop(skb) };
            return false;
        }
        let sent = ep.send_direct(total, VNET_HDR_LEN, |slots| fill(slots, &hdr, skb, total));
        let busy = match sent {
            Ok(_) => {
                // SAFETY: the skb's bytes are in the slots; it is done.
                unsafe { ffi::vni_skb_consume(skb) };
                false
            }
            Err(e) if e.is_backpressure() => true,
            Err(SendError::Endpoint(e)) => {
                // SAFETY: as above.
                unsafe { ffi::vni_skb_drop(skb) };
                s.fail(self.dev, &e);
                return false;
            }
            Err(_) => {
                // The copy out of the skb failed: dropped like a bad frame.
                s.stats.tx_bad_offload += 1;
                // SAFETY: as above.
                unsafe { ffi::vni_skb_drop(skb) };
                false
            }
        };
        // SAFETY: called from ndo_start_xmit, where xmit_more is defined.
        if busy || s.deferred || !unsafe { ffi::vni_xmit_more() } {
            s.flush(self.dev);
        }
        s.busy();
        if busy || s.deferred {
            // SAFETY: `dev` is alive; the kick wakes the queue and polls.
            unsafe { ffi::vni_kick_after(self.dev, RETRY_NS) };
        }
        if busy {
            s.stats.queue_stops += 1;
            // SAFETY: `dev` is alive; called in the transmit path.
            unsafe { ffi::vni_queue_stop(self.dev) };
        }
        busy
    }
}

/// Writes the frame (`hdr`, then the skb's bytes; `total` in all) into the
/// slot memory the endpoint handed out. Returns the bytes written, or the
/// kernel's error when the skb cannot be read.
fn fill(
    slots: &DirectSlots<'_>,
    hdr: &[u8; VNET_HDR_LEN],
    skb: *mut SkBuff,
    total: usize,
) -> Result<usize, i32> {
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
                // SAFETY: `to..to + n` lies in a segment of slot memory
                // this node holds (`DirectSlots` covers at least `total`
                // bytes) and no Rust reference points there; `hdr[pos..
                // pos + n]` is in bounds (`n <= VNET_HDR_LEN - pos`).
                unsafe { ptr::copy_nonoverlapping(hdr.as_ptr().add(pos), to, n) };
            } else {
                // SAFETY: as above for `to`; skb_copy_bits checks the
                // offset and length against the skb.
                let err =
                    unsafe { ffi::vni_skb_copy(skb, (pos - VNET_HDR_LEN) as u32, to, n as u32) };
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
