//! A read-only snapshot of a region, for `vni-lab inspect` and for tests
//! that check every slot came home.
//!
//! Reads without the lock, so a snapshot of a busy region is approximate.
//! Values are validated as the endpoint validates them, and what fails is
//! not dropped but named in an `untrusted` list (of the node, or of the
//! report), so that a display can say "a misbehaving node wrote this"
//! instead of printing a rogue's scribble as a figure.

use crate::ether::MacAddr;
use crate::layout::{BufferConfig, Geometry, Layout, LayoutError};
use crate::lock::{LockStatus, RegionLock};
use crate::nodes::{Counters, NodeState, NodeTable};
use crate::pool::Pool;
use crate::region::Region;
use crate::rings::Rings;

/// One node as the region shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct NodeReport {
    /// Node id.
    pub id: usize,
    /// State (`None`: the word is garbage).
    pub state: Option<NodeState>,
    /// Incarnation counter.
    pub generation: u32,
    /// Heartbeat counter.
    pub heartbeat: u64,
    /// Its MAC address.
    pub mac: MacAddr,
    /// The ivshmem peer id that rings it, if published.
    pub doorbell_peer: Option<u16>,
    /// Published counters.
    pub counters: Counters,
    /// Frames waiting for it (config 2: its queue; config 1: all rings to it).
    pub queue_depth: u64,
    /// Slots it holds (config 2).
    pub slots_held: u64,
    /// Slots queued for it (config 2).
    pub slots_queued: u64,
    /// The fields above whose values fail validation (`state`, `mac`,
    /// `counters`, `queue_depth`): written by a misbehaving node.
    pub untrusted: Vec<&'static str>,
}

impl NodeReport {
    /// Whether `field` (as named in [`NodeReport::untrusted`]) validated.
    pub fn trusted(&self, field: &str) -> bool {
        !self.untrusted.contains(&field)
    }
}

/// The buffer pool's use.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct PoolReport {
    /// Slots in the pool (config 2) or in all rings (config 1).
    pub slots: u64,
    /// Slots free (config 2: on the free stack; config 1: ring entries unused).
    pub free: u64,
    /// Slots whose owner word names no node and no valid state (config 2).
    pub garbage_owners: u64,
}

/// Everything `inspect` shows.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RegionReport {
    /// The region's geometry.
    pub geometry: Geometry,
    /// Format epoch.
    pub epoch: u64,
    /// Lock words.
    pub lock: LockStatus,
    /// Node table.
    pub nodes: Vec<NodeReport>,
    /// Pool use.
    pub pool: PoolReport,
    /// Address table (valid entries).
    pub addresses: Vec<(MacAddr, usize)>,
    /// Region-wide values that fail validation: `lock.recoveries`,
    /// `lock.now_serving`, `pool.free`, `pool.owners`, `addresses`.
    pub untrusted: Vec<&'static str>,
}

impl RegionReport {
    /// Whether node `id` is in `Run`.
    pub fn runs(&self, id: usize) -> bool {
        self.nodes.get(id).and_then(|n| n.state) == Some(NodeState::Run)
    }

    /// Whether `field` (as named in [`RegionReport::untrusted`]) validated.
    pub fn trusted(&self, field: &str) -> bool {
        !self.untrusted.contains(&field)
    }
}

/// Per node: (frames waiting, slots held, slots queued, depth valid).
type Usage = (u64, u64, u64, bool);

/// Takes a snapshot of `region`.
pub fn inspect(region: &Region) -> Result<RegionReport, LayoutError> {
    let (layout, epoch) = Layout::read(region)?;
    let layout: &Layout = &layout;
    let nodes = NodeTable { region, layout };
    let count = nodes.count();
    let g = layout.geometry;
    let mut untrusted = Vec::new();
    let (usage, pool) = match g.config {
        BufferConfig::SharedPool => pool_usage(&Pool { region, layout }, count, &mut untrusted),
        BufferConfig::PerPair => ring_usage(&Rings { region, layout }, count),
    };
    let nodes_report = (0..count)
        .map(|id| {
            let state = NodeState::from_word(nodes.state_word(id));
            let mac = MacAddr::from_word(nodes.mac(id));
            let counters = nodes.counters(id);
            let (queue_depth, slots_held, slots_queued, depth_valid) =
                usage.get(id).copied().unwrap_or_default();
            let mut untrusted = Vec::new();
            if state.is_none() {
                untrusted.push("state");
            }
            let attached = state.is_some_and(|s| s != NodeState::Reset);
            if attached && (mac.is_group() || mac == MacAddr::default()) {
                untrusted.push("mac");
            }
            if counters.check().is_err() {
                untrusted.push("counters");
            }
            if !depth_valid {
                untrusted.push("queue_depth");
            }
            NodeReport {
                id,
                state,
                generation: nodes.generation(id),
                heartbeat: nodes.heartbeat(id),
                mac,
                doorbell_peer: nodes.doorbell(id),
                counters,
                queue_depth,
                slots_held,
                slots_queued,
                untrusted,
            }
        })
        .collect();
    let lock = RegionLock { region, layout }.status();
    if !lock.recoveries_valid {
        untrusted.push("lock.recoveries");
    }
    // As the lock itself judges it: a turn past every ticket handed out.
    if (lock.now_serving.wrapping_sub(lock.next_ticket) as i32) > 0 {
        untrusted.push("lock.now_serving");
    }
    let mut addresses = Vec::new();
    let malformed = crate::addr::AddrTable { region, layout }.snapshot(&mut addresses);
    if malformed > 0 {
        untrusted.push("addresses");
    }
    Ok(RegionReport {
        geometry: g,
        epoch,
        lock,
        nodes: nodes_report,
        pool,
        addresses,
        untrusted,
    })
}

fn pool_usage(
    pool: &Pool<'_>,
    count: usize,
    untrusted: &mut Vec<&'static str>,
) -> (Vec<Usage>, PoolReport) {
    let capacity = pool.layout.geometry.queue_capacity;
    let mut held_queued = vec![(0, 0); count];
    let garbage_owners = pool.usage(&mut held_queued);
    let usage = held_queued
        .into_iter()
        .enumerate()
        .map(|(n, (held, queued))| {
            let (head, tail) = pool.queue_indices(n);
            let depth = tail.wrapping_sub(head);
            (u64::from(depth), held, queued, depth <= capacity)
        })
        .collect();
    let slots = pool.slot_count();
    let top = pool.free_top();
    if top > slots {
        untrusted.push("pool.free");
    }
    if garbage_owners > 0 {
        untrusted.push("pool.owners");
    }
    let report = PoolReport {
        slots: slots.into(),
        free: u64::from(top.min(slots)),
        garbage_owners,
    };
    (usage, report)
}

fn ring_usage(rings: &Rings<'_>, count: usize) -> (Vec<Usage>, PoolReport) {
    let cap = rings.capacity();
    let mut used_total = 0;
    let usage = (0..count)
        .map(|dst| {
            let mut valid = true;
            let used: u64 = (0..count)
                .filter(|&src| src != dst)
                .map(|src| {
                    let used = rings.tail(src, dst).wrapping_sub(rings.head(src, dst));
                    valid &= used <= cap;
                    u64::from(used.min(cap))
                })
                .sum();
            used_total += used;
            (used, 0, 0, valid)
        })
        .collect();
    let slots = u64::from(cap) * (count * (count - 1)) as u64;
    let report = PoolReport {
        slots,
        free: slots.saturating_sub(used_total),
        garbage_owners: 0,
    };
    (usage, report)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use super::*;
    use crate::layout::{LOCK_RECOVERIES, NODE_COUNTERS};
    use crate::{format, Endpoint};

    #[test]
    fn scribbles_are_marked_untrusted_and_the_lock_count_heals() {
        let len = 4 << 20;
        let region = Arc::new(Region::anonymous(len).unwrap());
        let g = Geometry::fit(BufferConfig::SharedPool, len, 4, 2048).unwrap();
        let layout = format(&region, &g).unwrap();
        let mut ep = Endpoint::attach(region.clone(), 0, MacAddr::for_node(0)).unwrap();
        let clean = inspect(&region).unwrap();
        assert!(clean.untrusted.is_empty(), "{:?}", clean.untrusted);
        assert!(clean.nodes.iter().all(|n| n.untrusted.is_empty()));

        // A rogue as node 2: its counters, the lock's count, a queue.
        let garbage = 9_082_264_506_918_269_174;
        region.store_u64(layout.node(2, NODE_COUNTERS), garbage, Ordering::Relaxed);
        region.store_u64(layout.lock + LOCK_RECOVERIES, garbage, Ordering::Relaxed);
        region.store_u32(
            layout.queues + layout.queue_stride + 64,
            5000,
            Ordering::Relaxed,
        );
        let report = inspect(&region).unwrap();
        assert_eq!(report.untrusted, vec!["lock.recoveries"]);
        assert_eq!(report.nodes[2].untrusted, vec!["counters"]);
        assert_eq!(report.nodes[1].untrusted, vec!["queue_depth"]);
        assert!(report.nodes[0].untrusted.is_empty());
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["untrusted"][0], "lock.recoveries");

        // The next lock holder puts the last valid count back.
        ep.release_idle().unwrap();
        ep.flush().unwrap();
        ep.route(&[0x02, 0x56, 0x4e, 0x49, 0x00, 0x09]).unwrap();
        ep.tick().unwrap();
        let healed = inspect(&region).unwrap();
        assert!(healed.trusted("lock.recoveries"), "{:?}", healed.untrusted);
        assert_eq!(healed.lock.recoveries, 0);
        assert!(
            ep.counters().protocol_errors >= 1,
            "the scribble is counted"
        );
    }
}
