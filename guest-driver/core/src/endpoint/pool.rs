//! The endpoint's paths in buffer configuration 2 (one shared pool): a
//! private cache of slots filled without the lock, frames staged and
//! handed to their receivers' queues one lock round per batch, received
//! chains taken under the lock and copied out without it.
//!
//! The state is all in [`Lists`]: `cache` and `staged_slots` together
//! never hold more than [`HELD_SLOTS`] slots (refills stop there, and
//! slots only move between the two), so moving slots between them always
//! fits.

use core::ops::Deref;

use super::{
    bit, held_by, members, Bounded, EndpointError, FlushReport, Geometry, Lists, NodeId, NodeState,
    NodeTable, Platform, Pool, ProtocolError, Region, RxEntry, RxFrame, SendError, Shared, Sink,
    Staged, BATCH, HELD_SLOTS, MAX_NODES, MAX_STAGED, RX_FRAMES,
};

/// Bytes a sender keeps queued for one receiver at most, counted as the
/// receiver's queue depth times the frame's slots: enough for deep
/// batches, little enough that what the sender writes is still in a cache
/// when the receiver copies it out. (Without it, 64 KiB frames filled the
/// whole pool ahead of the receiver, and both copies ran at memory speed:
/// 10 GB/s against 33 GB/s with a 16 MiB pool, on one machine.)
pub const IN_FLIGHT_BYTES: usize = 2 << 20;
/// The shallowest a queue is limited to: a few frames of any size.
const MIN_DEPTH: usize = 8;

/// Configuration 2 keeps no state of its own beyond the [`Lists`].
#[derive(Debug, Default)]
pub(super) struct PoolState;

/// How deep `dest`'s queue may be for a frame of `slots` slots to join it:
/// the queue's capacity for small frames, [`IN_FLIGHT_BYTES`] worth of
/// such frames for large ones, and never less than a batch.
fn depth_limit(geometry: &Geometry, slots: usize) -> u32 {
    let budget = IN_FLIGHT_BYTES
        .checked_div(geometry.slot_size as usize)
        .unwrap_or(0);
    let frames = budget.checked_div(slots.max(1)).unwrap_or(0).max(MIN_DEPTH);
    u32::try_from(frames)
        .unwrap_or(u32::MAX)
        .min(geometry.queue_capacity)
}

impl PoolState {
    /// Stages `frame` for `dest` (reachable, checked by the caller).
    pub(super) fn stage<M: Deref<Target = Region>, P: Platform>(
        &mut self,
        sh: &mut Shared<M, P>,
        lists: &mut Lists,
        dest: NodeId,
        frame: &[u8],
    ) -> Result<(), SendError> {
        let need = frame.len().div_ceil(sh.slot_size());
        if lists.staged.len() >= MAX_STAGED || lists.cache.len() < need {
            self.flush(sh, lists, need)?;
        }
        if lists.staged.len() >= MAX_STAGED {
            return Err(SendError::QueueFull);
        }
        let start = lists.staged_slots.len();
        let from = lists.cache.len().saturating_sub(need);
        if lists.cache.len() < need || !lists.cache.move_range(from, need, &mut lists.staged_slots)
        {
            return Err(SendError::NoBuffer);
        }
        let chain = lists.staged_slots.as_slice().get(start..).unwrap_or(&[]);
        sh.check_current()?;
        sh.pool().fill(sh.me, chain, frame);
        self.push_staged(sh, lists, dest, start, need, frame.len())
    }

    /// `send_direct`'s first half: the last `need` slots of the cache, as
    /// offsets in `lists.direct`, refilling the cache first when short.
    pub(super) fn reserve_direct<M: Deref<Target = Region>, P: Platform>(
        &mut self,
        sh: &mut Shared<M, P>,
        lists: &mut Lists,
        need: usize,
    ) -> Result<(), SendError> {
        if lists.cache.len() < need {
            self.flush(sh, lists, need)?;
        }
        if lists.staged.len() >= MAX_STAGED {
            return Err(SendError::QueueFull);
        }
        if lists.cache.len() < need {
            return Err(SendError::NoBuffer);
        }
        sh.check_current()?;
        lists.direct.clear();
        for &slot in lists.cache.last(need) {
            lists.direct.push(sh.layout.slot(slot));
        }
        Ok(())
    }

    /// `send_direct`'s second half: the first `used` of the `need` slots
    /// reserved hold a frame of `len` bytes for `dest`; stage it.
    pub(super) fn commit_direct<M: Deref<Target = Region>, P: Platform>(
        &mut self,
        sh: &mut Shared<M, P>,
        lists: &mut Lists,
        dest: NodeId,
        need: usize,
        used: usize,
        len: usize,
    ) -> Result<(), SendError> {
        let from = lists.cache.len().saturating_sub(need);
        let start = lists.staged_slots.len();
        if !lists.cache.move_range(from, used, &mut lists.staged_slots) {
            return Err(SendError::NoBuffer);
        }
        let chain = lists.staged_slots.as_slice().get(start..).unwrap_or(&[]);
        sh.pool().describe(sh.me, chain, len);
        self.push_staged(sh, lists, dest, start, used, len)
    }

    /// Records the frame whose chain of `count` slots starts at
    /// `staged_slots[start]` as staged for `dest`, and flushes a full batch.
    fn push_staged<M: Deref<Target = Region>, P: Platform>(
        &mut self,
        sh: &mut Shared<M, P>,
        lists: &mut Lists,
        dest: NodeId,
        start: usize,
        count: usize,
        len: usize,
    ) -> Result<(), SendError> {
        let staged = Staged {
            dest,
            start,
            count,
            len,
        };
        if !lists.staged.push(staged) {
            // Cannot happen (callers check MAX_STAGED); the slots go back.
            lists.staged_slots.truncate(start);
            return Err(SendError::QueueFull);
        }
        if lists.staged.len() >= BATCH {
            self.flush(sh, lists, 0)?;
        }
        Ok(())
    }

    /// The nodes staged frames go to, as a bit set.
    fn staged_dests(lists: &Lists) -> u64 {
        lists
            .staged
            .as_slice()
            .iter()
            .fold(0, |set, f| set | bit(f.dest))
    }

    /// Hands staged frames over and refills the cache so that it holds at
    /// least `need` slots.
    pub(super) fn flush<M: Deref<Target = Region>, P: Platform>(
        &mut self,
        sh: &mut Shared<M, P>,
        lists: &mut Lists,
        need: usize,
    ) -> Result<FlushReport, EndpointError> {
        // Enough slots for a batch of frames like this one, within a fair
        // share of the pool.
        let geometry = sh.layout.geometry;
        let fair_share = (geometry.slot_count as usize)
            .checked_div((geometry.max_nodes as usize).saturating_mul(4))
            .unwrap_or(0);
        let want = need
            .max(1)
            .saturating_mul(BATCH)
            .min(fair_share)
            .max(need)
            .max(BATCH.min(fair_share));
        if lists.to_free.is_empty() && lists.cache.len() >= need {
            if lists.staged.is_empty() {
                return Ok(FlushReport::default());
            }
            // When every destination's queue is full, taking the lock only
            // to find that out would delay the receivers, the only nodes
            // that can make room. A lock-free look decides: the tail is
            // read before the head, which only grows, so an honest queue
            // never looks fuller than it is. Impossible indices (more than
            // full) go through the lock, where they are repaired.
            let pool = sh.pool();
            let all_full = members(Self::staged_dests(lists)).all(|dest| {
                let (head, tail) = pool.queue_indices(dest);
                let depth = tail.wrapping_sub(head);
                let first = lists.staged.as_slice().iter().find(|f| f.dest == dest);
                let limit = depth_limit(&geometry, first.map_or(1, |f| f.count));
                depth >= limit && depth <= geometry.queue_capacity
            });
            if all_full {
                return Ok(FlushReport {
                    deferred: lists.staged.len(),
                    ..FlushReport::default()
                });
            }
        }
        let ticket = sh.acquire(&mut lists.repair)?;
        let report = match Self::flush_locked(sh, lists, want) {
            Ok(report) => report,
            Err(error) => {
                sh.note(error);
                self.repair_locked(sh, lists);
                FlushReport::default()
            }
        };
        sh.release(ticket)?;
        Ok(report)
    }

    /// With the lock held: free, enqueue, refill. The destinations
    /// published to join `sh.unrung`.
    fn flush_locked<M: Deref<Target = Region>, P: Platform>(
        sh: &mut Shared<M, P>,
        lists: &mut Lists,
        want: usize,
    ) -> Result<FlushReport, ProtocolError> {
        let banned = sh.quarantined();
        let (me, capacity) = (sh.incarnation(), sh.layout.geometry.queue_capacity);
        // Borrowing the region and layout fields only: the counters change
        // while these are in use.
        let pool = Pool {
            region: &sh.region,
            layout: &sh.layout,
        };
        let nodes = NodeTable {
            region: &sh.region,
            layout: &sh.layout,
        };
        // A node whose guest stood still for a lease in here may find it
        // was declared dead and its turn taken: the recoverer may have
        // rebuilt the pool meanwhile, so it writes nothing more (its
        // release then says Fenced). Under TCG on a loaded host a vCPU
        // can stand still for seconds anywhere, here too: the pool's
        // writes look first (`ProtocolError::FencedMeanwhile`), and so
        // do the phases below.
        let mut skipped = pool.push_free(me, lists.to_free.as_slice())?;
        lists.to_free.clear();
        let mut report = FlushReport::default();
        let fenced = |nodes: &NodeTable<'_>| !nodes.is_current(me);
        if fenced(&nodes) {
            return Ok(report);
        }
        // First read and validate every destination's queue, so that a
        // violation is found before anything changes. Per destination:
        // (head, tail as found, tail after our entries); `None` for a node
        // not running (its frames are dropped).
        let mut tails: [Option<(u32, u32, u32)>; MAX_NODES] = [None; MAX_NODES];
        for dest in members(Self::staged_dests(lists)) {
            if dest < nodes.count()
                && nodes.state(dest) == NodeState::Run
                && banned & bit(dest) == 0
            {
                let (head, tail) = pool.queue_indices(dest);
                if tail.wrapping_sub(head) > capacity {
                    return Err(ProtocolError::QueueIndices {
                        node: dest,
                        head,
                        tail,
                        capacity,
                    });
                }
                if let Some(cell) = tails.get_mut(dest) {
                    *cell = Some((head, tail, tail));
                }
            }
        }
        // Frames that wait keep their order and move to the front, their
        // slots too (a kept frame's slots never lie before where they go).
        let mut full = 0u64;
        let (mut kept, mut kept_slots) = (0usize, 0usize);
        for i in 0..lists.staged.len() {
            let Some(&frame) = lists.staged.as_slice().get(i) else {
                break;
            };
            let end = frame.start.saturating_add(frame.count);
            let chain = lists
                .staged_slots
                .as_slice()
                .get(frame.start..end)
                .unwrap_or(&[]);
            let dest_bit = bit(frame.dest);
            if fenced(&nodes) {
                return Ok(report);
            }
            match tails.get_mut(frame.dest) {
                Some(Some((head, _, tail)))
                    if full & dest_bit == 0
                        && tail.wrapping_sub(*head)
                            < depth_limit(&sh.layout.geometry, frame.count) =>
                {
                    pool.enqueue_at(me, frame.dest, *tail, chain)?;
                    *tail = tail.wrapping_add(1);
                    report.published = report.published.saturating_add(1);
                    sh.counters.add_sent(frame.len);
                }
                Some(Some(_)) => {
                    // Keep order per destination: once one frame waits, the
                    // later ones to the same node wait too.
                    full |= dest_bit;
                    lists
                        .staged_slots
                        .as_mut_slice()
                        .copy_within(frame.start..end, kept_slots);
                    if let Some(cell) = lists.staged.as_mut_slice().get_mut(kept) {
                        *cell = Staged {
                            start: kept_slots,
                            ..frame
                        };
                    }
                    kept = kept.saturating_add(1);
                    kept_slots = kept_slots.saturating_add(frame.count);
                }
                _ => {
                    skipped = skipped.saturating_add(pool.push_free(me, chain)?);
                    report.dropped = report.dropped.saturating_add(1);
                }
            }
        }
        lists.staged.truncate(kept);
        lists.staged_slots.truncate(kept_slots);
        if fenced(&nodes) {
            return Ok(report);
        }
        for (dest, indices) in tails.iter().enumerate() {
            if let Some((_, found, tail)) = *indices {
                if tail != found {
                    pool.publish_tail(dest, tail);
                    sh.unrung |= bit(dest);
                }
            }
        }
        report.deferred = kept;
        let target = want.min(HELD_SLOTS.saturating_sub(lists.staged_slots.len()));
        let refill = if fenced(&nodes) {
            Ok(())
        } else if lists.cache.len() < target {
            pool.pop_free(
                me,
                target.saturating_sub(lists.cache.len()),
                &mut lists.cache,
            )
        } else {
            Ok(())
        };
        sh.dropped_tx(report.dropped as u64);
        sh.count_unheld_frees(skipped);
        refill.map(|()| report)
    }

    /// Gives back the cache and the slots of delivered frames.
    pub(super) fn release_idle<M: Deref<Target = Region>, P: Platform>(
        &mut self,
        sh: &mut Shared<M, P>,
        lists: &mut Lists,
    ) -> Result<(), EndpointError> {
        if lists.cache.is_empty() && lists.to_free.is_empty() {
            return Ok(());
        }
        let ticket = sh.acquire(&mut lists.repair)?;
        let (pool, me) = (sh.pool(), sh.incarnation());
        let result = pool
            .push_free(me, lists.to_free.as_slice())
            .and_then(
                |freed| Ok(freed.saturating_add(pool.push_free(me, lists.cache.as_slice())?)),
            );
        lists.to_free.clear();
        lists.cache.clear();
        match result {
            Ok(skipped) => sh.count_unheld_frees(skipped),
            Err(error) => {
                sh.note(error);
                self.repair_locked(sh, lists);
            }
        }
        sh.release(ticket)
    }

    /// Drops the staged frames; their slots go back to the cache.
    pub(super) fn drop_staged<M: Deref<Target = Region>, P: Platform>(
        &mut self,
        sh: &mut Shared<M, P>,
        lists: &mut Lists,
    ) {
        sh.dropped_tx(lists.staged.len() as u64);
        lists.staged.clear();
        lists.staged_slots.move_all(&mut lists.cache);
    }

    /// Receives up to `max` frames: a batch taken under the lock (the
    /// slots of the last batch freed in the same round), delivered
    /// without it.
    pub(super) fn recv<M: Deref<Target = Region>, P: Platform>(
        &mut self,
        sh: &mut Shared<M, P>,
        lists: &mut Lists,
        max: usize,
        deliver: &mut dyn FnMut(&RxFrame<'_>),
    ) -> Result<usize, EndpointError> {
        let (head, tail) = sh.pool().queue_indices(sh.me);
        if lists.to_free.is_empty() && head == tail {
            return Ok(0);
        }
        let ticket = sh.acquire(&mut lists.repair)?;
        if let Err(error) = Self::dequeue_locked(sh, lists, max) {
            sh.note(error);
            self.repair_locked(sh, lists);
        }
        sh.release(ticket)?;
        for entry in lists.rx.as_slice() {
            let segments = lists
                .segments
                .as_slice()
                .get(entry.start..entry.end)
                .unwrap_or(&[]);
            let source = (entry.source < MAX_NODES).then_some(entry.source);
            deliver(&RxFrame::new(&sh.region, segments, entry.len, source));
            sh.counters.add_received(entry.len);
        }
        Ok(lists.rx.len())
    }

    /// With the lock held: free what we delivered last time, take a batch
    /// (as many frames as the lists have room for, of the largest size).
    fn dequeue_locked<M: Deref<Target = Region>, P: Platform>(
        sh: &mut Shared<M, P>,
        lists: &mut Lists,
        max: usize,
    ) -> Result<(), ProtocolError> {
        let banned = sh.quarantined();
        let me = sh.me;
        let geometry = sh.layout.geometry;
        let max_chain = geometry.max_chain() as usize;
        let life = sh.incarnation();
        let skipped = sh.pool().push_free(life, lists.to_free.as_slice())?;
        sh.count_unheld_frees(skipped);
        lists.to_free.clear();
        lists.rx.clear();
        lists.segments.clear();
        let (head, tail) = sh.pool().queue_indices(me);
        let capacity = geometry.queue_capacity;
        let depth = tail.wrapping_sub(head);
        if depth > capacity {
            return Err(ProtocolError::QueueIndices {
                node: me,
                head,
                tail,
                capacity,
            });
        }
        let take = depth.min(u32::try_from(max.min(RX_FRAMES)).unwrap_or(u32::MAX));
        let mut taken = 0u32;
        while taken < take
            && lists.segments.room() >= max_chain
            && lists.to_free.room() >= max_chain
        {
            // Declared dead meanwhile (see `flush_locked`): the queue is
            // another's to repair now; write nothing more.
            if !sh.nodes().is_current(life) {
                return Ok(());
            }
            let pool = sh.pool();
            let first = pool.entry(me, head.wrapping_add(taken));
            taken = taken.saturating_add(1);
            let start = lists.segments.len();
            let claimed = pool.claimed_sender(first);
            match pool.take_chain(life, first, &mut lists.segments, &mut lists.to_free) {
                // From a peer in quarantine: dropped (its slots are freed).
                Ok((_, Some(source))) if banned & bit(source) != 0 => {
                    lists.segments.truncate(start);
                    sh.counters.rx_dropped = sh.counters.rx_dropped.saturating_add(1);
                }
                Ok((len, source)) => {
                    lists.rx.push(RxEntry {
                        len,
                        source: source.unwrap_or(MAX_NODES),
                        start,
                        end: lists.segments.len(),
                    });
                }
                Err(ProtocolError::FencedMeanwhile) => return Ok(()),
                Err(error) => {
                    sh.counters.rx_dropped = sh.counters.rx_dropped.saturating_add(1);
                    sh.note(error);
                    sh.blame(claimed);
                }
            }
        }
        if !sh.nodes().is_current(life) {
            return Ok(());
        }
        sh.pool().set_head(me, head.wrapping_add(taken));
        Ok(())
    }

    /// With the lock held, after a protocol violation: rebuild buffer
    /// management and forget the slots no longer ours.
    fn repair_locked<M: Deref<Target = Region>, P: Platform>(
        &mut self,
        sh: &mut Shared<M, P>,
        lists: &mut Lists,
    ) {
        sh.repair_region(&mut lists.repair);
        self.forget_lost(sh, lists);
    }

    /// After a repair: forget any private slot that is no longer ours. A
    /// flush may have stopped half way through the staged frames (some
    /// written into a queue whose tail was never published): drop them
    /// all, and keep the slots still ours.
    pub(super) fn forget_lost<M: Deref<Target = Region>, P: Platform>(
        &mut self,
        sh: &mut Shared<M, P>,
        lists: &mut Lists,
    ) {
        let pool = sh.pool();
        let ours = |slot: &u32| *slot < pool.slot_count() && pool.owner(*slot) == held_by(sh.me);
        lists.cache.retain(ours);
        lists.to_free.retain(ours);
        lists.staged_slots.retain(ours);
        let staged = lists.staged.len() as u64;
        lists.staged.clear();
        lists.staged_slots.move_all(&mut lists.cache);
        sh.dropped_tx(staged);
    }

    /// The crash tests' half-done state (see `Endpoint::freeze_inside_lock`).
    pub(super) fn freeze<M: Deref<Target = Region>, P: Platform>(
        &mut self,
        sh: &Shared<M, P>,
        lists: &mut Lists,
        dest: NodeId,
    ) {
        let pool = sh.pool();
        let mut slots = Bounded::<u32, { 3 * BATCH }>::new(0);
        // A partial pop still leaves a half-done state to recover from.
        let _ = pool.pop_free(sh.incarnation(), 3 * BATCH, &mut slots);
        let (_, tail) = pool.queue_indices(dest);
        let mut index = tail;
        for &slot in slots.as_slice().iter().take(BATCH) {
            pool.fill(sh.me, &[slot], b"half-done");
            let _ = pool.enqueue_at(sh.incarnation(), dest, index, &[slot]);
            index = index.wrapping_add(1);
        }
        lists.cache.extend_from_slice(slots.as_slice());
    }
}
