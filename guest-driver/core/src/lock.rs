//! The region lock: guards the buffer management and address management
//! parts, as the study prescribes (frame bytes are copied without it).
//!
//! A ticket lock, so nodes are served in arrival order and none starves.
//! Its words live in the region:
//!
//! | offset | word          | meaning                                        |
//! |--------|---------------|------------------------------------------------|
//! | 0      | `next_ticket` | u32, `fetch_add` by each node that wants in    |
//! | 4      | `now_serving` | u32, the ticket whose turn it is               |
//! | 8      | `holder`      | u64, (ticket << 32) \| (node + 1) << 16 \| gen |
//! | 16     | `recoveries`  | u64, dead holders recovered from               |
//!
//! A node publishes the ticket it waits for in its node table entry. When a
//! ticket's turn comes, its node claims it by compare-and-swap of `holder`.
//!
//! Recovery: a waiter watches the node whose turn it is. When that node's
//! heartbeat stands still for the lease (it died holding or waiting), or the
//! turn is never claimed for a lease (it died between taking the ticket and
//! publishing it), or one holder keeps the lock for four leases (a hog), the
//! waiter claims the stuck ticket itself with the same compare-and-swap, so
//! at most one node recovers it. It fences the dead node (state `Reset`,
//! generation + 1), repairs what that node may have left half done, and
//! passes the turn on. A fenced node that wakes up finds its generation or
//! its ticket gone and gets [`LockError::Fenced`] instead of the lock.

use core::fmt;
use core::sync::atomic::{fence, Ordering};
use core::time::Duration;

use super::layout::{
    Layout, INITIAL_INDEX, LOCK_HOLDER as HOLDER, LOCK_NEXT_TICKET as NEXT_TICKET,
    LOCK_NOW_SERVING as NOW_SERVING, LOCK_RECOVERIES as RECOVERIES,
    LOCK_RECOVERIES_CHECK as RECOVERIES_CHECK, NODE_TICKET, NODE_WAITING,
};
use super::nodes::{Liveness, NodeId, NodeTable, Stall};
use super::platform::Platform;
use super::region::Region;

/// Leases after which a waiter gives up: far longer than any recovery takes.
const TIMEOUT_LEASES: u32 = 30;

/// Errors from taking or releasing the region lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockError {
    /// Peers declared this node dead (its heartbeat stopped for a lease) and
    /// reclaimed its buffers; it must attach again.
    Fenced,
    /// The lock words made no progress for far longer than any recovery takes.
    Timeout(Duration),
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::Fenced => write!(
                f,
                "This node was declared dead by its peers and must attach again"
            ),
            LockError::Timeout(after) => write!(
                f,
                "Region lock not obtained within {after:?}: its words are corrupt"
            ),
        }
    }
}

impl core::error::Error for LockError {}

/// Who holds the lock, decoded from the holder word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Holder {
    /// The ticket being served.
    pub ticket: u32,
    /// The node that claimed it (`None` when the word names no valid node).
    pub node: Option<NodeId>,
    /// The low 16 bits of that node's generation when it claimed it.
    pub generation: u16,
}

fn encode(ticket: u32, node: NodeId, generation: u32) -> u64 {
    // `node < 64`, so `node + 1` fits the 16 bits it is given.
    let node_field = (node as u64).wrapping_add(1) & 0xffff;
    (u64::from(ticket) << 32) | (node_field << 16) | u64::from(generation as u16)
}

fn decode(word: u64, max_nodes: usize) -> Holder {
    let node = ((word >> 16) & 0xffff) as usize;
    Holder {
        ticket: (word >> 32) as u32,
        node: node.checked_sub(1).filter(|&n| n < max_nodes),
        generation: word as u16,
    }
}

/// A snapshot of the lock words, for inspection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct LockStatus {
    /// Next ticket to be handed out.
    pub next_ticket: u32,
    /// Ticket being served.
    pub now_serving: u32,
    /// Last claimed holder.
    pub holder: Holder,
    /// Is a node inside the critical section right now?
    pub held: bool,
    /// Dead holders recovered from, ever.
    pub recoveries: u64,
    /// Whether `recoveries` passes its check word (false: a peer
    /// scribbled over it; the next holder puts the last valid count back).
    pub recoveries_valid: bool,
}

/// What a node remembers of the lock's words between its turns: the last
/// valid recoveries count, put back if the words are scribbled over.
#[derive(Clone, Copy, Debug, Default)]
pub struct LockMemory {
    recoveries: u64,
}

/// Proof that the lock is held; give it back with [`RegionLock::unlock`].
#[derive(Debug)]
#[must_use = "the lock stays held until passed to unlock"]
pub struct Ticket(u32);

/// Access to the lock words of one region.
#[derive(Clone, Copy, Debug)]
pub struct RegionLock<'a> {
    pub region: &'a Region,
    pub layout: &'a Layout,
}

impl<'a> RegionLock<'a> {
    fn off(&self, word: usize) -> usize {
        self.layout.lock.saturating_add(word)
    }

    fn nodes(&self) -> NodeTable<'a> {
        NodeTable {
            region: self.region,
            layout: self.layout,
        }
    }

    /// Initial lock words; only the formatter calls this.
    pub fn init(&self) {
        let first = INITIAL_INDEX;
        self.region
            .store_u32(self.off(NEXT_TICKET), first, Ordering::Relaxed);
        self.region
            .store_u32(self.off(NOW_SERVING), first, Ordering::Relaxed);
        // The ticket before the first, no node: the first starts unclaimed.
        self.region.store_u64(
            self.off(HOLDER),
            u64::from(first.wrapping_sub(1)) << 32,
            Ordering::Relaxed,
        );
        self.store_recoveries(0);
    }

    /// The recoveries count, `None` when its check word disagrees (a
    /// scribble).
    fn recoveries(&self) -> Option<u64> {
        let count = self
            .region
            .load_u64(self.off(RECOVERIES), Ordering::Relaxed);
        let check = self
            .region
            .load_u64(self.off(RECOVERIES_CHECK), Ordering::Relaxed);
        (check == !count).then_some(count)
    }

    fn store_recoveries(&self, count: u64) {
        self.region
            .store_u64(self.off(RECOVERIES), count, Ordering::Relaxed);
        self.region
            .store_u64(self.off(RECOVERIES_CHECK), !count, Ordering::Relaxed);
    }

    /// With the lock held: remembers a valid recoveries count in `memory`,
    /// or puts back the one remembered when the words were scribbled over,
    /// as the other lock words heal. True when it healed them.
    pub fn heal_stats(&self, memory: &mut LockMemory) -> bool {
        match self.recoveries() {
            Some(count) => {
                memory.recoveries = count;
                false
            }
            None => {
                self.store_recoveries(memory.recoveries);
                true
            }
        }
    }

    /// The lock words as they are now.
    pub fn status(&self) -> LockStatus {
        let now_serving = self
            .region
            .load_u32(self.off(NOW_SERVING), Ordering::Acquire);
        let holder = decode(
            self.region.load_u64(self.off(HOLDER), Ordering::Acquire),
            self.nodes().count(),
        );
        LockStatus {
            next_ticket: self
                .region
                .load_u32(self.off(NEXT_TICKET), Ordering::Acquire),
            now_serving,
            holder,
            held: holder.ticket == now_serving && holder.node.is_some(),
            recoveries: self
                .region
                .load_u64(self.off(RECOVERIES), Ordering::Relaxed),
            recoveries_valid: self.recoveries().is_some(),
        }
    }

    /// Takes the lock for node `me` of `generation`.
    ///
    /// While waiting it keeps `me`'s heartbeat going and recovers stuck
    /// tickets: for each, `repair` is called with the lock held and the dead
    /// node (if one could be named), already fenced.
    pub fn lock(
        &self,
        me: NodeId,
        generation: u32,
        liveness: &mut Liveness,
        platform: &dyn Platform,
        repair: &mut dyn FnMut(Option<NodeId>),
    ) -> Result<Ticket, LockError> {
        let nodes = self.nodes();
        let lease = liveness.lease();
        let timeout = lease.saturating_mul(TIMEOUT_LEASES);
        let deadline = platform.now().saturating_add(timeout);
        let mut stall = Stall::default();
        let mut rounds = 0u32;
        let mut spins = 0u32;
        let mut ticket = self.take_ticket(me);
        loop {
            let serving = self
                .region
                .load_u32(self.off(NOW_SERVING), Ordering::Acquire);
            let holder_word = self.region.load_u64(self.off(HOLDER), Ordering::Acquire);
            let holder = decode(holder_word, nodes.count());
            if serving == ticket && holder.ticket != ticket {
                let mine = encode(ticket, me, generation);
                if self
                    .region
                    .cas_u64(self.off(HOLDER), holder_word, mine, Ordering::AcqRel)
                    .is_ok()
                {
                    self.region.store_u32(
                        nodes.layout.node(me, NODE_WAITING),
                        0,
                        Ordering::Relaxed,
                    );
                    if nodes.generation(me) != generation {
                        // Fenced while waiting; hand the turn on untouched.
                        self.pass(ticket);
                        return Err(LockError::Fenced);
                    }
                    return Ok(Ticket(ticket));
                }
                continue;
            }
            if (serving.wrapping_sub(ticket) as i32) >= 0 {
                let next = self
                    .region
                    .load_u32(self.off(NEXT_TICKET), Ordering::Acquire);
                if (serving.wrapping_sub(next) as i32) > 0 {
                    // `now_serving` is past every ticket ever handed out:
                    // the words were scribbled. Pull the turn back to ours.
                    let _ = self.region.cas_u32(
                        self.off(NOW_SERVING),
                        serving,
                        ticket,
                        Ordering::AcqRel,
                    );
                    continue;
                }
                // Our turn was claimed by another node, or went by without
                // us: either we were fenced, or we queue again.
                ticket = self.requeue_or_fenced(me, generation)?;
            }

            spins = spins.wrapping_add(1);
            if spins & 63 == 0 {
                nodes.beat(me);
                // Our ticket and flag are ours alone: put them back if
                // someone scribbled over them, or nobody can pass us the
                // turn past garbage tickets.
                if self
                    .region
                    .load_u32(nodes.layout.node(me, NODE_TICKET), Ordering::Relaxed)
                    != ticket
                    || self
                        .region
                        .load_u32(nodes.layout.node(me, NODE_WAITING), Ordering::Relaxed)
                        != 1
                {
                    self.announce(me, ticket);
                }
                // A ticket past `next_ticket` was never handed out as far
                // as the lock knows (the words were scribbled since): it
                // would be served only after billions of turns. Queue again.
                let next = self
                    .region
                    .load_u32(self.off(NEXT_TICKET), Ordering::Acquire);
                if (ticket.wrapping_sub(next) as i32) >= 0 {
                    ticket = self.requeue_or_fenced(me, generation)?;
                    continue;
                }
                let now = platform.now();
                if now >= deadline {
                    self.region.store_u32(
                        nodes.layout.node(me, NODE_WAITING),
                        0,
                        Ordering::Relaxed,
                    );
                    return Err(LockError::Timeout(timeout));
                }
                let claimed = holder.ticket == serving;
                let candidate = if claimed {
                    holder.node
                } else {
                    self.waiter_with(serving)
                };
                // Any change of the turn or of its holder restarts the
                // clock: a waiter that took a dead holder's turn to repair
                // gets a stall of its own, not the dead holder's.
                let key = holder_word ^ u64::from(serving).rotate_left(17);
                // Some(node to fence, if any) when the turn must be taken.
                let verdict = match candidate {
                    Some(node) if node != me && liveness.is_dead(&nodes, node, now) => {
                        Some(Some(node))
                    }
                    // Named as holder while it waits for another turn: a
                    // forged holder word. Taken back, nobody fenced.
                    Some(node)
                        if node != me
                            && claimed
                            && self.announced().any(|(n, t)| n == node && t != serving) =>
                    {
                        stall.stuck(key, now, lease).then_some(None)
                    }
                    // A hog: fenced.
                    Some(node) if node != me && claimed => stall
                        .stuck(key, now, lease.saturating_mul(4))
                        .then_some(Some(node)),
                    // A live waiter that does not take its turn (its ticket
                    // word was scribbled, say): skipped, not fenced; it
                    // queues again.
                    Some(node) if node != me => stall
                        .stuck(key, now, lease.saturating_mul(2))
                        .then_some(None),
                    // Nobody, or us, which is a scribble: we are here.
                    _ => stall.stuck(key, now, lease).then_some(None),
                };
                if let Some(dead) = verdict {
                    self.recover(
                        (serving, holder_word),
                        dead,
                        (me, ticket, generation),
                        liveness,
                        repair,
                    );
                }
            }
            platform.pause(rounds);
            rounds = rounds.saturating_add(1);
        }
    }

    /// Our ticket was skipped or taken. If our generation moved on we were
    /// fenced; otherwise we queue again with a new ticket.
    fn requeue_or_fenced(&self, me: NodeId, generation: u32) -> Result<u32, LockError> {
        if self.nodes().generation(me) != generation {
            self.region
                .store_u32(self.layout.node(me, NODE_WAITING), 0, Ordering::Relaxed);
            return Err(LockError::Fenced);
        }
        Ok(self.take_ticket(me))
    }

    fn take_ticket(&self, me: NodeId) -> u32 {
        let ticket = self
            .region
            .fetch_add_u32(self.off(NEXT_TICKET), 1, Ordering::AcqRel);
        self.announce(me, ticket);
        ticket
    }

    /// Says that `me` waits for `ticket`.
    fn announce(&self, me: NodeId, ticket: u32) {
        // Ticket first, then the flag with Release: a reader that sees the
        // flag (Acquire) sees this ticket.
        self.region
            .store_u32(self.layout.node(me, NODE_TICKET), ticket, Ordering::Relaxed);
        self.region
            .store_u32(self.layout.node(me, NODE_WAITING), 1, Ordering::Release);
    }

    /// (node, ticket) of every node that announced it waits: the flag is
    /// read with Acquire first, so the ticket read after it is the one
    /// published before the flag.
    fn announced(&self) -> impl Iterator<Item = (NodeId, u32)> + '_ {
        (0..self.nodes().count())
            .filter(|&n| {
                self.region
                    .load_u32(self.layout.node(n, NODE_WAITING), Ordering::Acquire)
                    == 1
            })
            .map(|n| {
                (
                    n,
                    self.region
                        .load_u32(self.layout.node(n, NODE_TICKET), Ordering::Relaxed),
                )
            })
    }

    /// The node that announced it waits for `ticket`, if any.
    fn waiter_with(&self, ticket: u32) -> Option<NodeId> {
        self.announced().find(|&(_, t)| t == ticket).map(|(n, _)| n)
    }

    /// Takes the `stuck` turn (its holder word as read) for `me`, waiting
    /// with `ticket`, fences `dead` if named, repairs, and moves the turn
    /// on.
    fn recover(
        &self,
        (stuck, holder_word): (u32, u64),
        dead: Option<NodeId>,
        (me, ticket, generation): (NodeId, u32, u32),
        liveness: &mut Liveness,
        repair: &mut dyn FnMut(Option<NodeId>),
    ) {
        let nodes = self.nodes();
        let dead_generation = dead.map(|n| nodes.generation(n));
        let mine = encode(stuck, me, generation);
        if self
            .region
            .cas_u64(self.off(HOLDER), holder_word, mine, Ordering::AcqRel)
            .is_err()
        {
            return; // the owner woke up, or another waiter recovers it
        }
        // While it repairs, the recoverer is the turn's holder, and says
        // it waits for nothing: otherwise the other waiters would read
        // "holder of one turn, waiting for another" (the sign of a forged
        // holder word) and take the turn back in the middle of the
        // repair, two repairs at once.
        self.region
            .store_u32(nodes.layout.node(me, NODE_WAITING), 0, Ordering::Release);
        // The dead node's last writes were never released to us; it has
        // stopped, so a full fence is enough to read what it left.
        fence(Ordering::SeqCst);
        if let (Some(node), Some(gen)) = (dead, dead_generation) {
            nodes.fence(node, gen);
            liveness.forget(node);
        }
        repair(dead);
        // A scribbled count is left for the next holder to put back.
        if let Some(count) = self.recoveries() {
            self.store_recoveries(count.wrapping_add(1));
        }
        // A turn nobody announced may be one of many garbage tickets (a
        // rogue moved `next_ticket`): jump to the nearest announced waiter
        // instead of waiting a lease for each. A node that took a ticket in
        // between but had not announced it yet finds it passed and queues
        // again.
        let next = match dead {
            Some(_) => stuck.wrapping_add(1),
            None => self
                .nearest_waiter_after(stuck, ticket)
                .unwrap_or(stuck.wrapping_add(1)),
        };
        let _ = self
            .region
            .cas_u32(self.off(NOW_SERVING), stuck, next, Ordering::Release);
        // Waiting for our own turn again.
        self.announce(me, ticket);
    }

    /// The smallest ticket after `ticket` that a node announced, or that
    /// is `mine` (a recoverer is not announced while it repairs).
    fn nearest_waiter_after(&self, ticket: u32, mine: u32) -> Option<u32> {
        self.announced()
            .map(|(_, t)| t)
            .chain(core::iter::once(mine))
            .filter(|&t| (t.wrapping_sub(ticket) as i32) > 0)
            .min_by_key(|&t| t.wrapping_sub(ticket))
    }

    /// Passes the turn from `ticket` to the next one.
    fn pass(&self, ticket: u32) {
        // Release: the critical section's writes are visible to the next
        // holder, which loads `now_serving` with Acquire.
        let _ = self.region.cas_u32(
            self.off(NOW_SERVING),
            ticket,
            ticket.wrapping_add(1),
            Ordering::Release,
        );
    }

    /// Releases the lock. Fails with `Fenced` when peers took it from us.
    pub fn unlock(&self, ticket: Ticket, me: NodeId, generation: u32) -> Result<(), LockError> {
        let holder = self.region.load_u64(self.off(HOLDER), Ordering::Acquire);
        if holder != encode(ticket.0, me, generation) {
            return Err(LockError::Fenced);
        }
        let off = self.off(NOW_SERVING);
        self.region
            .cas_u32(off, ticket.0, ticket.0.wrapping_add(1), Ordering::Release)
            .map(drop)
            .map_err(|_| LockError::Fenced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{BufferConfig, Geometry};
    use crate::nodes::NodeState;
    use crate::platform::testing::Host;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    use std::time::Instant;
    use std::vec;
    use std::vec::Vec;

    fn setup(lease_ms: u32) -> (Arc<Region>, Layout) {
        let region = Arc::new(crate::region::testing::region(1 << 20));
        let mut g = Geometry::fit(BufferConfig::SharedPool, 1 << 20, 4, 2048).unwrap();
        g.lease_ms = lease_ms;
        let layout = Layout::new(&g, 1 << 20).unwrap();
        RegionLock {
            region: &region,
            layout: &layout,
        }
        .init();
        (region, layout)
    }

    fn no_repair(_: Option<NodeId>) {
        panic!("nothing should need repair")
    }

    #[test]
    fn excludes_and_serves_in_order() {
        let (region, layout) = setup(1000);
        let inside = Arc::new(AtomicU64::new(0));
        let total = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|me| {
                let (region, inside, total) = (region.clone(), inside.clone(), total.clone());
                std::thread::spawn(move || {
                    let lock = RegionLock {
                        region: &region,
                        layout: &layout,
                    };
                    let gen = NodeTable {
                        region: &region,
                        layout: &layout,
                    }
                    .next_generation(me);
                    let mut live = Liveness::new(Duration::from_secs(1));
                    for _ in 0..2000 {
                        let t = lock
                            .lock(me, gen, &mut live, &Host::new(), &mut no_repair)
                            .unwrap();
                        assert_eq!(
                            inside.fetch_add(1, Ordering::SeqCst),
                            0,
                            "two holders at once"
                        );
                        total.fetch_add(1, Ordering::Relaxed);
                        inside.fetch_sub(1, Ordering::SeqCst);
                        lock.unlock(t, me, gen).unwrap();
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(total.load(Ordering::Relaxed), 8000);
        let status = RegionLock {
            region: &region,
            layout: &layout,
        }
        .status();
        let first = INITIAL_INDEX;
        assert_eq!(status.next_ticket, first.wrapping_add(8000));
        assert_eq!(status.now_serving, first.wrapping_add(8000));
        assert!(!status.held);
    }

    /// Two waiters outlive a dead holder: one of them repairs, slowly
    /// (two leases), and the other must not take the turn back meanwhile
    /// (it once read the recoverer as a forged holder, and two repairs
    /// ran at once).
    #[test]
    fn one_waiter_repairs_and_the_other_lets_it_finish() {
        let (region, layout) = setup(50);
        let nodes = NodeTable {
            region: &region,
            layout: &layout,
        };
        let dead_gen = nodes.next_generation(1);
        nodes.set_state(1, NodeState::Run);
        let lock = RegionLock {
            region: &region,
            layout: &layout,
        };
        let mut live = Liveness::new(Duration::from_millis(50));
        let _abandoned = lock
            .lock(1, dead_gen, &mut live, &Host::new(), &mut no_repair)
            .unwrap();
        let inside = Arc::new(AtomicU64::new(0));
        let repairs = Arc::new(AtomicU64::new(0));
        let waiters: Vec<_> = [0usize, 2]
            .into_iter()
            .map(|me| {
                let (region, inside, repairs) = (region.clone(), inside.clone(), repairs.clone());
                std::thread::spawn(move || {
                    let lock = RegionLock {
                        region: &region,
                        layout: &layout,
                    };
                    let gen = NodeTable {
                        region: &region,
                        layout: &layout,
                    }
                    .next_generation(me);
                    let mut live = Liveness::new(Duration::from_millis(50));
                    let t = lock
                        .lock(me, gen, &mut live, &Host::new(), &mut |dead| {
                            assert_eq!(dead, Some(1), "only the dead holder is repaired");
                            assert_eq!(
                                inside.fetch_add(1, Ordering::SeqCst),
                                0,
                                "two repairs at once"
                            );
                            repairs.fetch_add(1, Ordering::SeqCst);
                            // A repair beats as it goes, as `rebuild` does.
                            let nodes = NodeTable {
                                region: &region,
                                layout: &layout,
                            };
                            for _ in 0..10 {
                                nodes.beat(me);
                                std::thread::sleep(Duration::from_millis(10));
                            }
                            inside.fetch_sub(1, Ordering::SeqCst);
                        })
                        .unwrap();
                    lock.unlock(t, me, gen).unwrap();
                })
            })
            .collect();
        waiters.into_iter().for_each(|t| t.join().unwrap());
        assert_eq!(repairs.load(Ordering::SeqCst), 1);
        assert_eq!(lock.status().recoveries, 1);
    }

    #[test]
    fn a_dead_holder_is_fenced_and_repaired() {
        let (region, layout) = setup(50);
        let lock = RegionLock {
            region: &region,
            layout: &layout,
        };
        let nodes = NodeTable {
            region: &region,
            layout: &layout,
        };
        let dead_gen = nodes.next_generation(1);
        nodes.set_state(1, NodeState::Run);
        let mut live = Liveness::new(Duration::from_millis(50));
        let _abandoned = lock
            .lock(1, dead_gen, &mut live, &Host::new(), &mut no_repair)
            .unwrap();

        let gen = nodes.next_generation(0);
        let mut repaired = Vec::new();
        let started = Instant::now();
        let t = lock
            .lock(0, gen, &mut live, &Host::new(), &mut |dead| {
                repaired.push(dead)
            })
            .unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(50),
            "recovered before the lease ran out"
        );
        assert_eq!(repaired, vec![Some(1)]);
        assert_eq!(nodes.state(1), NodeState::Reset);
        lock.unlock(t, 0, gen).unwrap();
        assert_eq!(lock.status().recoveries, 1);

        // The dead node wakes up: it cannot release, nor take the lock again.
        assert_eq!(lock.unlock(Ticket(0), 1, dead_gen), Err(LockError::Fenced));
        assert_eq!(
            lock.lock(1, dead_gen, &mut live, &Host::new(), &mut no_repair)
                .map(drop),
            Err(LockError::Fenced)
        );
    }

    #[test]
    fn a_ticket_nobody_claims_is_skipped_after_a_lease() {
        let (region, layout) = setup(30);
        let lock = RegionLock {
            region: &region,
            layout: &layout,
        };
        // A node took ticket 0 and died before announcing it.
        region.fetch_add_u32(layout.lock + NEXT_TICKET, 1, Ordering::AcqRel);
        let gen = NodeTable {
            region: &region,
            layout: &layout,
        }
        .next_generation(2);
        let mut live = Liveness::new(Duration::from_millis(30));
        let mut repairs = 0;
        let t = lock.lock(2, gen, &mut live, &Host::new(), &mut |dead| {
            assert_eq!(dead, None);
            repairs += 1;
        });
        assert!(t.is_ok());
        assert_eq!(repairs, 1);
    }

    #[test]
    fn scribbled_lock_words_cost_at_most_a_lease() {
        let (region, layout) = setup(30);
        let lock = RegionLock {
            region: &region,
            layout: &layout,
        };
        let gen = NodeTable {
            region: &region,
            layout: &layout,
        }
        .next_generation(1);
        let mut live = Liveness::new(Duration::from_millis(30));
        let limit = Duration::from_millis(30 * 4);
        for (next, serving) in [(1_000_000_000, 5), (5, 1_000_000_000), (7, 7)] {
            region.store_u32(layout.lock + NEXT_TICKET, next, Ordering::Relaxed);
            region.store_u32(layout.lock + NOW_SERVING, serving, Ordering::Relaxed);
            let started = Instant::now();
            let t = lock
                .lock(1, gen, &mut live, &Host::new(), &mut |_| {})
                .unwrap();
            lock.unlock(t, 1, gen).unwrap();
            let took = started.elapsed();
            assert!(took < limit, "next {next} serving {serving}: {took:?}");
        }
    }

    #[test]
    fn a_turn_scribbled_onto_us_or_a_live_bystander_is_taken_back() {
        let (region, layout) = setup(30);
        let lock = RegionLock {
            region: &region,
            layout: &layout,
        };
        let nodes = NodeTable {
            region: &region,
            layout: &layout,
        };
        let gen = nodes.next_generation(1);
        let mut live = Liveness::new(Duration::from_millis(30));
        let serving = region.load_u32(layout.lock + NOW_SERVING, Ordering::Relaxed);
        // The holder word names us with the turn being served; then a live
        // node (its heartbeat moving) announced with the served ticket but
        // waiting for another. Neither may keep us out for 30 leases.
        for bystander in [false, true] {
            let serving = serving.wrapping_add(u32::from(bystander) * 3);
            region.store_u32(layout.lock + NOW_SERVING, serving, Ordering::Relaxed);
            region.store_u32(
                layout.lock + NEXT_TICKET,
                serving.wrapping_add(1),
                Ordering::Relaxed,
            );
            if bystander {
                region.store_u32(layout.node(3, NODE_TICKET), serving, Ordering::Relaxed);
                region.store_u32(layout.node(3, NODE_WAITING), 1, Ordering::Release);
            } else {
                region.store_u64(
                    layout.lock + HOLDER,
                    encode(serving, 1, gen),
                    Ordering::Relaxed,
                );
            }
            let beating = std::sync::atomic::AtomicBool::new(true);
            let started = Instant::now();
            std::thread::scope(|s| {
                s.spawn(|| {
                    while beating.load(Ordering::Relaxed) {
                        nodes.beat(3);
                        std::thread::sleep(Duration::from_millis(1));
                    }
                });
                let t = lock.lock(1, gen, &mut live, &Host::new(), &mut |dead| {
                    assert_eq!(dead, None)
                });
                beating.store(false, Ordering::Relaxed);
                lock.unlock(t.unwrap(), 1, gen).unwrap();
            });
            let took = started.elapsed();
            assert!(
                took < Duration::from_millis(30 * 5),
                "bystander {bystander}: {took:?}"
            );
            assert_eq!(nodes.state(3), NodeState::Reset, "not fenced");
            assert_eq!(nodes.generation(3), 0, "not fenced");
        }
    }

    #[test]
    fn holder_words_decode_defensively() {
        assert_eq!(
            decode(encode(5, 3, 0x1_0007), 4),
            Holder {
                ticket: 5,
                node: Some(3),
                generation: 7
            }
        );
        assert_eq!(
            decode(u64::MAX, 4).node,
            None,
            "node 0xffff is out of range"
        );
        assert_eq!(decode(0, 4).node, None);
    }
}
