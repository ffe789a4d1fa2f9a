//! The shared memory region, and the only code that touches it.
//!
//! Every other node (another process, another guest) can write any byte of
//! the region at any time. Following vm-memory's rules for such memory:
//!
//! - No `&T`, `&mut T` or `&[u8]` into the region ever exists outside this
//!   file. Callers name a byte offset and get values copied out or in.
//! - Words that other nodes read or write concurrently (indices, states, lock
//!   words, counters, the header) are accessed only as atomics, with the
//!   caller choosing the [`Ordering`]. The atomic references made here live
//!   for one call. [`Region::store_words`] and [`Region::load_words`] move
//!   a run of such words, each one atomically.
//! - Bulk payload bytes are moved with `copy_nonoverlapping`: `u8` has no
//!   invalid values, so a torn copy is wrong data (caught by the protocol's
//!   checks), never undefined behaviour in our process.
//!
//! A [`Region`] does not own the memory: user space maps a file or the
//! ivshmem BAR and keeps the mapping (`vni-protocol`), the kernel maps the
//! BAR with `pci_iomap`. Whoever builds one promises, in
//! [`Region::from_raw_parts`], that the memory stays mapped while it lives.
//!
//! Offsets are computed by the protocol from a validated [`super::Layout`]
//! and validated peer values, so an out-of-range offset here is a bug in
//! this crate, not a peer's doing. It is the one panic left in the core:
//! stopping is better than touching memory outside the mapping (in the
//! kernel, a `BUG` names the bug where an out-of-bounds write would corrupt
//! memory silently).

use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// A region that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionError {
    /// The mapping is too small, misaligned or at address 0.
    Unusable {
        /// Size of the mapping.
        len: usize,
        /// Why it cannot be used.
        reason: &'static str,
    },
}

impl fmt::Display for RegionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegionError::Unusable { len, reason } => {
                write!(f, "Shared region of {len} bytes is unusable: {reason}")
            }
        }
    }
}

impl core::error::Error for RegionError {}

/// Access to a mapping of the shared region, by offset only.
#[derive(Debug)]
pub struct Region {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: a `Region` is a pointer to shared memory that stays mapped for its
// lifetime (the promise of `from_raw_parts`). All access goes through
// atomics or raw copies that tolerate concurrent writers, so sharing or
// moving the handle between threads adds no data race that other nodes
// could not already cause.
unsafe impl Send for Region {}
// SAFETY: as for `Send`; no method hands out a reference into the mapping.
unsafe impl Sync for Region {}

impl Region {
    /// Smallest region the protocol accepts.
    pub const MIN_LEN: usize = 64 * 1024;

    /// Access to the `len` bytes at `base`.
    ///
    /// # Safety
    ///
    /// `base..base + len` must be memory mapped readable and writable for
    /// as long as the returned `Region` (and anything borrowing it) lives,
    /// and nothing in this program may hold a Rust reference into it. Other
    /// processes or guests may write it at any time; that is allowed.
    pub unsafe fn from_raw_parts(base: *mut u8, len: usize) -> Result<Self, RegionError> {
        if len < Self::MIN_LEN {
            return Err(RegionError::Unusable {
                len,
                reason: "smaller than 64 KiB",
            });
        }
        let base = NonNull::new(base).ok_or(RegionError::Unusable {
            len,
            reason: "mapped at address 0",
        })?;
        if base.as_ptr().align_offset(64) != 0 {
            return Err(RegionError::Unusable {
                len,
                reason: "not 64-byte aligned",
            });
        }
        Ok(Self { base, len })
    }

    /// Size of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a region is at least [`Region::MIN_LEN`] bytes.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Pointer to `off`, after checking that `size` bytes fit and that `off`
    /// is aligned to `align`.
    #[inline]
    fn ptr(&self, off: usize, size: usize, align: usize) -> *mut u8 {
        let fits = off.checked_add(size).is_some_and(|end| end <= self.len);
        let aligned = off.checked_rem(align) == Some(0);
        // The core's one panic (see the module docs): offsets derive from
        // the validated layout and validated values only, so this fires on
        // a bug in this crate, never on what a peer wrote.
        #[allow(clippy::panic, reason = "a bug in the core, not a peer's doing")]
        if !(fits && aligned) {
            panic!(
                "bug: region access at {off:#x}+{size} (align {align}) outside {} bytes",
                self.len
            );
        }
        // SAFETY: `off + size <= len` was checked just above, so the result
        // stays inside the mapping that `base` starts.
        unsafe { self.base.as_ptr().add(off) }
    }

    #[inline]
    #[expect(
        clippy::cast_ptr_alignment,
        reason = "`ptr` checks the 4-byte alignment"
    )]
    fn atomic_u32(&self, off: usize) -> &AtomicU32 {
        let ptr = self.ptr(off, 4, 4).cast::<u32>();
        // SAFETY: `ptr` is in bounds and 4-byte aligned (checked by `ptr`),
        // the mapping outlives `&self`, and every access to this word, here
        // or in other processes, is atomic: a shared `AtomicU32` allows
        // concurrent mutation. The reference does not escape this module.
        unsafe { AtomicU32::from_ptr(ptr) }
    }

    #[inline]
    #[expect(
        clippy::cast_ptr_alignment,
        reason = "`ptr` checks the 8-byte alignment"
    )]
    fn atomic_u64(&self, off: usize) -> &AtomicU64 {
        let ptr = self.ptr(off, 8, 8).cast::<u64>();
        // SAFETY: as in `atomic_u32`, with 8-byte alignment checked.
        unsafe { AtomicU64::from_ptr(ptr) }
    }

    /// Atomic load of the `u32` at `off`.
    #[inline]
    pub fn load_u32(&self, off: usize, order: Ordering) -> u32 {
        self.atomic_u32(off).load(order)
    }

    /// Atomic store of the `u32` at `off`.
    #[inline]
    pub fn store_u32(&self, off: usize, value: u32, order: Ordering) {
        self.atomic_u32(off).store(value, order)
    }

    /// Atomic compare-and-exchange of the `u32` at `off`; returns the value
    /// found, `Ok` when it was `current` and is now `new`.
    #[inline]
    pub fn cas_u32(&self, off: usize, current: u32, new: u32, order: Ordering) -> Result<u32, u32> {
        self.atomic_u32(off)
            .compare_exchange(current, new, order, Ordering::Acquire)
    }

    /// Atomic fetch-add of the `u32` at `off` (wrapping).
    #[inline]
    pub fn fetch_add_u32(&self, off: usize, value: u32, order: Ordering) -> u32 {
        self.atomic_u32(off).fetch_add(value, order)
    }

    /// Atomic load of the `u64` at `off`.
    #[inline]
    pub fn load_u64(&self, off: usize, order: Ordering) -> u64 {
        self.atomic_u64(off).load(order)
    }

    /// Atomic store of the `u64` at `off`.
    #[inline]
    pub fn store_u64(&self, off: usize, value: u64, order: Ordering) {
        self.atomic_u64(off).store(value, order)
    }

    /// Atomic compare-and-exchange of the `u64` at `off`.
    #[inline]
    pub fn cas_u64(&self, off: usize, current: u64, new: u64, order: Ordering) -> Result<u64, u64> {
        self.atomic_u64(off)
            .compare_exchange(current, new, order, Ordering::Acquire)
    }

    /// Atomic fetch-add of the `u64` at `off` (wrapping).
    #[inline]
    pub fn fetch_add_u64(&self, off: usize, value: u64, order: Ordering) -> u64 {
        self.atomic_u64(off).fetch_add(value, order)
    }

    /// Stores `words` at `off` as consecutive `u64`s, each one atomically:
    /// for runs of words that peers read concurrently (the header).
    pub fn store_words(&self, off: usize, words: &[u64], order: Ordering) {
        let mut at = off;
        for &word in words {
            self.store_u64(at, word, order);
            at = at.saturating_add(8);
        }
    }

    /// Loads consecutive `u64`s from `off` into `out`, each one atomically.
    pub fn load_words(&self, off: usize, out: &mut [u64], order: Ordering) {
        let mut at = off;
        for word in out {
            *word = self.load_u64(at, order);
            at = at.saturating_add(8);
        }
    }

    /// Copies `src` into the region at `off`.
    #[inline]
    pub fn write_bytes(&self, off: usize, src: &[u8]) {
        let dst = self.ptr(off, src.len(), 1);
        // SAFETY: `dst..dst+len` is inside the mapping (checked by `ptr`);
        // `src` is a Rust slice, which cannot overlap the mapping because no
        // reference into the region is ever created. Bytes have no invalid
        // values, so a concurrent peer write only changes the data.
        unsafe { core::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) }
    }

    /// Copies `dst.len()` bytes from the region at `off` into `dst`.
    #[inline]
    pub fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        let src = self.ptr(off, dst.len(), 1);
        // SAFETY: the source range is inside the mapping (checked by `ptr`);
        // `dst` is a Rust slice outside it. Any byte pattern is a valid `u8`.
        unsafe { core::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) }
    }

    /// Sets `len` bytes at `off` to zero.
    pub fn zero(&self, off: usize, len: usize) {
        let dst = self.ptr(off, len, 1);
        // SAFETY: the range is inside the mapping (checked by `ptr`).
        unsafe { core::ptr::write_bytes(dst, 0, len) }
    }

    /// Raw pointer to `len` bytes at `off`, for handing a slot to a system
    /// call (`readv`/`writev` on a TAP device) without a bounce buffer.
    ///
    /// The pointer must not be turned into a Rust reference; pass it only to
    /// the kernel or to raw copies.
    pub fn raw_ptr(&self, off: usize, len: usize) -> *mut u8 {
        self.ptr(off, len, 1)
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Regions backed by leaked heap memory, for the unit tests.

    use super::Region;

    #[repr(C, align(4096))]
    #[derive(Clone, Copy)]
    struct Page([u8; 4096]);

    /// A zeroed region of `len` bytes (rounded up to pages) that lives as
    /// long as the test process.
    pub(crate) fn region(len: usize) -> Region {
        let pages = std::vec![Page([0; 4096]); len.div_ceil(4096)].leak();
        // SAFETY: the pages are leaked, so they stay mapped for the rest of
        // the process, and no reference to them remains (`leak`'s is
        // dropped here).
        unsafe { Region::from_raw_parts(pages.as_mut_ptr().cast(), len) }.expect("usable region")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomics_and_bytes_round_trip() {
        let region = testing::region(Region::MIN_LEN);
        region.store_u32(64, 7, Ordering::Relaxed);
        assert_eq!(region.fetch_add_u32(64, 1, Ordering::Relaxed), 7);
        assert_eq!(region.load_u32(64, Ordering::Relaxed), 8);
        assert_eq!(region.cas_u64(128, 0, 9, Ordering::AcqRel), Ok(0));
        assert_eq!(region.cas_u64(128, 0, 10, Ordering::AcqRel), Err(9));
        region.write_bytes(1000, b"hello");
        let mut out = [0u8; 5];
        region.read_bytes(1000, &mut out);
        assert_eq!(&out, b"hello");
        region.store_words(256, &[1, 2, 3], Ordering::Relaxed);
        let mut words = [0u64; 3];
        region.load_words(256, &mut words, Ordering::Relaxed);
        assert_eq!(words, [1, 2, 3]);
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn out_of_bounds_is_caught() {
        let region = testing::region(Region::MIN_LEN);
        region.load_u32(Region::MIN_LEN - 2, Ordering::Relaxed);
    }

    #[test]
    fn tiny_null_or_misaligned_memory_is_refused() {
        let region = testing::region(Region::MIN_LEN);
        let base = region.raw_ptr(0, 1);
        let misaligned = region.raw_ptr(8, 1);
        // SAFETY: each of these calls is refused before anything could
        // use the memory, which is the live test region in any case.
        let tiny = unsafe { Region::from_raw_parts(base, 4096) };
        // SAFETY: as above.
        let null = unsafe { Region::from_raw_parts(core::ptr::null_mut(), 1 << 20) };
        // SAFETY: as above.
        let skewed = unsafe { Region::from_raw_parts(misaligned, Region::MIN_LEN - 8) };
        assert!(tiny.is_err() && null.is_err() && skewed.is_err());
    }
}
