// SPDX-License-Identifier: GPL-2.0

//! The device's statistics: the protocol's counters (summed over the
//! node's incarnations) and the driver's own, for `ip -s link`
//! (`ndo_get_stats64`) and `ethtool -S`.

use core::ffi::CStr;

use crate::ffi::VNET_HDR_LEN;
use crate::platform::Ep;
use crate::vni_core::lock::RegionLock;
use crate::vni_core::{Counters, Region};

/// The driver's counters, beyond the protocol's.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Stats {
    /// The protocol counters of earlier incarnations.
    retired: Counters,
    pub(crate) doorbells: u64,
    pub(crate) queue_stops: u64,
    pub(crate) rx_no_memory: u64,
    pub(crate) rx_bad_header: u64,
    pub(crate) rx_while_down: u64,
    pub(crate) tx_bad_offload: u64,
    pub(crate) tx_no_link: u64,
    pub(crate) quarantines: u64,
    pub(crate) incarnations: u64,
    pub(crate) attach_failures: u64,
    /// NAPI polls, and those that ended with the node asleep.
    pub(crate) polls: u64,
    pub(crate) sleeps: u64,
    /// Housekeeping found frames waiting with no poll, scheduled or run,
    /// for two rounds in a row, and scheduled one (a lost wake-up).
    pub(crate) rx_stalls: u64,
    /// ... for one round only: the doorbell came, later than a round
    /// (10 ms; seen under TCG on a busy host).
    pub(crate) rx_slow_doorbells: u64,
}

impl Stats {
    /// Adds a finished incarnation's protocol counters.
    pub(crate) fn retire(&mut self, c: &Counters) {
        let r = &mut self.retired;
        for (sum, add) in [
            (&mut r.tx_frames, c.tx_frames),
            (&mut r.tx_bytes, c.tx_bytes),
            (&mut r.rx_frames, c.rx_frames),
            (&mut r.rx_bytes, c.rx_bytes),
            (&mut r.tx_dropped, c.tx_dropped),
            (&mut r.rx_dropped, c.rx_dropped),
            (&mut r.protocol_errors, c.protocol_errors),
            (&mut r.recoveries, c.recoveries),
        ] {
            *sum = sum.saturating_add(add);
        }
    }
}

/// The names `ethtool -S` shows, in the order of [`values`].
pub(crate) const NAMES: [&CStr; 24] = [
    c"tx_frames",
    c"tx_bytes",
    c"tx_dropped",
    c"rx_frames",
    c"rx_bytes",
    c"rx_dropped",
    c"protocol_errors",
    c"peer_recoveries",
    c"lock_recoveries",
    c"fenced_peers",
    c"quarantines",
    c"doorbells",
    c"queue_stops",
    c"rx_no_memory",
    c"rx_bad_header",
    c"rx_while_down",
    c"tx_bad_offload",
    c"tx_no_link",
    c"incarnations",
    c"attach_failures",
    c"polls",
    c"sleeps",
    c"rx_stalls",
    c"rx_slow_doorbells",
];

/// The protocol counters of all incarnations so far: the retired ones in
/// `stats`, and those of `ep`, the current one.
fn counters(stats: &Stats, ep: Option<&Ep>) -> Counters {
    let mut total = Stats { ..*stats };
    if let Some(ep) = ep {
        total.retire(&ep.counters());
    }
    total.retired
}

/// The values for [`NAMES`], from the device's `stats` and its current
/// endpoint `ep`.
pub(crate) fn values(region: &Region, stats: &Stats, ep: Option<&Ep>) -> [u64; NAMES.len()] {
    let c = counters(stats, ep);
    let (lock_recoveries, fenced) = ep.map_or((0, 0), |ep| {
        let layout = ep.layout();
        let status = RegionLock { region, layout }.status();
        (
            if status.recoveries_valid {
                status.recoveries
            } else {
                0
            },
            u64::from(ep.quarantined().count_ones()),
        )
    });
    let d = stats;
    [
        c.tx_frames,
        c.tx_bytes,
        c.tx_dropped,
        c.rx_frames,
        c.rx_bytes,
        c.rx_dropped,
        c.protocol_errors,
        c.recoveries,
        lock_recoveries,
        fenced,
        d.quarantines,
        d.doorbells,
        d.queue_stops,
        d.rx_no_memory,
        d.rx_bad_header,
        d.rx_while_down,
        d.tx_bad_offload,
        d.tx_no_link,
        d.incarnations,
        d.attach_failures,
        d.polls,
        d.sleeps,
        d.rx_stalls,
        d.rx_slow_doorbells,
    ]
}

/// The `ip -s link` figures: rx packets, bytes, dropped, errors; tx
/// packets, bytes, dropped. Bytes are the Ethernet frames' (the region's
/// count includes each frame's virtio-net header; `ethtool -S` shows
/// that one).
pub(crate) fn link(stats: &Stats, ep: Option<&Ep>) -> [u64; 7] {
    let c = counters(stats, ep);
    let d = stats;
    let header = VNET_HDR_LEN as u64;
    [
        c.rx_frames,
        c.rx_bytes
            .saturating_sub(c.rx_frames.saturating_mul(header)),
        c.rx_dropped
            .saturating_add(d.rx_no_memory)
            .saturating_add(d.rx_while_down),
        c.protocol_errors.saturating_add(d.rx_bad_header),
        c.tx_frames,
        c.tx_bytes
            .saturating_sub(c.tx_frames.saturating_mul(header)),
        c.tx_dropped
            .saturating_add(d.tx_bad_offload)
            .saturating_add(d.tx_no_link),
    ]
}
