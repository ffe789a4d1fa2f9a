//! A node's view of the region: attach, send, receive, detach, behind one
//! interface for both buffer configurations.
//!
//! Batching: frames are staged by [`Endpoint::send`] and handed over by
//! [`Endpoint::flush`] (or automatically every [`BATCH`] frames), taking the
//! region lock once per batch in configuration 2 and never in configuration 1.
//! [`Endpoint::recv`] likewise takes a whole batch under one lock.
//!
//! The caller drives time: [`Endpoint::tick`] every few milliseconds keeps
//! the heartbeat going, publishes counters, notices a re-format or its own
//! fencing, and reclaims the buffers of peers that died.
//!
//! This file holds what both configurations share and dispatches the rest
//! once: [`pool`] has configuration 2's paths, [`rings`] configuration 1's.
//! The endpoint allocates nothing: its working lists live in [`Buffers`],
//! which the caller allocates once (a `Box` in user space, zeroed kernel
//! memory in the module), and the region, the buffers and the clock come
//! in as three handles:
//!
//! - `M`: keeps the region mapped and dereferences to it;
//! - `B`: owns the [`Buffers`];
//! - `P`: the [`Platform`] (clock, waiting).

mod error;
mod pool;
mod rings;

use core::ops::{Deref, DerefMut};
use core::sync::atomic::{fence, Ordering};
use core::time::Duration;

pub use error::{EndpointError, NoSource, SendError};

use super::addr::AddrTable;
use super::ether::MacAddr;
use super::frame::{ProtocolError, RawSegment, RxFrame, Segment};
use super::layout::{
    header_words, read_header, BufferConfig, Geometry, Layout, LayoutError, HDR_CHECKSUM,
    HDR_EPOCH, HDR_MAGIC, HEADER_LEN, MAGIC, MAX_FRAME, MAX_NODES,
};
use super::lock::{LockError, RegionLock, Ticket};
use super::nodes::{Counters, Liveness, NodeId, NodeState, NodeTable};
use super::platform::{Instant, Platform};
use super::pool::{attached, held_by, rebuild, Pool};
use super::region::Region;
use super::rings::Rings;
use super::sink::{Bounded, Sink};
use pool::PoolState;
use rings::RingState;

/// Frames staged before a send flushes by itself.
pub const BATCH: usize = 64;
/// Frames that may wait staged (deferred by full queues) before `send`
/// pushes back with [`SendError::QueueFull`].
const MAX_STAGED: usize = 4 * BATCH;
/// Protocol errors blamed on one peer (frames it claims to have sent that
/// fail validation, garbage in its rings) before this node fences it.
pub const OFFENCE_LIMIT: u32 = 8;
/// How many leases a peer fenced for misbehaving stays ignored: its frames
/// are dropped and nothing is sent to it, whatever its entry says.
pub const QUARANTINE_LEASES: u32 = 10;
/// Slots a node holds at most for sending (its cache and staged frames).
pub const HELD_SLOTS: usize = 4096;
/// Segments of received frames one receive batch holds at most.
pub const RX_SEGMENTS: usize = 2048;
/// Frames one receive batch takes at most.
const RX_FRAMES: usize = 256;
/// Slots of received frames waiting to be freed, at most.
const TO_FREE: usize = 4096;
/// Addresses a node keeps in its private copy of the address table (each
/// node registers one; the rest of a larger table routes as unknown).
pub const ADDRESSES: usize = 1024;
/// Slots of the longest chain: a largest frame in the smallest slots.
pub const MAX_CHAIN: usize = MAX_FRAME.div_ceil(64);

/// Where a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// One node.
    Node(NodeId),
    /// Every other node in `Run` (broadcast, multicast, unknown unicast).
    AllPeers,
}

/// What a flush did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Frames handed to their receivers.
    pub published: usize,
    /// Frames still staged because their receiver's queue is full.
    pub deferred: usize,
    /// Frames dropped (receiver no longer running).
    pub dropped: usize,
    /// Receivers that said they sleep and now have frames: ring these.
    pub wake: u64,
}

/// The node ids in a set of nodes (bit N = node N), such as
/// [`FlushReport::wake`] or [`Endpoint::running_peers`].
pub fn members(set: u64) -> impl Iterator<Item = NodeId> {
    (0..MAX_NODES).filter(move |&n| set & (1u64 << n) != 0)
}

/// The set holding only `node` (empty for an id past the table).
fn bit(node: NodeId) -> u64 {
    1u64.checked_shl(u32::try_from(node).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

/// A staged frame (configuration 2): `count` slots of `staged_slots` from
/// `start`.
#[derive(Clone, Copy, Debug, Default)]
struct Staged {
    dest: NodeId,
    start: usize,
    count: usize,
    len: usize,
}

/// A received frame of a batch (configuration 2): `segments[start..end]`.
#[derive(Clone, Copy, Debug, Default)]
struct RxEntry {
    len: usize,
    /// The claimed sender, `MAX_NODES` for none.
    source: NodeId,
    start: usize,
    end: usize,
}

/// The lists an endpoint works with, of fixed sizes: no allocation after
/// the caller's one. Every field is integers, so all-zero bytes are a
/// valid, empty `Buffers` (what a kernel's zeroing allocator returns).
#[derive(Debug)]
pub struct Buffers {
    lists: Lists,
    /// A frame that cannot be written straight into slots (`send_direct`).
    bounce: [u8; MAX_FRAME],
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
struct Lists {
    /// Configuration 2: slots held by us, ready to fill.
    cache: Bounded<u32, HELD_SLOTS>,
    /// Frames filled, not yet enqueued, in send order.
    staged: Bounded<Staged, MAX_STAGED>,
    staged_slots: Bounded<u32, HELD_SLOTS>,
    /// Slots of frames we received and delivered, to free in the next batch.
    to_free: Bounded<u32, TO_FREE>,
    rx: Bounded<RxEntry, RX_FRAMES>,
    /// Segments of received frames (both configurations).
    segments: Bounded<Segment, RX_SEGMENTS>,
    /// This node's copy of the address table.
    addresses: Bounded<(MacAddr, NodeId), ADDRESSES>,
    /// Slot offsets a `send_direct` fills.
    direct: Bounded<usize, MAX_CHAIN>,
    repair: RepairScratch,
}

impl Lists {
    /// Every list empty, in place (the lists are too big for a kernel
    /// stack).
    fn reset(&mut self) {
        self.cache.clear();
        self.staged.clear();
        self.staged_slots.clear();
        self.to_free.clear();
        self.rx.clear();
        self.segments.clear();
        self.addresses.clear();
        self.direct.clear();
        self.repair.kept.clear();
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
            },
        }
    }
}

/// Scratch for repairs: the address entries kept, one slot chain.
#[derive(Debug)]
struct RepairScratch {
    kept: Bounded<(MacAddr, NodeId), ADDRESSES>,
    chain: [u32; MAX_CHAIN],
}

/// Formats `region` with `geometry`: every slot free, every node `Reset`.
/// Nodes attached to the region before must attach again. `epoch` should
/// not repeat (a time and a process id, say): attached nodes tell a new
/// format from a rogue's scribble by it.
pub fn format(region: &Region, geometry: &Geometry, epoch: u64) -> Result<Layout, LayoutError> {
    let layout = Layout::new(geometry, region.len())?;
    // Magic first to zero (Release): attachers stop trusting the old header.
    region.store_u64(HDR_MAGIC, 0, Ordering::Release);
    fence(Ordering::SeqCst);
    region.zero(8, layout.total.saturating_sub(8));
    layout.write_header(region, epoch | 1);
    RegionLock {
        region,
        layout: &layout,
    }
    .init();
    match geometry.config {
        BufferConfig::SharedPool => Pool {
            region,
            layout: &layout,
        }
        .init(),
        BufferConfig::PerPair => Rings {
            region,
            layout: &layout,
        }
        .init(),
    }
    // Release: everything above is visible to whoever sees the magic.
    region.store_u64(HDR_MAGIC, MAGIC, Ordering::Release);
    Ok(layout)
}

/// Repairs what a dead node may have left half done; the caller holds the
/// lock. Returns the number of inconsistencies found.
fn repair(region: &Region, layout: &Layout, me: NodeId, scratch: &mut RepairScratch) -> u64 {
    let nodes = NodeTable { region, layout };
    let is_live = attached(&nodes);
    let mut errors =
        AddrTable { region, layout }.retain(|_, node| is_live(node), &mut scratch.kept);
    if layout.geometry.config == BufferConfig::SharedPool {
        let report = rebuild(
            &Pool { region, layout },
            &nodes,
            &is_live,
            &mut || nodes.beat(me),
            &mut scratch.chain,
        );
        errors = errors.saturating_add(report.errors);
    }
    errors
}

/// What both configurations' paths need of the endpoint: the region, this
/// node's identity and counters, the lock, the peers' standing.
#[derive(Debug)]
struct Shared<M, P> {
    region: M,
    layout: Layout,
    me: NodeId,
    generation: u32,
    liveness: Liveness,
    counters: Counters,
    last_error: Option<ProtocolError>,
    fenced: bool,
    platform: P,
    /// Protocol errors blamed on each peer since it was last fenced.
    offences: [u32; MAX_NODES],
    /// Peers fenced for misbehaving, until when they are ignored.
    quarantine: [Option<Instant>; MAX_NODES],
}

impl<M: Deref<Target = Region>, P: Platform> Shared<M, P> {
    fn nodes(&self) -> NodeTable<'_> {
        NodeTable {
            region: &self.region,
            layout: &self.layout,
        }
    }

    fn pool(&self) -> Pool<'_> {
        Pool {
            region: &self.region,
            layout: &self.layout,
        }
    }

    fn rings(&self) -> Rings<'_> {
        Rings {
            region: &self.region,
            layout: &self.layout,
        }
    }

    fn slot_size(&self) -> usize {
        (self.layout.geometry.slot_size as usize).max(1)
    }

    fn note(&mut self, error: ProtocolError) {
        self.counters.protocol_errors = self.counters.protocol_errors.saturating_add(1);
        self.last_error = Some(error);
    }

    /// Counts `n` more protocol errors.
    fn add_errors(&mut self, n: u64) {
        self.counters.protocol_errors = self.counters.protocol_errors.saturating_add(n);
    }

    fn dropped_tx(&mut self, n: u64) {
        self.counters.tx_dropped = self.counters.tx_dropped.saturating_add(n);
    }

    fn check_usable(&self) -> Result<(), EndpointError> {
        if self.fenced {
            return Err(LockError::Fenced.into());
        }
        Ok(())
    }

    /// Counts a protocol error against the node that caused it, when it
    /// is known; [`Endpoint::tick`] fences a peer at [`OFFENCE_LIMIT`].
    fn blame(&mut self, node: Option<NodeId>) {
        if let Some(count) = node
            .filter(|&n| n != self.me)
            .and_then(|n| self.offences.get_mut(n))
        {
            *count = count.saturating_add(1);
        }
    }

    fn quarantined(&self) -> u64 {
        self.quarantine
            .iter()
            .enumerate()
            .filter(|(_, q)| q.is_some())
            .fold(0, |set, (n, _)| set | bit(n))
    }

    fn running_peers(&self) -> u64 {
        self.nodes().running_peers(self.me) & !self.quarantined()
    }

    /// Whether frames can go to `dest`: another node, in `Run`, not in
    /// quarantine.
    fn reachable(&self, dest: NodeId) -> bool {
        dest != self.me
            && dest < self.layout.geometry.max_nodes as usize
            && self.quarantine.get(dest).is_some_and(Option::is_none)
            && self.nodes().state(dest) == NodeState::Run
    }

    fn acquire(&mut self, scratch: &mut RepairScratch) -> Result<Ticket, EndpointError> {
        self.check_usable()?;
        let (region, layout, me) = (&*self.region, &self.layout, self.me);
        let mut recovered = 0u64;
        let mut errors = 0u64;
        let result = RegionLock { region, layout }.lock(
            me,
            self.generation,
            &mut self.liveness,
            &self.platform,
            &mut |_dead| {
                recovered = recovered.saturating_add(1);
                errors = errors.saturating_add(repair(region, layout, me, scratch));
            },
        );
        self.counters.recoveries = self.counters.recoveries.saturating_add(recovered);
        self.add_errors(errors);
        result.map_err(|e| self.lock_failed(e))
    }

    fn release(&mut self, ticket: Ticket) -> Result<(), EndpointError> {
        let lock = RegionLock {
            region: &self.region,
            layout: &self.layout,
        };
        lock.unlock(ticket, self.me, self.generation)
            .map_err(|e| self.lock_failed(e))
    }

    fn lock_failed(&mut self, error: LockError) -> EndpointError {
        if error == LockError::Fenced {
            self.fenced = true;
        }
        error.into()
    }

    /// With the lock held: repair the region's buffer and address
    /// management, counting what was wrong.
    fn repair_region(&mut self, scratch: &mut RepairScratch) {
        let errors = repair(&self.region, &self.layout, self.me, scratch);
        self.add_errors(errors);
    }

    /// Of `dests` (just published to), those that said they sleep.
    fn sleepers(&self, dests: u64) -> u64 {
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

/// Configuration-specific state.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "1 KiB of ring indices; the core has no heap to box them in"
)]
enum Backend {
    Pool(PoolState),
    Rings(RingState),
}

/// Where the bytes of a [`Endpoint::send_direct`] frame go: slot memory
/// this node holds (or the endpoint's own buffer), as raw segments for a
/// system call or a copy; only the endpoint makes one.
#[derive(Debug)]
pub struct DirectSlots<'a> {
    target: DirectTarget<'a>,
}

#[derive(Debug)]
enum DirectTarget<'a> {
    Slots {
        region: &'a Region,
        offsets: &'a [usize],
        max: usize,
        slot_size: usize,
    },
    Buffer(RawSegment),
}

impl DirectSlots<'_> {
    /// The memory to write the frame into, in order: valid while this
    /// value is borrowed; never to be turned into Rust references.
    pub fn segments(&self) -> impl Iterator<Item = RawSegment> + '_ {
        let (slots, buffer) = match &self.target {
            DirectTarget::Slots {
                region,
                offsets,
                max,
                slot_size,
            } => (Some((*region, *offsets, *max, *slot_size)), None),
            DirectTarget::Buffer(seg) => (None, Some(*seg)),
        };
        let from_slots = slots
            .into_iter()
            .flat_map(|(region, offsets, max, slot_size)| {
                let mut left = max;
                offsets.iter().map(move |&off| {
                    let len = left.min(slot_size);
                    left = left.saturating_sub(len);
                    RawSegment {
                        ptr: region.raw_ptr(off, len),
                        len,
                    }
                })
            });
        from_slots.chain(buffer)
    }
}

/// One node attached to the region.
#[derive(Debug)]
pub struct Endpoint<M, B, P> {
    sh: Shared<M, P>,
    buffers: B,
    backend: Backend,
    epoch: u64,
    addr_version: u32,
    last_reap: Instant,
    /// The state this node announced (restored if scribbled over).
    state: NodeState,
    /// The header as validated at attach (restored if scribbled over).
    header: [u8; HEADER_LEN],
    /// Since when the region's header differs from `header`.
    header_bad_since: Option<Instant>,
}

impl<M, B, P> Endpoint<M, B, P>
where
    M: Deref<Target = Region> + Clone,
    B: DerefMut<Target = Buffers>,
    P: Platform + Clone,
{
    /// Attaches as node `me` with address `mac` to a formatted region.
    ///
    /// If the node's entry shows a previous incarnation (a crash, a restart),
    /// its heartbeat is watched for one lease: still moving means another
    /// process is this node ([`EndpointError::NodeBusy`]); still means the
    /// old incarnation is gone, and its buffers are reclaimed.
    pub fn attach(
        region: M,
        buffers: B,
        platform: P,
        me: NodeId,
        mac: MacAddr,
    ) -> Result<Self, EndpointError> {
        let (layout, epoch) = Layout::read(&region)?;
        let header = read_header(&region);
        Self::attach_with(
            region,
            buffers,
            platform,
            me,
            mac,
            (layout, epoch, header),
            true,
        )
    }

    /// Attaches this endpoint's node again, as a new incarnation, after it
    /// was fenced (or after any trouble with the region): what a driver
    /// does after a reset. Unlike [`Endpoint::attach`] it does not watch
    /// the node's old heartbeat for a lease (the old incarnation is this
    /// one, and it is not running), and when the region's header does not
    /// validate (a rogue's scribble) it works from this endpoint's copy,
    /// which its ticks put back. A valid header of another format epoch is
    /// a re-format, and attaches to that.
    pub fn reattach(&self, buffers: B, mac: MacAddr) -> Result<Self, EndpointError> {
        let region = self.sh.region.clone();
        let platform = self.sh.platform.clone();
        match Layout::read(&region) {
            Ok((_, epoch)) if epoch != self.epoch => {
                Self::attach(region, buffers, platform, self.sh.me, mac)
            }
            _ => Self::attach_with(
                region,
                buffers,
                platform,
                self.sh.me,
                mac,
                (self.sh.layout, self.epoch, self.header),
                false,
            ),
        }
    }

    /// `attach` from a validated header; `busy_check`: watch a previous
    /// incarnation's heartbeat first.
    fn attach_with(
        region: M,
        mut buffers: B,
        platform: P,
        me: NodeId,
        mac: MacAddr,
        (layout, epoch, header): (Layout, u64, [u8; HEADER_LEN]),
        busy_check: bool,
    ) -> Result<Self, EndpointError> {
        let max_nodes = layout.geometry.max_nodes as usize;
        if me >= max_nodes {
            return Err(EndpointError::BadNode {
                node: me,
                max_nodes,
            });
        }
        let lease = Duration::from_millis(layout.geometry.lease_ms.into());
        {
            let nodes = NodeTable {
                region: &region,
                layout: &layout,
            };
            if busy_check && nodes.state(me) != NodeState::Reset {
                let mut watch = Liveness::new(lease);
                let start = platform.now();
                watch.is_dead(&nodes, me, start);
                while !watch.is_dead(&nodes, me, platform.now()) {
                    if platform.now().saturating_duration_since(start) > lease.saturating_mul(2) {
                        return Err(EndpointError::NodeBusy(me));
                    }
                    platform.sleep(lease.checked_div(20).unwrap_or(lease));
                }
            }
        }
        let generation = NodeTable {
            region: &region,
            layout: &layout,
        }
        .next_generation(me);
        let backend = match layout.geometry.config {
            BufferConfig::SharedPool => Backend::Pool(PoolState),
            BufferConfig::PerPair => Backend::Rings(RingState::default()),
        };
        buffers.lists.reset();
        let now = platform.now();
        let mut endpoint = Endpoint {
            sh: Shared {
                region,
                layout,
                me,
                generation,
                liveness: Liveness::new(lease),
                counters: Counters::default(),
                last_error: None,
                fenced: false,
                platform,
                offences: [0; MAX_NODES],
                quarantine: [None; MAX_NODES],
            },
            buffers,
            backend,
            epoch,
            addr_version: 0,
            last_reap: now,
            state: NodeState::Init,
            header,
            header_bad_since: None,
        };
        let lists = &mut endpoint.buffers.lists;
        let ticket = endpoint.sh.acquire(&mut lists.repair)?;
        let result = endpoint.join_locked(mac);
        endpoint.sh.release(ticket)?;
        result?;
        Ok(endpoint)
    }

    /// The attach steps that need the lock: clean up any previous
    /// incarnation, take over our rings, register the address.
    fn join_locked(&mut self, mac: MacAddr) -> Result<(), EndpointError> {
        let me = self.sh.me;
        self.sh.nodes().set_state(me, NodeState::Reset);
        self.sh.repair_region(&mut self.buffers.lists.repair);
        if let Backend::Rings(state) = &mut self.backend {
            state.join(&self.sh);
        }
        let nodes = self.sh.nodes();
        let addresses = AddrTable {
            region: &self.sh.region,
            layout: &self.sh.layout,
        };
        addresses.register(mac, me, |n| n != me && nodes.state(n) != NodeState::Reset)?;
        nodes.set_mac(me, mac.to_word());
        // A doorbell id left by an earlier incarnation is stale.
        nodes.set_doorbell(me, None);
        nodes.publish_counters(me, &Counters::default());
        nodes.beat(me);
        nodes.set_state(me, NodeState::Init);
        Ok(())
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.sh.me
    }

    /// The region's validated layout.
    pub fn layout(&self) -> &Layout {
        &self.sh.layout
    }

    /// This node's counters (published to the region by `tick`).
    pub fn counters(&self) -> Counters {
        self.sh.counters
    }

    /// The last protocol violation seen, if any.
    pub fn last_error(&self) -> Option<ProtocolError> {
        self.sh.last_error
    }

    /// Announces this node's state; peers send only to nodes in `Run`.
    pub fn set_state(&mut self, state: NodeState) -> Result<(), EndpointError> {
        self.sh.check_usable()?;
        self.sh.nodes().set_state(self.sh.me, state);
        self.state = state;
        Ok(())
    }

    /// Publishes the ivshmem peer id peers ring to wake this node (the
    /// guest reads it from BAR0's IVPosition). It changes when the guest
    /// restarts: the ivshmem server does not reuse a departed peer's id.
    pub fn set_doorbell_peer(&self, peer: Option<u16>) {
        self.sh.nodes().set_doorbell(self.sh.me, peer);
    }

    /// The ivshmem peer id to ring to wake `node`, if it published one
    /// (validated: out-of-range words read as none).
    pub fn doorbell_peer(&self, node: NodeId) -> Option<u16> {
        (node < self.sh.layout.geometry.max_nodes as usize)
            .then(|| self.sh.nodes().doorbell(node))
            .flatten()
    }

    /// Peers in `Run`, as a bit set (carrier is up while it is non-zero).
    /// Peers in quarantine are left out, whatever their entry says.
    pub fn running_peers(&self) -> u64 {
        self.sh.running_peers()
    }

    /// Peers this node fenced for misbehaving and still ignores, as a bit
    /// set (see [`OFFENCE_LIMIT`]).
    pub fn quarantined(&self) -> u64 {
        self.sh.quarantined()
    }

    /// Stages `frame` for `dest`. It is handed over at the next flush (or
    /// now, when a batch is full).
    pub fn send(&mut self, dest: Dest, frame: &[u8]) -> Result<(), SendError> {
        send_frame(
            &mut self.sh,
            &mut self.backend,
            &mut self.buffers.lists,
            dest,
            frame,
        )
    }

    /// Sends a frame that `fill` writes straight into slots, with no
    /// buffer in between: `fill` gets [`DirectSlots`] covering `max` bytes
    /// (at most [`MAX_FRAME`]) of memory this node holds, which a device or
    /// the kernel may write into (never through Rust references), and
    /// returns the frame's length, 0 for none. The frame is then routed by
    /// the destination address `route_offset` bytes in (after a virtio-net
    /// header, say) and staged as [`Endpoint::send`] stages.
    ///
    /// Configuration 2 fills slots from this node's cache. Configuration 1
    /// fills the ring of the last unicast destination and copies the frame
    /// over when it is for another node. Group and unknown destinations
    /// are copied to every peer, as `send` does.
    ///
    /// `Ok(None)`: `fill` produced no frame. Backpressure errors
    /// ([`SendError::is_backpressure`]) come before `fill` is called: the
    /// frame stays with its source. A frame taken from the source and then
    /// refused (no such peer, say) is counted in `tx_dropped` and reported
    /// as taken, like a NIC that drops; only [`SendError::Endpoint`] and
    /// [`SendError::Source`] are other errors.
    pub fn send_direct<E>(
        &mut self,
        max: usize,
        route_offset: usize,
        fill: impl FnOnce(&DirectSlots<'_>) -> Result<usize, E>,
    ) -> Result<Option<usize>, SendError<E>> {
        self.sh.check_usable()?;
        let max = max.min(MAX_FRAME);
        let need = max.div_ceil(self.sh.slot_size());
        let Buffers { lists, bounce } = &mut *self.buffers;
        lists.direct.clear();
        // Where the bytes go: the cache's last `need` slots, or the next
        // `need` entries of the speculated ring; `None`: the bounce buffer.
        let speculated = match &mut self.backend {
            Backend::Pool(state) => {
                state
                    .reserve_direct(&mut self.sh, lists, need)
                    .map_err(SendError::widen)?;
                Some(None)
            }
            Backend::Rings(state) => state
                .reserve_direct(&self.sh, lists, need)
                .map_err(SendError::widen)?
                .map(Some),
        };
        let Some(speculated) = speculated else {
            // No peer to speculate on, or a ring that can never hold a
            // frame of `max`: go through the bounce buffer.
            let buffer = bounce.get_mut(..max).unwrap_or(&mut []);
            let target = DirectSlots {
                target: DirectTarget::Buffer(RawSegment {
                    ptr: buffer.as_mut_ptr(),
                    len: buffer.len(),
                }),
            };
            let n = fill(&target).map_err(SendError::Source)?.min(max);
            if n == 0 {
                return Ok(None);
            }
            let frame = bounce.get(..n).unwrap_or(&[]);
            let dest = route(
                &mut self.sh,
                lists,
                &mut self.addr_version,
                frame.get(route_offset..).unwrap_or(&[]),
            )?;
            return send_taken(&mut self.sh, &mut self.backend, lists, dest, frame);
        };
        let slot_size = self.sh.slot_size();
        let target = DirectSlots {
            target: DirectTarget::Slots {
                region: &self.sh.region,
                offsets: lists.direct.as_slice(),
                max,
                slot_size,
            },
        };
        let n = fill(&target).map_err(SendError::Source)?;
        if n == 0 || n > max {
            return Ok(None);
        }
        let used = n.div_ceil(slot_size);
        let first = lists.direct.as_slice().first().copied().unwrap_or(0);
        let mut head = [0u8; 64];
        let seen = route_offset
            .saturating_add(6)
            .min(n)
            .min(head.len())
            .min(slot_size);
        if let Some(head) = head.get_mut(..seen) {
            self.sh.region.read_bytes(first, head);
        }
        let dest = route(
            &mut self.sh,
            lists,
            &mut self.addr_version,
            head.get(route_offset..seen).unwrap_or(&[]),
        )?;
        let direct = match (dest, speculated) {
            (Dest::Node(d), None) => self.sh.reachable(d),
            (Dest::Node(d), Some((spec, _))) => d == spec,
            (Dest::AllPeers, _) => false,
        };
        if !direct {
            // Another destination than the bytes sit for, or several:
            // copy the frame out and send it the ordinary way.
            let mut done = 0usize;
            for &off in lists.direct.as_slice().iter().take(used) {
                let len = n.saturating_sub(done).min(slot_size);
                let end = done.saturating_add(len);
                if let Some(dst) = bounce.get_mut(done..end) {
                    self.sh.region.read_bytes(off, dst);
                }
                done = end;
            }
            if let (Dest::Node(d), Backend::Rings(state)) = (dest, &mut self.backend) {
                state.last_dest = Some(d);
            }
            let frame = bounce.get(..n).unwrap_or(&[]);
            return send_taken(&mut self.sh, &mut self.backend, lists, dest, frame);
        }
        match (&mut self.backend, dest, speculated) {
            (Backend::Pool(state), Dest::Node(dest), _) => state
                .commit_direct(&mut self.sh, lists, dest, need, used, n)
                .map_err(SendError::widen)?,
            (Backend::Rings(state), _, Some((dest, tail))) => {
                state.commit_direct(&mut self.sh, dest, tail, used, n)
            }
            // `direct` is false for these: handled above.
            _ => {}
        }
        Ok(Some(n))
    }

    /// Hands every staged frame to its receiver (those whose queue is full
    /// stay staged), and refills the slot cache.
    pub fn flush(&mut self) -> Result<FlushReport, EndpointError> {
        self.sh.check_usable()?;
        match &mut self.backend {
            Backend::Pool(state) => state.flush(&mut self.sh, &mut self.buffers.lists, 0),
            Backend::Rings(state) => Ok(state.flush(&self.sh)),
        }
    }

    /// Gives back the slots this node holds without needing them (its send
    /// cache and the slots of frames it received), so that an idle node
    /// holds none and `inspect` sees the whole pool free. One lock round:
    /// call it when the node goes idle, not per frame. Slots of frames
    /// still staged stay. Configuration 1 has nothing to give back.
    pub fn release_idle(&mut self) -> Result<(), EndpointError> {
        self.sh.check_usable()?;
        match &mut self.backend {
            Backend::Pool(state) => state.release_idle(&mut self.sh, &mut self.buffers.lists),
            Backend::Rings(_) => Ok(()),
        }
    }

    /// Drops frames that flush deferred (Ethernet semantics: a full
    /// receiver loses frames rather than stalling the sender).
    pub fn drop_staged(&mut self) {
        if let Backend::Pool(state) = &mut self.backend {
            state.drop_staged(&mut self.sh, &mut self.buffers.lists);
        }
    }

    /// True when frames wait for this node (no lock taken).
    pub fn pending(&self) -> bool {
        match &self.backend {
            Backend::Pool(_) => {
                let (head, tail) = self.sh.pool().queue_indices(self.sh.me);
                head != tail
            }
            Backend::Rings(state) => state.pending(&self.sh),
        }
    }

    /// Says whether this node is about to sleep (interrupt mode): senders
    /// ring its doorbell only while the flag is set. After setting it, check
    /// [`Endpoint::pending`] once more before sleeping.
    pub fn set_sleeping(&self, sleeping: bool) {
        self.sh.nodes().set_sleeping(self.sh.me, sleeping);
    }

    /// Receives up to `max` frames, handing each to `deliver`. Returns how
    /// many were delivered.
    pub fn recv(
        &mut self,
        max: usize,
        mut deliver: impl FnMut(&RxFrame<'_>),
    ) -> Result<usize, EndpointError> {
        self.sh.check_usable()?;
        let lists = &mut self.buffers.lists;
        match &mut self.backend {
            Backend::Pool(state) => state.recv(&mut self.sh, lists, max, &mut deliver),
            Backend::Rings(state) => Ok(state.recv(&mut self.sh, lists, max, &mut deliver)),
        }
    }

    /// The node that owns `frame`'s destination address, or every running
    /// peer for group and unknown addresses.
    pub fn route(&mut self, frame: &[u8]) -> Result<Dest, EndpointError> {
        route(
            &mut self.sh,
            &mut self.buffers.lists,
            &mut self.addr_version,
            frame,
        )
    }

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
        let Shared {
            quarantine,
            offences,
            ..
        } = &mut self.sh;
        for (until, offences) in quarantine.iter_mut().zip(offences.iter_mut()) {
            if until.is_some_and(|until| now >= until) {
                *until = None;
                *offences = 0;
            }
        }
        let offenders = self
            .sh
            .offences
            .iter()
            .zip(&self.sh.quarantine)
            .enumerate()
            .filter(|(_, (&count, until))| count >= OFFENCE_LIMIT && until.is_none())
            .fold(0u64, |set, (n, _)| set | bit(n));
        if offenders != 0 {
            self.fence_offenders(offenders, now)?;
        }
        let reap_every = self.sh.liveness.lease().checked_div(4).unwrap_or_default();
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
        let grace = self.sh.liveness.lease().checked_div(4).unwrap_or_default();
        if now.saturating_duration_since(since) < grace {
            return Ok(());
        }
        self.header_bad_since = None;
        let words = header_words(&self.header);
        let (magic, rest) = words.split_first().unwrap_or((&MAGIC, &[]));
        region.store_words(
            8,
            rest.get(..HDR_CHECKSUM / 8).unwrap_or(rest),
            Ordering::Relaxed,
        );
        region.store_u64(HDR_MAGIC, *magic, Ordering::Release);
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
        let until = now.saturating_add(self.sh.liveness.lease().saturating_mul(QUARANTINE_LEASES));
        for node in members(offenders) {
            let nodes = self.sh.nodes();
            nodes.fence(node, nodes.generation(node));
            self.sh.liveness.forget(node);
            if let Some(q) = self.sh.quarantine.get_mut(node) {
                *q = Some(until);
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
                region,
                layout,
                liveness,
                me,
                ..
            } = &mut self.sh;
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
                    self.sh.liveness.forget(node);
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

    /// Test hook for crash tests: takes the region lock and leaves buffer
    /// management half changed (slots popped from the free stack, frames
    /// for `dest` written into its queue but the tail not published), then
    /// returns with the lock still held. The caller is expected to be
    /// killed; nothing else may be done with this endpoint.
    #[doc(hidden)]
    pub fn freeze_inside_lock(&mut self, dest: NodeId) -> Result<(), EndpointError> {
        // Never released: the caller dies holding the lock.
        let _held = self.sh.acquire(&mut self.buffers.lists.repair)?;
        if let Backend::Pool(state) = &mut self.backend {
            state.freeze(&self.sh, &mut self.buffers.lists, dest);
        }
        Ok(())
    }

    /// Leaves the region: every slot this node holds or has queued goes
    /// back to the pool, its address is removed, its state is `Reset`.
    pub fn detach(mut self) -> Result<(), EndpointError> {
        let ticket = self.sh.acquire(&mut self.buffers.lists.repair)?;
        let me = self.sh.me;
        self.sh.nodes().set_state(me, NodeState::Reset);
        self.sh.repair_region(&mut self.buffers.lists.repair);
        if let Backend::Rings(state) = &self.backend {
            state.leave(&self.sh);
        }
        self.sh.nodes().publish_counters(me, &self.sh.counters);
        self.sh.release(ticket)
    }
}

/// [`Endpoint::send`], on the endpoint's parts (the frame may sit in the
/// bounce buffer, which is not among them).
fn send_frame<M: Deref<Target = Region>, P: Platform>(
    sh: &mut Shared<M, P>,
    backend: &mut Backend,
    lists: &mut Lists,
    dest: Dest,
    frame: &[u8],
) -> Result<(), SendError> {
    sh.check_usable()?;
    if frame.is_empty() || frame.len() > MAX_FRAME {
        sh.dropped_tx(1);
        return Err(SendError::BadLength(frame.len()));
    }
    match dest {
        Dest::Node(node) => send_to(sh, backend, lists, node, frame),
        Dest::AllPeers => {
            for node in members(sh.running_peers()) {
                // A peer that cannot take the frame loses it (counted);
                // only a broken endpoint stops the broadcast.
                if let Err(SendError::Endpoint(e)) = send_to(sh, backend, lists, node, frame) {
                    return Err(e.into());
                }
            }
            Ok(())
        }
    }
}

/// `send` for a frame already taken from its source: a refusal is a
/// counted drop, not an error.
fn send_taken<M: Deref<Target = Region>, P: Platform, E>(
    sh: &mut Shared<M, P>,
    backend: &mut Backend,
    lists: &mut Lists,
    dest: Dest,
    frame: &[u8],
) -> Result<Option<usize>, SendError<E>> {
    match send_frame(sh, backend, lists, dest, frame) {
        Err(SendError::Endpoint(e)) => Err(e.into()),
        _ => Ok(Some(frame.len())),
    }
}

fn send_to<M: Deref<Target = Region>, P: Platform>(
    sh: &mut Shared<M, P>,
    backend: &mut Backend,
    lists: &mut Lists,
    dest: NodeId,
    frame: &[u8],
) -> Result<(), SendError> {
    let result = if sh.reachable(dest) {
        match backend {
            Backend::Pool(state) => state.stage(sh, lists, dest, frame),
            Backend::Rings(state) => state.stage(sh, dest, frame),
        }
    } else {
        Err(SendError::NoPeer(dest))
    };
    if matches!(result, Err(ref e) if !matches!(e, SendError::Endpoint(_))) {
        sh.dropped_tx(1);
    }
    result
}

/// [`Endpoint::route`], on the endpoint's parts.
fn route<M: Deref<Target = Region>, P: Platform>(
    sh: &mut Shared<M, P>,
    lists: &mut Lists,
    addr_version: &mut u32,
    frame: &[u8],
) -> Result<Dest, EndpointError> {
    let Some(dst) = MacAddr::destination(frame) else {
        return Ok(Dest::AllPeers);
    };
    if dst.is_group() {
        return Ok(Dest::AllPeers);
    }
    let version = AddrTable {
        region: &sh.region,
        layout: &sh.layout,
    }
    .version();
    if version != *addr_version {
        let ticket = sh.acquire(&mut lists.repair)?;
        let table = AddrTable {
            region: &sh.region,
            layout: &sh.layout,
        };
        *addr_version = table.version();
        lists.addresses.clear();
        let bad = table.snapshot(&mut lists.addresses);
        sh.add_errors(bad);
        sh.release(ticket)?;
    }
    Ok(lists
        .addresses
        .as_slice()
        .iter()
        .find(|e| e.0 == dst)
        .map_or(Dest::AllPeers, |e| Dest::Node(e.1)))
}
