//! Frames as the protocol hands them out: validated lists of byte ranges in
//! the region, copied out on demand.

use crate::nodes::NodeId;
use crate::region::Region;

/// A validated byte range of the region holding part of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Offset in the region.
    pub offset: usize,
    /// Bytes in this segment.
    pub len: usize,
}

/// A received frame. Its segments were validated against the layout before
/// it was handed out; its bytes are still in the region and are copied out
/// by [`RxFrame::copy_to`] (or handed to `writev` via [`RxFrame::iovecs`]).
#[derive(Debug)]
pub struct RxFrame<'a> {
    pub(crate) region: &'a Region,
    pub(crate) segments: &'a [Segment],
    pub(crate) len: usize,
    pub(crate) source: Option<NodeId>,
}

impl RxFrame<'_> {
    /// Frame length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: empty frames are refused on receive.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The node that sent it, as the sender claims (config 1 knows it from
    /// the ring; config 2 from the descriptor, which the sender wrote).
    pub fn source(&self) -> Option<NodeId> {
        self.source
    }

    /// Copies the frame into `buf`; returns the bytes copied (fewer than the
    /// frame's length when `buf` is short).
    pub fn copy_to(&self, buf: &mut [u8]) -> usize {
        let mut done = 0;
        for seg in self.segments {
            let n = seg.len.min(buf.len() - done);
            self.region.read_bytes(seg.offset, &mut buf[done..done + n]);
            done += n;
            if done == buf.len() {
                break;
            }
        }
        done
    }

    /// The frame as a vector (tests and tools; the data path uses `copy_to`).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0; self.len];
        self.copy_to(&mut v);
        v
    }

    /// The frame's segments as `iovec`s for `writev` to a TAP device.
    ///
    /// The pointers are valid while this `RxFrame` lives; they must be passed
    /// only to the kernel or to raw copies, never turned into references.
    pub fn iovecs(&self, out: &mut Vec<libc::iovec>) {
        out.clear();
        out.extend(self.segments.iter().map(|seg| libc::iovec {
            iov_base: self.region.raw_ptr(seg.offset, seg.len).cast(),
            iov_len: seg.len,
        }));
    }
}

/// A value read from the region that breaks the protocol: written by a
/// buggy or hostile peer. Never a panic: the frame or queue entry is dropped,
/// the violation counted, and the structure repaired where needed.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq, serde::Serialize)]
pub enum ProtocolError {
    /// A slot index past the pool or ring.
    #[error("Slot index {slot} is outside the pool of {count} slots")]
    SlotOutOfRange {
        /// The index read.
        slot: u32,
        /// Slots in the pool.
        count: u32,
    },
    /// A slot whose owner word says it is not where it was found.
    #[error("Slot {slot} has owner word {owner:#x}, expected {expected:#x}")]
    WrongOwner {
        /// The slot.
        slot: u32,
        /// Owner word found.
        owner: u32,
        /// Owner word expected.
        expected: u32,
    },
    /// A frame or segment length that does not fit.
    #[error("Frame length {len} is invalid: {reason}")]
    BadLength {
        /// The length read.
        len: u32,
        /// What it broke.
        reason: &'static str,
    },
    /// A slot chain longer than the largest frame needs (or a loop).
    #[error("Slot chain longer than {max} slots (a loop or a corrupt link)")]
    ChainTooLong {
        /// The bound.
        max: u32,
    },
    /// Queue or ring indices further apart than its capacity.
    #[error("Queue of node {node} has head {head} and tail {tail}, more than its {capacity} entries apart")]
    QueueIndices {
        /// Whose queue.
        node: usize,
        /// Head index read.
        head: u32,
        /// Tail index read.
        tail: u32,
        /// Capacity.
        capacity: u32,
    },
    /// Something only this node writes was overwritten by someone else
    /// (and has been put back).
    #[error("A peer overwrote {what}; restored")]
    Scribbled {
        /// What.
        what: &'static str,
    },
    /// The free stack's top or contents are inconsistent.
    #[error("Free slot stack is corrupt (top {top} of {count})")]
    FreeStack {
        /// Top read.
        top: u32,
        /// Slots in the pool.
        count: u32,
    },
}
