//! Frames as the protocol hands them out: validated lists of byte ranges in
//! the region, copied out on demand.

use core::fmt;

use super::nodes::NodeId;
use super::region::Region;

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
/// by [`RxFrame::copy_to`] (or handed to `writev` via [`RxFrame::raw_segments`]).
#[derive(Debug)]
pub struct RxFrame<'a> {
    region: &'a Region,
    segments: &'a [Segment],
    len: usize,
    source: Option<NodeId>,
}

/// A segment of a received frame as a raw pointer and a length, for
/// handing to the kernel (`writev`, an skb copy). Only an [`RxFrame`]
/// makes them, from validated segments, and the memory stays mapped while
/// that frame lives; the pointer must never become a Rust reference.
#[derive(Clone, Copy, Debug)]
pub struct RawSegment {
    /// Start of the bytes in the mapping.
    pub ptr: *mut u8,
    /// Bytes.
    pub len: usize,
}

impl<'a> RxFrame<'a> {
    /// A frame of `len` bytes in `segments`, validated by the caller
    /// against the layout (the pool's or a ring's reader).
    pub fn new(
        region: &'a Region,
        segments: &'a [Segment],
        len: usize,
        source: Option<NodeId>,
    ) -> Self {
        RxFrame {
            region,
            segments,
            len,
            source,
        }
    }

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
    /// frame's length when `buf` is short). Segments that follow each other
    /// in the region (consecutive slots) are copied as one.
    pub fn copy_to(&self, buf: &mut [u8]) -> usize {
        let mut rest = &mut *buf;
        let mut done = 0usize;
        for seg in runs(self.segments.iter().copied()) {
            let n = seg.len.min(rest.len());
            let (chunk, tail) = core::mem::take(&mut rest).split_at_mut(n);
            self.region.read_bytes(seg.offset, chunk);
            done = done.saturating_add(n);
            rest = tail;
            if rest.is_empty() {
                break;
            }
        }
        done
    }

    /// The frame as a vector (tests and tools; the data path uses `copy_to`).
    #[cfg(any(test, feature = "std"))]
    pub fn to_vec(&self) -> std::vec::Vec<u8> {
        let mut v = std::vec![0; self.len];
        self.copy_to(&mut v);
        v
    }

    /// The frame's segments as raw pointers into the mapping, valid while
    /// this frame lives (see [`RawSegment`]).
    pub fn raw_segments(&self) -> impl Iterator<Item = RawSegment> + '_ {
        runs(self.segments.iter().copied()).map(|seg| RawSegment {
            ptr: self.region.raw_ptr(seg.offset, seg.len),
            len: seg.len,
        })
    }
}

/// `segments` with each run of adjacent ones (one ending where the next
/// starts) merged into one: a chain of consecutive slots is one copy.
pub fn runs<'a>(
    segments: impl Iterator<Item = Segment> + 'a,
) -> impl Iterator<Item = Segment> + 'a {
    let mut rest = segments.peekable();
    core::iter::from_fn(move || {
        let mut run = rest.next()?;
        while let Some(next) =
            rest.next_if(|next| run.offset.checked_add(run.len) == Some(next.offset))
        {
            run.len = run.len.saturating_add(next.len);
        }
        Some(run)
    })
}

/// Writes `frame` in `chunk`-byte pieces at the offsets `offsets` yields,
/// one copy for each run of pieces that follow each other in the region.
pub fn write_runs(
    region: &Region,
    frame: &[u8],
    chunk: usize,
    offsets: impl Iterator<Item = usize>,
) {
    let chunk = chunk.max(1);
    // The run being gathered: region offset, first byte of `frame`, bytes.
    let mut run: Option<(usize, usize, usize)> = None;
    let mut at = 0usize;
    for off in offsets {
        if at >= frame.len() {
            break;
        }
        let len = chunk.min(frame.len().saturating_sub(at));
        run = match run {
            Some((start, from, bytes)) if start.checked_add(bytes) == Some(off) => {
                Some((start, from, bytes.saturating_add(len)))
            }
            other => {
                if let Some((start, from, bytes)) = other {
                    write_run(region, frame, start, from, bytes);
                }
                Some((off, at, len))
            }
        };
        at = at.saturating_add(len);
    }
    if let Some((start, from, bytes)) = run {
        write_run(region, frame, start, from, bytes);
    }
}

fn write_run(region: &Region, frame: &[u8], start: usize, from: usize, bytes: usize) {
    if let Some(part) = from.checked_add(bytes).and_then(|end| frame.get(from..end)) {
        region.write_bytes(start, part);
    }
}

/// A value read from the region that breaks the protocol: written by a
/// buggy or hostile peer. Never a panic: the frame or queue entry is dropped,
/// the violation counted, and the structure repaired where needed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub enum ProtocolError {
    /// A slot index past the pool or ring.
    SlotOutOfRange {
        /// The index read.
        slot: u32,
        /// Slots in the pool.
        count: u32,
    },
    /// A slot whose owner word says it is not where it was found.
    WrongOwner {
        /// The slot.
        slot: u32,
        /// Owner word found.
        owner: u32,
        /// Owner word expected.
        expected: u32,
    },
    /// A frame or segment length that does not fit.
    BadLength {
        /// The length read.
        len: u32,
        /// What it broke.
        reason: &'static str,
    },
    /// A slot chain longer than the largest frame needs (or a loop).
    ChainTooLong {
        /// The bound.
        max: u32,
    },
    /// Queue or ring indices further apart than its capacity.
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
    Scribbled {
        /// What.
        what: &'static str,
    },
    /// The free stack's top or contents are inconsistent.
    FreeStack {
        /// Top read.
        top: u32,
        /// Slots in the pool.
        count: u32,
    },
    /// A repair under the lock found shared state that no honest node
    /// leaves behind (and dropped or freed it).
    Inconsistent {
        /// What was inconsistent.
        what: &'static str,
        /// How many.
        count: u64,
    },
    /// A local limit, not a peer's doing: the caller's scratch space for
    /// received segments is full (it is sized for a batch of the largest
    /// frames, so this means a caller that passed less).
    ScratchFull,
    /// Not a peer's doing either: this node was declared dead (its
    /// generation moved on) while it held the lock, so it stopped before
    /// its next write to buffer management, which is the recoverer's now.
    FencedMeanwhile,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ProtocolError::SlotOutOfRange { slot, count } => {
                write!(f, "Slot index {slot} is outside the pool of {count} slots")
            }
            ProtocolError::WrongOwner {
                slot,
                owner,
                expected,
            } => write!(
                f,
                "Slot {slot} has owner word {owner:#x}, expected {expected:#x}"
            ),
            ProtocolError::BadLength { len, reason } => {
                write!(f, "Frame length {len} is invalid: {reason}")
            }
            ProtocolError::ChainTooLong { max } => write!(
                f,
                "Slot chain longer than {max} slots (a loop or a corrupt link)"
            ),
            ProtocolError::QueueIndices {
                node,
                head,
                tail,
                capacity,
            } => write!(
                f,
                "Queue of node {node} has head {head} and tail {tail}, more than its {capacity} entries apart"
            ),
            ProtocolError::Scribbled { what } => write!(f, "A peer overwrote {what}; restored"),
            ProtocolError::FreeStack { top, count } => {
                write!(f, "Free slot stack is corrupt (top {top} of {count})")
            }
            ProtocolError::Inconsistent { what, count } => {
                write!(f, "{count} inconsistent {what} found and dropped")
            }
            ProtocolError::ScratchFull => {
                write!(f, "Receive scratch space is full (a local limit)")
            }
            ProtocolError::FencedMeanwhile => write!(
                f,
                "This node was declared dead while it held the lock, and stopped writing"
            ),
        }
    }
}

impl core::error::Error for ProtocolError {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    #[test]
    fn adjacent_segments_merge_into_runs() {
        let seg = |offset, len| Segment { offset, len };
        let merged: Vec<Segment> =
            runs([seg(0, 64), seg(64, 64), seg(256, 64), seg(320, 10)].into_iter()).collect();
        assert_eq!(merged, [seg(0, 128), seg(256, 74)]);
    }

    #[test]
    fn runs_write_and_read_back_as_pieces() {
        let region = crate::region::testing::region(Region::MIN_LEN);
        let frame: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        // Pieces of 128 bytes at 1024, 1152 (a run), then 4096.
        write_runs(&region, &frame, 128, [1024, 1152, 4096].into_iter());
        let segments = [
            Segment {
                offset: 1024,
                len: 128,
            },
            Segment {
                offset: 1152,
                len: 128,
            },
            Segment {
                offset: 4096,
                len: 44,
            },
        ];
        let rx = RxFrame::new(&region, &segments, 300, None);
        assert_eq!(rx.to_vec(), frame);
        assert_eq!(rx.raw_segments().count(), 2);
    }
}
