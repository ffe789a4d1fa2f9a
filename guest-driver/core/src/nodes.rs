//! The node state table: each node's state, generation, heartbeat, MAC,
//! lock ticket and counters.
//!
//! Guests cannot see which peers exist (ivshmem tells them nothing), so the
//! table is the only source of membership. A node writes its own entry; the
//! exception is fencing, where the holder of the region lock declares a node
//! dead by resetting its state and bumping its generation (compare-and-swap,
//! so a node that comes back sees that it was fenced).
//!
//! Liveness uses no shared clock: a node bumps its heartbeat counter, and an
//! observer declares it dead when the counter has not moved for the lease,
//! measured on the observer's own monotonic clock ([`Liveness`]).

use core::sync::atomic::Ordering;
use core::time::Duration;

use super::layout::{
    Layout, MAX_NODES, NODE_COUNTERS, NODE_COUNTER_COUNT, NODE_DOORBELL, NODE_GENERATION,
    NODE_HEARTBEAT, NODE_MAC, NODE_SLEEPING, NODE_STATE, NODE_WAITING,
};
use super::platform::Instant;
use super::region::Region;

/// A node's index in the table.
pub type NodeId = usize;

/// Life cycle of a node, as in Jailhouse's ivshmem-net: carrier only when
/// both ends are in [`NodeState::Run`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum NodeState {
    /// Not attached (never was, detached, or declared dead).
    Reset = 0,
    /// Attached, setting up.
    Init = 1,
    /// Set up, not yet carrying traffic.
    Ready = 2,
    /// Carrying traffic: peers send to it.
    Run = 3,
}

impl NodeState {
    /// Decodes a state word read from the region; `None` for garbage.
    pub fn from_word(word: u32) -> Option<Self> {
        match word {
            0 => Some(NodeState::Reset),
            1 => Some(NodeState::Init),
            2 => Some(NodeState::Ready),
            3 => Some(NodeState::Run),
            _ => None,
        }
    }
}

/// Counters each node publishes in its table entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Counters {
    /// Frames handed to the region.
    pub tx_frames: u64,
    /// Bytes handed to the region.
    pub tx_bytes: u64,
    /// Frames taken from the region.
    pub rx_frames: u64,
    /// Bytes taken from the region.
    pub rx_bytes: u64,
    /// Frames dropped on send: no slot, full queue or peer not running.
    pub tx_dropped: u64,
    /// Frames dropped on receive (failed validation).
    pub rx_dropped: u64,
    /// Protocol violations seen in values read from the region.
    pub protocol_errors: u64,
    /// Dead nodes this node recovered from.
    pub recoveries: u64,
}

impl Counters {
    const FIELDS: usize = NODE_COUNTER_COUNT;
    /// More frames, drops, errors or recoveries than any node could count
    /// (2^48: 15 million frames a second for seven months).
    const MAX_EVENTS: u64 = 1 << 48;

    /// Whether these counters could be a node's own: each below a bound
    /// no run reaches, and bytes between one and the largest frame per
    /// frame. A node writes only its own counters, so values that fail are
    /// a misbehaving writer's; `Err` names the first that fails.
    pub fn check(&self) -> Result<(), &'static str> {
        let events = [
            ("tx_frames", self.tx_frames),
            ("rx_frames", self.rx_frames),
            ("tx_dropped", self.tx_dropped),
            ("rx_dropped", self.rx_dropped),
            ("protocol_errors", self.protocol_errors),
            ("recoveries", self.recoveries),
        ];
        if let Some((name, _)) = events.iter().find(|(_, v)| *v >= Self::MAX_EVENTS) {
            return Err(name);
        }
        let fits = |frames: u64, bytes: u64| {
            bytes >= frames && bytes <= frames.saturating_mul(super::layout::MAX_FRAME as u64)
        };
        if !fits(self.tx_frames, self.tx_bytes) {
            return Err("tx_bytes");
        }
        if !fits(self.rx_frames, self.rx_bytes) {
            return Err("rx_bytes");
        }
        Ok(())
    }

    /// Counts a frame of `len` bytes handed to a receiver.
    pub fn add_sent(&mut self, len: usize) {
        self.tx_frames = self.tx_frames.saturating_add(1);
        self.tx_bytes = self.tx_bytes.saturating_add(len as u64);
    }

    /// Counts a frame of `len` bytes delivered.
    pub fn add_received(&mut self, len: usize) {
        self.rx_frames = self.rx_frames.saturating_add(1);
        self.rx_bytes = self.rx_bytes.saturating_add(len as u64);
    }

    /// The counters in the order the node entry stores them.
    pub fn to_array(self) -> [u64; Self::FIELDS] {
        [
            self.tx_frames,
            self.tx_bytes,
            self.rx_frames,
            self.rx_bytes,
            self.tx_dropped,
            self.rx_dropped,
            self.protocol_errors,
            self.recoveries,
        ]
    }

    /// Counters from the words a node entry stores.
    pub fn from_array(words: [u64; Self::FIELDS]) -> Self {
        let [tx_frames, tx_bytes, rx_frames, rx_bytes, tx_dropped, rx_dropped, protocol_errors, recoveries] =
            words;
        Counters {
            tx_frames,
            tx_bytes,
            rx_frames,
            rx_bytes,
            tx_dropped,
            rx_dropped,
            protocol_errors,
            recoveries,
        }
    }
}

/// One life of a node: its id and the generation it attached in. Peers
/// that declare it dead move its generation on; a lock holder that stood
/// still for a lease (a guest the host did not run) may run again inside
/// its critical section after the recoverer rebuilt what it was
/// changing, so it looks before each write to buffer management
/// ([`NodeTable::is_current`]) and stops once it is not current.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Incarnation {
    /// The node.
    pub node: NodeId,
    /// The generation it attached in.
    pub generation: u32,
}

/// Typed access to the node table of one region.
#[derive(Clone, Copy, Debug)]
pub struct NodeTable<'a> {
    pub region: &'a Region,
    pub layout: &'a Layout,
}

impl NodeTable<'_> {
    pub fn count(&self) -> usize {
        self.layout.geometry.max_nodes as usize
    }

    /// The raw state word, for readers that must tell garbage apart.
    pub fn state_word(&self, node: NodeId) -> u32 {
        self.region
            .load_u32(self.layout.node(node, NODE_STATE), Ordering::Acquire)
    }

    /// The node's state; garbage reads as `Reset` (not a peer to talk to).
    pub fn state(&self, node: NodeId) -> NodeState {
        NodeState::from_word(self.state_word(node)).unwrap_or(NodeState::Reset)
    }

    pub fn set_state(&self, node: NodeId, state: NodeState) {
        // Release: whatever the node set up before announcing the state
        // (its queue, its address entry) is visible to readers of the state.
        self.region.store_u32(
            self.layout.node(node, NODE_STATE),
            state as u32,
            Ordering::Release,
        )
    }

    pub fn generation(&self, node: NodeId) -> u32 {
        self.region
            .load_u32(self.layout.node(node, NODE_GENERATION), Ordering::Acquire)
    }

    /// Whether `me` is still its node's life: nobody fenced it.
    pub fn is_current(&self, me: Incarnation) -> bool {
        self.generation(me.node) == me.generation
    }

    /// Fences `node` if it is still in `generation`: its state goes to
    /// `Reset` and its generation moves on, so that the node, if it was only
    /// paused, finds out that it was declared dead. Returns whether this call
    /// did the fencing.
    pub fn fence(&self, node: NodeId, generation: u32) -> bool {
        let off = self.layout.node(node, NODE_GENERATION);
        if self
            .region
            .cas_u32(
                off,
                generation,
                generation.wrapping_add(1),
                Ordering::AcqRel,
            )
            .is_err()
        {
            return false;
        }
        self.set_state(node, NodeState::Reset);
        self.region
            .store_u32(self.layout.node(node, NODE_WAITING), 0, Ordering::Release);
        true
    }

    /// Starts a new incarnation of `node`; returns its generation.
    pub fn next_generation(&self, node: NodeId) -> u32 {
        let off = self.layout.node(node, NODE_GENERATION);
        self.region
            .fetch_add_u32(off, 1, Ordering::AcqRel)
            .wrapping_add(1)
    }

    pub fn heartbeat(&self, node: NodeId) -> u64 {
        self.region
            .load_u64(self.layout.node(node, NODE_HEARTBEAT), Ordering::Acquire)
    }

    pub fn beat(&self, node: NodeId) {
        self.region
            .fetch_add_u64(self.layout.node(node, NODE_HEARTBEAT), 1, Ordering::Release);
    }

    pub fn mac(&self, node: NodeId) -> u64 {
        self.region
            .load_u64(self.layout.node(node, NODE_MAC), Ordering::Acquire)
    }

    pub fn set_mac(&self, node: NodeId, mac: u64) {
        self.region
            .store_u64(self.layout.node(node, NODE_MAC), mac, Ordering::Release)
    }

    pub fn sleeping(&self, node: NodeId) -> bool {
        self.region
            .load_u32(self.layout.node(node, NODE_SLEEPING), Ordering::Acquire)
            != 0
    }

    pub fn set_sleeping(&self, node: NodeId, sleeping: bool) {
        // SeqCst: pairs with the sender's SeqCst load after publishing a
        // frame, so either the sender sees "sleeping" and rings, or the
        // receiver's re-check after this store sees the frame (no lost wakeup).
        self.region.store_u32(
            self.layout.node(node, NODE_SLEEPING),
            sleeping.into(),
            Ordering::SeqCst,
        )
    }

    /// The ivshmem peer id to ring for `node`, if it published one. Stored
    /// as id + 1 so that a zeroed entry means "none".
    pub fn doorbell(&self, node: NodeId) -> Option<u16> {
        let word = self
            .region
            .load_u32(self.layout.node(node, NODE_DOORBELL), Ordering::Acquire);
        word.checked_sub(1).and_then(|id| u16::try_from(id).ok())
    }

    pub fn set_doorbell(&self, node: NodeId, peer: Option<u16>) {
        let word = peer.map_or(0, |p| u32::from(p).saturating_add(1));
        self.region.store_u32(
            self.layout.node(node, NODE_DOORBELL),
            word,
            Ordering::Release,
        )
    }

    pub fn counters(&self, node: NodeId) -> Counters {
        let mut words = [0u64; Counters::FIELDS];
        self.region.load_words(
            self.layout.node(node, NODE_COUNTERS),
            &mut words,
            Ordering::Relaxed,
        );
        Counters::from_array(words)
    }

    pub fn publish_counters(&self, node: NodeId, counters: &Counters) {
        self.region.store_words(
            self.layout.node(node, NODE_COUNTERS),
            &counters.to_array(),
            Ordering::Relaxed,
        );
    }

    /// Nodes other than `me` that are in `Run`, as a bit set.
    pub fn running_peers(&self, me: NodeId) -> u64 {
        (0..self.count())
            .filter(|&n| n != me && self.state(n) == NodeState::Run)
            .fold(0, |set, n| set | 1 << n)
    }
}

/// What one observer knows of each node's heartbeat. All integers (no
/// `Option`), so that zeroed memory is a valid, idle watch.
#[derive(Clone, Copy, Debug)]
struct Watch {
    /// Whether the fields below hold a sighting.
    active: bool,
    generation: u32,
    heartbeat: u64,
    since: Instant,
    /// When this observer last looked: silence only counts while watched.
    looked: Instant,
}

/// Decides, on this node's own clock, which peers have stopped beating.
/// About 3 KiB: an endpoint keeps its own in its [`Buffers`](super::Buffers),
/// off the stack.
#[derive(Debug)]
pub struct Liveness {
    lease: Duration,
    watches: [Watch; MAX_NODES],
    /// The longest a peer's heartbeat stood still while watched, and
    /// whose: how close live nodes come to their lease (under TCG, a
    /// guest the host does not run beats nothing).
    longest: (NodeId, Duration),
    /// The longest silence said by [`Liveness::silence_to_say`].
    said: Duration,
}

impl Liveness {
    const IDLE: Watch = Watch {
        active: false,
        generation: 0,
        heartbeat: 0,
        since: Instant::from_origin(Duration::ZERO),
        looked: Instant::from_origin(Duration::ZERO),
    };

    /// A tracker with the region's lease.
    pub const fn new(lease: Duration) -> Self {
        Liveness {
            lease,
            watches: [Self::IDLE; MAX_NODES],
            longest: (0, Duration::ZERO),
            said: Duration::ZERO,
        }
    }

    /// Forgets every node and takes `lease`, in place.
    pub fn reset(&mut self, lease: Duration) {
        self.lease = lease;
        for watch in &mut self.watches {
            watch.active = false;
        }
    }

    /// The longest silence of a peer seen so far (the peer, how long), or
    /// `None` before any.
    pub fn longest_silence(&self) -> Option<(NodeId, Duration)> {
        (!self.longest.1.is_zero()).then_some(self.longest)
    }

    /// A new longest silence worth a line in the log, once: a quarter
    /// lease or more, and a tenth of a lease past the last one said.
    pub fn silence_to_say(&mut self) -> Option<(NodeId, Duration)> {
        let (node, silent) = self.longest;
        let step = self.lease.checked_div(10).unwrap_or_default();
        let floor = self
            .said
            .saturating_add(step)
            .max(self.lease.checked_div(4).unwrap_or_default());
        if silent < floor {
            return None;
        }
        self.said = silent;
        Some((node, silent))
    }

    /// The lease after which a silent node is dead.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Records what `node` shows now; true when its heartbeat and generation
    /// have stood still for at least the lease while this observer watched.
    ///
    /// If this observer itself stopped looking for more than half a lease
    /// (it was descheduled, or its VM paused), the silence it missed proves
    /// nothing and the watch starts again: a node that wakes up must not
    /// declare its healthy peers dead.
    pub fn is_dead(&mut self, nodes: &NodeTable<'_>, node: NodeId, now: Instant) -> bool {
        let generation = nodes.generation(node);
        let heartbeat = nodes.heartbeat(node);
        let lease = self.lease;
        let Some(watch) = self.watches.get_mut(node) else {
            return false;
        };
        if watch.active
            && watch.generation == generation
            && watch.heartbeat == heartbeat
            && now.saturating_duration_since(watch.looked) <= lease.checked_div(2).unwrap_or(lease)
        {
            watch.looked = now;
            let silent = now.saturating_duration_since(watch.since);
            if silent > self.longest.1 {
                self.longest = (node, silent);
            }
            return silent >= lease;
        }
        *watch = Watch {
            active: true,
            generation,
            heartbeat,
            since: now,
            looked: now,
        };
        false
    }

    /// Forgets what was seen of `node` (after it was fenced or re-attached).
    pub fn forget(&mut self, node: NodeId) {
        if let Some(watch) = self.watches.get_mut(node) {
            watch.active = false;
        }
    }
}

/// Tracks how long a condition that should be brief (a ticket nobody
/// claims) has lasted.
#[derive(Debug, Default)]
pub struct Stall {
    key: Option<(u64, Instant)>,
}

impl Stall {
    /// True when the same `key` has been seen continuously for `lease`.
    pub fn stuck(&mut self, key: u64, now: Instant, lease: Duration) -> bool {
        match self.key {
            Some((k, since)) if k == key => now.saturating_duration_since(since) >= lease,
            _ => {
                self.key = Some((key, now));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{scratch, BufferConfig};

    #[test]
    fn implausible_counters_are_named() {
        let honest = Counters {
            tx_frames: 10,
            tx_bytes: 15_000,
            rx_frames: 3,
            rx_bytes: 180,
            ..Counters::default()
        };
        assert_eq!(honest.check(), Ok(()));
        assert_eq!(Counters::default().check(), Ok(()));
        let scribbled = Counters {
            recoveries: 9_082_264_506_918_269_174,
            ..honest
        };
        assert_eq!(scribbled.check(), Err("recoveries"));
        let short = Counters {
            tx_bytes: 9,
            ..honest
        };
        assert_eq!(short.check(), Err("tx_bytes"));
        let long = Counters {
            rx_bytes: 3 * 65_601,
            ..honest
        };
        assert_eq!(long.check(), Err("rx_bytes"));
    }

    #[test]
    fn liveness_needs_a_full_lease_of_silence() {
        let (region, layout) = scratch(BufferConfig::SharedPool, 1 << 20, 4);
        let nodes = NodeTable {
            region: &region,
            layout: &layout,
        };
        let mut live = Liveness::new(Duration::from_millis(100));
        let t0 = Instant::from_origin(Duration::from_secs(10));
        let at = |ms| t0.saturating_add(Duration::from_millis(ms));
        assert!(!live.is_dead(&nodes, 1, t0));
        assert!(!live.is_dead(&nodes, 1, at(40)));
        assert!(!live.is_dead(&nodes, 1, at(80)));
        assert!(live.is_dead(&nodes, 1, at(100)));
        nodes.beat(1);
        assert!(
            !live.is_dead(&nodes, 1, at(150)),
            "a beat restarts the lease"
        );
        assert!(!live.is_dead(&nodes, 1, at(200)));
        assert!(live.is_dead(&nodes, 1, at(250)));
    }

    #[test]
    fn an_observer_that_slept_does_not_judge() {
        let (region, layout) = scratch(BufferConfig::SharedPool, 1 << 20, 4);
        let nodes = NodeTable {
            region: &region,
            layout: &layout,
        };
        let mut live = Liveness::new(Duration::from_millis(100));
        let t0 = Instant::from_origin(Duration::from_secs(10));
        assert!(!live.is_dead(&nodes, 1, t0));
        // The observer was paused for a second: it saw nothing.
        assert!(!live.is_dead(&nodes, 1, t0.saturating_add(Duration::from_secs(1))));
        // Silence counts again only while watched, for a whole lease.
        for ms in [1040, 1080] {
            assert!(!live.is_dead(&nodes, 1, t0.saturating_add(Duration::from_millis(ms))));
        }
        assert!(live.is_dead(&nodes, 1, t0.saturating_add(Duration::from_millis(1100))));
    }

    #[test]
    fn fencing_happens_once_per_generation() {
        let (region, layout) = scratch(BufferConfig::SharedPool, 1 << 20, 4);
        let nodes = NodeTable {
            region: &region,
            layout: &layout,
        };
        let gen = nodes.next_generation(2);
        nodes.set_state(2, NodeState::Run);
        assert!(nodes.fence(2, gen));
        assert!(
            !nodes.fence(2, gen),
            "a second fencer of the same incarnation does nothing"
        );
        assert_eq!(nodes.state(2), NodeState::Reset);
        assert_ne!(nodes.generation(2), gen);
    }

    #[test]
    fn doorbell_peer_ids_round_trip_and_garbage_is_none() {
        let (region, layout) = scratch(BufferConfig::SharedPool, 1 << 20, 4);
        let nodes = NodeTable {
            region: &region,
            layout: &layout,
        };
        assert_eq!(nodes.doorbell(1), None, "a fresh entry has no doorbell");
        nodes.set_doorbell(1, Some(0));
        assert_eq!(nodes.doorbell(1), Some(0));
        nodes.set_doorbell(1, Some(65535));
        assert_eq!(nodes.doorbell(1), Some(65535));
        region.store_u32(layout.node(1, NODE_DOORBELL), 0x2_0000, Ordering::Relaxed);
        assert_eq!(nodes.doorbell(1), None, "out of range is none");
    }

    #[test]
    fn garbage_state_words_are_not_running() {
        assert_eq!(NodeState::from_word(77), None);
        let (region, layout) = scratch(BufferConfig::SharedPool, 1 << 20, 4);
        let nodes = NodeTable {
            region: &region,
            layout: &layout,
        };
        region.store_u32(layout.node(3, NODE_STATE), 77, Ordering::Relaxed);
        assert_eq!(nodes.state(3), NodeState::Reset);
        nodes.set_state(1, NodeState::Run);
        assert_eq!(nodes.running_peers(0), 0b10);
    }
}
