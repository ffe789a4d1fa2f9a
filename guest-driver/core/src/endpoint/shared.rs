//! What both configurations' paths need of an endpoint: the region, the
//! node's identity and counters, the lock and its recovery, the peers'
//! standing (offences, quarantine).

use core::ops::Deref;
use core::sync::atomic::{fence, Ordering};

use core::time::Duration;

use super::buffers::{RepairScratch, ADDRESSES, MAX_CHAIN};
use super::{
    attached, bit, members, rebuild, AddrTable, Bounded, BufferConfig, Counters, EndpointError,
    Incarnation, Layout, LockError, LockMemory, MacAddr, NodeId, NodeState, NodeTable, Platform,
    Pool, ProtocolError, Region, RegionLock, Rings, Ticket, MAX_NODES,
};

/// What a repair found wrong.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Repaired {
    /// Address entries that were not a live node's.
    addresses: u64,
    /// Queue entries dropped from live nodes' queues (too deep, or a chain
    /// not intact).
    queued: u64,
}

impl Repaired {
    fn add(&mut self, other: Repaired) {
        self.addresses = self.addresses.saturating_add(other.addresses);
        self.queued = self.queued.saturating_add(other.queued);
    }
}

/// Repairs what a dead node may have left half done; the caller, `me`,
/// holds the lock.
pub(super) fn repair(
    region: &Region,
    layout: &Layout,
    me: Incarnation,
    kept: &mut Bounded<(MacAddr, NodeId), ADDRESSES>,
    chain: &mut [u32; MAX_CHAIN],
) -> Repaired {
    let nodes = NodeTable { region, layout };
    let is_live = attached(&nodes);
    let addresses = AddrTable { region, layout }.retain(|_, node| is_live(node), kept);
    let mut queued = 0;
    if layout.geometry.config == BufferConfig::SharedPool {
        let report = rebuild(&Pool { region, layout }, &nodes, &is_live, me, chain);
        queued = report.errors;
    }
    Repaired { addresses, queued }
}

/// What both configurations' paths need of the endpoint: the region, this
/// node's identity and counters, the lock, the peers' standing.
#[derive(Debug)]
pub(super) struct Shared<M, P> {
    pub(super) region: M,
    pub(super) layout: Layout,
    pub(super) me: NodeId,
    pub(super) generation: u32,
    /// The region's lease.
    pub(super) lease: Duration,
    pub(super) counters: Counters,
    pub(super) last_error: Option<ProtocolError>,
    pub(super) fenced: bool,
    pub(super) platform: P,
    /// Protocol errors blamed on each peer since it was last fenced.
    pub(super) offences: [u32; MAX_NODES],
    /// Peers fenced for misbehaving and ignored for now (until
    /// `Lists::quarantine_until`), as a bit set.
    pub(super) quarantined: u64,
    /// The lock's statistics as last seen valid.
    pub(super) lock_memory: LockMemory,
    /// Receivers published to since the caller last learnt whom to ring,
    /// as a bit set. A full batch flushes itself in the middle of a
    /// send; its receivers are rung after the caller's next flush, which
    /// may publish nothing new (before, such a flush said "ring nobody",
    /// and a receiver that slept through the batch was never woken).
    pub(super) unrung: u64,
}

impl<M: Deref<Target = Region>, P: Platform> Shared<M, P> {
    pub(super) fn nodes(&self) -> NodeTable<'_> {
        NodeTable {
            region: &self.region,
            layout: &self.layout,
        }
    }

    /// This endpoint's life of its node.
    pub(super) fn incarnation(&self) -> Incarnation {
        Incarnation {
            node: self.me,
            generation: self.generation,
        }
    }

    pub(super) fn pool(&self) -> Pool<'_> {
        Pool {
            region: &self.region,
            layout: &self.layout,
        }
    }

    pub(super) fn rings(&self) -> Rings<'_> {
        Rings {
            region: &self.region,
            layout: &self.layout,
        }
    }

    pub(super) fn slot_size(&self) -> usize {
        (self.layout.geometry.slot_size as usize).max(1)
    }

    pub(super) fn note(&mut self, error: ProtocolError) {
        if self.fenced_meanwhile() {
            return;
        }
        self.counters.protocol_errors = self.counters.protocol_errors.saturating_add(1);
        self.last_error = Some(error);
    }

    /// Whether this node was declared dead (its generation changed under
    /// it) while it worked; if so it is fenced from now on. A node its
    /// peers recovered finds its queue and slots given back to the pool
    /// and reused: what it then sees wrong is the consequence of its
    /// fencing, not a peer's fault, so it is neither counted nor blamed
    /// (the lab's region check would fail on it, and an honest peer be
    /// quarantined). Under TCG a live node is declared dead when its
    /// guest is not scheduled for a lease.
    fn fenced_meanwhile(&mut self) -> bool {
        if !self.fenced && self.nodes().generation(self.me) != self.generation {
            self.fenced = true;
        }
        self.fenced
    }

    /// Counts `count` inconsistent `what` as that many errors, the last
    /// one noted.
    fn count_inconsistent(&mut self, what: &'static str, count: u64) {
        if count > 0 {
            self.add_errors(count.saturating_sub(1));
            self.note(ProtocolError::Inconsistent { what, count });
        }
    }

    /// Counts what a repair found wrong, each kind as an error of its own.
    pub(super) fn count_repaired(&mut self, repaired: Repaired) {
        self.count_inconsistent("address entries", repaired.addresses);
        self.count_inconsistent("queue entries", repaired.queued);
    }

    /// Counts slots this node was to free but no longer held (someone
    /// freed or took them meanwhile).
    pub(super) fn count_unheld_frees(&mut self, count: u64) {
        self.count_inconsistent("slots to free that this node no longer held", count);
    }

    /// Counts `n` more protocol errors.
    pub(super) fn add_errors(&mut self, n: u64) {
        if self.fenced_meanwhile() {
            return;
        }
        self.counters.protocol_errors = self.counters.protocol_errors.saturating_add(n);
    }

    pub(super) fn dropped_tx(&mut self, n: u64) {
        self.counters.tx_dropped = self.counters.tx_dropped.saturating_add(n);
    }

    /// Fails with `Fenced` once this node was declared dead, looking at
    /// the region: before it writes the slots it holds without the lock,
    /// which its peers may have given to others by then.
    pub(super) fn check_current(&mut self) -> Result<(), EndpointError> {
        if self.fenced_meanwhile() {
            return Err(LockError::Fenced.into());
        }
        Ok(())
    }

    pub(super) fn check_usable(&self) -> Result<(), EndpointError> {
        if self.fenced {
            return Err(LockError::Fenced.into());
        }
        Ok(())
    }

    /// Counts a protocol error against the node that caused it, when it
    /// is known; [`Endpoint::tick`] fences a peer at [`OFFENCE_LIMIT`].
    pub(super) fn blame(&mut self, node: Option<NodeId>) {
        if self.fenced_meanwhile() {
            return;
        }
        if let Some(count) = node
            .filter(|&n| n != self.me)
            .and_then(|n| self.offences.get_mut(n))
        {
            *count = count.saturating_add(1);
        }
    }

    pub(super) fn quarantined(&self) -> u64 {
        self.quarantined
    }

    pub(super) fn running_peers(&self) -> u64 {
        self.nodes().running_peers(self.me) & !self.quarantined()
    }

    /// Whether frames can go to `dest`: another node, in `Run`, not in
    /// quarantine.
    pub(super) fn reachable(&self, dest: NodeId) -> bool {
        dest != self.me
            && dest < self.layout.geometry.max_nodes as usize
            && self.quarantined & bit(dest) == 0
            && self.nodes().state(dest) == NodeState::Run
    }

    pub(super) fn acquire(&mut self, scratch: &mut RepairScratch) -> Result<Ticket, EndpointError> {
        self.check_usable()?;
        let (region, layout, me) = (&*self.region, &self.layout, self.me);
        let life = self.incarnation();
        let mut recovered = 0u64;
        let mut repaired = Repaired::default();
        let RepairScratch {
            kept,
            chain,
            liveness,
        } = scratch;
        let result = RegionLock { region, layout }.lock(
            me,
            self.generation,
            liveness,
            &self.platform,
            &mut |_dead| {
                recovered = recovered.saturating_add(1);
                repaired.add(repair(region, layout, life, kept, chain));
            },
        );
        self.counters.recoveries = self.counters.recoveries.saturating_add(recovered);
        self.count_repaired(repaired);
        let ticket = result.map_err(|e| self.lock_failed(e))?;
        // A node taking the lock is alive: say so. Housekeeping's beat
        // alone is not enough in a guest whose receive path keeps its one
        // vCPU busy (NAPI in softirq starves the kernel's workqueues for
        // longer than a lease under TCG), and a live node declared dead
        // while it holds the lock goes on writing owner words the
        // recoverer has already given back to the pool.
        self.nodes().beat(self.me);
        let lock = RegionLock {
            region: &self.region,
            layout: &self.layout,
        };
        if lock.heal_stats(&mut self.lock_memory) {
            self.note(ProtocolError::Scribbled {
                what: "the lock's recoveries count",
            });
        }
        Ok(ticket)
    }

    pub(super) fn release(&mut self, ticket: Ticket) -> Result<(), EndpointError> {
        let lock = RegionLock {
            region: &self.region,
            layout: &self.layout,
        };
        lock.unlock(ticket, self.me, self.generation)
            .map_err(|e| self.lock_failed(e))
    }

    pub(super) fn lock_failed(&mut self, error: LockError) -> EndpointError {
        if error == LockError::Fenced {
            self.fenced = true;
        }
        error.into()
    }

    /// With the lock held: repair the region's buffer and address
    /// management, counting what was wrong.
    pub(super) fn repair_region(&mut self, scratch: &mut RepairScratch) {
        // Declared dead while it held the lock (its guest not scheduled
        // for a lease): the lock is another's now, and so is the repair.
        if self.fenced_meanwhile() {
            return;
        }
        let repaired = repair(
            &self.region,
            &self.layout,
            self.incarnation(),
            &mut scratch.kept,
            &mut scratch.chain,
        );
        self.count_repaired(repaired);
    }

    /// Of the receivers published to since the last call, those that
    /// said they sleep: the ones to ring.
    pub(super) fn take_sleepers(&mut self) -> u64 {
        let dests = core::mem::take(&mut self.unrung);
        if dests == 0 {
            return 0;
        }
        // SeqCst: pairs with the receiver's SeqCst store of its sleeping
        // flag; either we see the flag, or it sees our published frames.
        fence(Ordering::SeqCst);
        let nodes = self.nodes();
        members(dests)
            .filter(|&n| n < nodes.count() && nodes.sleeping(n))
            .fold(0, |set, n| set | bit(n))
    }
}
