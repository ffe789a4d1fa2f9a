//! The region's layout: geometry, section offsets and the header that
//! describes them.
//!
//! ```text
//! 0x0000  header        magic, version, buffer configuration, format epoch,
//!                       geometry, section offsets, checksum (128 bytes)
//! nodes   node table    per node, 192 bytes: state, generation, MAC; heartbeat,
//!                       lock ticket; counters
//! lock    region lock   ticket lock guarding buffer and address management
//! addr    address table version word, then (MAC, node) entries
//! pool    buffer mgmt   config 2: free stack, slot descriptors, per-node
//!                       receive queues; config 1: one ring per node pair
//! slots   packet data   config 2 only: the shared slot pool (page aligned)
//! ```
//!
//! A node formats the region (or the host does), writing the magic last with
//! `Release`; attaching nodes read the magic with `Acquire`, then copy the
//! header once into local memory and validate that copy: the checksum, every
//! geometry field against its allowed range, and every stored offset against
//! the one recomputed from the geometry. Only the validated [`Layout`] is
//! used afterwards; the header is never re-read except for its epoch.

use core::fmt;
use core::sync::atomic::Ordering;

use super::region::Region;

pub use super::offsets::*;

/// How frame buffers are organised (the study's two configurations).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum BufferConfig {
    /// Configuration 1: a separate ring for each (sender, receiver) pair.
    /// Little processing per frame, low buffer utilisation.
    PerPair,
    /// Configuration 2 (the study's choice): one pool of slots shared by all
    /// frames of all nodes, and a receive queue of slot references per node.
    SharedPool,
}

impl BufferConfig {
    /// The number the study and the header use: 1 or 2.
    pub fn number(self) -> u32 {
        match self {
            BufferConfig::PerPair => 1,
            BufferConfig::SharedPool => 2,
        }
    }

    /// The configuration numbered `n` (1 or 2).
    pub fn from_number(n: u32) -> Option<Self> {
        match n {
            1 => Some(BufferConfig::PerPair),
            2 => Some(BufferConfig::SharedPool),
            _ => None,
        }
    }
}

impl fmt::Display for BufferConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BufferConfig::PerPair => write!(f, "1 (per-pair rings)"),
            BufferConfig::SharedPool => write!(f, "2 (shared pool)"),
        }
    }
}

/// Errors in a geometry or in a region's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// No node has formatted the region yet (magic is zero).
    NotFormatted,
    /// The first word is neither zero nor the VNI magic.
    BadMagic {
        /// The word found.
        found: u64,
    },
    /// Formatted by an incompatible version of the protocol.
    UnsupportedVersion {
        /// The version found.
        found: u32,
    },
    /// The header's checksum does not match its contents.
    BadChecksum {
        /// Stored checksum.
        found: u64,
        /// Checksum of the header as read.
        computed: u64,
    },
    /// A geometry field is out of range.
    BadGeometry {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What is allowed.
        allowed: &'static str,
    },
    /// The layout needs more bytes than the region has.
    TooSmall {
        /// Bytes the geometry needs.
        needed: u64,
        /// Bytes mapped.
        available: u64,
    },
    /// A stored section offset disagrees with the geometry.
    OffsetMismatch {
        /// The section.
        section: &'static str,
        /// Stored offset.
        found: u64,
        /// Offset computed from the geometry.
        expected: u64,
    },
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LayoutError::NotFormatted => write!(f, "Region is not formatted (no VNI header)"),
            LayoutError::BadMagic { found } => write!(
                f,
                "Region has no VNI header: magic {found:#018x}, expected {MAGIC:#018x}"
            ),
            LayoutError::UnsupportedVersion { found } => write!(
                f,
                "Region layout version {found} is not supported (this build speaks version {VERSION})"
            ),
            LayoutError::BadChecksum { found, computed } => write!(
                f,
                "Region header is corrupt: checksum {found:#x}, computed {computed:#x}"
            ),
            LayoutError::BadGeometry {
                field,
                value,
                allowed,
            } => write!(f, "Invalid {field} {value}: {allowed}"),
            LayoutError::TooSmall { needed, available } => write!(
                f,
                "Layout needs {needed} bytes but the region has {available}"
            ),
            LayoutError::OffsetMismatch {
                section,
                found,
                expected,
            } => write!(
                f,
                "Region header is corrupt: {section} offset {found:#x}, geometry gives {expected:#x}"
            ),
        }
    }
}

impl core::error::Error for LayoutError {}

/// The sizes a region is formatted with. Chosen at format time; every node
/// reads them from the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Geometry {
    /// Buffer configuration 1 or 2.
    pub config: BufferConfig,
    /// Node table entries (2..=64).
    pub max_nodes: u32,
    /// Bytes per slot (64..=65536, a multiple of 64).
    pub slot_size: u32,
    /// Config 2: slots in the pool. Config 1: slots per pair ring (a power of two).
    pub slot_count: u32,
    /// Config 2: receive queue entries per node (a power of two). Config 1: 0.
    pub queue_capacity: u32,
    /// Address table entries.
    pub mac_capacity: u32,
    /// Milliseconds a node's heartbeat may stand still before peers declare it dead.
    pub lease_ms: u32,
}

impl Geometry {
    /// Default slot size: one standard Ethernet frame fits in one slot.
    pub const DEFAULT_SLOT_SIZE: u32 = 2048;
    /// Default lease: long enough that a descheduled process is not declared
    /// dead on a loaded 2-core host, short enough that recovery is prompt.
    pub const DEFAULT_LEASE_MS: u32 = 1000;
    /// Default receive queue length per node (config 2).
    pub const DEFAULT_QUEUE_CAPACITY: u32 = 1024;

    /// The largest geometry of `config` for `max_nodes` nodes and
    /// `slot_size`-byte slots that fits in `region_len` bytes.
    pub fn fit(
        config: BufferConfig,
        region_len: usize,
        max_nodes: u32,
        slot_size: u32,
    ) -> Result<Self, LayoutError> {
        let mut geometry = Geometry {
            config,
            max_nodes,
            slot_size,
            slot_count: 0,
            queue_capacity: match config {
                BufferConfig::SharedPool => Self::DEFAULT_QUEUE_CAPACITY,
                BufferConfig::PerPair => 0,
            },
            mac_capacity: max_nodes.saturating_mul(4),
            lease_ms: Self::DEFAULT_LEASE_MS,
        };
        // Size everything but the slots, then give the rest to slots.
        let fixed = Layout::compute(&geometry).map_or(usize::MAX, |l| l.total);
        let spare = region_len.saturating_sub(fixed);
        let count = match config {
            BufferConfig::SharedPool => {
                let per_slot = (slot_size as usize).saturating_add(DESC_LEN + 4);
                let count = spare
                    .saturating_sub(2 * 4096)
                    .checked_div(per_slot)
                    .unwrap_or(0);
                u32::try_from(count.min(Layout::MAX_POOL_SLOTS)).unwrap_or(0)
            }
            BufferConfig::PerPair => {
                let rings = (max_nodes as usize).saturating_mul(max_nodes as usize);
                let per_slot = (slot_size as usize).saturating_add(RING_DESC_LEN);
                let per_ring = spare
                    .saturating_sub(rings.saturating_mul(256))
                    .checked_div(rings)
                    .and_then(|room| room.checked_div(per_slot))
                    .unwrap_or(0);
                match per_ring.checked_ilog2() {
                    None => 0,
                    Some(log) => 1u32 << log.min(20),
                }
            }
        };
        geometry.slot_count = count;
        Layout::new(&geometry, region_len)?;
        Ok(geometry)
    }

    /// Slots a frame of the largest size needs: the bound on every chain.
    pub fn max_chain(&self) -> u32 {
        (MAX_FRAME as u32).div_ceil(self.slot_size.max(1))
    }

    /// Checks every field against its allowed range.
    pub fn validate(&self) -> Result<(), LayoutError> {
        let bad = |field, value: u32, allowed| {
            Err(LayoutError::BadGeometry {
                field,
                value: value.into(),
                allowed,
            })
        };
        if !(2..=MAX_NODES as u32).contains(&self.max_nodes) {
            return bad("max_nodes", self.max_nodes, "2 to 64");
        }
        if !(64..=MAX_SLOT).contains(&self.slot_size) || self.slot_size % 64 != 0 {
            return bad(
                "slot_size",
                self.slot_size,
                "a multiple of 64 from 64 to 65536",
            );
        }
        if !(self.max_nodes..=self.max_nodes.saturating_mul(64)).contains(&self.mac_capacity) {
            return bad(
                "mac_capacity",
                self.mac_capacity,
                "max_nodes to 64 x max_nodes",
            );
        }
        if !(10..=600_000).contains(&self.lease_ms) {
            return bad("lease_ms", self.lease_ms, "10 to 600000");
        }
        match self.config {
            BufferConfig::SharedPool => {
                let min = self.max_chain().saturating_mul(2);
                if self.slot_count < min || self.slot_count as usize > Layout::MAX_POOL_SLOTS {
                    return bad(
                        "slot_count",
                        self.slot_count,
                        "2 x slots of a 64 KiB frame to 2^24",
                    );
                }
                if !self.queue_capacity.is_power_of_two()
                    || !(16..=65536).contains(&self.queue_capacity)
                {
                    return bad(
                        "queue_capacity",
                        self.queue_capacity,
                        "a power of two from 16 to 65536",
                    );
                }
            }
            BufferConfig::PerPair => {
                if !self.slot_count.is_power_of_two()
                    || self.slot_count < self.max_chain()
                    || self.slot_count > 1 << 20
                {
                    return bad(
                        "slot_count",
                        self.slot_count,
                        "a power of two, at least the slots of a 64 KiB frame, at most 2^20",
                    );
                }
                if self.queue_capacity != 0 {
                    return bad(
                        "queue_capacity",
                        self.queue_capacity,
                        "0 with per-pair rings",
                    );
                }
            }
        }
        Ok(())
    }
}

/// Byte offsets of every section, computed from a validated [`Geometry`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The geometry the offsets derive from.
    pub geometry: Geometry,
    /// Node table.
    pub nodes: usize,
    /// Region lock.
    pub lock: usize,
    /// Address table.
    pub addr: usize,
    /// Buffer management: the free stack (config 2) or the first ring (config 1).
    pub pool: usize,
    /// Slot descriptors (config 2).
    pub descs: usize,
    /// Receive queues (config 2).
    pub queues: usize,
    /// Bytes per receive queue (config 2) or per ring (config 1).
    pub queue_stride: usize,
    /// Slot data (config 2).
    pub slots: usize,
    /// Bytes the layout occupies.
    pub total: usize,
}

/// Checked arithmetic for the layout's offsets: `None` on overflow, which
/// [`Layout::new`] reports as a geometry too large for the region.
fn align_up(value: usize, align: usize) -> Option<usize> {
    value.checked_next_multiple_of(align)
}

fn add(a: usize, b: usize) -> Option<usize> {
    a.checked_add(b)
}

fn mul(a: usize, b: usize) -> Option<usize> {
    a.checked_mul(b)
}

impl Layout {
    /// Largest pool: slot ids and owner words keep 24 bits for the slot.
    pub const MAX_POOL_SLOTS: usize = 1 << 24;

    /// The layout of `geometry` in a region of `region_len` bytes.
    pub fn new(geometry: &Geometry, region_len: usize) -> Result<Self, LayoutError> {
        geometry.validate()?;
        let layout = Self::compute(geometry).ok_or(LayoutError::TooSmall {
            needed: u64::MAX,
            available: region_len as u64,
        })?;
        if layout.total > region_len {
            return Err(LayoutError::TooSmall {
                needed: layout.total as u64,
                available: region_len as u64,
            });
        }
        Ok(layout)
    }

    /// Offsets for `geometry`, without range checks; `None` when they
    /// overflow (a geometry no region can hold).
    fn compute(g: &Geometry) -> Option<Self> {
        let max_nodes = g.max_nodes as usize;
        let nodes = HEADER_LEN;
        let lock = add(nodes, mul(NODE_ENTRY_LEN, max_nodes)?)?;
        let addr = add(lock, LOCK_LEN)?;
        let addr_end = add(
            add(addr, ADDR_ENTRIES)?,
            mul(ADDR_ENTRY_LEN, g.mac_capacity as usize)?,
        )?;
        let pool = align_up(addr_end, CACHE_LINE)?;
        let slot_count = g.slot_count as usize;
        let slot_size = g.slot_size as usize;
        Some(match g.config {
            BufferConfig::SharedPool => {
                let stack_end = add(add(pool, FREE_ENTRIES)?, mul(4, slot_count)?)?;
                let descs = align_up(stack_end, CACHE_LINE)?;
                let queues = align_up(add(descs, mul(DESC_LEN, slot_count)?)?, CACHE_LINE)?;
                let queue_stride = align_up(
                    add(QUEUE_ENTRIES, mul(4, g.queue_capacity as usize)?)?,
                    CACHE_LINE,
                )?;
                let slots = align_up(add(queues, mul(queue_stride, max_nodes)?)?, 4096)?;
                let total = add(slots, mul(slot_size, slot_count)?)?;
                Layout {
                    geometry: *g,
                    nodes,
                    lock,
                    addr,
                    pool,
                    descs,
                    queues,
                    queue_stride,
                    slots,
                    total,
                }
            }
            BufferConfig::PerPair => {
                let data = Self::ring_data_offset(slot_count)?;
                let queue_stride = align_up(add(data, mul(slot_size, slot_count)?)?, CACHE_LINE)?;
                let rings = mul(max_nodes, max_nodes)?;
                let total = add(pool, mul(queue_stride, rings)?)?;
                Layout {
                    geometry: *g,
                    nodes,
                    lock,
                    addr,
                    pool,
                    descs: pool,
                    queues: pool,
                    queue_stride,
                    slots: total,
                    total,
                }
            }
        })
    }

    /// Config 1: where a ring's slot data starts, after its indices and
    /// `slot_count` descriptors.
    fn ring_data_offset(slot_count: usize) -> Option<usize> {
        align_up(
            add(RING_DESCS, mul(RING_DESC_LEN, slot_count)?)?,
            CACHE_LINE,
        )
    }

    /// Writes the header for this layout, magic excluded (the formatter
    /// publishes the magic last), a word at a time: peers read these
    /// words atomically.
    pub fn write_header(&self, region: &Region, epoch: u64) {
        store_header_body(region, &self.header_bytes(epoch));
    }

    fn header_bytes(&self, epoch: u64) -> [u8; HEADER_LEN] {
        let g = &self.geometry;
        let mut h = [0u8; HEADER_LEN];
        let mut put = |off: usize, bytes: &[u8]| header_put(&mut h, off, bytes);
        put(HDR_MAGIC, &MAGIC.to_le_bytes());
        put(HDR_VERSION, &VERSION.to_le_bytes());
        put(HDR_CONFIG, &g.config.number().to_le_bytes());
        put(HDR_EPOCH, &epoch.to_le_bytes());
        put(HDR_TOTAL, &(self.total as u64).to_le_bytes());
        let geometry = [
            g.max_nodes,
            g.slot_size,
            g.slot_count,
            g.queue_capacity,
            g.mac_capacity,
            g.lease_ms,
        ];
        for (off, value) in (HDR_GEOMETRY..).step_by(4).zip(geometry) {
            put(off, &value.to_le_bytes());
        }
        put(HDR_MAX_FRAME, &(MAX_FRAME as u32).to_le_bytes());
        for (off, (_, section)) in (HDR_SECTIONS..).step_by(8).zip(self.section_offsets()) {
            put(off, &(section as u64).to_le_bytes());
        }
        seal(&mut h);
        h
    }

    fn section_offsets(&self) -> [(&'static str, usize); SECTIONS] {
        [
            ("nodes", self.nodes),
            ("lock", self.lock),
            ("addr", self.addr),
            ("pool", self.pool),
            ("queues", self.queues),
            ("slots", self.slots),
        ]
    }

    /// Reads and validates the header of a formatted region. Returns the
    /// layout and the format epoch.
    pub fn read(region: &Region) -> Result<(Self, u64), LayoutError> {
        // Acquire pairs with the formatter's Release store of the magic: once
        // we see the magic, the rest of the header and sections are visible.
        let magic = region.load_u64(HDR_MAGIC, Ordering::Acquire);
        if magic == 0 {
            return Err(LayoutError::NotFormatted);
        }
        Self::parse(&read_header(region), region.len())
    }

    /// Validates a header copied out of a region of `region_len` bytes.
    pub fn parse(h: &[u8; HEADER_LEN], region_len: usize) -> Result<(Self, u64), LayoutError> {
        let u32_at = |off: usize| header_u32(h, off);
        let u64_at = |off: usize| header_u64(h, off);
        let magic = u64_at(HDR_MAGIC);
        if magic != MAGIC {
            return Err(if magic == 0 {
                LayoutError::NotFormatted
            } else {
                LayoutError::BadMagic { found: magic }
            });
        }
        let version = u32_at(HDR_VERSION);
        if version != VERSION {
            return Err(LayoutError::UnsupportedVersion { found: version });
        }
        let computed = checksum(h.get(..HDR_CHECKSUM).unwrap_or(&[]));
        let found = u64_at(HDR_CHECKSUM);
        if computed != found {
            return Err(LayoutError::BadChecksum { found, computed });
        }
        let config_word = u32_at(HDR_CONFIG);
        let config = BufferConfig::from_number(config_word).ok_or(LayoutError::BadGeometry {
            field: "config",
            value: config_word.into(),
            allowed: "1 or 2",
        })?;
        let max_frame = u32_at(HDR_MAX_FRAME);
        if max_frame as usize != MAX_FRAME {
            return Err(LayoutError::BadGeometry {
                field: "max_frame",
                value: max_frame.into(),
                allowed: "65600",
            });
        }
        let field = |i: usize| u32_at(HDR_GEOMETRY.saturating_add(4usize.saturating_mul(i)));
        let geometry = Geometry {
            config,
            max_nodes: field(0),
            slot_size: field(1),
            slot_count: field(2),
            queue_capacity: field(3),
            mac_capacity: field(4),
            lease_ms: field(5),
        };
        let layout = Layout::new(&geometry, region_len)?;
        let stored_total = u64_at(HDR_TOTAL);
        if stored_total != layout.total as u64 {
            return Err(LayoutError::OffsetMismatch {
                section: "end",
                found: stored_total,
                expected: layout.total as u64,
            });
        }
        for (off, (section, expected)) in (HDR_SECTIONS..).step_by(8).zip(layout.section_offsets())
        {
            let found = u64_at(off);
            if found != expected as u64 {
                return Err(LayoutError::OffsetMismatch {
                    section,
                    found,
                    expected: expected as u64,
                });
            }
        }
        Ok((layout, u64_at(HDR_EPOCH)))
    }

    /// Offset of `field` in node `node`'s table entry.
    ///
    /// Node ids come from this node's own id (checked at attach), from
    /// loops over the table, and from peer values validated against
    /// `max_nodes` before use; an id out of range is a bug in the core and
    /// stops it (as [`Region`] does for an offset outside the mapping)
    /// rather than touching another node's entry or another part.
    #[inline]
    pub fn node(&self, node: usize, field: usize) -> usize {
        #[allow(clippy::panic, reason = "a bug in the core, not a peer's doing")]
        if node >= self.geometry.max_nodes as usize || field >= NODE_ENTRY_LEN {
            panic!(
                "bug: node {node} field {field:#x} outside a table of {} entries",
                self.geometry.max_nodes
            );
        }
        // Cannot overflow: `node < max_nodes <= 64` and `field < 192`, and
        // the table fits in the region (`Layout::new`).
        #[allow(clippy::arithmetic_side_effects, reason = "bounded just above")]
        let off = self.nodes + node * NODE_ENTRY_LEN + field;
        off
    }

    /// Offset of address table entry `i` (`i < mac_capacity`, the callers'
    /// loop bound; the region checks the result).
    #[inline]
    pub fn addr_entry(&self, i: usize) -> usize {
        self.addr
            .saturating_add(ADDR_ENTRIES)
            .saturating_add(i.saturating_mul(ADDR_ENTRY_LEN))
    }

    /// Offset of the byte `slot_size * slot` (config 2; `slot` validated
    /// against `slot_count` by the caller, the region checks the result).
    #[inline]
    pub fn slot(&self, slot: u32) -> usize {
        self.slots
            .saturating_add((slot as usize).saturating_mul(self.geometry.slot_size as usize))
    }

    /// Offset of the ring carrying frames from `src` to `dst` (config 1).
    #[inline]
    pub fn ring(&self, src: usize, dst: usize) -> usize {
        let index = src
            .saturating_mul(self.geometry.max_nodes as usize)
            .saturating_add(dst);
        self.pool
            .saturating_add(index.saturating_mul(self.queue_stride))
    }

    /// Config 1: offset of a ring's slot data from the ring's start.
    pub fn ring_data(&self) -> usize {
        Self::ring_data_offset(self.geometry.slot_count as usize).unwrap_or(usize::MAX)
    }
}

/// The header's 128 bytes as the region holds them now, read a word at a
/// time (formatters and guards write them a word at a time).
pub fn read_header(region: &Region) -> [u8; HEADER_LEN] {
    let mut words = [0u64; HEADER_LEN / 8];
    region.load_words(0, &mut words, Ordering::Relaxed);
    let mut h = [0u8; HEADER_LEN];
    for (chunk, word) in h.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    h
}

/// Writes header `h` into `region` but for its magic, a word at a time
/// (peers read these words atomically). Whoever writes a header, a
/// formatter or a guard restoring one, publishes the magic after it with
/// `Release`.
pub fn store_header_body(region: &Region, h: &[u8; HEADER_LEN]) {
    let words = header_words(h);
    region.store_words(8, words.get(1..).unwrap_or(&[]), Ordering::Relaxed);
}

/// Header bytes as the words they are stored as.
pub fn header_words(h: &[u8; HEADER_LEN]) -> [u64; HEADER_LEN / 8] {
    let mut words = [0u64; HEADER_LEN / 8];
    for (word, chunk) in words.iter_mut().zip(h.chunks_exact(8)) {
        *word = header_u64(chunk, 0);
    }
    words
}

/// Copies `bytes` into header bytes `h` at `off` (nothing past its end).
pub(super) fn header_put(h: &mut [u8], off: usize, bytes: &[u8]) {
    if let Some(dst) = off
        .checked_add(bytes.len())
        .and_then(|end| h.get_mut(off..end))
    {
        dst.copy_from_slice(bytes);
    }
}

/// The little-endian u32 at `off` of header bytes `h` (0 past its end).
pub(super) fn header_u32(h: &[u8], off: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(src) = off.checked_add(4).and_then(|end| h.get(off..end)) {
        b.copy_from_slice(src);
    }
    u32::from_le_bytes(b)
}

/// The little-endian u64 at `off` of header bytes `h` (0 past its end).
pub(super) fn header_u64(h: &[u8], off: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(src) = off.checked_add(8).and_then(|end| h.get(off..end)) {
        b.copy_from_slice(src);
    }
    u64::from_le_bytes(b)
}

/// An unformatted region of `len` bytes and the layout of the largest
/// `config` geometry for `nodes` nodes with 2 KiB slots (unit tests).
#[cfg(test)]
pub(crate) fn scratch(config: BufferConfig, len: usize, nodes: u32) -> (Region, Layout) {
    let region = super::region::testing::region(len);
    let geometry = Geometry::fit(config, len, nodes, 2048).expect("geometry fits");
    let layout = Layout::new(&geometry, len).expect("layout fits");
    (region, layout)
}

/// Recomputes the header checksum over the header as it is in `region`:
/// what a rogue that wants its edits accepted does (hostile tests).
pub fn reseal_header(region: &Region) {
    let h = read_header(region);
    let sum = checksum(h.get(..HDR_CHECKSUM).unwrap_or(&[]));
    region.store_u64(HDR_CHECKSUM, sum, Ordering::Relaxed);
}

/// Writes the checksum of the bytes before it into `h`.
fn seal(h: &mut [u8; HEADER_LEN]) {
    let sum = checksum(h.get(..HDR_CHECKSUM).unwrap_or(&[]));
    if let Some(dst) = h.get_mut(HDR_CHECKSUM..) {
        dst.copy_from_slice(&sum.to_le_bytes());
    }
}

/// FNV-1a, 64 bit: detects a scribbled header, not an adversary (who could
/// recompute it; the protocol's bounds checks are the real defence).
pub(super) fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_geometry() -> Geometry {
        Geometry::fit(BufferConfig::SharedPool, 4 << 20, 4, 2048).unwrap()
    }

    #[test]
    fn fit_fills_the_region_and_validates() {
        for config in [BufferConfig::SharedPool, BufferConfig::PerPair] {
            for nodes in [2, 4, 8] {
                let g = Geometry::fit(config, 16 << 20, nodes, 2048).unwrap();
                let layout = Layout::new(&g, 16 << 20).unwrap();
                assert!(layout.total <= 16 << 20);
                assert!(g.slot_count >= g.max_chain(), "{config:?} {nodes}: {g:?}");
            }
        }
        // Config 2 uses most of the space for slots.
        let g = pool_geometry();
        assert!(g.slot_count as usize * 2048 > 3 << 20, "{g:?}");
    }

    #[test]
    fn header_round_trips() {
        let layout = Layout::new(&pool_geometry(), 4 << 20).unwrap();
        let h = layout.header_bytes(42);
        assert_eq!(Layout::parse(&h, 4 << 20), Ok((layout, 42)));
    }

    #[test]
    fn corrupt_headers_are_refused_with_the_reason() {
        let layout = Layout::new(&pool_geometry(), 4 << 20).unwrap();
        let good = layout.header_bytes(1);

        let mut h = good;
        h[0] ^= 1;
        assert!(matches!(
            Layout::parse(&h, 4 << 20),
            Err(LayoutError::BadMagic { .. })
        ));

        let mut h = good;
        h[8] = 9;
        assert_eq!(
            Layout::parse(&h, 4 << 20),
            Err(LayoutError::UnsupportedVersion { found: 9 })
        );

        let mut h = good;
        h[40] ^= 0x10;
        assert!(matches!(
            Layout::parse(&h, 4 << 20),
            Err(LayoutError::BadChecksum { .. })
        ));

        assert!(matches!(
            Layout::parse(&good, 1 << 20),
            Err(LayoutError::TooSmall { .. })
        ));
    }

    #[test]
    fn a_consistent_but_wrong_header_is_refused() {
        // A header with a valid checksum but an offset that disagrees with
        // the geometry (a peer that recomputed the checksum).
        let layout = Layout::new(&pool_geometry(), 4 << 20).unwrap();
        let mut h = layout.header_bytes(1);
        h[64 + 8 * 5..64 + 8 * 6].copy_from_slice(&0u64.to_le_bytes());
        let sum = checksum(&h[..HDR_CHECKSUM]);
        h[HDR_CHECKSUM..].copy_from_slice(&sum.to_le_bytes());
        assert!(matches!(
            Layout::parse(&h, 4 << 20),
            Err(LayoutError::OffsetMismatch {
                section: "slots",
                ..
            })
        ));
    }

    #[test]
    fn bad_geometry_names_the_field() {
        let mut g = pool_geometry();
        g.slot_size = 100;
        assert!(matches!(
            g.validate(),
            Err(LayoutError::BadGeometry {
                field: "slot_size",
                ..
            })
        ));
        let mut g = pool_geometry();
        g.max_nodes = 65;
        assert!(matches!(
            g.validate(),
            Err(LayoutError::BadGeometry {
                field: "max_nodes",
                ..
            })
        ));
        let mut g = pool_geometry();
        g.queue_capacity = 1000;
        assert!(matches!(
            g.validate(),
            Err(LayoutError::BadGeometry {
                field: "queue_capacity",
                ..
            })
        ));
    }

    #[test]
    fn sections_do_not_overlap() {
        for config in [BufferConfig::SharedPool, BufferConfig::PerPair] {
            let g = Geometry::fit(config, 16 << 20, 8, 2048).unwrap();
            let l = Layout::new(&g, 16 << 20).unwrap();
            assert!(l.nodes >= HEADER_LEN);
            assert!(l.lock >= l.nodes + 8 * NODE_ENTRY_LEN);
            assert!(l.addr >= l.lock + CACHE_LINE);
            assert!(l.pool >= l.addr_entry(g.mac_capacity as usize));
            if config == BufferConfig::SharedPool {
                assert!(l.descs >= l.pool + CACHE_LINE + 4 * g.slot_count as usize);
                assert!(l.queues >= l.descs + DESC_LEN * g.slot_count as usize);
                assert!(l.slots >= l.queues + 8 * l.queue_stride);
                assert_eq!(l.slots % 4096, 0);
            } else {
                assert_eq!(l.ring(7, 7) + l.queue_stride, l.total);
            }
        }
    }
}
