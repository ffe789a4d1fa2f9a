//! The endpoint's working lists, of fixed sizes: the core allocates
//! nothing, so their bounds are the endpoint's limits.

use core::time::Duration;

use super::{Bounded, Instant, Liveness, MacAddr, NodeId, Segment, BATCH, MAX_FRAME, MAX_NODES};

/// Slots a node holds at most for sending (its cache and staged frames).
pub const HELD_SLOTS: usize = 4096;
/// Segments of received frames one receive batch holds at most.
pub const RX_SEGMENTS: usize = 2048;
/// Frames one receive batch takes at most.
pub(super) const RX_FRAMES: usize = 256;
/// Slots of received frames waiting to be freed, at most.
pub(super) const TO_FREE: usize = 4096;
/// Addresses a node keeps in its private copy of the address table (each
/// node registers one; the rest of a larger table routes as unknown).
pub const ADDRESSES: usize = 1024;
/// Slots of the longest chain: a largest frame in the smallest slots.
pub const MAX_CHAIN: usize = MAX_FRAME.div_ceil(64);

/// Frames that may wait staged (deferred by full queues) before `send`
/// pushes back with [`super::SendError::QueueFull`].
pub(super) const MAX_STAGED: usize = 4 * BATCH;

/// A staged frame (configuration 2): `count` slots of `staged_slots` from
/// `start`.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Staged {
    pub(super) dest: NodeId,
    pub(super) start: usize,
    pub(super) count: usize,
    pub(super) len: usize,
}

/// A received frame of a batch (configuration 2): `segments[start..end]`.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct RxEntry {
    pub(super) len: usize,
    /// The claimed sender, `MAX_NODES` for none.
    pub(super) source: NodeId,
    pub(super) start: usize,
    pub(super) end: usize,
}

/// The lists an endpoint works with, of fixed sizes: no allocation after
/// the caller's one. Every field is integers, so all-zero bytes are a
/// valid, empty `Buffers` (what a kernel's zeroing allocator returns).
#[derive(Debug)]
pub struct Buffers {
    pub(super) lists: Lists,
    /// A frame that cannot be written straight into slots (`send_direct`).
    pub(super) bounce: [u8; MAX_FRAME],
}

impl Buffers {
    /// Empty buffers (about 200 KiB: allocate them, do not keep them on a
    /// small stack).
    pub const fn new() -> Self {
        Buffers {
            lists: Lists::new(),
            bounce: [0; MAX_FRAME],
        }
    }
}

impl Default for Buffers {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug)]
pub(super) struct Lists {
    /// Configuration 2: slots held by us, ready to fill.
    pub(super) cache: Bounded<u32, HELD_SLOTS>,
    /// Frames filled, not yet enqueued, in send order.
    pub(super) staged: Bounded<Staged, MAX_STAGED>,
    pub(super) staged_slots: Bounded<u32, HELD_SLOTS>,
    /// Slots of frames we received and delivered, to free in the next batch.
    pub(super) to_free: Bounded<u32, TO_FREE>,
    pub(super) rx: Bounded<RxEntry, RX_FRAMES>,
    /// Segments of received frames (both configurations).
    pub(super) segments: Bounded<Segment, RX_SEGMENTS>,
    /// This node's copy of the address table.
    pub(super) addresses: Bounded<(MacAddr, NodeId), ADDRESSES>,
    /// Slot offsets a `send_direct` fills.
    pub(super) direct: Bounded<usize, MAX_CHAIN>,
    pub(super) repair: RepairScratch,
    /// Until when each peer in quarantine (`Shared::quarantined`) is
    /// ignored.
    pub(super) quarantine_until: [Instant; MAX_NODES],
}

impl Lists {
    /// Every list empty and no peer watched (with the region's `lease`),
    /// in place (the lists are too big for a kernel stack).
    pub(super) fn reset(&mut self, lease: Duration) {
        self.cache.clear();
        self.staged.clear();
        self.staged_slots.clear();
        self.to_free.clear();
        self.rx.clear();
        self.segments.clear();
        self.addresses.clear();
        self.direct.clear();
        self.repair.kept.clear();
        self.repair.liveness.reset(lease);
    }

    const fn new() -> Self {
        const NO_SEGMENT: Segment = Segment { offset: 0, len: 0 };
        const NO_STAGED: Staged = Staged {
            dest: 0,
            start: 0,
            count: 0,
            len: 0,
        };
        const NO_RX: RxEntry = RxEntry {
            len: 0,
            source: 0,
            start: 0,
            end: 0,
        };
        Lists {
            cache: Bounded::new(0),
            staged: Bounded::new(NO_STAGED),
            staged_slots: Bounded::new(0),
            to_free: Bounded::new(0),
            rx: Bounded::new(NO_RX),
            segments: Bounded::new(NO_SEGMENT),
            addresses: Bounded::new((MacAddr([0; 6]), 0)),
            direct: Bounded::new(0),
            repair: RepairScratch {
                kept: Bounded::new((MacAddr([0; 6]), 0)),
                chain: [0; MAX_CHAIN],
                liveness: Liveness::new(Duration::ZERO),
            },
            quarantine_until: [Instant::from_origin(Duration::ZERO); MAX_NODES],
        }
    }
}

/// What finding dead nodes and repairing their leftovers needs: the
/// watch on every peer's heartbeat, the address entries kept, one slot
/// chain.
#[derive(Debug)]
pub(super) struct RepairScratch {
    pub(super) kept: Bounded<(MacAddr, NodeId), ADDRESSES>,
    pub(super) chain: [u32; MAX_CHAIN],
    pub(super) liveness: Liveness,
}
