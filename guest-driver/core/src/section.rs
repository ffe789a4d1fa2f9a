//! Buffer configuration 1 in write-protected sections: the layout of one
//! node's section.
//!
//! Each node has a section of its own that only it can write: its QEMU
//! maps it read-write, every other node's QEMU maps it read-only (stock
//! QEMU's `memory-backend-file,readonly=on` behind an `ivshmem-plain`
//! device: a guest's stores into it are dropped). A section holds what
//! its owner publishes and nothing else:
//!
//! ```text
//! 0x0000  owner       state, generation, MAC, sleeping, doorbell id (line 0)
//!                     heartbeat (line 1), counters (line 2), addresses (line 3)
//! 0x0100  heads       one line per sender: the consumer head of the ring
//!                     that sender keeps for this node, and the sender's
//!                     generation it follows
//! 0x2000  rings       one per other node (ascending node id, skipping the
//!                     owner): tail line, descriptors (len, span), data
//! ```
//!
//! A ring has one producer (the section's owner) and one consumer (its
//! destination), as in the single-region configuration 1, but its words
//! are split by writer: descriptors, data and the tail in the producer's
//! section, the head in the consumer's. Nothing has two writers, so there
//! is no lock.
//!
//! The sizes of all sections (one geometry for the lab) are facts no node
//! owns: the host writes them into the directory
//! ([`super::directory`]), which every node maps read-only. A value read
//! from another node's section is as hostile as any other.

use super::layout::LayoutError;
use super::nodes::NodeId;
use super::offsets::{CACHE_LINE, MAX_FRAME, MAX_NODES, MAX_SLOT};

/// Owner line 0: state (u32).
pub const SEC_STATE: usize = 0;
/// Owner line 0: generation (u32).
pub const SEC_GENERATION: usize = 4;
/// Owner line 0: MAC in the low 48 bits (u64).
pub const SEC_MAC: usize = 8;
/// Owner line 0: sleeping flag (u32).
pub const SEC_SLEEPING: usize = 16;
/// Owner line 0: doorbell peer id + 1 (u32).
pub const SEC_DOORBELL: usize = 20;
/// Owner line 1: heartbeat (u64).
pub const SEC_HEARTBEAT: usize = 64;
/// Owner line 2: counters, [`SEC_COUNTER_COUNT`] u64.
pub const SEC_COUNTERS: usize = 128;
/// Counters in a section.
pub const SEC_COUNTER_COUNT: usize = 8;
/// Owner line 3: addresses, [`SEC_ADDRESSES`] u64 (MAC in the low 48
/// bits, bit 63 set when the entry is in use).
pub const SEC_ADDRS: usize = 192;
/// Addresses a node publishes.
pub const SEC_ADDRESSES: usize = 4;
/// Heads: one line per sender, from here.
pub const SEC_HEADS: usize = 256;
/// Head line: the consumer head (u32).
pub const HEAD_INDEX: usize = 0;
/// Head line: the sender's generation the head follows (u32).
pub const HEAD_GENERATION: usize = 4;
/// The first ring (page aligned).
pub const SEC_RINGS: usize = 8192;
/// Ring: the published tail (u32), on a line of its own.
pub const RING_TAIL: usize = 0;
/// Ring: descriptors from here, [`RING_DESC_LEN`] bytes per entry.
pub const RING_DESCS: usize = CACHE_LINE;
/// Bytes per ring descriptor: frame length (u32), span in entries (u32).
pub const RING_DESC_LEN: usize = 8;
/// Smallest section (a power of two).
pub const MIN_SECTION_LEN: usize = 64 * 1024;
/// Largest section: 1 GiB.
pub const MAX_SECTION_LEN: usize = 1 << 30;
/// Most entries in a ring.
pub const MAX_RING_ENTRIES: u32 = 1 << 20;

const PAGE: usize = 4096;

// The owner's words fit on their lines, and the heads end before the
// rings begin.
const _: () = {
    assert!(SEC_DOORBELL + 4 <= SEC_HEARTBEAT);
    assert!(SEC_HEARTBEAT + 8 <= SEC_COUNTERS);
    assert!(SEC_COUNTERS + 8 * SEC_COUNTER_COUNT <= SEC_ADDRS);
    assert!(SEC_ADDRS + 8 * SEC_ADDRESSES <= SEC_HEADS);
    assert!(SEC_HEADS + CACHE_LINE * MAX_NODES <= SEC_RINGS);
    assert!(HEAD_GENERATION + 4 <= CACHE_LINE);
    assert!(SEC_RINGS % PAGE == 0);
};

/// The sizes every section of a lab shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SectionGeometry {
    /// Nodes, and so sections (2..=64).
    pub nodes: u32,
    /// Bytes per section: a power of two (PCI BARs are).
    pub section_len: u64,
    /// Bytes per ring entry (64..=65536, a multiple of 64).
    pub slot_size: u32,
    /// Entries per ring: a power of two, at least a largest frame's.
    pub ring_entries: u32,
    /// Milliseconds a node's heartbeat may stand still before its peers
    /// take it for gone.
    pub lease_ms: u32,
}

impl SectionGeometry {
    /// The geometry of `nodes` sections in `total` bytes: each section
    /// is the largest power of two that `nodes` of fit, and its rings of
    /// `slot_size`-byte entries as long as fit in it.
    pub fn fit(
        total: usize,
        nodes: u32,
        slot_size: u32,
        lease_ms: u32,
    ) -> Result<Self, LayoutError> {
        let per_node = total.checked_div(nodes as usize).unwrap_or(0);
        let section_len = match per_node.checked_ilog2() {
            Some(log) => (1usize << log).min(MAX_SECTION_LEN),
            None => 0,
        };
        let mut geometry = SectionGeometry {
            nodes,
            section_len: section_len as u64,
            slot_size,
            ring_entries: 1,
            lease_ms,
        };
        // The most entries whose rings fit: double while they do.
        while geometry.ring_entries < MAX_RING_ENTRIES {
            let more = SectionGeometry {
                ring_entries: geometry.ring_entries.saturating_mul(2),
                ..geometry
            };
            if more.rings_end().is_none_or(|end| end > section_len) {
                break;
            }
            geometry = more;
        }
        geometry.validate()?;
        Ok(geometry)
    }

    /// Entries a largest frame needs.
    pub fn max_span(&self) -> u32 {
        (MAX_FRAME as u32).div_ceil(self.slot_size.max(1))
    }

    /// Bytes of one ring: its tail line and descriptors, page aligned,
    /// then its entries' data, page aligned. `None` on overflow.
    pub fn ring_stride(&self) -> Option<usize> {
        let entries = self.ring_entries as usize;
        let head = entries
            .checked_mul(RING_DESC_LEN)?
            .checked_add(RING_DESCS)?
            .checked_next_multiple_of(PAGE)?;
        let data = entries
            .checked_mul(self.slot_size as usize)?
            .checked_next_multiple_of(PAGE)?;
        head.checked_add(data)
    }

    /// Offset of a ring's data from the ring's start.
    pub fn ring_data(&self) -> usize {
        (self.ring_entries as usize)
            .saturating_mul(RING_DESC_LEN)
            .saturating_add(RING_DESCS)
            .next_multiple_of(PAGE)
    }

    /// Where the last ring ends: what a section must hold.
    fn rings_end(&self) -> Option<usize> {
        let rings = (self.nodes as usize).checked_sub(1)?;
        self.ring_stride()?
            .checked_mul(rings)?
            .checked_add(SEC_RINGS)
    }

    /// Bytes of all sections.
    pub fn sections_len(&self) -> u64 {
        self.section_len.saturating_mul(self.nodes.into())
    }

    /// Checks every field against its allowed range, and that the rings
    /// fit in a section.
    pub fn validate(&self) -> Result<(), LayoutError> {
        let bad = |field, value: u64, allowed| {
            Err(LayoutError::BadGeometry {
                field,
                value,
                allowed,
            })
        };
        if !(2..=MAX_NODES as u32).contains(&self.nodes) {
            return bad("nodes", self.nodes.into(), "2 to 64");
        }
        if !(64..=MAX_SLOT).contains(&self.slot_size) || self.slot_size % 64 != 0 {
            return bad(
                "slot_size",
                self.slot_size.into(),
                "a multiple of 64 from 64 to 65536",
            );
        }
        if !self.section_len.is_power_of_two()
            || !(MIN_SECTION_LEN as u64..=MAX_SECTION_LEN as u64).contains(&self.section_len)
        {
            return bad(
                "section_len",
                self.section_len,
                "a power of two from 64 KiB to 1 GiB",
            );
        }
        if !self.ring_entries.is_power_of_two()
            || self.ring_entries < self.max_span()
            || self.ring_entries > MAX_RING_ENTRIES
        {
            return bad(
                "ring_entries",
                self.ring_entries.into(),
                "a power of two, at least the entries of a 64 KiB frame, at most 2^20 \
                 (a larger shared_memory, fewer nodes or larger slots make room)",
            );
        }
        if !(10..=600_000).contains(&self.lease_ms) {
            return bad("lease_ms", self.lease_ms.into(), "10 to 600000");
        }
        match self.rings_end() {
            Some(end) if end as u64 <= self.section_len => Ok(()),
            end => Err(LayoutError::TooSmall {
                needed: end.map_or(u64::MAX, |end| end as u64),
                available: self.section_len,
            }),
        }
    }
}

/// Offsets in the section of `owner`, from a validated geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectionLayout {
    /// The lab's geometry.
    pub geometry: SectionGeometry,
    /// The node whose section this is.
    pub owner: NodeId,
}

impl SectionLayout {
    /// Offset of the head line for frames from `src` (`None` for the
    /// owner itself or a node out of range).
    pub fn head(&self, src: NodeId) -> Option<usize> {
        if src == self.owner || src >= self.geometry.nodes as usize {
            return None;
        }
        src.checked_mul(CACHE_LINE)?.checked_add(SEC_HEADS)
    }

    /// Offset of the ring for frames to `dst` (`None` for the owner
    /// itself or a node out of range).
    pub fn ring(&self, dst: NodeId) -> Option<usize> {
        if dst == self.owner || dst >= self.geometry.nodes as usize {
            return None;
        }
        // The owner has no ring to itself: the rings after it move down.
        let index = if dst > self.owner {
            dst.checked_sub(1)?
        } else {
            dst
        };
        self.geometry
            .ring_stride()?
            .checked_mul(index)?
            .checked_add(SEC_RINGS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_nodes_in_64_mib_get_32_mib_sections_with_long_rings() {
        let g = SectionGeometry::fit(64 << 20, 2, 2048, 1000).unwrap();
        assert_eq!(g.section_len, 32 << 20);
        assert_eq!(g.ring_entries, 8192);
        assert_eq!(g.sections_len(), 64 << 20);
        g.validate().unwrap();
    }

    #[test]
    fn sixty_four_nodes_need_room_for_a_largest_frame_in_every_ring() {
        // 512 MiB for 64 nodes: 8 MiB sections, 63 rings of 32 entries,
        // one short of a 64 KiB frame's 33.
        let err = SectionGeometry::fit(512 << 20, 64, 2048, 1000).unwrap_err();
        assert!(
            matches!(
                err,
                LayoutError::BadGeometry {
                    field: "ring_entries",
                    ..
                }
            ),
            "{err:?}"
        );
        // 1 GiB: 16 MiB sections hold 63 rings of 64 entries.
        let g = SectionGeometry::fit(1 << 30, 64, 2048, 1000).unwrap();
        assert_eq!(g.section_len, 16 << 20);
        assert_eq!(g.ring_entries, 64);
    }

    #[test]
    fn rings_skip_the_owner_and_stay_inside_the_section() {
        let g = SectionGeometry::fit(64 << 20, 4, 2048, 1000).unwrap();
        let stride = g.ring_stride().unwrap();
        for owner in 0..4 {
            let s = SectionLayout { geometry: g, owner };
            assert_eq!(s.ring(owner), None);
            assert_eq!(s.head(owner), None);
            assert_eq!(s.ring(4), None);
            assert_eq!(s.head(4), None);
            let mut rings: std::vec::Vec<usize> = (0..4).filter_map(|d| s.ring(d)).collect();
            assert_eq!(rings.len(), 3);
            rings.sort_unstable();
            assert_eq!(
                rings,
                [SEC_RINGS, SEC_RINGS + stride, SEC_RINGS + 2 * stride]
            );
            let last = rings[2] + stride;
            assert!(last as u64 <= g.section_len, "{owner}: {last}");
            for src in (0..4).filter(|&n| n != owner) {
                let head = s.head(src).unwrap();
                assert!(head >= SEC_HEADS && head + CACHE_LINE <= SEC_RINGS);
            }
        }
    }

    #[test]
    fn a_bad_geometry_is_refused_with_its_field() {
        let good = SectionGeometry::fit(64 << 20, 3, 2048, 1000).unwrap();
        for (bad, field) in [
            (SectionGeometry { nodes: 1, ..good }, "nodes"),
            (SectionGeometry { nodes: 65, ..good }, "nodes"),
            (
                SectionGeometry {
                    slot_size: 100,
                    ..good
                },
                "slot_size",
            ),
            (
                SectionGeometry {
                    section_len: 3 << 20,
                    ..good
                },
                "section_len",
            ),
            (
                SectionGeometry {
                    ring_entries: 3,
                    ..good
                },
                "ring_entries",
            ),
            (
                SectionGeometry {
                    ring_entries: 16,
                    ..good
                },
                "ring_entries",
            ),
            (
                SectionGeometry {
                    lease_ms: 5,
                    ..good
                },
                "lease_ms",
            ),
        ] {
            match bad.validate() {
                Err(LayoutError::BadGeometry { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let crowded = SectionGeometry {
            ring_entries: good.ring_entries * 2,
            ..good
        };
        assert!(matches!(
            crowded.validate(),
            Err(LayoutError::TooSmall { .. })
        ));
    }
}
