//! Frame memory as `iovec`s for system calls (`readv`/`writev` on a TAP),
//! so that the kernel copies between a device and the slots with no
//! buffer in between.
//!
//! The pointers point into the shared region. Building them is safe;
//! handing them to the kernel is sound only while the memory stays mapped
//! and the slots are this node's, which is why only the endpoint builds an
//! [`IoSlots`] (over slots it holds) and an [`RxFrame`] (over validated
//! segments, valid while the frame lives) yields the others.

use vni_core::{RawSegment, RxFrame};

/// Writable memory for one frame: slots this node holds (or a buffer of
/// the endpoint's), as iovecs, valid for the borrow's lifetime. Only
/// [`crate::Endpoint::send_direct`] makes one, so a function that takes
/// `&IoSlots` may pass them to `readv` without further proof.
#[derive(Debug)]
pub struct IoSlots<'a> {
    iovecs: &'a [libc::iovec],
}

impl<'a> IoSlots<'a> {
    /// Only the endpoint builds these, over memory it guarantees.
    pub(crate) fn new(iovecs: &'a [libc::iovec]) -> Self {
        IoSlots { iovecs }
    }

    /// The iovecs: pass them to the kernel only, never turn them into
    /// references (other nodes may write the region at any time).
    pub fn iovecs(&self) -> &[libc::iovec] {
        self.iovecs
    }

    /// Bytes they cover.
    pub fn len(&self) -> usize {
        self.iovecs.iter().map(|iov| iov.iov_len).sum()
    }

    /// True when they cover nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The segments of `frame` as iovecs in `out` (cleared first), for
/// `writev`: valid while `frame` lives.
pub fn frame_iovecs(frame: &RxFrame<'_>, out: &mut Vec<libc::iovec>) {
    out.clear();
    out.extend(frame.raw_segments().map(iovec));
}

/// A segment the core handed out, as the kernel's iovec.
pub(crate) fn iovec(seg: RawSegment) -> libc::iovec {
    libc::iovec {
        iov_base: seg.ptr.cast(),
        iov_len: seg.len,
    }
}
