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

use std::sync::atomic::Ordering;

use crate::region::Region;

/// "MINTVNI" + NUL, little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"MINTVNI\0");
/// Layout version this crate reads and writes.
pub const VERSION: u32 = 1;
/// Largest frame carried: an offloaded TCP segment, or a frame at the
/// largest MTU (65535) with its Ethernet header, a VLAN tag and the
/// virtio-net header in front, rounded up to a multiple of 64.
pub const MAX_FRAME: usize = 64 * 1024 + 64;
/// Largest slot.
pub const MAX_SLOT: u32 = 64 * 1024;
/// Most nodes a region can hold; node sets fit in a `u64`.
pub const MAX_NODES: usize = 64;
/// Cache line size the layout aligns shared words to.
pub const CACHE_LINE: usize = 64;

/// Where free-running queue, ring and ticket indices start after a format:
/// just below the u32 wrap, so every run exercises the wrap-around.
pub(crate) const INITIAL_INDEX: u32 = u32::MAX - 255;

/// Header size in bytes.
pub const HEADER_LEN: usize = 128;
pub(crate) const HDR_MAGIC: usize = 0;
pub(crate) const HDR_EPOCH: usize = 16;
const HDR_CHECKSUM: usize = 120;

/// Bytes per node table entry, one cache line per writer pattern: line 0
/// is read-mostly (state, generation, MAC, sleeping, doorbell peer id: read
/// by senders on every frame), line 1 changes often (heartbeat, lock
/// ticket), line 2 holds the counters.
pub const NODE_ENTRY_LEN: usize = 192;
pub(crate) const NODE_STATE: usize = 0;
pub(crate) const NODE_GENERATION: usize = 4;
pub(crate) const NODE_MAC: usize = 8;
pub(crate) const NODE_SLEEPING: usize = 16;
pub(crate) const NODE_DOORBELL: usize = 20;
pub(crate) const NODE_HEARTBEAT: usize = 64;
pub(crate) const NODE_TICKET: usize = 72;
pub(crate) const NODE_WAITING: usize = 76;
pub(crate) const NODE_COUNTERS: usize = 128;

/// Bytes per config-2 slot descriptor: owner, next, len, frame_len.
pub(crate) const DESC_LEN: usize = 16;
/// Bytes per config-1 ring descriptor: len, span.
pub(crate) const RING_DESC_LEN: usize = 8;
/// Bytes per address table entry: MAC word, node word, padding.
pub(crate) const ADDR_ENTRY_LEN: usize = 16;

/// How frame buffers are organised (the study's two configurations).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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

impl std::fmt::Display for BufferConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BufferConfig::PerPair => write!(f, "1 (per-pair rings)"),
            BufferConfig::SharedPool => write!(f, "2 (shared pool)"),
        }
    }
}

/// Errors in a geometry or in a region's header.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// No node has formatted the region yet (magic is zero).
    #[error("Region is not formatted (no VNI header)")]
    NotFormatted,
    /// The first word is neither zero nor the VNI magic.
    #[error("Region has no VNI header: magic {found:#018x}, expected {MAGIC:#018x}")]
    BadMagic {
        /// The word found.
        found: u64,
    },
    /// Formatted by an incompatible version of the protocol.
    #[error(
        "Region layout version {found} is not supported (this build speaks version {VERSION})"
    )]
    UnsupportedVersion {
        /// The version found.
        found: u32,
    },
    /// The header's checksum does not match its contents.
    #[error("Region header is corrupt: checksum {found:#x}, computed {computed:#x}")]
    BadChecksum {
        /// Stored checksum.
        found: u64,
        /// Checksum of the header as read.
        computed: u64,
    },
    /// A geometry field is out of range.
    #[error("Invalid {field} {value}: {allowed}")]
    BadGeometry {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// What is allowed.
        allowed: &'static str,
    },
    /// The layout needs more bytes than the region has.
    #[error("Layout needs {needed} bytes but the region has {available}")]
    TooSmall {
        /// Bytes the geometry needs.
        needed: u64,
        /// Bytes mapped.
        available: u64,
    },
    /// A stored section offset disagrees with the geometry.
    #[error("Region header is corrupt: {section} offset {found:#x}, geometry gives {expected:#x}")]
    OffsetMismatch {
        /// The section.
        section: &'static str,
        /// Stored offset.
        found: u64,
        /// Offset computed from the geometry.
        expected: u64,
    },
}

/// The sizes a region is formatted with. Chosen at format time; every node
/// reads them from the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
        let fixed = Layout::compute_unchecked(&geometry).total;
        let spare = region_len.saturating_sub(fixed);
        let count = match config {
            BufferConfig::SharedPool => {
                let per_slot = slot_size as usize + DESC_LEN + 4;
                (spare.saturating_sub(2 * 4096) / per_slot).min(Layout::MAX_POOL_SLOTS) as u32
            }
            BufferConfig::PerPair => {
                let rings = (max_nodes as usize).pow(2);
                let per_slot = slot_size as usize + RING_DESC_LEN;
                let per_ring = spare.saturating_sub(rings * 256) / rings.max(1) / per_slot;
                if per_ring == 0 {
                    0
                } else {
                    1u32 << (usize::BITS - 1 - per_ring.leading_zeros()).min(20)
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
        if !(self.max_nodes..=self.max_nodes * 64).contains(&self.mac_capacity) {
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
                let min = self.max_chain() * 2;
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

fn align_up(value: usize, align: usize) -> usize {
    value.div_ceil(align) * align
}

impl Layout {
    /// Largest pool: slot ids and owner words keep 24 bits for the slot.
    pub const MAX_POOL_SLOTS: usize = 1 << 24;

    /// The layout of `geometry` in a region of `region_len` bytes.
    pub fn new(geometry: &Geometry, region_len: usize) -> Result<Self, LayoutError> {
        geometry.validate()?;
        let layout = Self::compute_unchecked(geometry);
        if layout.total > region_len {
            return Err(LayoutError::TooSmall {
                needed: layout.total as u64,
                available: region_len as u64,
            });
        }
        Ok(layout)
    }

    /// Offsets for `geometry` without range checks; sizes are bounded by the
    /// field types, so this cannot overflow on 64-bit hosts.
    fn compute_unchecked(g: &Geometry) -> Self {
        let nodes = HEADER_LEN;
        let lock = nodes + NODE_ENTRY_LEN * g.max_nodes as usize;
        let addr = lock + CACHE_LINE;
        let pool = align_up(
            addr + CACHE_LINE + ADDR_ENTRY_LEN * g.mac_capacity as usize,
            CACHE_LINE,
        );
        let slot_count = g.slot_count as usize;
        let slot_size = g.slot_size as usize;
        match g.config {
            BufferConfig::SharedPool => {
                // Free-stack top on its own line, then the stack.
                let descs = align_up(pool + CACHE_LINE + 4 * slot_count, CACHE_LINE);
                let queues = align_up(descs + DESC_LEN * slot_count, CACHE_LINE);
                // Head and tail on separate lines, then the entries.
                let queue_stride =
                    align_up(2 * CACHE_LINE + 4 * g.queue_capacity as usize, CACHE_LINE);
                let slots = align_up(queues + queue_stride * g.max_nodes as usize, 4096);
                let total = slots + slot_size * slot_count;
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
                // Tail and head on separate lines, descriptors, then data.
                let data = align_up(2 * CACHE_LINE + RING_DESC_LEN * slot_count, CACHE_LINE);
                let queue_stride = align_up(data + slot_size * slot_count, CACHE_LINE);
                let rings = (g.max_nodes as usize).pow(2);
                let total = pool + queue_stride * rings;
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
        }
    }

    /// Writes the header for this layout, magic excluded (the formatter
    /// publishes the magic last).
    pub(crate) fn write_header(&self, region: &Region, epoch: u64) {
        let bytes = self.header_bytes(epoch);
        region.write_bytes(8, &bytes[8..]);
    }

    fn header_bytes(&self, epoch: u64) -> [u8; HEADER_LEN] {
        let g = &self.geometry;
        let mut h = [0u8; HEADER_LEN];
        let mut put = |off: usize, bytes: &[u8]| h[off..off + bytes.len()].copy_from_slice(bytes);
        put(HDR_MAGIC, &MAGIC.to_le_bytes());
        put(8, &VERSION.to_le_bytes());
        put(12, &g.config.number().to_le_bytes());
        put(HDR_EPOCH, &epoch.to_le_bytes());
        put(24, &(self.total as u64).to_le_bytes());
        put(32, &g.max_nodes.to_le_bytes());
        put(36, &g.slot_size.to_le_bytes());
        put(40, &g.slot_count.to_le_bytes());
        put(44, &g.queue_capacity.to_le_bytes());
        put(48, &g.mac_capacity.to_le_bytes());
        put(52, &g.lease_ms.to_le_bytes());
        put(56, &(MAX_FRAME as u32).to_le_bytes());
        for (i, off) in self.section_offsets().iter().enumerate() {
            put(64 + 8 * i, &(off.1 as u64).to_le_bytes());
        }
        let sum = checksum(&h[..HDR_CHECKSUM]);
        h[HDR_CHECKSUM..].copy_from_slice(&sum.to_le_bytes());
        h
    }

    fn section_offsets(&self) -> [(&'static str, usize); 6] {
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
        let mut h = [0u8; HEADER_LEN];
        region.read_bytes(0, &mut h);
        Self::parse(&h, region.len())
    }

    /// Validates a header copied out of a region of `region_len` bytes.
    pub fn parse(h: &[u8; HEADER_LEN], region_len: usize) -> Result<(Self, u64), LayoutError> {
        let u32_at = |off: usize| u32::from_le_bytes(h[off..off + 4].try_into().expect("4 bytes"));
        let u64_at = |off: usize| u64::from_le_bytes(h[off..off + 8].try_into().expect("8 bytes"));
        let magic = u64_at(HDR_MAGIC);
        if magic != MAGIC {
            return Err(if magic == 0 {
                LayoutError::NotFormatted
            } else {
                LayoutError::BadMagic { found: magic }
            });
        }
        let version = u32_at(8);
        if version != VERSION {
            return Err(LayoutError::UnsupportedVersion { found: version });
        }
        let computed = checksum(&h[..HDR_CHECKSUM]);
        let found = u64_at(HDR_CHECKSUM);
        if computed != found {
            return Err(LayoutError::BadChecksum { found, computed });
        }
        let config = BufferConfig::from_number(u32_at(12)).ok_or(LayoutError::BadGeometry {
            field: "config",
            value: u32_at(12).into(),
            allowed: "1 or 2",
        })?;
        let max_frame = u32_at(56);
        if max_frame as usize != MAX_FRAME {
            return Err(LayoutError::BadGeometry {
                field: "max_frame",
                value: max_frame.into(),
                allowed: "65536",
            });
        }
        let geometry = Geometry {
            config,
            max_nodes: u32_at(32),
            slot_size: u32_at(36),
            slot_count: u32_at(40),
            queue_capacity: u32_at(44),
            mac_capacity: u32_at(48),
            lease_ms: u32_at(52),
        };
        let layout = Layout::new(&geometry, region_len)?;
        let stored_total = u64_at(24);
        if stored_total != layout.total as u64 {
            return Err(LayoutError::OffsetMismatch {
                section: "end",
                found: stored_total,
                expected: layout.total as u64,
            });
        }
        for (i, (section, expected)) in layout.section_offsets().into_iter().enumerate() {
            let found = u64_at(64 + 8 * i);
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
    #[inline]
    pub(crate) fn node(&self, node: usize, field: usize) -> usize {
        debug_assert!(node < self.geometry.max_nodes as usize);
        self.nodes + node * NODE_ENTRY_LEN + field
    }

    /// Offset of address table entry `i`.
    #[inline]
    pub(crate) fn addr_entry(&self, i: usize) -> usize {
        self.addr + CACHE_LINE + i * ADDR_ENTRY_LEN
    }

    /// Offset of the byte `slot_size * slot` (config 2).
    #[inline]
    pub(crate) fn slot(&self, slot: u32) -> usize {
        self.slots + slot as usize * self.geometry.slot_size as usize
    }

    /// Offset of the ring carrying frames from `src` to `dst` (config 1).
    #[inline]
    pub(crate) fn ring(&self, src: usize, dst: usize) -> usize {
        self.pool + (src * self.geometry.max_nodes as usize + dst) * self.queue_stride
    }
}

/// An unformatted region of `len` bytes and the layout of the largest
/// `config` geometry for `nodes` nodes with 2 KiB slots (unit tests).
#[cfg(test)]
pub(crate) fn scratch(config: BufferConfig, len: usize, nodes: u32) -> (Region, Layout) {
    let region = Region::anonymous(len).expect("anonymous mapping");
    let geometry = Geometry::fit(config, len, nodes, 2048).expect("geometry fits");
    let layout = Layout::new(&geometry, len).expect("layout fits");
    (region, layout)
}

/// Recomputes the header checksum over the header as it is in `region`:
/// what a rogue that wants its edits accepted does (hostile tests).
pub(crate) fn reseal_header(region: &Region) {
    let mut h = [0u8; HEADER_LEN];
    region.read_bytes(0, &mut h);
    let sum = checksum(&h[..HDR_CHECKSUM]);
    region.write_bytes(HDR_CHECKSUM, &sum.to_le_bytes());
}

/// FNV-1a, 64 bit: detects a scribbled header, not an adversary (who could
/// recompute it; the protocol's bounds checks are the real defence).
fn checksum(bytes: &[u8]) -> u64 {
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
