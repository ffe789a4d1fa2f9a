//! The region's format in numbers, in one table: its constants, every
//! word's offset within its part, and each part's size. The const
//! assertions at the end check at compile time that the words of a part
//! fit in it without overlapping. [`super::layout`] computes where each
//! part starts from a geometry.

/// "MINTVNI" + NUL, little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"MINTVNI\0");
/// Layout version this crate reads and writes (2: the lock's recoveries
/// count has a check word).
pub const VERSION: u32 = 2;
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
pub const INITIAL_INDEX: u32 = u32::MAX - 255;

/// Header size in bytes.
pub const HEADER_LEN: usize = 128;
/// Header: magic (u64), written last by a formatter.
pub const HDR_MAGIC: usize = 0;
/// Header: layout version (u32).
pub const HDR_VERSION: usize = 8;
/// Header: buffer configuration, 1 or 2 (u32).
pub const HDR_CONFIG: usize = 12;
/// Header: format epoch (u64).
pub const HDR_EPOCH: usize = 16;
/// Header: bytes the layout occupies (u64).
pub const HDR_TOTAL: usize = 24;
/// Header: the geometry, six u32 from here: max_nodes, slot_size,
/// slot_count, queue_capacity, mac_capacity, lease_ms.
pub const HDR_GEOMETRY: usize = 32;
/// Header: the largest frame this format carries (u32).
pub const HDR_MAX_FRAME: usize = 56;
/// Header: section offsets, [`SECTIONS`] u64 from here.
pub const HDR_SECTIONS: usize = 64;
/// Sections whose offsets the header stores.
pub const SECTIONS: usize = 6;
/// Header: FNV-1a checksum of the bytes before it (u64).
pub const HDR_CHECKSUM: usize = 120;

/// Bytes per node table entry, one cache line per writer pattern: line 0
/// is read-mostly (state, generation, MAC, sleeping, doorbell peer id: read
/// by senders on every frame), line 1 changes often (heartbeat, lock
/// ticket), line 2 holds the counters.
pub const NODE_ENTRY_LEN: usize = 192;
/// Node entry: state (u32).
pub const NODE_STATE: usize = 0;
/// Node entry: generation (u32).
pub const NODE_GENERATION: usize = 4;
/// Node entry: MAC in the low 48 bits (u64).
pub const NODE_MAC: usize = 8;
/// Node entry: sleeping flag (u32).
pub const NODE_SLEEPING: usize = 16;
/// Node entry: doorbell peer id + 1 (u32).
pub const NODE_DOORBELL: usize = 20;
/// Node entry: heartbeat (u64), on the second line.
pub const NODE_HEARTBEAT: usize = 64;
/// Node entry: the lock ticket it waits for (u32).
pub const NODE_TICKET: usize = 72;
/// Node entry: waiting-for-the-lock flag (u32).
pub const NODE_WAITING: usize = 76;
/// Node entry: counters, [`NODE_COUNTER_COUNT`] u64 from here (third line).
pub const NODE_COUNTERS: usize = 128;
/// Counters in a node entry.
pub const NODE_COUNTER_COUNT: usize = 8;

/// Lock words, on a cache line of their own: next ticket (u32).
pub const LOCK_NEXT_TICKET: usize = 0;
/// Lock: the ticket being served (u32).
pub const LOCK_NOW_SERVING: usize = 4;
/// Lock: holder word, (ticket << 32) | (node + 1) << 16 | generation (u64).
pub const LOCK_HOLDER: usize = 8;
/// Lock: dead holders recovered from (u64).
pub const LOCK_RECOVERIES: usize = 16;
/// Lock: `!recoveries` (u64), so that a scribbled count is recognised
/// (and put back by the next holder).
pub const LOCK_RECOVERIES_CHECK: usize = 24;
/// Bytes of the lock part.
pub const LOCK_LEN: usize = CACHE_LINE;

/// Address table: version word (u32), alone on the first line; entries follow.
pub const ADDR_VERSION: usize = 0;
/// Address table: first entry.
pub const ADDR_ENTRIES: usize = CACHE_LINE;
/// Address entry: MAC word, bit 63 = valid (u64).
pub const ADDR_ENTRY_MAC: usize = 0;
/// Address entry: owning node (u32).
pub const ADDR_ENTRY_NODE: usize = 8;
/// Bytes per address table entry (MAC word, node word, padding).
pub const ADDR_ENTRY_LEN: usize = 16;

/// Config 2, free stack: top (u32) on its own line; slot ids follow.
pub const FREE_TOP: usize = 0;
/// Config 2, free stack: first entry (u32 each).
pub const FREE_ENTRIES: usize = CACHE_LINE;
/// Config 2 slot descriptor: owner word (u32).
pub const DESC_OWNER: usize = 0;
/// Slot descriptor: next slot of the chain (u32).
pub const DESC_NEXT: usize = 4;
/// Slot descriptor: bytes in this slot (u32).
pub const DESC_LEN_WORD: usize = 8;
/// Slot descriptor, first slot of a chain: frame length | sender << 24 (u32).
pub const DESC_META: usize = 12;
/// Bytes per config-2 slot descriptor.
pub const DESC_LEN: usize = 16;
/// Config 2 receive queue: head (u32), own line.
pub const QUEUE_HEAD: usize = 0;
/// Receive queue: tail (u32), own line.
pub const QUEUE_TAIL: usize = CACHE_LINE;
/// Receive queue: first entry (u32 each: a chain's first slot).
pub const QUEUE_ENTRIES: usize = 2 * CACHE_LINE;

/// Config 1 ring: tail (u32), own line.
pub const RING_TAIL: usize = 0;
/// Ring: head (u32), own line.
pub const RING_HEAD: usize = CACHE_LINE;
/// Ring: first descriptor.
pub const RING_DESCS: usize = 2 * CACHE_LINE;
/// Ring descriptor: frame length (u32).
pub const RING_DESC_FRAME_LEN: usize = 0;
/// Ring descriptor: entries the frame spans (u32).
pub const RING_DESC_SPAN: usize = 4;
/// Bytes per config-1 ring descriptor.
pub const RING_DESC_LEN: usize = 8;

const _: () = {
    // Header: the words in order, each after the last, all before the
    // checksum, which ends the header.
    assert!(HDR_VERSION >= HDR_MAGIC + 8 && HDR_CONFIG >= HDR_VERSION + 4);
    assert!(HDR_EPOCH >= HDR_CONFIG + 4 && HDR_TOTAL >= HDR_EPOCH + 8);
    assert!(HDR_GEOMETRY >= HDR_TOTAL + 8 && HDR_MAX_FRAME >= HDR_GEOMETRY + 6 * 4);
    assert!(HDR_SECTIONS >= HDR_MAX_FRAME + 4);
    assert!(HDR_CHECKSUM >= HDR_SECTIONS + 8 * SECTIONS);
    assert!(HDR_CHECKSUM + 8 == HEADER_LEN && HEADER_LEN % CACHE_LINE == 0);
    assert!(HDR_EPOCH % 8 == 0 && HDR_TOTAL % 8 == 0 && HDR_SECTIONS % 8 == 0);
    // Node entry: line 0 read-mostly, line 1 heartbeat and lock, line 2 counters.
    assert!(NODE_GENERATION >= NODE_STATE + 4 && NODE_MAC >= NODE_GENERATION + 4);
    assert!(NODE_SLEEPING >= NODE_MAC + 8 && NODE_DOORBELL >= NODE_SLEEPING + 4);
    assert!(NODE_DOORBELL + 4 <= CACHE_LINE);
    assert!(NODE_HEARTBEAT == CACHE_LINE && NODE_TICKET >= NODE_HEARTBEAT + 8);
    assert!(NODE_WAITING >= NODE_TICKET + 4 && NODE_WAITING + 4 <= 2 * CACHE_LINE);
    assert!(NODE_COUNTERS == 2 * CACHE_LINE);
    assert!(NODE_COUNTERS + 8 * NODE_COUNTER_COUNT <= NODE_ENTRY_LEN);
    assert!(NODE_ENTRY_LEN % CACHE_LINE == 0 && NODE_MAC % 8 == 0);
    // Lock words on one line.
    assert!(LOCK_NOW_SERVING >= LOCK_NEXT_TICKET + 4 && LOCK_HOLDER >= LOCK_NOW_SERVING + 4);
    assert!(LOCK_RECOVERIES >= LOCK_HOLDER + 8 && LOCK_RECOVERIES_CHECK >= LOCK_RECOVERIES + 8);
    assert!(LOCK_RECOVERIES_CHECK + 8 <= LOCK_LEN && LOCK_RECOVERIES_CHECK % 8 == 0);
    assert!(LOCK_HOLDER % 8 == 0 && LOCK_RECOVERIES % 8 == 0);
    // Address entries, free stack, descriptors, queues, rings.
    assert!(ADDR_VERSION + 4 <= ADDR_ENTRIES && ADDR_ENTRY_NODE >= ADDR_ENTRY_MAC + 8);
    assert!(ADDR_ENTRY_NODE + 4 <= ADDR_ENTRY_LEN && ADDR_ENTRY_LEN % 8 == 0);
    assert!(FREE_TOP + 4 <= FREE_ENTRIES);
    assert!(DESC_NEXT >= DESC_OWNER + 4 && DESC_LEN_WORD >= DESC_NEXT + 4);
    assert!(DESC_META >= DESC_LEN_WORD + 4 && DESC_META + 4 <= DESC_LEN);
    assert!(QUEUE_HEAD + 4 <= QUEUE_TAIL && QUEUE_TAIL + 4 <= QUEUE_ENTRIES);
    assert!(RING_TAIL + 4 <= RING_HEAD && RING_HEAD + 4 <= RING_DESCS);
    assert!(RING_DESC_SPAN >= RING_DESC_FRAME_LEN + 4 && RING_DESC_SPAN + 4 <= RING_DESC_LEN);
    // Frame lengths and senders share a descriptor's meta word (24 + 8
    // bits); slot ids and owner tags share the owner word (24 + 8).
    assert!(MAX_FRAME < 1 << 24 && MAX_NODES <= 1 << 8);
    assert!(MAX_SLOT as usize % CACHE_LINE == 0);
};
