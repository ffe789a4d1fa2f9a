// SPDX-License-Identifier: GPL-2.0

//! Transmit: an skb from the stack becomes one frame in the region, its
//! virtio-net header (checksum and segmentation offload, as the
//! user-space driver's TAP writes it) and then its bytes, linear part and
//! fragments, copied straight into the slots. Flushed and rung when the
//! stack has no more frames coming (`xmit_more`); a full pool or queue
//! stops the queue, which the kick timer wakes again.

use crate::device::{TxSkb, Xmit};
use crate::ffi::VNET_HDR_LEN;
use crate::node::Vni;
use crate::vni_core::{SendError, MAX_FRAME};

/// How long a stopped queue waits before it tries again, nanoseconds.
const RETRY_NS: u32 = 50_000;

impl Vni {
    /// Sends `skb`, from `ndo_start_xmit`. `Err` gives it back, not taken:
    /// the queue is stopped now, and the stack hands it over again later.
    /// Otherwise the skb was sent or dropped.
    pub(crate) fn xmit(&self, xmit: &Xmit<'_>, skb: TxSkb) -> Result<(), TxSkb> {
        let total = skb.len().saturating_add(VNET_HDR_LEN);
        let mut guard = self.state.lock();
        let s = &mut *guard;
        let Some(ep) = s.ep.as_mut().filter(|_| !s.trouble) else {
            s.stats.tx_no_link += 1;
            return Ok(());
        };
        let hdr = match skb.vnet_hdr() {
            Ok(hdr) if total <= MAX_FRAME => hdr,
            _ => {
                s.stats.tx_bad_offload += 1;
                return Ok(());
            }
        };
        let sent = ep.send_direct(total, VNET_HDR_LEN, |slots| {
            skb.copy_into(slots, &hdr, total)
        });
        let busy = match sent {
            Ok(_) => {
                // The skb's bytes are in the slots: it is done.
                skb.consume();
                None
            }
            Err(e) if e.is_backpressure() => Some(skb),
            Err(SendError::Endpoint(e)) => {
                s.fail(self.dev, &e);
                return Ok(());
            }
            Err(_) => {
                // The copy out of the skb failed: dropped like a bad frame.
                s.stats.tx_bad_offload += 1;
                None
            }
        };
        if busy.is_some() || s.deferred || !xmit.more() {
            s.flush(self.dev);
        }
        s.busy();
        if busy.is_some() || s.deferred {
            // The kick wakes the queue and polls.
            self.dev.kick_after(RETRY_NS);
        }
        match busy {
            Some(skb) => {
                s.stats.queue_stops += 1;
                xmit.stop_queue();
                Err(skb)
            }
            None => Ok(()),
        }
    }
}
