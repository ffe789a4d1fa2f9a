//! Buffer configuration 2, the study's choice: one pool of fixed-size slots
//! shared by all frames of all nodes, and one receive queue per node.
//!
//! Buffer management (everything here but the slot bytes) is changed only
//! with the region lock held:
//!
//! - the **free stack**: `top` (own cache line) and `slot_count` slot ids.
//!   LIFO, so recently freed, cache-warm slots are reused first;
//! - a **descriptor** per slot: `owner` (free / held by node n / queued for
//!   node n), `next` (chain link), `len` (bytes in this slot), `meta`
//!   (on a chain's first slot: frame length | sender << 24);
//! - a **receive queue** per node: `head` and `tail` (free-running u32, own
//!   cache lines) and `queue_capacity` entries, each the first slot of a frame.
//!
//! A sender takes slots from the stack into a private cache (batch), fills
//! them without the lock, then enqueues a batch of frames under the lock.
//! A receiver dequeues a batch under the lock (marking the slots held),
//! copies frames out without it, and frees the slots in its next batch.
//!
//! Every slot's owner word says where it is, so recovery after a node died
//! mid-operation needs no journal: [`rebuild`] recomputes the free stack and
//! queues from the owner words and queues of the nodes still alive.

use core::sync::atomic::Ordering;

use super::frame::{write_runs, ProtocolError, Segment};
use super::layout::{
    Layout, DESC_LEN, DESC_LEN_WORD, DESC_META, DESC_NEXT, DESC_OWNER, FREE_ENTRIES, FREE_TOP,
    INITIAL_INDEX, MAX_FRAME, QUEUE_ENTRIES, QUEUE_HEAD, QUEUE_TAIL,
};
use super::nodes::{Incarnation, NodeId, NodeState, NodeTable};
use super::region::Region;
use super::sink::Sink;

/// "No next slot" in a chain link.
pub const NO_SLOT: u32 = u32::MAX;

const OWNER_FREE: u32 = 0;
const OWNER_HELD: u32 = 1 << 24;
const OWNER_QUEUED: u32 = 2 << 24;
/// Only during [`rebuild`], under the lock: a queued slot found in an
/// intact chain of the node in the low bits.
const OWNER_KEPT: u32 = 3 << 24;
/// An owner word [`rebuild`] found with the kept tag before it started
/// (a rogue's): freed like garbage.
const OWNER_STALE: u32 = 0xff << 24;
const OWNER_NODE_MASK: u32 = (1 << 24) - 1;
const META_LEN_MASK: u32 = (1 << 24) - 1;

/// Owner word of a slot held by `node`.
pub fn held_by(node: NodeId) -> u32 {
    OWNER_HELD | (node as u32 & OWNER_NODE_MASK)
}

/// Owner word of a slot queued for `node`.
pub fn queued(node: NodeId) -> u32 {
    OWNER_QUEUED | (node as u32 & OWNER_NODE_MASK)
}

/// Where an owner word says a slot is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// On the free stack.
    Free,
    /// Held by a node (its cache, or frames it is receiving).
    Held(NodeId),
    /// Queued for a node.
    Queued(NodeId),
    /// Not a valid owner word.
    Garbage,
}

impl Owner {
    /// Decodes an owner word read from the region.
    pub fn from_word(word: u32) -> Self {
        let node = (word & OWNER_NODE_MASK) as usize;
        match word & !OWNER_NODE_MASK {
            OWNER_FREE if node == 0 => Owner::Free,
            OWNER_HELD => Owner::Held(node),
            OWNER_QUEUED => Owner::Queued(node),
            _ => Owner::Garbage,
        }
    }
}

/// Typed access to the pool's buffer management words.
#[derive(Clone, Copy, Debug)]
pub struct Pool<'a> {
    /// The region.
    pub region: &'a Region,
    /// Its validated layout (configuration 2).
    pub layout: &'a Layout,
}

impl<'a> Pool<'a> {
    /// Slots in the pool.
    pub fn slot_count(&self) -> u32 {
        self.layout.geometry.slot_count
    }

    fn capacity(&self) -> u32 {
        self.layout.geometry.queue_capacity
    }

    /// Offset of `field` in slot `slot`'s descriptor (`slot < slot_count`,
    /// checked by the callers; the region checks the result).
    pub fn desc(&self, slot: u32, field: usize) -> usize {
        self.layout
            .descs
            .saturating_add((slot as usize).saturating_mul(DESC_LEN))
            .saturating_add(field)
    }

    /// Before each write to buffer management under the lock: whether
    /// `me` is still its node's life. A holder that stood still for a
    /// lease and was recovered meanwhile would otherwise write over what
    /// the recoverer rebuilt; it stops with
    /// [`ProtocolError::FencedMeanwhile`] instead.
    fn still(&self, me: Incarnation) -> Result<(), ProtocolError> {
        let nodes = NodeTable {
            region: self.region,
            layout: self.layout,
        };
        if nodes.is_current(me) {
            Ok(())
        } else {
            Err(ProtocolError::FencedMeanwhile)
        }
    }

    /// The owner word of `slot` (unvalidated).
    pub fn owner(&self, slot: u32) -> u32 {
        self.region
            .load_u32(self.desc(slot, DESC_OWNER), Ordering::Relaxed)
    }

    fn set_owner(&self, slot: u32, owner: u32) {
        self.region
            .store_u32(self.desc(slot, DESC_OWNER), owner, Ordering::Relaxed)
    }

    /// The free stack's top (unvalidated).
    pub fn free_top(&self) -> u32 {
        self.region.load_u32(self.top_off(), Ordering::Acquire)
    }

    fn top_off(&self) -> usize {
        self.layout.pool.saturating_add(FREE_TOP)
    }

    fn set_free_top(&self, top: u32) {
        self.region
            .store_u32(self.top_off(), top, Ordering::Release)
    }

    fn stack(&self, i: u32) -> usize {
        self.layout
            .pool
            .saturating_add(FREE_ENTRIES)
            .saturating_add((i as usize).saturating_mul(4))
    }

    fn queue(&self, node: NodeId) -> usize {
        self.layout
            .queues
            .saturating_add(node.saturating_mul(self.layout.queue_stride))
    }

    /// (head, tail) of `node`'s queue, read once each.
    pub fn queue_indices(&self, node: NodeId) -> (u32, u32) {
        let q = self.queue(node);
        // Acquire on tail pairs with the enqueuer's Release: entries below
        // the tail are visible.
        let tail = self
            .region
            .load_u32(q.saturating_add(QUEUE_TAIL), Ordering::Acquire);
        let head = self
            .region
            .load_u32(q.saturating_add(QUEUE_HEAD), Ordering::Acquire);
        (head, tail)
    }

    /// Sets `node`'s queue head (its own, or a repairer's).
    pub fn set_head(&self, node: NodeId, head: u32) {
        self.region.store_u32(
            self.queue(node).saturating_add(QUEUE_HEAD),
            head,
            Ordering::Release,
        )
    }

    /// Queue entry `index` of `node`: the first slot of a frame (unvalidated).
    pub fn entry(&self, node: NodeId, index: u32) -> u32 {
        self.region
            .load_u32(self.entry_off(node, index), Ordering::Relaxed)
    }

    /// Publishes entries below `tail` to `node`.
    pub fn publish_tail(&self, node: NodeId, tail: u32) {
        self.region.store_u32(
            self.queue(node).saturating_add(QUEUE_TAIL),
            tail,
            Ordering::Release,
        )
    }

    /// Offset of entry `index` of `node`'s queue.
    pub fn entry_off(&self, node: NodeId, index: u32) -> usize {
        let entry = (index & self.capacity().wrapping_sub(1)) as usize;
        self.queue(node)
            .saturating_add(QUEUE_ENTRIES)
            .saturating_add(entry.saturating_mul(4))
    }

    /// Formats the pool: every slot free, every queue empty.
    pub fn init(&self) {
        let count = self.slot_count();
        for slot in 0..count {
            self.set_owner(slot, OWNER_FREE);
            // Highest id at the bottom: slot 0 is handed out first.
            self.region.store_u32(
                self.stack(slot),
                count.saturating_sub(1).saturating_sub(slot),
                Ordering::Relaxed,
            );
        }
        self.set_free_top(count);
        for node in 0..self.layout.geometry.max_nodes as usize {
            self.set_head(node, INITIAL_INDEX);
            self.publish_tail(node, INITIAL_INDEX);
        }
    }

    /// Pops up to `n` free slots into `out` (as many as it has room for),
    /// marking them held by `me`.
    pub fn pop_free(
        &self,
        me: Incarnation,
        n: usize,
        out: &mut impl Sink<u32>,
    ) -> Result<(), ProtocolError> {
        let count = self.slot_count();
        let mut top = self.free_top();
        if top > count {
            return Err(ProtocolError::FreeStack { top, count });
        }
        let take = u32::try_from(n.min(out.room()))
            .unwrap_or(u32::MAX)
            .min(top);
        for _ in 0..take {
            // `top >= 1`: `take <= top` and each round takes one.
            let below = top.saturating_sub(1);
            let slot = self.region.load_u32(self.stack(below), Ordering::Relaxed);
            if slot >= count {
                self.set_free_top(top);
                return Err(ProtocolError::SlotOutOfRange { slot, count });
            }
            let owner = self.owner(slot);
            if owner != OWNER_FREE {
                self.still(me)?;
                self.set_free_top(top);
                return Err(ProtocolError::WrongOwner {
                    slot,
                    owner,
                    expected: OWNER_FREE,
                });
            }
            // Fenced: the slots marked so far were marked before the
            // recoverer rebuilt the stack, which took them back.
            self.still(me)?;
            self.set_owner(slot, held_by(me.node));
            out.push(slot);
            top = below;
        }
        self.still(me)?;
        self.set_free_top(top);
        Ok(())
    }

    /// Returns slots held by `me` to the free stack. Slots whose owner word
    /// no longer says so (recovered behind our back) are skipped and
    /// counted, never freed twice. They are pushed last first, so that
    /// they are popped in the order given: a chain of consecutive slots
    /// comes back as one, to be filled (and copied out) in one piece.
    pub fn push_free(&self, me: Incarnation, slots: &[u32]) -> Result<u64, ProtocolError> {
        let count = self.slot_count();
        let mut top = self.free_top();
        let mut skipped = 0u64;
        for &slot in slots.iter().rev() {
            if slot >= count || self.owner(slot) != held_by(me.node) {
                skipped = skipped.saturating_add(1);
                continue;
            }
            self.still(me)?;
            if top >= count {
                self.set_free_top(top);
                return Err(ProtocolError::FreeStack { top, count });
            }
            self.set_owner(slot, OWNER_FREE);
            self.region
                .store_u32(self.stack(top), slot, Ordering::Relaxed);
            // `top < count`, checked above.
            top = top.saturating_add(1);
        }
        self.still(me)?;
        self.set_free_top(top);
        Ok(skipped)
    }

    /// Writes one frame into a chain of slots held by the caller. No lock:
    /// the slots are the caller's alone until enqueued.
    pub fn fill(&self, me: NodeId, chain: &[u32], frame: &[u8]) {
        let slot_size = self.layout.geometry.slot_size as usize;
        let offsets = chain.iter().map(|&slot| self.layout.slot(slot));
        write_runs(self.region, frame, slot_size, offsets);
        self.describe(me, chain, frame.len());
    }

    /// Writes the descriptors of a frame of `len` bytes whose data already
    /// fills `chain` (held by the caller), in order.
    pub fn describe(&self, me: NodeId, chain: &[u32], len: usize) {
        let slot_size = self.layout.geometry.slot_size as usize;
        let mut left = len;
        let mut links = chain.iter().peekable();
        while let Some(&slot) = links.next() {
            let next = links.peek().map_or(NO_SLOT, |&&next| next);
            self.region
                .store_u32(self.desc(slot, DESC_NEXT), next, Ordering::Relaxed);
            let chunk = left.min(slot_size);
            left = left.saturating_sub(chunk);
            self.region.store_u32(
                self.desc(slot, DESC_LEN_WORD),
                chunk as u32,
                Ordering::Relaxed,
            );
        }
        if let Some(&first) = chain.first() {
            let meta = (len as u32 & META_LEN_MASK) | (me as u32) << 24;
            self.region
                .store_u32(self.desc(first, DESC_META), meta, Ordering::Relaxed);
        }
    }

    /// Appends `chain` (held by `me`) to `dest`'s queue at index `tail`.
    /// The caller checked the room and publishes the tail afterwards.
    pub fn enqueue_at(
        &self,
        me: Incarnation,
        dest: NodeId,
        tail: u32,
        chain: &[u32],
    ) -> Result<(), ProtocolError> {
        for &slot in chain {
            self.still(me)?;
            self.set_owner(slot, queued(dest));
        }
        if let Some(&first) = chain.first() {
            self.still(me)?;
            self.region
                .store_u32(self.entry_off(dest, tail), first, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The sender a frame starting at slot `first` claims, if the slot and
    /// the claim are in range (for blaming a malformed frame on someone).
    pub fn claimed_sender(&self, first: u32) -> Option<NodeId> {
        if first >= self.slot_count() {
            return None;
        }
        let meta = self
            .region
            .load_u32(self.desc(first, DESC_META), Ordering::Relaxed);
        let sender = (meta >> 24) as usize;
        (sender < self.layout.geometry.max_nodes as usize).then_some(sender)
    }

    /// Validates the chain starting at `first` in `me`'s queue, marking each
    /// slot held by `me` as it goes (so a loop meets a slot no longer queued
    /// and stops). On success the segments are appended to `segments` and
    /// (frame length, sender) returned. On failure the slots already marked
    /// are appended to `claimed` for freeing. Either sink full is
    /// [`ProtocolError::ScratchFull`], with nothing taken.
    pub fn take_chain(
        &self,
        me: Incarnation,
        first: u32,
        segments: &mut impl Sink<Segment>,
        claimed: &mut impl Sink<u32>,
    ) -> Result<(usize, Option<NodeId>), ProtocolError> {
        let max_chain = self.layout.geometry.max_chain();
        if segments.room() < max_chain as usize || claimed.room() < max_chain as usize {
            return Err(ProtocolError::ScratchFull);
        }
        let start = segments.len();
        let result = self.walk_chain(me, first, segments, claimed);
        if result.is_err() {
            segments.truncate(start);
        }
        result
    }

    fn walk_chain(
        &self,
        me: Incarnation,
        first: u32,
        segments: &mut impl Sink<Segment>,
        claimed: &mut impl Sink<u32>,
    ) -> Result<(usize, Option<NodeId>), ProtocolError> {
        let count = self.slot_count();
        let slot_size = self.layout.geometry.slot_size;
        let max_chain = self.layout.geometry.max_chain();
        if first >= count {
            return Err(ProtocolError::SlotOutOfRange { slot: first, count });
        }
        let meta = self
            .region
            .load_u32(self.desc(first, DESC_META), Ordering::Relaxed);
        let frame_len = meta & META_LEN_MASK;
        if frame_len == 0 || frame_len as usize > MAX_FRAME {
            return Err(ProtocolError::BadLength {
                len: frame_len,
                reason: "outside 1..=65600",
            });
        }
        let sender = (meta >> 24) as usize;
        let mut slot = first;
        let mut total = 0u32;
        for _ in 0..max_chain {
            let owner = self.owner(slot);
            if owner != queued(me.node) {
                self.still(me)?;
                return Err(ProtocolError::WrongOwner {
                    slot,
                    owner,
                    expected: queued(me.node),
                });
            }
            self.still(me)?;
            self.set_owner(slot, held_by(me.node));
            claimed.push(slot);
            let len = self
                .region
                .load_u32(self.desc(slot, DESC_LEN_WORD), Ordering::Relaxed);
            if len == 0 || len > slot_size {
                return Err(ProtocolError::BadLength {
                    len,
                    reason: "segment empty or larger than a slot",
                });
            }
            // Both at most 2^24: no overflow.
            total = total.saturating_add(len);
            if total > frame_len {
                return Err(ProtocolError::BadLength {
                    len: frame_len,
                    reason: "segments longer than the frame",
                });
            }
            segments.push(Segment {
                offset: self.layout.slot(slot),
                len: len as usize,
            });
            let next = self
                .region
                .load_u32(self.desc(slot, DESC_NEXT), Ordering::Relaxed);
            if next == NO_SLOT {
                if total != frame_len {
                    return Err(ProtocolError::BadLength {
                        len: frame_len,
                        reason: "segments shorter than the frame",
                    });
                }
                let sender = (sender < self.layout.geometry.max_nodes as usize).then_some(sender);
                return Ok((frame_len as usize, sender));
            }
            if next >= count {
                return Err(ProtocolError::SlotOutOfRange { slot: next, count });
            }
            slot = next;
        }
        Err(ProtocolError::ChainTooLong { max: max_chain })
    }

    /// Slots each node holds and has queued for it, by scanning the owner
    /// words into `usage` (indexed by node; inspection only, racy without
    /// the lock). Owner words naming no node of `usage` are counted apart,
    /// as garbage, and returned.
    pub fn usage(&self, usage: &mut [(u64, u64)]) -> u64 {
        let mut garbage = 0u64;
        for slot in 0..self.slot_count() {
            match Owner::from_word(self.owner(slot)) {
                Owner::Free => {}
                Owner::Held(node) => match usage.get_mut(node) {
                    Some(entry) => entry.0 = entry.0.saturating_add(1),
                    None => garbage = garbage.saturating_add(1),
                },
                Owner::Queued(node) => match usage.get_mut(node) {
                    Some(entry) => entry.1 = entry.1.saturating_add(1),
                    None => garbage = garbage.saturating_add(1),
                },
                Owner::Garbage => garbage = garbage.saturating_add(1),
            }
        }
        garbage
    }
}

/// What [`rebuild`] found and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// Slots returned to the free stack that were not on it.
    pub reclaimed: u64,
    /// Queue entries dropped (dead node's queue, or invalid).
    pub dropped: u64,
    /// Inconsistencies found (a sign of a rogue writer or a bug).
    pub errors: u64,
}

/// Recomputes the free stack and the queues from what survives: entries in
/// live nodes' queues whose chains are intact, and slots held by live nodes.
/// Everything else (a dead node's cache, its queue, half-done enqueues or
/// frees) goes back to the pool. Lock held by the caller, `me`, whose
/// heartbeat it keeps going; if `me` is fenced meanwhile (it stood still
/// for a lease in the middle), it stops before its next write: the
/// rebuild is the recoverer's then.
///
/// It needs no memory per slot: a slot of an intact chain is tagged kept in
/// its own owner word (which only lock holders change) until the last pass
/// puts the queued tag back. `chain` is scratch for one chain, at least
/// [`Geometry::max_chain`](crate::Geometry::max_chain) entries (shorter, and
/// long chains are dropped as broken).
pub fn rebuild(
    pool: &Pool<'_>,
    nodes: &NodeTable<'_>,
    is_live: &dyn Fn(NodeId) -> bool,
    me: Incarnation,
    chain: &mut [u32],
) -> RebuildReport {
    let mut report = RebuildReport::default();
    let count = pool.slot_count();
    let capacity = pool.capacity();
    let old_free = pool.free_top().min(count);

    let current = || nodes.is_current(me);
    // A kept tag before we start is someone else's scribble.
    for slot in 0..count {
        if pool.owner(slot) & !OWNER_NODE_MASK == OWNER_KEPT {
            if !current() {
                return report;
            }
            pool.set_owner(slot, OWNER_STALE);
        }
    }

    for node in 0..nodes.count() {
        if !current() {
            return report;
        }
        let (head, tail) = pool.queue_indices(node);
        let depth = tail.wrapping_sub(head);
        if !is_live(node) || depth > capacity {
            report.errors = report.errors.saturating_add(u64::from(is_live(node)));
            report.dropped = report
                .dropped
                .saturating_add(u64::from(depth.min(capacity)));
            pool.set_head(node, tail);
            continue;
        }
        // Keep the entries whose whole chain is queued for this node and
        // seen nowhere else; compact the queue over the others.
        let mut write = head;
        for index in (0..depth).map(|i| head.wrapping_add(i)) {
            if !current() {
                return report;
            }
            let first = pool.entry(node, index);
            if keep_chain(pool, node, first, chain) {
                pool.region
                    .store_u32(pool.entry_off(node, write), first, Ordering::Relaxed);
                write = write.wrapping_add(1);
            } else {
                report.errors = report.errors.saturating_add(1);
                report.dropped = report.dropped.saturating_add(1);
            }
        }
        if !current() {
            return report;
        }
        pool.publish_tail(node, write);
        nodes.beat(me.node);
    }

    let mut top = 0u32;
    for slot in 0..count {
        if !current() {
            return report;
        }
        let owner = pool.owner(slot);
        if owner & !OWNER_NODE_MASK == OWNER_KEPT {
            pool.set_owner(slot, OWNER_QUEUED | (owner & OWNER_NODE_MASK));
            continue;
        }
        if let Owner::Held(holder) = Owner::from_word(owner) {
            if holder < nodes.count() && is_live(holder) {
                continue;
            }
        }
        pool.set_owner(slot, OWNER_FREE);
        pool.region
            .store_u32(pool.stack(top), slot, Ordering::Relaxed);
        // At most `count` slots are pushed.
        top = top.saturating_add(1);
        if slot & 4095 == 0 {
            nodes.beat(me.node);
        }
    }
    if !current() {
        return report;
    }
    pool.set_free_top(top);
    report.reclaimed = u64::from(top.saturating_sub(old_free));
    report
}

/// Tags the chain from `first` kept when every slot is queued for `node`
/// (so in no chain kept before, which are tagged kept); otherwise puts
/// back the slots it tagged (recorded in `chain`, not re-read from the
/// region) and says no.
fn keep_chain(pool: &Pool<'_>, node: NodeId, first: u32, chain: &mut [u32]) -> bool {
    let count = pool.slot_count();
    let mut len = 0usize;
    let mut slot = first;
    let intact = loop {
        if slot >= count || pool.owner(slot) != queued(node) {
            break false;
        }
        let Some(cell) = chain.get_mut(len) else {
            break false; // longer than any frame
        };
        *cell = slot;
        len = len.saturating_add(1);
        pool.set_owner(slot, OWNER_KEPT | (node as u32 & OWNER_NODE_MASK));
        slot = pool
            .region
            .load_u32(pool.desc(slot, DESC_NEXT), Ordering::Relaxed);
        if slot == NO_SLOT {
            break true;
        }
    };
    if !intact {
        for &tagged in chain.get(..len).unwrap_or(&[]) {
            pool.set_owner(tagged, queued(node));
        }
    }
    intact
}

/// A node is live for recovery purposes unless it is in `Reset`.
pub fn attached<'a>(nodes: &'a NodeTable<'a>) -> impl Fn(NodeId) -> bool + 'a {
    move |n| nodes.state(n) != NodeState::Reset
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{scratch, BufferConfig, INITIAL_INDEX as BASE};
    use std::vec;
    use std::vec::Vec;

    fn rebuild_all(pool: &Pool<'_>, nodes: &NodeTable<'_>) -> RebuildReport {
        let mut chain = vec![0; pool.layout.geometry.max_chain() as usize];
        rebuild(pool, nodes, &attached(nodes), life(0), &mut chain)
    }

    /// Node `node` in its first life (generation 0, as formatted).
    fn life(node: NodeId) -> Incarnation {
        Incarnation {
            node,
            generation: 0,
        }
    }

    fn setup() -> (Region, Layout) {
        let (region, layout) = scratch(BufferConfig::SharedPool, 1 << 20, 4);
        Pool {
            region: &region,
            layout: &layout,
        }
        .init();
        (region, layout)
    }

    #[test]
    fn chain_round_trip_and_free() {
        let (region, layout) = setup();
        let pool = Pool {
            region: &region,
            layout: &layout,
        };
        let nodes = NodeTable {
            region: &region,
            layout: &layout,
        };
        nodes.set_state(1, NodeState::Run);
        let frame: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let mut chain = Vec::new();
        pool.pop_free(life(0), 3, &mut chain).unwrap();
        pool.fill(0, &chain, &frame);
        pool.enqueue_at(life(0), 1, BASE.wrapping_add(0), &chain)
            .unwrap();
        pool.publish_tail(1, BASE.wrapping_add(1));

        let mut segments = Vec::new();
        let mut claimed = Vec::new();
        let (len, src) = pool
            .take_chain(life(1), chain[0], &mut segments, &mut claimed)
            .unwrap();
        assert_eq!((len, src), (5000, Some(0)));
        assert_eq!(
            segments.iter().map(|s| s.len).collect::<Vec<_>>(),
            vec![2048, 2048, 904]
        );
        let rx = crate::frame::RxFrame::new(&region, &segments, len, src);
        assert_eq!(rx.to_vec(), frame);
        assert_eq!(pool.push_free(life(1), &claimed).unwrap(), 0);
        assert_eq!(pool.free_top(), pool.slot_count());
        // Freeing again is refused slot by slot, not a double free.
        assert_eq!(pool.push_free(life(1), &claimed).unwrap(), 3);
        assert_eq!(pool.free_top(), pool.slot_count());
    }

    #[test]
    fn loops_and_wild_links_are_caught() {
        let (region, layout) = setup();
        let pool = Pool {
            region: &region,
            layout: &layout,
        };
        let mut chain = Vec::new();
        pool.pop_free(life(0), 2, &mut chain).unwrap();
        pool.fill(0, &chain, &[7u8; 3000]);
        pool.enqueue_at(life(0), 1, BASE.wrapping_add(0), &chain)
            .unwrap();
        // Link the second slot back to the first: a loop.
        region.store_u32(pool.desc(chain[1], DESC_NEXT), chain[0], Ordering::Relaxed);
        let (mut seg, mut claimed) = (Vec::new(), Vec::new());
        let err = pool
            .take_chain(life(1), chain[0], &mut seg, &mut claimed)
            .unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::WrongOwner { .. } | ProtocolError::BadLength { .. }
            ),
            "{err}"
        );
        assert!(seg.is_empty());
        assert_eq!(
            claimed.len(),
            2,
            "the slots validated so far are ours to free"
        );

        let (mut seg, mut claimed) = (Vec::new(), Vec::new());
        let err = pool
            .take_chain(life(1), 1 << 30, &mut seg, &mut claimed)
            .unwrap_err();
        assert!(matches!(err, ProtocolError::SlotOutOfRange { .. }));
    }

    #[test]
    fn rebuild_returns_a_dead_nodes_slots_and_keeps_the_living() {
        let (region, layout) = setup();
        let pool = Pool {
            region: &region,
            layout: &layout,
        };
        let nodes = NodeTable {
            region: &region,
            layout: &layout,
        };
        for n in 0..3 {
            nodes.set_state(n, NodeState::Run);
        }
        // Node 0 holds 5 slots (its cache); node 2 has queued 2 frames for 1
        // and holds 4; node 2 then dies mid-enqueue of a third frame (owner
        // set, tail not published).
        let mut cache0 = Vec::new();
        pool.pop_free(life(0), 5, &mut cache0).unwrap();
        let mut c2 = Vec::new();
        pool.pop_free(life(2), 7, &mut c2).unwrap();
        pool.fill(2, &c2[0..1], b"one");
        pool.enqueue_at(life(2), 1, BASE.wrapping_add(0), &c2[0..1])
            .unwrap();
        pool.fill(2, &c2[1..2], b"two");
        pool.enqueue_at(life(2), 1, BASE.wrapping_add(1), &c2[1..2])
            .unwrap();
        pool.publish_tail(1, BASE.wrapping_add(2));
        pool.fill(2, &c2[2..3], b"lost");
        pool.enqueue_at(life(2), 1, BASE.wrapping_add(2), &c2[2..3])
            .unwrap();
        nodes.set_state(2, NodeState::Reset);

        let report = rebuild_all(&pool, &nodes);
        assert_eq!(
            pool.queue_indices(1),
            (BASE, BASE.wrapping_add(2)),
            "delivered frames stay queued, once"
        );
        assert_eq!(pool.free_top(), pool.slot_count() - 5 - 2);
        assert_eq!(
            report.reclaimed, 5,
            "node 2's four held slots and its half-enqueued one"
        );
        assert!(cache0.iter().all(|&s| pool.owner(s) == held_by(0)));
    }

    #[test]
    fn a_holder_fenced_meanwhile_writes_nothing_more() {
        let (region, layout) = setup();
        let pool = Pool {
            region: &region,
            layout: &layout,
        };
        let nodes = NodeTable {
            region: &region,
            layout: &layout,
        };
        nodes.set_state(0, NodeState::Run);
        nodes.set_state(1, NodeState::Run);
        let mut held = Vec::new();
        pool.pop_free(life(0), 4, &mut held).unwrap();
        // Node 0 stands still inside the lock for a lease: node 1 fences
        // it and rebuilds, so node 0's slots are free again.
        assert!(nodes.fence(0, 0));
        let mut chain = vec![0; layout.geometry.max_chain() as usize];
        rebuild(&pool, &nodes, &attached(&nodes), life(1), &mut chain);
        let snapshot = |pool: &Pool<'_>| {
            let owners: Vec<u32> = (0..pool.slot_count()).map(|s| pool.owner(s)).collect();
            let stack: Vec<u32> = (0..pool.slot_count())
                .map(|i| region.load_u32(pool.stack(i), Ordering::Relaxed))
                .collect();
            (owners, stack, pool.free_top(), pool.queue_indices(1))
        };
        let before = snapshot(&pool);
        assert_eq!(before.2, pool.slot_count(), "every slot back");

        // Node 0 runs again where it stood, in its critical section:
        // each of its writes to buffer management is refused.
        let stopped: Result<(), _> = Err(ProtocolError::FencedMeanwhile);
        let mut more = Vec::new();
        assert_eq!(pool.pop_free(life(0), 4, &mut more), stopped);
        assert!(more.is_empty());
        assert_eq!(pool.push_free(life(0), &held).map(drop), stopped);
        let (_, tail) = pool.queue_indices(1);
        assert_eq!(pool.enqueue_at(life(0), 1, tail, &held), stopped);
        let (mut seg, mut claimed) = (Vec::new(), Vec::new());
        // (Refused before any write: these slots hold no frame.)
        let taken = pool.take_chain(life(0), held[0], &mut seg, &mut claimed);
        assert!(taken.is_err() && claimed.is_empty(), "{taken:?}");
        rebuild(&pool, &nodes, &attached(&nodes), life(0), &mut chain);
        assert!(
            before == snapshot(&pool),
            "node 0 wrote after it was fenced"
        );
    }

    #[test]
    fn rebuild_keeps_queues_whose_indices_wrapped() {
        let (region, layout) = setup();
        let pool = Pool {
            region: &region,
            layout: &layout,
        };
        let nodes = NodeTable {
            region: &region,
            layout: &layout,
        };
        nodes.set_state(0, NodeState::Run);
        nodes.set_state(1, NodeState::Run);
        let start = u32::MAX - 1;
        pool.set_head(1, start);
        let mut c = Vec::new();
        pool.pop_free(life(0), 4, &mut c).unwrap();
        for (i, &slot) in c.iter().enumerate() {
            pool.fill(0, &[slot], b"w");
            pool.enqueue_at(life(0), 1, start.wrapping_add(i as u32), &[slot])
                .unwrap();
        }
        pool.publish_tail(1, start.wrapping_add(4));
        let report = rebuild_all(&pool, &nodes);
        assert_eq!(report, RebuildReport::default());
        assert_eq!(pool.queue_indices(1), (start, start.wrapping_add(4)));
        assert_eq!(pool.free_top(), pool.slot_count() - 4);
    }

    #[test]
    fn rebuild_drops_duplicate_and_garbage_entries() {
        let (region, layout) = setup();
        let pool = Pool {
            region: &region,
            layout: &layout,
        };
        let nodes = NodeTable {
            region: &region,
            layout: &layout,
        };
        nodes.set_state(0, NodeState::Run);
        nodes.set_state(1, NodeState::Run);
        let mut c = Vec::new();
        pool.pop_free(life(0), 1, &mut c).unwrap();
        pool.fill(0, &c, b"x");
        pool.enqueue_at(life(0), 1, BASE.wrapping_add(0), &c)
            .unwrap();
        // A rogue duplicates the entry and adds a wild one.
        region.store_u32(
            pool.entry_off(1, BASE.wrapping_add(1)),
            c[0],
            Ordering::Relaxed,
        );
        region.store_u32(
            pool.entry_off(1, BASE.wrapping_add(2)),
            0xdead_beef,
            Ordering::Relaxed,
        );
        pool.publish_tail(1, BASE.wrapping_add(3));
        let report = rebuild_all(&pool, &nodes);
        assert_eq!(pool.queue_indices(1), (BASE, BASE.wrapping_add(1)));
        assert_eq!(report.errors, 2);
        assert_eq!(pool.free_top(), pool.slot_count() - 1);
    }
}
