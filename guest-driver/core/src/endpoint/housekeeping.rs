//! An endpoint's housekeeping, every few milliseconds: heartbeat and
//! counters, its own state and the header guarded against scribbles,
//! dead peers reaped, misbehaving peers fenced and quarantined.

use core::ops::{Deref, DerefMut};
use core::sync::atomic::Ordering;

use super::buffers::Buffers;
use super::shared::Shared;
use super::{
    bit, header_words, members, read_header, store_header_body, Backend, Endpoint, EndpointError,
    Instant, Layout, LockError, NodeState, NodeTable, Platform, ProtocolError, Region, HDR_EPOCH,
    HDR_MAGIC, MAGIC, MAX_NODES, OFFENCE_LIMIT, QUARANTINE_LEASES,
};

impl<M, B, P> Endpoint<M, B, P>
where
    M: Deref<Target = Region> + Clone,
    B: DerefMut<Target = Buffers>,
    P: Platform + Clone,
{
    /// Housekeeping, every few milliseconds: heartbeat, counters, checks
    /// for re-format and fencing, reclaiming dead peers' buffers, fencing
    /// peers that misbehave, and restoring what a rogue overwrote of this
    /// node's own (its state, the header).
    pub fn tick(&mut self) -> Result<(), EndpointError> {
        self.sh.check_usable()?;
        let me = self.sh.me;
        let nodes = self.sh.nodes();
        nodes.beat(me);
        nodes.publish_counters(me, &self.sh.counters);
        self.guard_header()?;
        let nodes = self.sh.nodes();
        let (generation, state) = (nodes.generation(me), nodes.state(me));
        if generation != self.sh.generation {
            // Fenced, or a scribble over our generation: either way our
            // buffers may be reclaimed now, so only a new incarnation is
            // safe (`reattach` is quick).
            self.sh.fenced = true;
            return Err(LockError::Fenced.into());
        }
        if state != self.state {
            // Only we and a fencer (who also changes the generation) write
            // our state: someone scribbled over it.
            nodes.set_state(me, self.state);
            self.sh.note(ProtocolError::Scribbled {
                what: "this node's state",
            });
        }
        let now = self.sh.platform.now();
        let until = &self.buffers.lists.quarantine_until;
        for node in members(self.sh.quarantined) {
            if until.get(node).is_none_or(|&until| now >= until) {
                self.sh.quarantined &= !bit(node);
                if let Some(count) = self.sh.offences.get_mut(node) {
                    *count = 0;
                }
            }
        }
        let quarantined = self.sh.quarantined;
        let offenders = self
            .sh
            .offences
            .iter()
            .enumerate()
            .filter(|&(n, &count)| count >= OFFENCE_LIMIT && quarantined & bit(n) == 0)
            .fold(0u64, |set, (n, _)| set | bit(n));
        if offenders != 0 {
            self.fence_offenders(offenders, now)?;
        }
        let reap_every = self.sh.lease.checked_div(4).unwrap_or_default();
        if now.saturating_duration_since(self.last_reap) >= reap_every {
            self.last_reap = now;
            self.reap(now)?;
        }
        Ok(())
    }

    /// Compares the region's header with the copy validated at attach. A
    /// valid header of another format epoch is a re-format (the endpoint
    /// is done); anything else that lasts a quarter lease (a formatter
    /// takes microseconds) is a rogue's write, and the copy is put back
    /// (a word at a time, as readers read it, the magic last, as the
    /// formatter writes it). Meanwhile the node works from its copy.
    /// [`Endpoint::tick`] calls it; a fenced endpoint whose node cannot
    /// attach again because the header is damaged calls it between
    /// attempts, so that a region whose every node was fenced still heals.
    pub fn guard_header(&mut self) -> Result<(), EndpointError> {
        let region = &self.sh.region;
        if region.load_u64(HDR_MAGIC, Ordering::Acquire) == MAGIC
            && region.load_u64(HDR_EPOCH, Ordering::Acquire) == self.epoch
            && read_header(region) == self.header
        {
            self.header_bad_since = None;
            return Ok(());
        }
        if let Ok((_, epoch)) = Layout::read(region) {
            if epoch != self.epoch {
                self.sh.fenced = true;
                return Err(EndpointError::Reformatted);
            }
        }
        let now = self.sh.platform.now();
        let since = *self.header_bad_since.get_or_insert(now);
        let grace = self.sh.lease.checked_div(4).unwrap_or_default();
        if now.saturating_duration_since(since) < grace {
            return Ok(());
        }
        self.header_bad_since = None;
        store_header_body(region, &self.header);
        let magic = header_words(&self.header).first().copied().unwrap_or(MAGIC);
        region.store_u64(HDR_MAGIC, magic, Ordering::Release);
        self.sh.note(ProtocolError::Scribbled {
            what: "the region header",
        });
        Ok(())
    }

    /// Fences peers blamed for [`OFFENCE_LIMIT`] protocol errors, as dead
    /// peers are fenced (state RESET, generation + 1, their buffers back
    /// to the pool), and ignores them for [`QUARANTINE_LEASES`].
    fn fence_offenders(&mut self, offenders: u64, now: Instant) -> Result<(), EndpointError> {
        let lists = &mut self.buffers.lists;
        let ticket = self.sh.acquire(&mut lists.repair)?;
        let until = now.saturating_add(self.sh.lease.saturating_mul(QUARANTINE_LEASES));
        for node in members(offenders) {
            let nodes = self.sh.nodes();
            nodes.fence(node, nodes.generation(node));
            lists.repair.liveness.forget(node);
            if let Some(q) = lists.quarantine_until.get_mut(node) {
                *q = until;
                self.sh.quarantined |= bit(node);
            }
            if let Some(count) = self.sh.offences.get_mut(node) {
                *count = 0;
            }
        }
        self.repair_locked();
        self.sh.release(ticket)
    }

    /// Fences peers whose heartbeat stood still for a lease and returns
    /// their buffers to the pool.
    fn reap(&mut self, now: Instant) -> Result<(), EndpointError> {
        let mut dead = [None; MAX_NODES];
        let mut any = false;
        {
            let Shared {
                region, layout, me, ..
            } = &self.sh;
            let liveness = &mut self.buffers.lists.repair.liveness;
            let nodes = NodeTable { region, layout };
            for node in (0..nodes.count()).filter(|n| n != me) {
                if nodes.state(node) != NodeState::Reset && liveness.is_dead(&nodes, node, now) {
                    if let Some(cell) = dead.get_mut(node) {
                        *cell = Some(nodes.generation(node));
                        any = true;
                    }
                }
            }
        }
        if !any {
            return Ok(());
        }
        let ticket = self.sh.acquire(&mut self.buffers.lists.repair)?;
        let mut fenced = false;
        for (node, generation) in dead.iter().enumerate() {
            if let Some(generation) = *generation {
                if self.sh.nodes().fence(node, generation) {
                    self.buffers.lists.repair.liveness.forget(node);
                    self.sh.counters.recoveries = self.sh.counters.recoveries.saturating_add(1);
                    fenced = true;
                }
            }
        }
        if fenced {
            self.repair_locked();
        }
        self.sh.release(ticket)
    }

    /// With the lock held, after a protocol violation or a fencing:
    /// rebuild buffer management and forget any private slot that is no
    /// longer ours.
    fn repair_locked(&mut self) {
        let lists = &mut self.buffers.lists;
        self.sh.repair_region(&mut lists.repair);
        if let Backend::Pool(state) = &mut self.backend {
            state.forget_lost(&mut self.sh, lists);
        }
    }
}
