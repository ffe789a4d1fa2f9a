// SPDX-License-Identifier: GPL-2.0

//! Receive: the doorbell interrupt schedules NAPI; the poll takes up to a
//! budget of frames from the region, copies each out of its slots into a
//! fresh skb, and hands them to GRO after dropping the lock (the stack may
//! transmit from there). Doorbells are suppressed while the node polls: it
//! says it sleeps only when it completes NAPI, and looks at its queue once
//! more after saying so, the protocol's sleep/wake rule. In polling mode it
//! never sleeps in the region's eyes; the kick timer polls, at 50 µs while
//! busy and backing off to 1 ms while idle.
//!
//! Busy polling (`busy_poll_us`, for a while after the last frame) also
//! polls from the kick timer, every 50 µs, staying awake in the region's
//! eyes so that senders need not ring. It never keeps the poll itself
//! going: a NAPI poll that claims its whole budget runs again at once in
//! softirq, and on a guest with one vCPU that starves the very program
//! waiting for the frames it just delivered (measured: raw-frame echo
//! p50 1.61 ms against 0.87 ms for the user-space driver, one run).

use core::ptr;

use crate::ffi::{self, SkBuff};
use crate::node::{Vni, POLL_MIN_NS};
use crate::vni_core::{Notification, RxFrame, BATCH};

/// Polling mode: the first and the longest wait between polls.
const POLL_MAX_NS: u32 = 1_000_000;

impl Vni {
    /// One NAPI round with `budget`; returns the frames it handled (all of
    /// `budget` to be polled again).
    pub(crate) fn poll(&self, budget: i32) -> i32 {
        let max = usize::try_from(budget).unwrap_or(0).min(BATCH);
        let mut skbs = [ptr::null_mut::<SkBuff>(); BATCH];
        let mut taken = 0usize;
        let keep_polling;
        {
            let mut guard = self.state.lock();
            let s = &mut *guard;
            let Some(ep) = s.ep.as_mut().filter(|_| !s.trouble) else {
                drop(guard);
                // SAFETY: called from the NAPI poll with a budget of 0..=64.
                unsafe { ffi::vni_napi_complete(self.dev, 0) };
                return 0;
            };
            ep.set_sleeping(false);
            s.stats.polls += 1;
            let (mut no_memory, mut unstored) = (0u64, 0u64);
            let received = ep.recv(max, |frame| {
                // SAFETY: `dev` is alive; in NAPI context, as
                // napi_alloc_skb needs. A frame is at most MAX_FRAME bytes.
                let skb = unsafe { ffi::vni_rx_alloc(self.dev, frame.len() as u32) };
                if skb.is_null() {
                    no_memory += 1;
                    return;
                }
                if !store(skb, frame) {
                    // Counted as a bad frame (never seen: the skb has the
                    // frame's length).
                    unstored += 1;
                    // SAFETY: the skb is ours and nothing else knows it.
                    unsafe { ffi::vni_skb_drop(skb) };
                    return;
                }
                match skbs.get_mut(taken) {
                    Some(slot) => {
                        *slot = skb;
                        taken += 1;
                    }
                    // SAFETY: the skb is ours (never reached: `recv` hands
                    // out at most `max <= BATCH` frames).
                    None => unsafe { ffi::vni_skb_drop(skb) },
                }
            });
            s.stats.rx_no_memory += no_memory;
            s.stats.rx_bad_header += unstored;
            match received {
                Ok(0) => {}
                Ok(_) => s.busy(),
                Err(e) => s.fail(self.dev, &e),
            }
            // Frames a full receiver deferred get another chance.
            if s.deferred {
                s.flush(self.dev);
            }
            let since = s.idle_for();
            keep_polling = s.deferred || since < self.config.busy_poll;
        }
        let mut bad = 0u64;
        for &skb in skbs.iter().take(taken) {
            // SAFETY: each is a filled skb of ours; deliver consumes it.
            if unsafe { ffi::vni_rx_deliver(self.dev, skb) } != 0 {
                bad += 1;
            }
        }
        let done = i32::try_from(taken).unwrap_or(budget).min(budget);
        if bad > 0 {
            self.state.lock().stats.rx_bad_header += bad;
        }
        if done >= budget {
            return budget;
        }
        // SAFETY: called from the NAPI poll, done < budget.
        if !unsafe { ffi::vni_napi_complete(self.dev, done) } {
            return done;
        }
        let mut guard = self.state.lock();
        let s = &mut *guard;
        match self.config.notification {
            Notification::Interrupt if keep_polling => {
                // SAFETY: `dev` is alive; the kick schedules NAPI again.
                unsafe { ffi::vni_kick_after(self.dev, POLL_MIN_NS) };
            }
            Notification::Interrupt => {
                if let Some(ep) = s.ep.as_mut().filter(|_| !s.trouble) {
                    ep.set_sleeping(true);
                    s.stats.sleeps += 1;
                    if ep.pending() {
                        ep.set_sleeping(false);
                        // SAFETY: `dev` is alive.
                        unsafe { ffi::vni_napi_schedule(self.dev) };
                    }
                }
            }
            Notification::Polling => {
                s.poll_wait_ns = if done > 0 {
                    POLL_MIN_NS
                } else {
                    s.poll_wait_ns.saturating_mul(2).min(POLL_MAX_NS)
                };
                // SAFETY: `dev` is alive; the kick schedules NAPI again.
                unsafe { ffi::vni_kick_after(self.dev, s.poll_wait_ns) };
            }
        }
        done
    }
}

/// Copies `frame` into `skb`, made by `vni_rx_alloc` for its length:
/// segment by segment, since a large skb is a head and pages. False when
/// the skb refused a range (never, for an skb of the frame's length).
fn store(skb: *mut SkBuff, frame: &RxFrame<'_>) -> bool {
    let mut pos = 0usize;
    for seg in frame.raw_segments() {
        let n = seg.len.min(frame.len().saturating_sub(pos));
        // SAFETY: `seg` is a validated range of the mapped region, valid
        // while `frame` lives, read by the kernel's copy (no Rust reference
        // is made to it); skb_store_bits checks `pos + n` against the skb.
        if n > 0 && unsafe { ffi::vni_rx_store(skb, pos as u32, seg.ptr, n as u32) } != 0 {
            return false;
        }
        pos += n;
    }
    pos == frame.len()
}
