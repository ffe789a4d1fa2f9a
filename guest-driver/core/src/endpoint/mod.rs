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
//! once: `pool.rs` has configuration 2's paths, `rings.rs` configuration 1's.
//! The endpoint allocates nothing: its working lists live in [`Buffers`],
//! which the caller allocates once (a `Box` in user space, zeroed kernel
//! memory in the module), and the region, the buffers and the clock come
//! in as three handles:
//!
//! - `M`: keeps the region mapped and dereferences to it;
//! - `B`: owns the [`Buffers`];
//! - `P`: the [`Platform`] (clock, waiting).

mod buffers;
mod direct;
mod error;
mod housekeeping;
mod pool;
mod rings;
mod shared;

use core::ops::{Deref, DerefMut};
use core::sync::atomic::{fence, Ordering};
use core::time::Duration;

pub use buffers::{Buffers, ADDRESSES, HELD_SLOTS, MAX_CHAIN, RX_SEGMENTS};
pub use direct::DirectSlots;
pub use error::{EndpointError, NoSource, SendError};

use super::addr::AddrTable;
use super::ether::MacAddr;
use super::frame::{runs, ProtocolError, RawSegment, RxFrame, Segment};
use super::layout::{
    header_words, read_header, store_header_body, BufferConfig, Geometry, Layout, LayoutError,
    HDR_EPOCH, HDR_MAGIC, HEADER_LEN, MAGIC, MAX_FRAME, MAX_NODES,
};
use super::lock::{LockError, LockMemory, RegionLock, Ticket};
use super::nodes::{Counters, Incarnation, Liveness, NodeId, NodeState, NodeTable};
use super::platform::{Instant, Platform};
use super::pool::{attached, held_by, rebuild, Pool};
use super::region::Region;
use super::rings::Rings;
use super::sink::{Bounded, Sink};
use buffers::{Lists, RxEntry, Staged, MAX_STAGED, RX_FRAMES};
use pool::PoolState;
use rings::RingState;
use shared::Shared;

/// Frames staged before a send flushes by itself.
pub const BATCH: usize = 64;
/// Protocol errors blamed on one peer (frames it claims to have sent that
/// fail validation, garbage in its rings) before this node fences it.
pub const OFFENCE_LIMIT: u32 = 8;
/// How many leases a peer fenced for misbehaving stays ignored: its frames
/// are dropped and nothing is sent to it, whatever its entry says.
pub const QUARANTINE_LEASES: u32 = 10;
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
    /// Only [`Endpoint::flush`] says; it includes the receivers of
    /// batches that flushed themselves during sends since its last call.
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
    ///
    /// What this node holds against its peers outlives the incarnation:
    /// the protocol errors blamed on each, and who is in quarantine until
    /// when. A rogue that fences its victims before they reach
    /// [`OFFENCE_LIMIT`] would otherwise wipe its record every time.
    pub fn reattach(&self, buffers: B, mac: MacAddr) -> Result<Self, EndpointError> {
        let mut again = self.attach_again(buffers, mac)?;
        again.sh.offences = self.sh.offences;
        again.sh.quarantined = self.sh.quarantined;
        again.buffers.lists.quarantine_until = self.buffers.lists.quarantine_until;
        Ok(again)
    }

    fn attach_again(&self, buffers: B, mac: MacAddr) -> Result<Self, EndpointError> {
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
                // The lists' own watch: a `Liveness` is too big for a
                // kernel stack.
                let watch = &mut buffers.lists.repair.liveness;
                watch.reset(lease);
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
        buffers.lists.reset(lease);
        let now = platform.now();
        let mut endpoint = Endpoint {
            sh: Shared {
                region,
                layout,
                me,
                generation,
                lease,
                counters: Counters::default(),
                last_error: None,
                fenced: false,
                platform,
                offences: [0; MAX_NODES],
                quarantined: 0,
                lock_memory: LockMemory::default(),
                unrung: 0,
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

    /// The longest a peer's heartbeat stood still while this node watched
    /// (the peer, how long): how close live nodes come to the lease, for
    /// the drivers' logs.
    pub fn longest_silence(&self) -> Option<(NodeId, Duration)> {
        self.buffers.lists.repair.liveness.longest_silence()
    }

    /// A new longest silence of a peer worth a line in the driver's log
    /// (a quarter lease or more), once: (the peer, how long).
    pub fn silence_to_say(&mut self) -> Option<(NodeId, Duration)> {
        self.buffers.lists.repair.liveness.silence_to_say()
    }

    /// The region's lease.
    pub fn lease(&self) -> Duration {
        self.sh.lease
    }

    /// Now, on the endpoint's platform clock.
    pub fn now(&self) -> Instant {
        self.sh.platform.now()
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

    /// Hands every staged frame to its receiver (those whose queue is full
    /// stay staged), and refills the slot cache.
    pub fn flush(&mut self) -> Result<FlushReport, EndpointError> {
        self.sh.check_usable()?;
        let report = match &mut self.backend {
            Backend::Pool(state) => state.flush(&mut self.sh, &mut self.buffers.lists, 0)?,
            Backend::Rings(state) => state.flush(&mut self.sh),
        };
        // Batches that flushed themselves since the last call count too.
        Ok(FlushReport {
            wake: self.sh.take_sleepers(),
            ..report
        })
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

    /// Whether this node says it sleeps, as its peers read it.
    pub fn sleeping(&self) -> bool {
        self.sh.nodes().sleeping(self.sh.me)
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
        let received = match &mut self.backend {
            Backend::Pool(state) => state.recv(&mut self.sh, lists, max, &mut deliver)?,
            Backend::Rings(state) => state.recv(&mut self.sh, lists, max, &mut deliver),
        };
        if received > 0 {
            // A node receiving is alive. Under TCG a kernel node's NAPI
            // receive can hold its one vCPU in softirq for longer than a
            // lease, and the housekeeping work that beats waits for it.
            self.sh.nodes().beat(self.sh.me);
        }
        Ok(received)
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
