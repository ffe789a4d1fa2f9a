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

use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vni_core::layout::{read_header, HDR_CHECKSUM};
use vni_core::pool::Scratch;
use vni_core::{Instant, Platform};

use crate::addr::{AddrError, AddrTable};
use crate::ether::MacAddr;
use crate::frame::{ProtocolError, RxFrame, Segment};
use crate::io::IoSlots;
use crate::layout::{
    BufferConfig, Geometry, Layout, LayoutError, HDR_EPOCH, HDR_MAGIC, HEADER_LEN, MAGIC, MAX_FRAME,
};
use crate::lock::{LockError, RegionLock, Ticket};
use crate::nodes::{Counters, Liveness, NodeId, NodeState, NodeTable};
use crate::platform::StdPlatform;
use crate::pool::{attached, rebuild, Pool};
use crate::region::Region;
use crate::rings::Rings;

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

/// Errors that stop an endpoint (as opposed to a dropped frame).
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The region's header is missing or invalid.
    #[error("Cannot use the shared region")]
    Layout(#[from] LayoutError),
    /// The region lock failed.
    #[error("Region lock failed")]
    Lock(#[from] LockError),
    /// Address registration failed.
    #[error("Cannot register this node's address")]
    Addr(#[from] AddrError),
    /// The node id does not fit the region.
    #[error("Node id {node} is out of range: this region holds nodes 0 to {}", .max_nodes - 1)]
    BadNode {
        /// The id asked for.
        node: NodeId,
        /// Nodes the region holds.
        max_nodes: usize,
    },
    /// Another live process is attached as this node.
    #[error("Node {0} is attached by another live process (its heartbeat is moving)")]
    NodeBusy(NodeId),
    /// The region was formatted again under this node.
    #[error("The region was formatted again; attach again")]
    Reformatted,
}

/// Why a frame was not taken. Every one is counted in `tx_dropped` except
/// `Endpoint`, which means the endpoint itself can no longer work.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Empty, or larger than 64 KiB.
    #[error("Frame of {0} bytes is outside 1..=65536")]
    BadLength(usize),
    /// The destination is not a running peer.
    #[error("Node {0} is not a running peer")]
    NoPeer(NodeId),
    /// No free slot in the pool.
    #[error("No free buffer for the frame")]
    NoBuffer,
    /// The destination's queue or ring is full.
    #[error("Destination queue is full")]
    QueueFull,
    /// The endpoint failed.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The frame's source (`send_direct`'s `fill`) failed; nothing was
    /// sent.
    #[error("Reading the frame failed")]
    Source(#[source] std::io::Error),
}

impl SendError {
    /// True when retrying later may succeed (the receiver is slow).
    pub fn is_backpressure(&self) -> bool {
        matches!(self, SendError::NoBuffer | SendError::QueueFull)
    }
}

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

#[derive(Debug)]
struct Staged {
    dest: NodeId,
    start: usize,
    count: usize,
    len: usize,
}

/// Configuration 2 state private to this node.
#[derive(Debug, Default)]
struct PoolState {
    /// Slots held by us, ready to fill.
    cache: Vec<u32>,
    /// Frames filled, not yet enqueued, in send order.
    staged: Vec<Staged>,
    staged_slots: Vec<u32>,
    /// Slots of frames we received and delivered, to free in the next batch.
    to_free: Vec<u32>,
    rx: Vec<(usize, Option<NodeId>, usize, usize)>,
    rx_segments: Vec<Segment>,
}

impl PoolState {
    /// The nodes staged frames go to, as a bit set.
    fn staged_dests(&self) -> u64 {
        self.staged.iter().fold(0, |set, f| set | 1 << f.dest)
    }
}

/// The members of a node bit set.
/// The node ids in a set of nodes (bit N = node N), such as
/// [`FlushReport::wake`] or [`Endpoint::running_peers`].
pub fn members(set: u64) -> impl Iterator<Item = NodeId> {
    (0..64).filter(move |n| set & 1 << n != 0)
}

/// Configuration 1 state private to this node.
#[derive(Debug)]
struct RingState {
    /// Per destination: next entry to write, last tail published, last
    /// head seen.
    tails: Vec<u32>,
    published: Vec<u32>,
    heads_seen: Vec<u32>,
    /// Per source: next entry to read.
    heads: Vec<u32>,
    dirty: u64,
    next_source: usize,
    segments: Vec<Segment>,
    /// Where the last unicast frame went: `send_direct` fills that ring.
    last_dest: Option<NodeId>,
}

#[derive(Debug)]
enum Backend {
    Pool(PoolState),
    Rings(RingState),
}

/// Formats `region` with `geometry`: every slot free, every node `Reset`.
/// Nodes attached to the region before must attach again.
pub fn format(region: &Region, geometry: &Geometry) -> Result<Layout, LayoutError> {
    let layout = Layout::new(geometry, region.len())?;
    // Magic first to zero (Release): attachers stop trusting the old header.
    region.store_u64(HDR_MAGIC, 0, Ordering::Release);
    fence(Ordering::SeqCst);
    region.zero(8, layout.total - 8);
    let epoch = format_epoch();
    layout.write_header(region, epoch);
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

/// A format epoch unlikely to repeat: time and process id.
fn format_epoch() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    (nanos ^ (u64::from(std::process::id()) << 48)) | 1
}

/// One node attached to the region.
#[derive(Debug)]
pub struct Endpoint {
    region: Arc<Region>,
    layout: Layout,
    epoch: u64,
    me: NodeId,
    generation: u32,
    liveness: Liveness,
    counters: Counters,
    last_error: Option<ProtocolError>,
    addr_version: u32,
    addresses: Vec<(MacAddr, NodeId)>,
    last_reap: Instant,
    fenced: bool,
    backend: Backend,
    /// The state this node announced (restored if scribbled over).
    state: NodeState,
    /// The header as validated at attach (restored if scribbled over).
    header: [u8; HEADER_LEN],
    /// Since when the region's header differs from `header`.
    header_bad_since: Option<Instant>,
    /// Protocol errors blamed on each peer since it was last fenced.
    offences: Vec<u32>,
    /// Peers fenced for misbehaving, until when they are ignored.
    quarantine: Vec<Option<Instant>>,
    /// The clock and waiting the core uses.
    platform: StdPlatform,
}

/// Repairs what a dead node may have left half done; the caller holds the
/// lock. Returns the number of inconsistencies found.
fn repair(region: &vni_core::Region, layout: &Layout, beat: &mut dyn FnMut()) -> u64 {
    let nodes = NodeTable { region, layout };
    let is_live = attached(&nodes);
    let mut errors = AddrTable { region, layout }.retain(|_, node| is_live(node), &mut Vec::new());
    if layout.geometry.config == BufferConfig::SharedPool {
        let mut marks = vec![0; Scratch::marks_for(layout)];
        let mut chain = vec![0; Scratch::chain_for(layout)];
        let mut scratch = Scratch {
            marks: &mut marks,
            chain: &mut chain,
        };
        errors += rebuild(
            &Pool { region, layout },
            &nodes,
            &is_live,
            beat,
            &mut scratch,
        )
        .errors;
    }
    errors
}

impl Endpoint {
    /// Attaches as node `me` with address `mac` to a formatted region.
    ///
    /// If the node's entry shows a previous incarnation (a crash, a restart),
    /// its heartbeat is watched for one lease: still moving means another
    /// process is this node ([`EndpointError::NodeBusy`]); still means the
    /// old incarnation is gone, and its buffers are reclaimed.
    pub fn attach(region: Arc<Region>, me: NodeId, mac: MacAddr) -> Result<Self, EndpointError> {
        let (layout, epoch) = Layout::read(&region)?;
        let header = read_header(&region);
        Self::attach_with(region, me, mac, (layout, epoch, header), true)
    }

    /// Attaches this endpoint's node again, as a new incarnation, after it
    /// was fenced (or after any trouble with the region): what a driver
    /// does after a reset. Unlike [`Endpoint::attach`] it does not watch
    /// the node's old heartbeat for a lease (the old incarnation is this
    /// one, and it is not running), and when the region's header does not
    /// validate (a rogue's scribble) it works from this endpoint's copy,
    /// which its ticks put back. A valid header of another format epoch is
    /// a re-format, and attaches to that.
    pub fn reattach(&self, mac: MacAddr) -> Result<Self, EndpointError> {
        let region = self.region.clone();
        match Layout::read(&region) {
            Ok((_, epoch)) if epoch != self.epoch => Self::attach(region, self.me, mac),
            _ => Self::attach_with(
                region,
                self.me,
                mac,
                (self.layout, self.epoch, self.header),
                false,
            ),
        }
    }

    /// `attach` from a validated header; `busy_check`: watch a previous
    /// incarnation's heartbeat first.
    fn attach_with(
        region: Arc<Region>,
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
        let nodes = NodeTable {
            region: &region,
            layout: &layout,
        };
        let platform = StdPlatform::default();
        if busy_check && nodes.state(me) != NodeState::Reset {
            let mut watch = Liveness::new(lease);
            let start = platform.now();
            watch.is_dead(&nodes, me, start);
            while !watch.is_dead(&nodes, me, platform.now()) {
                if platform.now().saturating_duration_since(start) > lease * 2 {
                    return Err(EndpointError::NodeBusy(me));
                }
                platform.sleep(lease / 20);
            }
        }
        let generation = nodes.next_generation(me);
        let backend = match layout.geometry.config {
            BufferConfig::SharedPool => Backend::Pool(PoolState::default()),
            BufferConfig::PerPair => Backend::Rings(RingState {
                tails: vec![0; max_nodes],
                published: vec![0; max_nodes],
                heads_seen: vec![0; max_nodes],
                heads: vec![0; max_nodes],
                dirty: 0,
                next_source: 0,
                segments: Vec::new(),
                last_dest: None,
            }),
        };
        let mut endpoint = Endpoint {
            region,
            layout,
            epoch,
            me,
            generation,
            liveness: Liveness::new(lease),
            counters: Counters::default(),
            last_error: None,
            addr_version: 0,
            addresses: Vec::new(),
            last_reap: platform.now(),
            fenced: false,
            backend,
            state: NodeState::Init,
            header,
            header_bad_since: None,
            offences: vec![0; max_nodes],
            quarantine: vec![None; max_nodes],
            platform,
        };
        let ticket = endpoint.acquire()?;
        let result = endpoint.join_locked(mac);
        endpoint.release(ticket)?;
        result?;
        Ok(endpoint)
    }

    /// The attach steps that need the lock: clean up any previous
    /// incarnation, take over our rings, register the address.
    fn join_locked(&mut self, mac: MacAddr) -> Result<(), EndpointError> {
        let (region, layout, me) = (&*self.region, &self.layout, self.me);
        let nodes = NodeTable { region, layout };
        nodes.set_state(me, NodeState::Reset);
        self.counters.protocol_errors += repair(region, layout, &mut || nodes.beat(me));
        if let Backend::Rings(state) = &mut self.backend {
            let rings = Rings { region, layout };
            for peer in (0..nodes.count()).filter(|&p| p != me) {
                // As receiver: drop what was queued for the old incarnation.
                state.heads[peer] = rings.tail(peer, me);
                rings.consume(peer, me, state.heads[peer]);
                // As sender: continue after what the old incarnation wrote,
                // unless the indices are corrupt.
                let (tail, head) = (rings.tail(me, peer), rings.head(me, peer));
                let tail = if tail.wrapping_sub(head) > rings.capacity() {
                    head
                } else {
                    tail
                };
                rings.publish(me, peer, tail);
                (
                    state.tails[peer],
                    state.published[peer],
                    state.heads_seen[peer],
                ) = (tail, tail, head);
            }
        }
        let addresses = AddrTable { region, layout };
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
        self.me
    }

    /// The region's validated layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// This node's counters (published to the region by `tick`).
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The last protocol violation seen, if any.
    pub fn last_error(&self) -> Option<ProtocolError> {
        self.last_error
    }

    /// Announces this node's state; peers send only to nodes in `Run`.
    pub fn set_state(&mut self, state: NodeState) -> Result<(), EndpointError> {
        self.check_usable()?;
        self.nodes().set_state(self.me, state);
        self.state = state;
        Ok(())
    }

    /// Publishes the ivshmem peer id peers ring to wake this node (the
    /// guest reads it from BAR0's IVPosition). It changes when the guest
    /// restarts: the ivshmem server does not reuse a departed peer's id.
    pub fn set_doorbell_peer(&self, peer: Option<u16>) {
        self.nodes().set_doorbell(self.me, peer);
    }

    /// The ivshmem peer id to ring to wake `node`, if it published one
    /// (validated: out-of-range words read as none).
    pub fn doorbell_peer(&self, node: NodeId) -> Option<u16> {
        (node < self.layout.geometry.max_nodes as usize)
            .then(|| self.nodes().doorbell(node))
            .flatten()
    }

    /// Peers in `Run`, as a bit set (carrier is up while it is non-zero).
    /// Peers in quarantine are left out, whatever their entry says.
    pub fn running_peers(&self) -> u64 {
        self.nodes().running_peers(self.me) & !self.quarantined()
    }

    /// Peers this node fenced for misbehaving and still ignores, as a bit
    /// set (see [`OFFENCE_LIMIT`]).
    pub fn quarantined(&self) -> u64 {
        self.quarantine
            .iter()
            .enumerate()
            .filter(|(_, q)| q.is_some())
            .fold(0, |set, (n, _)| set | 1 << n)
    }

    /// Whether frames can go to `dest`: another node, in `Run`, not in
    /// quarantine.
    fn reachable(&self, dest: NodeId) -> bool {
        dest != self.me
            && dest < self.layout.geometry.max_nodes as usize
            && self.quarantine[dest].is_none()
            && self.nodes().state(dest) == NodeState::Run
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

    fn nodes(&self) -> NodeTable<'_> {
        NodeTable {
            region: &self.region,
            layout: &self.layout,
        }
    }

    fn note(&mut self, error: ProtocolError) {
        self.counters.protocol_errors += 1;
        self.last_error = Some(error);
    }

    fn check_usable(&self) -> Result<(), EndpointError> {
        if self.fenced {
            return Err(LockError::Fenced.into());
        }
        Ok(())
    }

    fn acquire(&mut self) -> Result<Ticket, EndpointError> {
        self.check_usable()?;
        let (region, layout, me) = (&*self.region, &self.layout, self.me);
        let nodes = NodeTable { region, layout };
        let mut recovered = 0;
        let mut errors = 0;
        let result = RegionLock { region, layout }.lock(
            me,
            self.generation,
            &mut self.liveness,
            &self.platform,
            &mut |_dead| {
                recovered += 1;
                errors += repair(region, layout, &mut || nodes.beat(me));
            },
        );
        self.counters.recoveries += recovered;
        self.counters.protocol_errors += errors;
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

    /// Stages `frame` for `dest`. It is handed over at the next flush (or
    /// now, when a batch is full).
    pub fn send(&mut self, dest: Dest, frame: &[u8]) -> Result<(), SendError> {
        self.check_usable()?;
        if frame.is_empty() || frame.len() > MAX_FRAME {
            self.counters.tx_dropped += 1;
            return Err(SendError::BadLength(frame.len()));
        }
        match dest {
            Dest::Node(node) => self.send_to(node, frame),
            Dest::AllPeers => {
                for node in members(self.running_peers()) {
                    // A peer that cannot take the frame loses it (counted);
                    // only a broken endpoint stops the broadcast.
                    if let Err(SendError::Endpoint(e)) = self.send_to(node, frame) {
                        return Err(e.into());
                    }
                }
                Ok(())
            }
        }
    }

    /// Sends a frame that `fill` writes straight into slots, with no
    /// buffer in between: `fill` gets [`IoSlots`] covering `max` bytes (at
    /// most 64 KiB) of slot memory this node holds, which the kernel may
    /// `readv` into (they must never become references), and returns the
    /// frame's length, 0 for none. The frame is then routed by the
    /// destination address `route_offset` bytes in (after a virtio-net
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
    pub fn send_direct(
        &mut self,
        max: usize,
        route_offset: usize,
        fill: impl FnOnce(&IoSlots<'_>) -> std::io::Result<usize>,
    ) -> Result<Option<usize>, SendError> {
        self.check_usable()?;
        let max = max.min(MAX_FRAME);
        let slot_size = self.layout.geometry.slot_size as usize;
        let need = max.div_ceil(slot_size);
        // Where the bytes go: the cache's last `need` slots, or the next
        // `need` entries of the speculated ring.
        let mut offsets: Vec<usize> = Vec::with_capacity(need);
        let running = self.running_peers();
        let speculated = match &mut self.backend {
            Backend::Pool(state) => {
                if state.cache.len() < need {
                    self.flush_pool(need)?;
                }
                let Backend::Pool(state) = &self.backend else {
                    unreachable!()
                };
                if state.staged.len() >= MAX_STAGED {
                    return Err(SendError::QueueFull);
                }
                if state.cache.len() < need {
                    return Err(SendError::NoBuffer);
                }
                let from = state.cache.len() - need;
                offsets.extend(state.cache[from..].iter().map(|&s| self.layout.slot(s)));
                None
            }
            Backend::Rings(state) => {
                let spec = state
                    .last_dest
                    .filter(|&d| running & (1 << d) != 0)
                    .or_else(|| members(running).next());
                let rings = Rings {
                    region: &self.region,
                    layout: &self.layout,
                };
                let capacity = rings.capacity();
                let Some(dest) = spec.filter(|_| need as u32 <= capacity) else {
                    // No peer to speculate on, or a ring that can never
                    // hold a frame of `max`: go through a buffer.
                    let mut buf = vec![0u8; max];
                    let iov = [libc::iovec {
                        iov_base: buf.as_mut_ptr().cast(),
                        iov_len: buf.len(),
                    }];
                    let n = fill(&IoSlots::new(&iov))
                        .map_err(SendError::Source)?
                        .min(max);
                    if n == 0 {
                        return Ok(None);
                    }
                    let dest = self.route(buf.get(route_offset..n).unwrap_or(&[]))?;
                    return self.send_taken(dest, &buf[..n]);
                };
                let tail = state.tails[dest];
                let head = rings.head(self.me, dest);
                if tail.wrapping_sub(head) > capacity
                    || capacity - tail.wrapping_sub(head) < need as u32
                {
                    return Err(SendError::QueueFull);
                }
                state.heads_seen[dest] = head;
                offsets.extend(
                    (0..need as u32).map(|i| rings.entry_data(self.me, dest, tail.wrapping_add(i))),
                );
                Some((dest, tail))
            }
        };
        let iovecs: Vec<libc::iovec> = offsets
            .iter()
            .enumerate()
            .map(|(i, &off)| {
                let len = (max - i * slot_size).min(slot_size);
                libc::iovec {
                    iov_base: self.region.raw_ptr(off, len).cast(),
                    iov_len: len,
                }
            })
            .collect();
        let n = fill(&IoSlots::new(&iovecs)).map_err(SendError::Source)?;
        if n == 0 || n > max {
            return Ok(None);
        }
        let used = n.div_ceil(slot_size);
        let mut head = [0u8; 64];
        let seen = (route_offset + 6).min(n).min(head.len()).min(slot_size);
        self.region.read_bytes(offsets[0], &mut head[..seen]);
        let dest = self.route(head.get(route_offset..seen).unwrap_or(&[]))?;
        let direct = match (dest, speculated) {
            (Dest::Node(d), None) => self.reachable(d),
            (Dest::Node(d), Some((spec, _))) => d == spec,
            (Dest::AllPeers, _) => false,
        };
        if !direct {
            // Another destination than the bytes sit for, or several:
            // copy the frame out and send it the ordinary way.
            let mut frame = vec![0u8; n];
            let mut done = 0;
            for &off in &offsets[..used] {
                let len = (n - done).min(slot_size);
                self.region.read_bytes(off, &mut frame[done..done + len]);
                done += len;
            }
            if let (Dest::Node(d), Backend::Rings(state)) = (dest, &mut self.backend) {
                state.last_dest = Some(d);
            }
            return self.send_taken(dest, &frame);
        }
        match (&mut self.backend, speculated) {
            (Backend::Pool(state), _) => {
                let Dest::Node(dest) = dest else {
                    unreachable!("direct frames have one destination")
                };
                let from = state.cache.len() - need;
                let start = state.staged_slots.len();
                state
                    .staged_slots
                    .extend(state.cache.drain(from..from + used));
                Pool {
                    region: &self.region,
                    layout: &self.layout,
                }
                .describe(self.me, &state.staged_slots[start..], n);
                self.push_staged(dest, start, used, n)?;
            }
            (Backend::Rings(state), Some((dest, tail))) => {
                Rings {
                    region: &self.region,
                    layout: &self.layout,
                }
                .describe(self.me, dest, tail, n);
                state.last_dest = Some(dest);
                self.commit_ring(dest, tail, used as u32, n);
            }
            (Backend::Rings(_), None) => unreachable!("rings always speculate"),
        }
        Ok(Some(n))
    }

    /// `send` for a frame already taken from its source: a refusal is a
    /// counted drop, not an error.
    fn send_taken(&mut self, dest: Dest, frame: &[u8]) -> Result<Option<usize>, SendError> {
        match self.send(dest, frame) {
            Err(SendError::Endpoint(e)) => Err(e.into()),
            _ => Ok(Some(frame.len())),
        }
    }

    fn send_to(&mut self, dest: NodeId, frame: &[u8]) -> Result<(), SendError> {
        let result = self.stage(dest, frame);
        if matches!(result, Err(ref e) if !matches!(e, SendError::Endpoint(_))) {
            self.counters.tx_dropped += 1;
        }
        result
    }

    fn stage(&mut self, dest: NodeId, frame: &[u8]) -> Result<(), SendError> {
        if !self.reachable(dest) {
            return Err(SendError::NoPeer(dest));
        }
        let slot_size = self.layout.geometry.slot_size as usize;
        let need = frame.len().div_ceil(slot_size);
        match &mut self.backend {
            Backend::Pool(state) => {
                if state.staged.len() >= MAX_STAGED || state.cache.len() < need {
                    self.flush_pool(need)?;
                }
                let Backend::Pool(state) = &mut self.backend else {
                    unreachable!()
                };
                if state.staged.len() >= MAX_STAGED {
                    return Err(SendError::QueueFull);
                }
                if state.cache.len() < need {
                    return Err(SendError::NoBuffer);
                }
                let start = state.staged_slots.len();
                let from = state.cache.len() - need;
                state.staged_slots.extend(state.cache.drain(from..));
                Pool {
                    region: &self.region,
                    layout: &self.layout,
                }
                .fill(self.me, &state.staged_slots[start..], frame);
                self.push_staged(dest, start, need, frame.len())
            }
            Backend::Rings(state) => {
                let rings = Rings {
                    region: &self.region,
                    layout: &self.layout,
                };
                let capacity = rings.capacity();
                let span = need as u32;
                let tail = state.tails[dest];
                if capacity - tail.wrapping_sub(state.heads_seen[dest]).min(capacity) < span {
                    let head = rings.head(self.me, dest);
                    if tail.wrapping_sub(head) > capacity {
                        let (head, tail) = (head, tail);
                        self.note(ProtocolError::QueueIndices {
                            node: dest,
                            head,
                            tail,
                            capacity,
                        });
                        return Err(SendError::QueueFull);
                    }
                    state.heads_seen[dest] = head;
                    if capacity - tail.wrapping_sub(head) < span {
                        return Err(SendError::QueueFull);
                    }
                }
                rings.write(self.me, dest, tail, frame);
                self.commit_ring(dest, tail, span, frame.len());
                Ok(())
            }
        }
    }

    /// Configuration 2: records the frame whose chain of `count` slots
    /// starts at `staged_slots[start]` as staged for `dest`, and flushes a
    /// full batch.
    fn push_staged(
        &mut self,
        dest: NodeId,
        start: usize,
        count: usize,
        len: usize,
    ) -> Result<(), SendError> {
        let Backend::Pool(state) = &mut self.backend else {
            unreachable!("only configuration 2 stages chains")
        };
        state.staged.push(Staged {
            dest,
            start,
            count,
            len,
        });
        if state.staged.len() >= BATCH {
            self.flush_pool(0)?;
        }
        Ok(())
    }

    /// Configuration 1: counts the frame of `len` bytes written at `tail` of
    /// the ring to `dest` (`span` entries) for the next publish, and
    /// publishes a full batch.
    fn commit_ring(&mut self, dest: NodeId, tail: u32, span: u32, len: usize) {
        let Backend::Rings(state) = &mut self.backend else {
            unreachable!("only configuration 1 has rings")
        };
        state.tails[dest] = tail.wrapping_add(span);
        state.dirty |= 1 << dest;
        self.counters.tx_frames += 1;
        self.counters.tx_bytes += len as u64;
        if state.tails[dest].wrapping_sub(state.published[dest]) >= BATCH as u32 {
            self.flush_rings();
        }
    }

    /// Hands every staged frame to its receiver (those whose queue is full
    /// stay staged), and refills the slot cache.
    pub fn flush(&mut self) -> Result<FlushReport, EndpointError> {
        self.check_usable()?;
        match self.backend {
            Backend::Pool(_) => self.flush_pool(0),
            Backend::Rings(_) => Ok(self.flush_rings()),
        }
    }

    /// Gives back the slots this node holds without needing them (its send
    /// cache and the slots of frames it received), so that an idle node
    /// holds none and `inspect` sees the whole pool free. One lock round:
    /// call it when the node goes idle, not per frame. Slots of frames
    /// still staged stay. Configuration 1 has nothing to give back.
    pub fn release_idle(&mut self) -> Result<(), EndpointError> {
        self.check_usable()?;
        let Backend::Pool(state) = &self.backend else {
            return Ok(());
        };
        if state.cache.is_empty() && state.to_free.is_empty() {
            return Ok(());
        }
        let ticket = self.acquire()?;
        let (region, layout, me) = (&*self.region, &self.layout, self.me);
        let pool = Pool { region, layout };
        let result = match &mut self.backend {
            Backend::Pool(state) => {
                let mut give = std::mem::take(&mut state.to_free);
                give.append(&mut state.cache);
                pool.push_free(me, &give)
            }
            Backend::Rings(_) => Ok(0),
        };
        match result {
            Ok(skipped) => self.counters.protocol_errors += skipped,
            Err(error) => {
                self.note(error);
                self.repair_locked();
            }
        }
        self.release(ticket)
    }

    /// Drops frames that flush deferred (Ethernet semantics: a full
    /// receiver loses frames rather than stalling the sender).
    pub fn drop_staged(&mut self) {
        if let Backend::Pool(state) = &mut self.backend {
            self.counters.tx_dropped += state.staged.len() as u64;
            state.staged.clear();
            state.cache.append(&mut state.staged_slots);
        }
    }

    fn flush_rings(&mut self) -> FlushReport {
        let Backend::Rings(state) = &mut self.backend else {
            return FlushReport::default();
        };
        let rings = Rings {
            region: &self.region,
            layout: &self.layout,
        };
        let mut report = FlushReport::default();
        let dirty = std::mem::take(&mut state.dirty);
        for dest in members(dirty) {
            rings.publish(self.me, dest, state.tails[dest]);
            report.published += state.tails[dest].wrapping_sub(state.published[dest]) as usize;
            state.published[dest] = state.tails[dest];
        }
        report.wake = self.sleepers(dirty);
        report
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
            .filter(|&n| nodes.sleeping(n))
            .fold(0, |set, n| set | 1 << n)
    }

    fn flush_pool(&mut self, need: usize) -> Result<FlushReport, EndpointError> {
        let Backend::Pool(state) = &self.backend else {
            return Ok(FlushReport::default());
        };
        // Enough slots for a batch of frames like this one, within a fair
        // share of the pool.
        let fair_share = self.layout.geometry.slot_count as usize
            / (4 * self.layout.geometry.max_nodes as usize);
        let want = (need.max(1) * BATCH)
            .min(fair_share)
            .max(need)
            .max(BATCH.min(fair_share));
        if state.to_free.is_empty() && state.cache.len() >= need {
            if state.staged.is_empty() {
                return Ok(FlushReport::default());
            }
            // When every destination's queue is full, taking the lock only
            // to find that out would delay the receivers, the only nodes
            // that can make room. A lock-free look decides: the tail is
            // read before the head, which only grows, so an honest queue
            // never looks fuller than it is. Impossible indices (more than
            // full) go through the lock, where they are repaired.
            let pool = Pool {
                region: &self.region,
                layout: &self.layout,
            };
            let capacity = self.layout.geometry.queue_capacity;
            let all_full = members(state.staged_dests()).all(|dest| {
                let (head, tail) = pool.queue_indices(dest);
                tail.wrapping_sub(head) == capacity
            });
            if all_full {
                return Ok(FlushReport {
                    deferred: state.staged.len(),
                    ..FlushReport::default()
                });
            }
        }
        let ticket = self.acquire()?;
        let result = self.flush_pool_locked(want);
        let report = match result {
            Ok(report) => report,
            Err(error) => {
                self.note(error);
                self.repair_locked();
                FlushReport::default()
            }
        };
        self.release(ticket)?;
        Ok(FlushReport {
            wake: self.sleepers(report.wake),
            ..report
        })
    }

    /// With the lock held: free, enqueue, refill. `wake` in the report
    /// holds the destinations published to (filtered by the caller).
    fn flush_pool_locked(&mut self, want: usize) -> Result<FlushReport, ProtocolError> {
        let banned = self.quarantined();
        let Backend::Pool(state) = &mut self.backend else {
            return Ok(FlushReport::default());
        };
        let (region, layout, me) = (&*self.region, &self.layout, self.me);
        let pool = Pool { region, layout };
        let nodes = NodeTable { region, layout };
        let skipped = pool.push_free(me, &state.to_free)?;
        state.to_free.clear();
        let mut report = FlushReport::default();
        // First read and validate every destination's queue, so that a
        // violation is found before anything changes. Per destination:
        // (head, tail as found, tail after our entries); `None` for a node
        // not running (its frames are dropped).
        let mut tails: Vec<Option<(u32, u32, u32)>> = vec![None; nodes.count()];
        let capacity = layout.geometry.queue_capacity;
        for dest in members(state.staged_dests()) {
            if nodes.state(dest) == NodeState::Run && banned & 1 << dest == 0 {
                let (head, tail) = pool.queue_indices(dest);
                if tail.wrapping_sub(head) > capacity {
                    return Err(ProtocolError::QueueIndices {
                        node: dest,
                        head,
                        tail,
                        capacity,
                    });
                }
                tails[dest] = Some((head, tail, tail));
            }
        }
        let mut full = 0u64;
        let mut kept = Vec::new();
        let mut kept_slots = Vec::new();
        let mut dropped_slots = Vec::new();
        for frame in state.staged.drain(..) {
            let chain = &state.staged_slots[frame.start..frame.start + frame.count];
            let bit = 1u64 << frame.dest;
            match tails[frame.dest] {
                None => {
                    dropped_slots.extend_from_slice(chain);
                    report.dropped += 1;
                }
                Some((head, found, tail))
                    if full & bit == 0 && tail.wrapping_sub(head) < capacity =>
                {
                    pool.enqueue_at(frame.dest, tail, chain);
                    tails[frame.dest] = Some((head, found, tail.wrapping_add(1)));
                    report.published += 1;
                    self.counters.tx_frames += 1;
                    self.counters.tx_bytes += frame.len as u64;
                }
                Some(_) => {
                    // Keep order per destination: once one frame waits, the
                    // later ones to the same node wait too.
                    full |= bit;
                    kept.push(Staged {
                        start: kept_slots.len(),
                        ..frame
                    });
                    kept_slots.extend_from_slice(chain);
                }
            }
        }
        for (dest, indices) in tails.iter().enumerate() {
            if let Some((_, found, tail)) = *indices {
                if tail != found {
                    pool.publish_tail(dest, tail);
                    report.wake |= 1 << dest;
                }
            }
        }
        report.deferred = kept.len();
        state.staged = kept;
        state.staged_slots = kept_slots;
        self.counters.tx_dropped += report.dropped as u64;
        self.counters.protocol_errors += skipped;
        let skipped = pool.push_free(me, &dropped_slots)?;
        self.counters.protocol_errors += skipped;
        if state.cache.len() < want {
            pool.pop_free(me, want - state.cache.len(), &mut state.cache)?;
        }
        Ok(report)
    }

    /// With the lock held, after a protocol violation: rebuild buffer
    /// management and forget any private slot that is no longer ours.
    fn repair_locked(&mut self) {
        let (region, layout, me) = (&*self.region, &self.layout, self.me);
        let nodes = NodeTable { region, layout };
        self.counters.protocol_errors += repair(region, layout, &mut || nodes.beat(me));
        if let Backend::Pool(state) = &mut self.backend {
            let pool = Pool { region, layout };
            let ours = |slot: &u32| {
                *slot < pool.slot_count() && pool.owner(*slot) == crate::pool::held_by(me)
            };
            state.cache.retain(ours);
            state.to_free.retain(ours);
            // A flush may have stopped half way through the staged frames
            // (some written into a queue whose tail was never published):
            // drop them all, and keep the slots still ours.
            self.counters.tx_dropped += state.staged.len() as u64;
            state.staged.clear();
            state.staged_slots.retain(ours);
            state.cache.append(&mut state.staged_slots);
        }
    }

    /// True when frames wait for this node (no lock taken).
    pub fn pending(&self) -> bool {
        match &self.backend {
            Backend::Pool(_) => {
                let (head, tail) = Pool {
                    region: &self.region,
                    layout: &self.layout,
                }
                .queue_indices(self.me);
                head != tail
            }
            Backend::Rings(state) => {
                let rings = Rings {
                    region: &self.region,
                    layout: &self.layout,
                };
                (0..state.heads.len())
                    .any(|src| src != self.me && rings.tail(src, self.me) != state.heads[src])
            }
        }
    }

    /// Says whether this node is about to sleep (interrupt mode): senders
    /// ring its doorbell only while the flag is set. After setting it, check
    /// [`Endpoint::pending`] once more before sleeping.
    pub fn set_sleeping(&self, sleeping: bool) {
        self.nodes().set_sleeping(self.me, sleeping);
    }

    /// Receives up to `max` frames, handing each to `deliver`. Returns how
    /// many were delivered.
    pub fn recv(
        &mut self,
        max: usize,
        mut deliver: impl FnMut(&RxFrame<'_>),
    ) -> Result<usize, EndpointError> {
        self.check_usable()?;
        match self.backend {
            Backend::Pool(_) => self.recv_pool(max, &mut deliver),
            Backend::Rings(_) => Ok(self.recv_rings(max, &mut deliver)),
        }
    }

    fn recv_pool(
        &mut self,
        max: usize,
        deliver: &mut dyn FnMut(&RxFrame<'_>),
    ) -> Result<usize, EndpointError> {
        let Backend::Pool(state) = &self.backend else {
            return Ok(0);
        };
        if state.to_free.is_empty() && !self.pending() {
            return Ok(0);
        }
        let ticket = self.acquire()?;
        if let Err(error) = self.dequeue_locked(max) {
            self.note(error);
            self.repair_locked();
        }
        self.release(ticket)?;
        let Backend::Pool(state) = &mut self.backend else {
            return Ok(0);
        };
        for &(len, source, start, end) in &state.rx {
            deliver(&RxFrame::new(
                &self.region,
                &state.rx_segments[start..end],
                len,
                source,
            ));
            self.counters.rx_frames += 1;
            self.counters.rx_bytes += len as u64;
        }
        Ok(state.rx.len())
    }

    /// With the lock held: free what we delivered last time, take a batch.
    fn dequeue_locked(&mut self, max: usize) -> Result<(), ProtocolError> {
        let banned = self.quarantined();
        let mut blamed = Vec::new();
        let Backend::Pool(state) = &mut self.backend else {
            return Ok(());
        };
        let (region, layout, me) = (&*self.region, &self.layout, self.me);
        let pool = Pool { region, layout };
        self.counters.protocol_errors += pool.push_free(me, &state.to_free)?;
        state.to_free.clear();
        state.rx.clear();
        state.rx_segments.clear();
        let (head, tail) = pool.queue_indices(me);
        let capacity = layout.geometry.queue_capacity;
        let depth = tail.wrapping_sub(head);
        if depth > capacity {
            return Err(ProtocolError::QueueIndices {
                node: me,
                head,
                tail,
                capacity,
            });
        }
        let take = depth.min(max as u32);
        for i in 0..take {
            let first = pool.entry(me, head.wrapping_add(i));
            let start = state.rx_segments.len();
            let claimed = pool.claimed_sender(first);
            match pool.take_chain(me, first, &mut state.rx_segments, &mut state.to_free) {
                // From a peer in quarantine: dropped (its slots are freed).
                Ok((_, Some(source))) if banned & 1 << source != 0 => {
                    state.rx_segments.truncate(start);
                    self.counters.rx_dropped += 1;
                }
                Ok((len, source)) => state.rx.push((len, source, start, state.rx_segments.len())),
                Err(error) => {
                    self.counters.rx_dropped += 1;
                    self.counters.protocol_errors += 1;
                    self.last_error = Some(error);
                    blamed.push(claimed);
                }
            }
        }
        pool.set_head(me, head.wrapping_add(take));
        for node in blamed {
            self.blame(node);
        }
        Ok(())
    }

    fn recv_rings(&mut self, max: usize, deliver: &mut dyn FnMut(&RxFrame<'_>)) -> usize {
        let Backend::Rings(state) = &mut self.backend else {
            return 0;
        };
        let rings = Rings {
            region: &self.region,
            layout: &self.layout,
        };
        let peers = state.heads.len();
        let mut delivered = 0;
        for k in 0..peers {
            let src = (state.next_source + k) % peers;
            if src == self.me {
                continue;
            }
            let mut head = state.heads[src];
            let mut avail = match rings.available(src, self.me, head) {
                // A peer in quarantine: whatever it wrote is dropped.
                Ok(avail) if self.quarantine[src].is_some() => {
                    self.counters.rx_dropped += u64::from(avail > 0);
                    head = head.wrapping_add(avail);
                    0
                }
                Ok(avail) => avail,
                Err(error) => {
                    // Nothing in this ring can be trusted: skip to its tail.
                    // Only `src` writes it.
                    self.counters.protocol_errors += 1;
                    self.last_error = Some(error);
                    self.offences[src] = self.offences[src].saturating_add(1);
                    head = rings.tail(src, self.me);
                    0
                }
            };
            while avail > 0 && delivered < max {
                state.segments.clear();
                match rings.read(src, self.me, head, avail, &mut state.segments) {
                    Ok((len, span)) => {
                        deliver(&RxFrame::new(&self.region, &state.segments, len, Some(src)));
                        self.counters.rx_frames += 1;
                        self.counters.rx_bytes += len as u64;
                        delivered += 1;
                        head = head.wrapping_add(span);
                        avail -= span;
                    }
                    Err(error) => {
                        self.counters.protocol_errors += 1;
                        self.counters.rx_dropped += 1;
                        self.last_error = Some(error);
                        self.offences[src] = self.offences[src].saturating_add(1);
                        head = head.wrapping_add(avail);
                        avail = 0;
                    }
                }
            }
            if head != state.heads[src] {
                state.heads[src] = head;
                rings.consume(src, self.me, head);
            }
        }
        state.next_source = (state.next_source + 1) % peers;
        delivered
    }

    /// The node that owns `frame`'s destination address, or every running
    /// peer for group and unknown addresses.
    pub fn route(&mut self, frame: &[u8]) -> Result<Dest, EndpointError> {
        let Some(dst) = MacAddr::destination(frame) else {
            return Ok(Dest::AllPeers);
        };
        if dst.is_group() {
            return Ok(Dest::AllPeers);
        }
        let table = AddrTable {
            region: &self.region,
            layout: &self.layout,
        };
        if table.version() != self.addr_version {
            let ticket = self.acquire()?;
            let table = AddrTable {
                region: &self.region,
                layout: &self.layout,
            };
            self.addr_version = table.version();
            self.addresses.clear();
            self.counters.protocol_errors += table.snapshot(&mut self.addresses);
            self.release(ticket)?;
        }
        Ok(self
            .addresses
            .iter()
            .find(|e| e.0 == dst)
            .map_or(Dest::AllPeers, |e| Dest::Node(e.1)))
    }

    /// Housekeeping, every few milliseconds: heartbeat, counters, checks
    /// for re-format and fencing, reclaiming dead peers' buffers, fencing
    /// peers that misbehave, and restoring what a rogue overwrote of this
    /// node's own (its state, the header).
    pub fn tick(&mut self) -> Result<(), EndpointError> {
        self.check_usable()?;
        let nodes = self.nodes();
        nodes.beat(self.me);
        nodes.publish_counters(self.me, &self.counters);
        self.guard_header()?;
        let (generation, state) = {
            let nodes = self.nodes();
            (nodes.generation(self.me), nodes.state(self.me))
        };
        if generation != self.generation {
            // Fenced, or a scribble over our generation: either way our
            // buffers may be reclaimed now, so only a new incarnation is
            // safe (`reattach` is quick).
            self.fenced = true;
            return Err(LockError::Fenced.into());
        }
        if state != self.state {
            // Only we and a fencer (who also changes the generation) write
            // our state: someone scribbled over it.
            self.nodes().set_state(self.me, self.state);
            self.note(ProtocolError::Scribbled {
                what: "this node's state",
            });
        }
        let now = self.platform.now();
        for (node, until) in self.quarantine.iter_mut().enumerate() {
            if until.is_some_and(|until| now >= until) {
                *until = None;
                self.offences[node] = 0;
            }
        }
        let offenders: Vec<NodeId> = (0..self.offences.len())
            .filter(|&n| self.offences[n] >= OFFENCE_LIMIT && self.quarantine[n].is_none())
            .collect();
        if !offenders.is_empty() {
            self.fence_offenders(&offenders, now)?;
        }
        if now.saturating_duration_since(self.last_reap) >= self.liveness.lease() / 4 {
            self.last_reap = now;
            self.reap(now)?;
        }
        Ok(())
    }

    /// Compares the region's header with the copy validated at attach. A
    /// valid header of another format epoch is a re-format (the endpoint
    /// is done); anything else that lasts a quarter lease (a formatter
    /// takes microseconds) is a rogue's write, and the copy is put back
    /// (the magic last, as the formatter writes it). Meanwhile the node
    /// works from its copy. [`Endpoint::tick`] calls it; a fenced endpoint
    /// whose node cannot attach again because the header is damaged calls
    /// it between attempts, so that a region whose every node was fenced
    /// still heals.
    pub fn guard_header(&mut self) -> Result<(), EndpointError> {
        if self.region.load_u64(HDR_MAGIC, Ordering::Acquire) == MAGIC
            && self.region.load_u64(HDR_EPOCH, Ordering::Acquire) == self.epoch
            && read_header(&self.region) == self.header
        {
            self.header_bad_since = None;
            return Ok(());
        }
        if let Ok((_, epoch)) = Layout::read(&self.region) {
            if epoch != self.epoch {
                self.fenced = true;
                return Err(EndpointError::Reformatted);
            }
        }
        let now = self.platform.now();
        let since = *self.header_bad_since.get_or_insert(now);
        if now.saturating_duration_since(since) < self.liveness.lease() / 4 {
            return Ok(());
        }
        self.header_bad_since = None;
        // A word at a time, as every reader reads them, the magic last (with
        // Release), as a formatter writes it.
        let words = vni_core::layout::header_words(&self.header);
        self.region
            .store_words(8, &words[1..HDR_CHECKSUM / 8 + 1], Ordering::Relaxed);
        self.region
            .store_u64(HDR_MAGIC, words[0], Ordering::Release);
        self.note(ProtocolError::Scribbled {
            what: "the region header",
        });
        Ok(())
    }

    /// Fences peers blamed for [`OFFENCE_LIMIT`] protocol errors, as dead
    /// peers are fenced (state RESET, generation + 1, their buffers back
    /// to the pool), and ignores them for [`QUARANTINE_LEASES`].
    fn fence_offenders(&mut self, offenders: &[NodeId], now: Instant) -> Result<(), EndpointError> {
        let ticket = self.acquire()?;
        let until = now.saturating_add(self.liveness.lease() * QUARANTINE_LEASES);
        for &node in offenders {
            let nodes = self.nodes();
            nodes.fence(node, nodes.generation(node));
            self.liveness.forget(node);
            self.quarantine[node] = Some(until);
            self.offences[node] = 0;
        }
        self.repair_locked();
        self.release(ticket)
    }

    /// Fences peers whose heartbeat stood still for a lease and returns
    /// their buffers to the pool.
    fn reap(&mut self, now: Instant) -> Result<(), EndpointError> {
        let nodes = NodeTable {
            region: &self.region,
            layout: &self.layout,
        };
        let mut dead = Vec::new();
        for node in (0..nodes.count()).filter(|&n| n != self.me) {
            if nodes.state(node) != NodeState::Reset && self.liveness.is_dead(&nodes, node, now) {
                dead.push((node, nodes.generation(node)));
            }
        }
        if dead.is_empty() {
            return Ok(());
        }
        let ticket = self.acquire()?;
        let mut fenced = false;
        for (node, generation) in dead {
            if self.nodes().fence(node, generation) {
                self.liveness.forget(node);
                self.counters.recoveries += 1;
                fenced = true;
            }
        }
        if fenced {
            self.repair_locked();
        }
        self.release(ticket)
    }

    /// Test hook for crash tests: takes the region lock and leaves buffer
    /// management half changed (slots popped from the free stack, frames
    /// for `dest` written into its queue but the tail not published), then
    /// returns with the lock still held. The caller is expected to be
    /// killed; nothing else may be done with this endpoint.
    #[doc(hidden)]
    pub fn freeze_inside_lock(&mut self, dest: NodeId) -> Result<(), EndpointError> {
        // Never released: the caller dies holding the lock.
        let _held = self.acquire()?;
        if let Backend::Pool(state) = &mut self.backend {
            let pool = Pool {
                region: &self.region,
                layout: &self.layout,
            };
            let mut slots = Vec::new();
            // A partial pop still leaves a half-done state to recover from.
            let _ = pool.pop_free(self.me, 3 * BATCH, &mut slots);
            let (_, tail) = pool.queue_indices(dest);
            for (i, &slot) in slots.iter().take(BATCH).enumerate() {
                pool.fill(self.me, &[slot], b"half-done");
                pool.enqueue_at(dest, tail.wrapping_add(i as u32), &[slot]);
            }
            state.cache.extend(slots);
        }
        Ok(())
    }

    /// Leaves the region: every slot this node holds or has queued goes
    /// back to the pool, its address is removed, its state is `Reset`.
    pub fn detach(mut self) -> Result<(), EndpointError> {
        let ticket = self.acquire()?;
        self.nodes().set_state(self.me, NodeState::Reset);
        let (region, layout, me) = (&*self.region, &self.layout, self.me);
        let nodes = NodeTable { region, layout };
        repair(region, layout, &mut || nodes.beat(me));
        if let Backend::Rings(_) = self.backend {
            // Frames still in our incoming rings will never be read.
            let rings = Rings { region, layout };
            for src in (0..nodes.count()).filter(|&src| src != me) {
                rings.consume(src, me, rings.tail(src, me));
            }
        }
        nodes.publish_counters(me, &self.counters);
        self.release(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect;
    use std::time::Instant;

    const CONFIGS: [BufferConfig; 2] = [BufferConfig::SharedPool, BufferConfig::PerPair];

    /// A formatted region and `nodes` endpoints in `Run`.
    fn lab(config: BufferConfig, nodes: usize, lease_ms: u32) -> (Arc<Region>, Vec<Endpoint>) {
        let len = 8 << 20;
        let region = Arc::new(Region::anonymous(len).unwrap());
        let mut g = Geometry::fit(config, len, nodes as u32, 2048).unwrap();
        g.lease_ms = lease_ms;
        format(&region, &g).unwrap();
        let eps = (0..nodes)
            .map(|n| {
                let mut ep = Endpoint::attach(region.clone(), n, MacAddr::for_node(n)).unwrap();
                ep.set_state(NodeState::Run).unwrap();
                ep
            })
            .collect();
        (region, eps)
    }

    fn frame(len: usize, tag: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(31) ^ tag).collect()
    }

    fn drain(ep: &mut Endpoint) -> Vec<(Option<NodeId>, Vec<u8>)> {
        let mut out = Vec::new();
        while ep
            .recv(BATCH, |f| out.push((f.source(), f.to_vec())))
            .unwrap()
            > 0
        {}
        out
    }

    fn assert_all_slots_home(region: &Region) {
        let report = inspect(region).unwrap();
        assert_eq!(report.pool.free, report.pool.slots, "{:#?}", report.nodes);
        assert!(!report.lock.held);
    }

    /// `fill` for `send_direct` that copies `bytes` into the iovecs, as
    /// `readv` from a TAP would, truncating like the kernel.
    fn readv_of(bytes: &[u8]) -> impl FnOnce(&IoSlots<'_>) -> std::io::Result<usize> + '_ {
        move |slots| {
            let mut done = 0;
            for v in slots.iovecs() {
                let n = v.iov_len.min(bytes.len() - done);
                // SAFETY: the iovec covers `iov_len` writable bytes of the
                // region; `n` is within it and within `bytes`.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes[done..].as_ptr(), v.iov_base.cast(), n)
                };
                done += n;
            }
            Ok(done)
        }
    }

    /// A frame of `len` bytes after a 10-byte header, for `mac`.
    fn addressed(len: usize, tag: u8, mac: MacAddr) -> Vec<u8> {
        let mut f = frame(len, tag);
        f[10..16].copy_from_slice(&mac.0);
        f
    }

    #[test]
    fn direct_sends_arrive_intact_wherever_they_go() {
        for config in CONFIGS {
            let (region, mut eps) = lab(config, 3, 1000);
            let mut sent: Vec<(NodeId, Vec<u8>)> = Vec::new();
            // Unicast to 1, then to 2 (config 1: the speculated ring was
            // 1's), every size class, and a broadcast.
            for (i, &len) in [16, 60, 1500, 2048, 2049, 9000, MAX_FRAME]
                .iter()
                .enumerate()
            {
                for dest in [1, 2, 1] {
                    let f = addressed(len, (i * 3 + dest) as u8, MacAddr::for_node(dest));
                    let n = eps[0].send_direct(MAX_FRAME, 10, readv_of(&f)).unwrap();
                    assert_eq!(n, Some(len));
                    sent.push((dest, f));
                }
            }
            let bcast = addressed(100, 99, MacAddr([0xff; 6]));
            eps[0].send_direct(MAX_FRAME, 10, readv_of(&bcast)).unwrap();
            eps[0].flush().unwrap();
            for dest in [1, 2] {
                let got = drain(&mut eps[dest]);
                let mut want: Vec<Vec<u8>> = sent
                    .iter()
                    .filter(|(d, _)| *d == dest)
                    .map(|(_, f)| f.clone())
                    .collect();
                want.push(bcast.clone());
                assert_eq!(got.len(), want.len(), "{config:?} node {dest}");
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!((g.0, &g.1), (Some(0), w), "{config:?} node {dest}");
                }
            }
            // No frame, a failing source: nothing sent, nothing lost.
            assert_eq!(eps[0].send_direct(MAX_FRAME, 10, |_| Ok(0)).unwrap(), None);
            let err = eps[0]
                .send_direct(MAX_FRAME, 10, |_| Err(std::io::ErrorKind::Other.into()))
                .unwrap_err();
            assert!(matches!(err, SendError::Source(_)), "{err}");
            eps[0].flush().unwrap();
            assert!(drain(&mut eps[1]).is_empty());
            for ep in &mut eps {
                ep.release_idle().unwrap();
            }
            if config == BufferConfig::SharedPool {
                assert_all_slots_home(&region);
            }
            let report = inspect(&region).unwrap();
            assert!(report.nodes.iter().all(|n| n.counters.protocol_errors == 0));
        }
    }

    #[test]
    fn unicast_of_every_size_class_arrives_intact_and_in_order() {
        for config in CONFIGS {
            let (region, mut eps) = lab(config, 3, 1000);
            let sizes = [1, 14, 60, 1500, 2047, 2048, 2049, 9000, 40_000, MAX_FRAME];
            for (i, &len) in sizes.iter().enumerate() {
                eps[0].send(Dest::Node(1), &frame(len, i as u8)).unwrap();
            }
            let report = eps[0].flush().unwrap();
            assert_eq!(report.deferred, 0);
            let got = drain(&mut eps[1]);
            assert_eq!(got.len(), sizes.len(), "{config:?}");
            for (i, (src, bytes)) in got.iter().enumerate() {
                assert_eq!(*src, Some(0));
                assert_eq!(bytes, &frame(sizes[i], i as u8), "{config:?} frame {i}");
            }
            assert!(drain(&mut eps[2]).is_empty(), "node 2 got node 1's frames");
            assert_eq!(eps[1].counters().rx_frames, sizes.len() as u64);
            assert_eq!(
                eps[0].counters().tx_bytes,
                sizes.iter().sum::<usize>() as u64
            );
            for ep in eps {
                ep.detach().unwrap();
            }
            assert_all_slots_home(&region);
        }
    }

    #[test]
    fn broadcast_reaches_every_running_peer_but_not_the_sender() {
        for config in CONFIGS {
            let (_region, mut eps) = lab(config, 4, 1000);
            eps[3].set_state(NodeState::Ready).unwrap();
            let bcast = [
                &[0xffu8; 6][..],
                &[2, 0, 0, 0, 0, 9],
                &[0x88, 0xb5],
                b"hello all",
            ]
            .concat();
            assert_eq!(eps[0].route(&bcast).unwrap(), Dest::AllPeers);
            eps[0].send(Dest::AllPeers, &bcast).unwrap();
            eps[0].flush().unwrap();
            assert!(
                drain(&mut eps[0]).is_empty(),
                "{config:?}: the sender got its own broadcast"
            );
            assert_eq!(drain(&mut eps[1]), vec![(Some(0), bcast.clone())]);
            assert_eq!(drain(&mut eps[2]), vec![(Some(0), bcast.clone())]);
            assert!(
                drain(&mut eps[3]).is_empty(),
                "{config:?}: a node not in Run got a frame"
            );
        }
    }

    #[test]
    fn routes_by_destination_mac() {
        let (_region, mut eps) = lab(BufferConfig::SharedPool, 3, 1000);
        let to = |mac: MacAddr| [&mac.0[..], &MacAddr::for_node(0).0, &[0x08, 0x00]].concat();
        assert_eq!(
            eps[0].route(&to(MacAddr::for_node(2))).unwrap(),
            Dest::Node(2)
        );
        assert_eq!(
            eps[0].route(&to(MacAddr::for_node(1))).unwrap(),
            Dest::Node(1)
        );
        assert_eq!(
            eps[0]
                .route(&to("02:99:00:00:00:01".parse().unwrap()))
                .unwrap(),
            Dest::AllPeers
        );
        assert_eq!(
            eps[0]
                .route(&to("33:33:00:00:00:01".parse().unwrap()))
                .unwrap(),
            Dest::AllPeers
        );
        assert_eq!(
            eps[0].route(&[1, 2]).unwrap(),
            Dest::AllPeers,
            "a runt frame floods"
        );
        // A node that leaves takes its address with it.
        let leaving = eps.remove(2);
        leaving.detach().unwrap();
        assert_eq!(
            eps[0].route(&to(MacAddr::for_node(2))).unwrap(),
            Dest::AllPeers
        );
    }

    #[test]
    fn bad_sends_are_refused_and_counted() {
        for config in CONFIGS {
            let (_region, mut eps) = lab(config, 3, 1000);
            eps[2].set_state(NodeState::Ready).unwrap();
            assert!(matches!(
                eps[0].send(Dest::Node(2), b"x"),
                Err(SendError::NoPeer(2))
            ));
            assert!(matches!(
                eps[0].send(Dest::Node(0), b"x"),
                Err(SendError::NoPeer(0))
            ));
            assert!(matches!(
                eps[0].send(Dest::Node(99), b"x"),
                Err(SendError::NoPeer(99))
            ));
            assert!(matches!(
                eps[0].send(Dest::Node(1), b""),
                Err(SendError::BadLength(0))
            ));
            let big = vec![0; MAX_FRAME + 1];
            assert!(matches!(
                eps[0].send(Dest::Node(1), &big),
                Err(SendError::BadLength(_))
            ));
            assert_eq!(eps[0].counters().tx_dropped, 5);
        }
    }

    #[test]
    fn a_full_receiver_pushes_back_and_order_is_kept() {
        for config in CONFIGS {
            let (region, mut eps) = lab(config, 2, 1000);
            let mut sent = 0u32;
            let mut refused = 0;
            // Far more than any queue holds: 4 KiB frames.
            while sent < 5000 && refused < 3 {
                match eps[0].send(Dest::Node(1), &frame(4096, sent as u8)) {
                    Ok(()) => sent += 1,
                    Err(e) if e.is_backpressure() => {
                        refused += 1;
                        eps[0].flush().unwrap();
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            assert!(
                refused > 0,
                "{config:?}: 5000 frames of 4 KiB never filled the receiver"
            );
            let mut got = 0u32;
            while got < sent {
                eps[0].flush().unwrap();
                let n = eps[1]
                    .recv(BATCH, |f| {
                        assert_eq!(
                            f.to_vec(),
                            frame(4096, got as u8),
                            "{config:?}: frame {got} out of order"
                        );
                        got += 1;
                    })
                    .unwrap();
                assert!(
                    n > 0 || got == sent,
                    "{config:?}: stalled at {got} of {sent}"
                );
            }
            for ep in eps {
                ep.detach().unwrap();
            }
            assert_all_slots_home(&region);
        }
    }

    #[test]
    fn an_idle_node_gives_every_slot_back() {
        let (region, mut eps) = lab(BufferConfig::SharedPool, 2, 1000);
        for i in 0..100 {
            eps[0].send(Dest::Node(1), &frame(3000, i)).unwrap();
        }
        eps[0].flush().unwrap();
        let mut got = 0;
        eps[1].recv(BATCH * 4, |_| got += 1).unwrap();
        eps[1].recv(BATCH * 4, |_| got += 1).unwrap();
        assert_eq!(got, 100);
        let report = inspect::inspect(&region).unwrap();
        assert!(report.pool.free < report.pool.slots, "caches hold slots");
        for ep in &mut eps {
            ep.release_idle().unwrap();
        }
        let report = inspect::inspect(&region).unwrap();
        assert_eq!(report.pool.free, report.pool.slots);
        assert!(report.nodes.iter().all(|n| n.slots_held == 0));
        // Nothing to give: no lock round, no change.
        eps[0].release_idle().unwrap();
        assert_eq!(eps[0].counters().protocol_errors, 0);
    }

    #[test]
    fn detach_returns_every_slot_even_with_frames_queued() {
        for config in CONFIGS {
            let (region, mut eps) = lab(config, 3, 1000);
            for i in 0..20 {
                eps[0].send(Dest::Node(1), &frame(3000, i)).unwrap();
                eps[2].send(Dest::Node(1), &frame(100, i)).unwrap();
            }
            eps[0].flush().unwrap();
            eps[2].flush().unwrap();
            // Node 1 received half and leaves with the rest queued.
            eps[1].recv(10, |_| {}).unwrap();
            for ep in eps {
                ep.detach().unwrap();
            }
            assert_all_slots_home(&region);
        }
    }

    #[test]
    fn a_dead_peers_buffers_are_reclaimed_after_the_lease() {
        let (region, mut eps) = lab(BufferConfig::SharedPool, 3, 50);
        for i in 0..10 {
            eps[0].send(Dest::Node(2), &frame(5000, i)).unwrap();
        }
        eps[0].flush().unwrap();
        eps[2].recv(3, |_| {}).unwrap();
        // Node 2 dies: no detach, no more heartbeats.
        let dead = eps.pop().unwrap();
        std::mem::forget(dead);
        let held = inspect(&region).unwrap().nodes[2].slots_held
            + inspect(&region).unwrap().nodes[2].slots_queued;
        assert!(held > 0);
        let start = Instant::now();
        while inspect(&region).unwrap().nodes[2].state != Some(NodeState::Reset) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "node 2 never reaped"
            );
            for ep in &mut eps {
                ep.tick().unwrap();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            start.elapsed() >= Duration::from_millis(50),
            "reaped before the lease ran out"
        );
        let report = inspect(&region).unwrap();
        assert_eq!(
            (report.nodes[2].slots_held, report.nodes[2].slots_queued),
            (0, 0)
        );
        assert!(matches!(
            eps[0].send(Dest::Node(2), b"x"),
            Err(SendError::NoPeer(2))
        ));
        assert_eq!(eps.iter().map(|e| e.counters().recoveries).sum::<u64>(), 1);
        for ep in eps {
            ep.detach().unwrap();
        }
        assert_all_slots_home(&region);
    }

    #[test]
    fn a_restarted_node_reattaches_but_a_live_one_is_busy() {
        let (region, mut eps) = lab(BufferConfig::SharedPool, 2, 50);
        // Node 1 crashes holding slots, then comes back with the same id.
        eps[0]
            .send(Dest::Node(1), b"queued for the old node 1")
            .unwrap();
        eps[0].flush().unwrap();
        std::mem::forget(eps.pop().unwrap());
        let mut node1 = Endpoint::attach(region.clone(), 1, MacAddr::for_node(1)).unwrap();
        node1.set_state(NodeState::Run).unwrap();
        assert!(
            drain(&mut node1).is_empty(),
            "the new incarnation got the old one's frames"
        );
        eps[0].send(Dest::Node(1), b"fresh").unwrap();
        eps[0].flush().unwrap();
        assert_eq!(drain(&mut node1), vec![(Some(0), b"fresh".to_vec())]);

        // While node 1 keeps beating, nobody else may attach as node 1.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let beating = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    node1.tick().unwrap();
                    std::thread::sleep(Duration::from_millis(2));
                }
                node1
            })
        };
        let busy = Endpoint::attach(region.clone(), 1, MacAddr::for_node(1));
        assert!(matches!(busy, Err(EndpointError::NodeBusy(1))), "{busy:?}");
        stop.store(true, Ordering::Relaxed);
        beating.join().unwrap().detach().unwrap();
        // Node 0 did not tick during those two leases, so node 1 rightly
        // declared it dead and reclaimed its buffers.
        let node0 = eps.pop().unwrap();
        assert!(matches!(
            node0.detach(),
            Err(EndpointError::Lock(LockError::Fenced))
        ));
        assert_all_slots_home(&region);
    }

    #[test]
    fn a_fenced_node_is_told_to_attach_again() {
        let (region, mut eps) = lab(BufferConfig::SharedPool, 2, 50);
        // Node 1 "pauses" (no ticks) long enough to be declared dead.
        let start = Instant::now();
        while inspect(&region).unwrap().nodes[1].state == Some(NodeState::Run) {
            assert!(start.elapsed() < Duration::from_secs(5));
            eps[0].tick().unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut node1 = eps.pop().unwrap();
        assert!(matches!(
            node1.tick(),
            Err(EndpointError::Lock(LockError::Fenced))
        ));
        assert!(matches!(
            node1.flush(),
            Err(EndpointError::Lock(LockError::Fenced))
        ));
        assert!(matches!(
            node1.send(Dest::Node(0), b"x"),
            Err(SendError::Endpoint(_))
        ));
        let mut node1 = Endpoint::attach(region.clone(), 1, MacAddr::for_node(1)).unwrap();
        node1.set_state(NodeState::Run).unwrap();
        node1.send(Dest::Node(0), b"back").unwrap();
        node1.flush().unwrap();
        assert_eq!(drain(&mut eps[0]), vec![(Some(1), b"back".to_vec())]);
    }

    #[test]
    fn a_violation_found_mid_flush_leaks_no_slot() {
        let (region, mut eps) = lab(BufferConfig::SharedPool, 2, 1000);
        for i in 0..5 {
            eps[0].send(Dest::Node(1), &frame(3000, i)).unwrap();
        }
        // A rogue sets node 1's queue indices impossibly far apart.
        let layout = *eps[0].layout();
        let queue1 = layout.queues + layout.queue_stride;
        region.store_u32(queue1, 7, Ordering::Relaxed);
        region.store_u32(queue1 + 64, 7 + 100_000, Ordering::Relaxed);
        eps[0].flush().unwrap();
        assert!(eps[0].counters().protocol_errors > 0);
        assert_eq!(eps[0].counters().tx_dropped, 5);
        // The repaired queue works again.
        eps[0].send(Dest::Node(1), b"after").unwrap();
        eps[0].flush().unwrap();
        assert_eq!(drain(&mut eps[1]), vec![(Some(0), b"after".to_vec())]);
        for ep in eps {
            ep.detach().unwrap();
        }
        assert_all_slots_home(&region);
    }

    #[test]
    fn the_lock_is_taken_once_per_batch_not_per_frame() {
        let (region, mut eps) = lab(BufferConfig::SharedPool, 2, 1000);
        let tickets = || crate::inspect(&region).unwrap().lock.next_ticket;
        let before = tickets();
        let frames = 20 * BATCH;
        for i in 0..frames {
            eps[0].send(Dest::Node(1), &frame(64, i as u8)).unwrap();
            if i % BATCH == BATCH - 1 {
                let mut got = 0;
                eps[1].recv(BATCH, |_| got += 1).unwrap();
            }
        }
        eps[0].flush().unwrap();
        while eps[1].recv(BATCH, |_| {}).unwrap() > 0 {}
        let rounds = tickets().wrapping_sub(before) as usize;
        // One round per batch on each side, plus cache refills.
        assert!(
            rounds <= 3 * frames / BATCH,
            "{rounds} lock rounds for {frames} frames"
        );
        assert_eq!(eps[1].counters().rx_frames, frames as u64);
    }

    #[test]
    fn doorbell_peer_ids_are_published_and_forgotten_on_reattach() {
        let (region, mut eps) = lab(BufferConfig::SharedPool, 2, 1000);
        assert_eq!(eps[0].doorbell_peer(1), None);
        eps[1].set_doorbell_peer(Some(7));
        assert_eq!(eps[0].doorbell_peer(1), Some(7));
        assert_eq!(eps[0].doorbell_peer(99), None, "out-of-range node");
        // The guest restarts: its new incarnation has no doorbell until it
        // reads its new ivshmem id and publishes it.
        eps.pop().unwrap().detach().unwrap();
        let again = Endpoint::attach(region.clone(), 1, MacAddr::for_node(1)).unwrap();
        assert_eq!(eps[0].doorbell_peer(1), None);
        again.set_doorbell_peer(Some(9));
        assert_eq!(eps[0].doorbell_peer(1), Some(9));
        assert_eq!(inspect(&region).unwrap().nodes[1].doorbell_peer, Some(9));
    }

    #[test]
    fn a_reformat_is_noticed() {
        let (region, mut eps) = lab(BufferConfig::PerPair, 2, 1000);
        let g = *eps[0].layout();
        format(&region, &g.geometry).unwrap();
        assert!(matches!(eps[0].tick(), Err(EndpointError::Reformatted)));
    }

    #[test]
    fn doorbells_only_for_sleeping_receivers() {
        for config in CONFIGS {
            let (_region, mut eps) = lab(config, 3, 1000);
            eps[0].send(Dest::Node(1), b"a").unwrap();
            eps[0].send(Dest::Node(2), b"b").unwrap();
            assert_eq!(eps[0].flush().unwrap().wake, 0, "{config:?}: nobody sleeps");
            eps[2].set_sleeping(true);
            eps[0].send(Dest::Node(1), b"a").unwrap();
            eps[0].send(Dest::Node(2), b"b").unwrap();
            assert_eq!(eps[0].flush().unwrap().wake, 0b100, "{config:?}");
            assert_eq!(
                eps[0].flush().unwrap().wake,
                0,
                "{config:?}: nothing new, no doorbell"
            );
            assert!(eps[2].pending());
        }
    }
}
