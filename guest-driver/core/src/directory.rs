//! The directory of a lab in sections: the facts no node owns, written by
//! the host before any guest starts, into a device every guest maps
//! read-only.
//!
//! ```text
//! 0x00  magic "VNIDIR\0\0" (u64)    0x08  version (u32)
//! 0x10  nodes (u32)                 0x14  slot size (u32)
//! 0x18  section length (u64)        0x20  ring entries (u32)
//! 0x24  lease, ms (u32)             0x38  FNV-1a of bytes 0..0x38 (u64)
//! ```
//!
//! Which section belongs to which node is not written anywhere a node
//! could change: node `n`'s section is the `ivshmem-plain` device at
//! [`section_slot`]`(n)`, where the host's QEMU command line puts it, and
//! a driver finds it there.

use super::layout::{checksum, header_put, header_u32, header_u64, LayoutError};
use super::nodes::NodeId;
use super::section::SectionGeometry;

/// "VNIDIR" + two NULs, little-endian.
pub const DIR_MAGIC: u64 = u64::from_le_bytes(*b"VNIDIR\0\0");
/// The format of sections this crate reads and writes (3: the first
/// with write-protected sections; a single region is version 2).
pub const DIR_VERSION: u32 = 3;
/// Bytes of the directory device (a power of two, as PCI BARs are).
pub const DIR_LEN: usize = 4096;
/// Bytes of the directory that carry its facts.
pub const DIR_HEADER_LEN: usize = 64;

const OFF_MAGIC: usize = 0x00;
const OFF_VERSION: usize = 0x08;
const OFF_NODES: usize = 0x10;
const OFF_SLOT_SIZE: usize = 0x14;
const OFF_SECTION_LEN: usize = 0x18;
const OFF_RING_ENTRIES: usize = 0x20;
const OFF_LEASE_MS: usize = 0x24;
const OFF_CHECKSUM: usize = 0x38;

/// The guest's PCI slot of the doorbell device (`ivshmem-doorbell`,
/// interrupts only), on the root bus.
pub const DOORBELL_SLOT: u8 = 0x10;
/// The guest's PCI slot of the directory device, on the root bus.
pub const DIRECTORY_SLOT: u8 = 0x11;
/// The root-bus slot of the first `pci-bridge` behind which the sections
/// sit; bridge `b` is at `BRIDGE_SLOT + b`.
pub const BRIDGE_SLOT: u8 = 0x12;
/// Sections behind one bridge (its 32 slots).
pub const SECTIONS_PER_BRIDGE: usize = 32;

// The root bus's fixed slots do not collide, and two bridges stay on its
// 32 slots.
const _: () = {
    assert!(DOORBELL_SLOT < DIRECTORY_SLOT && DIRECTORY_SLOT < BRIDGE_SLOT);
    assert!(BRIDGE_SLOT as usize + 2 <= 32);
};

/// Where node `node`'s section device sits: behind bridge `bridge` (at
/// root slot [`BRIDGE_SLOT`]` + bridge`), in slot `slot`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SectionSlot {
    /// The bridge, from 0.
    pub bridge: u8,
    /// The slot behind it, 0 to 31.
    pub slot: u8,
}

/// Where node `node`'s section device sits on the guest's PCI buses.
pub fn section_slot(node: NodeId) -> SectionSlot {
    SectionSlot {
        bridge: u8::try_from(node / SECTIONS_PER_BRIDGE).unwrap_or(u8::MAX),
        slot: (node % SECTIONS_PER_BRIDGE) as u8,
    }
}

/// The directory's bytes for `geometry`.
pub fn encode(geometry: &SectionGeometry) -> [u8; DIR_HEADER_LEN] {
    let mut h = [0u8; DIR_HEADER_LEN];
    header_put(&mut h, OFF_MAGIC, &DIR_MAGIC.to_le_bytes());
    header_put(&mut h, OFF_VERSION, &DIR_VERSION.to_le_bytes());
    header_put(&mut h, OFF_NODES, &geometry.nodes.to_le_bytes());
    header_put(&mut h, OFF_SLOT_SIZE, &geometry.slot_size.to_le_bytes());
    header_put(&mut h, OFF_SECTION_LEN, &geometry.section_len.to_le_bytes());
    header_put(
        &mut h,
        OFF_RING_ENTRIES,
        &geometry.ring_entries.to_le_bytes(),
    );
    header_put(&mut h, OFF_LEASE_MS, &geometry.lease_ms.to_le_bytes());
    let sum = checksum(h.get(..OFF_CHECKSUM).unwrap_or(&[]));
    header_put(&mut h, OFF_CHECKSUM, &sum.to_le_bytes());
    h
}

/// The geometry a directory's bytes `h` hold, validated.
pub fn parse(h: &[u8; DIR_HEADER_LEN]) -> Result<SectionGeometry, LayoutError> {
    let magic = header_u64(h, OFF_MAGIC);
    if magic == 0 {
        return Err(LayoutError::NotFormatted);
    }
    if magic != DIR_MAGIC {
        return Err(LayoutError::BadMagic { found: magic });
    }
    let version = header_u32(h, OFF_VERSION);
    if version != DIR_VERSION {
        return Err(LayoutError::UnsupportedVersion { found: version });
    }
    let found = header_u64(h, OFF_CHECKSUM);
    let computed = checksum(h.get(..OFF_CHECKSUM).unwrap_or(&[]));
    if found != computed {
        return Err(LayoutError::BadChecksum { found, computed });
    }
    let geometry = SectionGeometry {
        nodes: header_u32(h, OFF_NODES),
        section_len: header_u64(h, OFF_SECTION_LEN),
        slot_size: header_u32(h, OFF_SLOT_SIZE),
        ring_entries: header_u32(h, OFF_RING_ENTRIES),
        lease_ms: header_u32(h, OFF_LEASE_MS),
    };
    geometry.validate()?;
    Ok(geometry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> SectionGeometry {
        SectionGeometry::fit(64 << 20, 3, 2048, 1000).unwrap()
    }

    #[test]
    fn a_directory_reads_back_as_written() {
        let g = geometry();
        assert_eq!(parse(&encode(&g)), Ok(g));
    }

    #[test]
    fn a_damaged_or_foreign_directory_is_refused() {
        let h = encode(&geometry());
        assert_eq!(parse(&[0; DIR_HEADER_LEN]), Err(LayoutError::NotFormatted));
        let mut bad = h;
        bad[0] ^= 1;
        assert!(matches!(parse(&bad), Err(LayoutError::BadMagic { .. })));
        let mut bad = h;
        bad[OFF_VERSION] = 2;
        assert_eq!(
            parse(&bad),
            Err(LayoutError::UnsupportedVersion { found: 2 })
        );
        for at in [OFF_NODES, OFF_SECTION_LEN, OFF_RING_ENTRIES, OFF_CHECKSUM] {
            let mut bad = h;
            bad[at] ^= 0x40;
            assert!(
                matches!(parse(&bad), Err(LayoutError::BadChecksum { .. })),
                "byte {at:#x}"
            );
        }
        // A geometry that does not validate, with a good checksum.
        let bad = encode(&SectionGeometry {
            ring_entries: 8,
            ..geometry()
        });
        assert!(matches!(
            parse(&bad),
            Err(LayoutError::BadGeometry {
                field: "ring_entries",
                ..
            })
        ));
    }

    #[test]
    fn sixty_four_sections_fill_two_bridges() {
        assert_eq!(section_slot(0), SectionSlot { bridge: 0, slot: 0 });
        assert_eq!(
            section_slot(31),
            SectionSlot {
                bridge: 0,
                slot: 31
            }
        );
        assert_eq!(section_slot(32), SectionSlot { bridge: 1, slot: 0 });
        assert_eq!(
            section_slot(63),
            SectionSlot {
                bridge: 1,
                slot: 31
            }
        );
    }
}
