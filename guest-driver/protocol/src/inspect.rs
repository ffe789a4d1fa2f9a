//! A read-only snapshot of a region, for `vni-lab inspect` and for tests
//! that check every slot came home.
//!
//! Reads without the lock, so a snapshot of a busy region is approximate;
//! values are validated like everything else read from the region.

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
}

/// The buffer pool's use.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct PoolReport {
    /// Slots in the pool (config 2) or in all rings (config 1).
    pub slots: u64,
    /// Slots free (config 2: on the free stack; config 1: ring entries unused).
    pub free: u64,
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
}

impl RegionReport {
    /// Whether node `id` is in `Run`.
    pub fn runs(&self, id: usize) -> bool {
        self.nodes.get(id).and_then(|n| n.state) == Some(NodeState::Run)
    }
}

/// Takes a snapshot of `region`.
pub fn inspect(region: &Region) -> Result<RegionReport, LayoutError> {
    let (layout, epoch) = Layout::read(region)?;
    let layout: &Layout = &layout;
    let nodes = NodeTable { region, layout };
    let count = nodes.count();
    let g = layout.geometry;
    let (usage, pool) = match g.config {
        BufferConfig::SharedPool => {
            let pool = Pool { region, layout };
            let depth: Vec<u64> = (0..count)
                .map(|n| {
                    let (head, tail) = pool.queue_indices(n);
                    u64::from(tail.wrapping_sub(head))
                })
                .collect();
            let mut held_queued = vec![(0, 0); count];
            pool.usage(&mut held_queued);
            let usage = held_queued
                .into_iter()
                .zip(depth)
                .map(|((h, q), d)| (d, h, q))
                .collect::<Vec<_>>();
            let free = u64::from(pool.free_top().min(g.slot_count));
            (
                usage,
                PoolReport {
                    slots: g.slot_count.into(),
                    free,
                },
            )
        }
        BufferConfig::PerPair => {
            let rings = Rings { region, layout };
            let cap = u64::from(rings.capacity());
            let mut used_total = 0;
            let usage = (0..count)
                .map(|dst| {
                    let used: u64 = (0..count)
                        .filter(|&src| src != dst)
                        .map(|src| {
                            u64::from(rings.tail(src, dst).wrapping_sub(rings.head(src, dst)))
                                .min(cap)
                        })
                        .sum();
                    used_total += used;
                    (used, 0, 0)
                })
                .collect::<Vec<_>>();
            let slots = cap * (count * (count - 1)) as u64;
            (
                usage,
                PoolReport {
                    slots,
                    free: slots - used_total,
                },
            )
        }
    };
    let nodes_report = (0..count)
        .map(|id| NodeReport {
            id,
            state: NodeState::from_word(nodes.state_word(id)),
            generation: nodes.generation(id),
            heartbeat: nodes.heartbeat(id),
            mac: MacAddr::from_word(nodes.mac(id)),
            doorbell_peer: nodes.doorbell(id),
            counters: nodes.counters(id),
            queue_depth: usage[id].0,
            slots_held: usage[id].1,
            slots_queued: usage[id].2,
        })
        .collect();
    Ok(RegionReport {
        geometry: g,
        epoch,
        lock: RegionLock { region, layout }.status(),
        nodes: nodes_report,
        pool,
        addresses: {
            let mut entries = Vec::new();
            crate::addr::AddrTable { region, layout }.snapshot(&mut entries);
            entries
        },
    })
}
