//! Buffer configuration 1: a separate ring for each (sender, receiver) pair.
//!
//! Each ring has one producer and one consumer, so it needs no lock: the
//! sender owns `tail`, the receiver owns `head` (free-running u32 on their
//! own cache lines). A frame of L bytes occupies `span = ceil(L / slot_size)`
//! consecutive entries; the descriptor of its first entry holds (L, span).
//!
//! ```text
//! ring(src, dst):  +0 tail | +64 head | +128 descriptors (len, span) x slots
//!                  | data: slot_size x slots
//! ```
//!
//! The sender writes data and descriptor, then publishes the tail with
//! `Release`; the receiver loads the tail with `Acquire`, validates the
//! descriptor (read once), copies the frame out, then publishes the head
//! with `Release` so the sender may reuse the entries.

use core::sync::atomic::Ordering;

use super::frame::{write_runs, ProtocolError, Segment};
use super::layout::{
    Layout, INITIAL_INDEX, MAX_FRAME, RING_DESCS, RING_DESC_FRAME_LEN, RING_DESC_LEN,
    RING_DESC_SPAN, RING_HEAD, RING_TAIL,
};
use super::nodes::NodeId;
use super::region::Region;
use super::sink::Sink;

/// Typed access to the rings of one region.
#[derive(Clone, Copy, Debug)]
pub struct Rings<'a> {
    /// The region.
    pub region: &'a Region,
    /// Its validated layout (configuration 1).
    pub layout: &'a Layout,
}

impl Rings<'_> {
    /// Entries per ring (a power of two).
    pub fn capacity(&self) -> u32 {
        self.layout.geometry.slot_count
    }

    /// `index` reduced to an entry number, `< capacity`.
    fn entry(&self, index: u32) -> usize {
        (index & self.capacity().wrapping_sub(1)) as usize
    }

    fn tail_off(&self, src: NodeId, dst: NodeId) -> usize {
        self.layout.ring(src, dst).saturating_add(RING_TAIL)
    }

    fn head_off(&self, src: NodeId, dst: NodeId) -> usize {
        self.layout.ring(src, dst).saturating_add(RING_HEAD)
    }

    /// Offset of the descriptor of entry `index` of ring (src, dst).
    pub fn desc_off(&self, src: NodeId, dst: NodeId, index: u32) -> usize {
        self.layout
            .ring(src, dst)
            .saturating_add(RING_DESCS)
            .saturating_add(self.entry(index).saturating_mul(RING_DESC_LEN))
    }

    /// Offset of the data of entry `index` of ring (src, dst): one slot.
    pub fn entry_data(&self, src: NodeId, dst: NodeId, index: u32) -> usize {
        let slot_size = self.layout.geometry.slot_size as usize;
        self.layout
            .ring(src, dst)
            .saturating_add(self.layout.ring_data())
            .saturating_add(self.entry(index).saturating_mul(slot_size))
    }

    /// The published tail of ring (src, dst).
    pub fn tail(&self, src: NodeId, dst: NodeId) -> u32 {
        // Acquire pairs with the sender's Release in `publish`.
        self.region
            .load_u32(self.tail_off(src, dst), Ordering::Acquire)
    }

    /// The consumed head of ring (src, dst).
    pub fn head(&self, src: NodeId, dst: NodeId) -> u32 {
        // Acquire pairs with the receiver's Release in `consume`: the
        // entries below the head are no longer read.
        self.region
            .load_u32(self.head_off(src, dst), Ordering::Acquire)
    }

    /// Sender side: makes entries up to `tail` visible.
    pub fn publish(&self, src: NodeId, dst: NodeId, tail: u32) {
        self.region
            .store_u32(self.tail_off(src, dst), tail, Ordering::Release)
    }

    /// Receiver side: hands entries below `head` back to the sender.
    pub fn consume(&self, src: NodeId, dst: NodeId, head: u32) {
        self.region
            .store_u32(self.head_off(src, dst), head, Ordering::Release)
    }

    /// Formats every ring empty.
    pub fn init(&self) {
        let nodes = self.layout.geometry.max_nodes as usize;
        for src in 0..nodes {
            for dst in 0..nodes {
                self.publish(src, dst, INITIAL_INDEX);
                self.consume(src, dst, INITIAL_INDEX);
            }
        }
    }

    /// Entries a frame of `len` bytes needs.
    pub fn span(&self, len: usize) -> u32 {
        let slot_size = (self.layout.geometry.slot_size as usize).max(1);
        u32::try_from(len.div_ceil(slot_size)).unwrap_or(u32::MAX)
    }

    /// Writes `frame` at entry `tail` of ring (src, dst). The caller checked
    /// that `span(frame.len())` entries are free and publishes later.
    pub fn write(&self, src: NodeId, dst: NodeId, tail: u32, frame: &[u8]) {
        let slot_size = self.layout.geometry.slot_size as usize;
        let offsets =
            (0..self.span(frame.len())).map(|i| self.entry_data(src, dst, tail.wrapping_add(i)));
        write_runs(self.region, frame, slot_size, offsets);
        self.describe(src, dst, tail, frame.len());
    }

    /// Writes the descriptor of a frame of `len` bytes whose data already
    /// fills the entries from `tail` on.
    pub fn describe(&self, src: NodeId, dst: NodeId, tail: u32, len: usize) {
        let desc = self.desc_off(src, dst, tail);
        self.region.store_u32(
            desc.saturating_add(RING_DESC_FRAME_LEN),
            u32::try_from(len).unwrap_or(u32::MAX),
            Ordering::Relaxed,
        );
        self.region.store_u32(
            desc.saturating_add(RING_DESC_SPAN),
            self.span(len),
            Ordering::Relaxed,
        );
    }

    /// Reads and validates the descriptor at `head`, given `avail` published
    /// entries; appends the frame's segments and returns (len, span).
    pub fn read(
        &self,
        src: NodeId,
        dst: NodeId,
        head: u32,
        avail: u32,
        segments: &mut impl Sink<Segment>,
    ) -> Result<(usize, u32), ProtocolError> {
        let slot_size = self.layout.geometry.slot_size;
        let desc = self.desc_off(src, dst, head);
        let len = self
            .region
            .load_u32(desc.saturating_add(RING_DESC_FRAME_LEN), Ordering::Relaxed);
        let span = self
            .region
            .load_u32(desc.saturating_add(RING_DESC_SPAN), Ordering::Relaxed);
        if len == 0 || len as usize > MAX_FRAME {
            return Err(ProtocolError::BadLength {
                len,
                reason: "outside 1..=65600",
            });
        }
        if span != len.div_ceil(slot_size.max(1)) {
            return Err(ProtocolError::BadLength {
                len,
                reason: "does not match its span of entries",
            });
        }
        if span > avail {
            return Err(ProtocolError::BadLength {
                len,
                reason: "spans entries not yet published",
            });
        }
        if segments.room() < span as usize {
            return Err(ProtocolError::ScratchFull);
        }
        let mut left = len as usize;
        let mut index = head;
        for _ in 0..span {
            let n = left.min(slot_size as usize);
            segments.push(Segment {
                offset: self.entry_data(src, dst, index),
                len: n,
            });
            left = left.saturating_sub(n);
            index = index.wrapping_add(1);
        }
        Ok((len as usize, span))
    }

    /// Validated distance between `head` and the published tail.
    pub fn available(&self, src: NodeId, dst: NodeId, head: u32) -> Result<u32, ProtocolError> {
        let tail = self.tail(src, dst);
        let avail = tail.wrapping_sub(head);
        if avail > self.capacity() {
            return Err(ProtocolError::QueueIndices {
                node: dst,
                head,
                tail,
                capacity: self.capacity(),
            });
        }
        Ok(avail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{scratch, BufferConfig};
    use std::vec::Vec;

    #[test]
    fn frames_wrap_around_the_ring() {
        let (region, layout) = scratch(BufferConfig::PerPair, 4 << 20, 2);
        let rings = Rings {
            region: &region,
            layout: &layout,
        };
        let cap = rings.capacity();
        // Start near the end so a 3-entry frame wraps.
        let start = cap - 1;
        let frame: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        rings.write(0, 1, start, &frame);
        rings.publish(0, 1, start.wrapping_add(3));
        let avail = rings.available(0, 1, start).unwrap();
        let mut seg = Vec::new();
        let (len, span) = rings.read(0, 1, start, avail, &mut seg).unwrap();
        assert_eq!((len, span), (5000, 3));
        let rx = crate::frame::RxFrame::new(&region, &seg, len, Some(0));
        assert_eq!(rx.to_vec(), frame);
    }

    #[test]
    fn hostile_descriptors_are_refused() {
        let (region, layout) = scratch(BufferConfig::PerPair, 4 << 20, 2);
        let rings = Rings {
            region: &region,
            layout: &layout,
        };
        let desc = rings.desc_off(0, 1, 0);
        let mut seg = Vec::new();
        for (len, span) in [(0, 0), (70_000, 35), (5000, 2), (5000, 3)] {
            region.store_u32(desc, len, Ordering::Relaxed);
            region.store_u32(desc + 4, span, Ordering::Relaxed);
            assert!(
                rings.read(0, 1, 0, 2, &mut seg).is_err(),
                "len {len} span {span}"
            );
        }
        assert!(seg.is_empty());
        rings.publish(0, 1, rings.capacity() + 1);
        assert!(matches!(
            rings.available(0, 1, 0),
            Err(ProtocolError::QueueIndices { .. })
        ));
    }
}
