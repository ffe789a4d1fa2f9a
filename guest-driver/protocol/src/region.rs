//! The shared memory region, and the only code that touches it.
//!
//! Every other node (another process, another guest) can write any byte of
//! the region at any time. Following vm-memory's rules for such memory:
//!
//! - No `&T`, `&mut T` or `&[u8]` into the region ever exists outside this
//!   file. Callers name a byte offset and get values copied out or in.
//! - Words that other nodes read or write concurrently (indices, states, lock
//!   words, counters) are accessed only as atomics, with the caller choosing
//!   the [`Ordering`]. The atomic references made here live for one call.
//! - Bulk payload bytes are moved with `copy_nonoverlapping`: `u8` has no
//!   invalid values, so a torn copy is wrong data (caught by the protocol's
//!   checks), never undefined behaviour in our process.
//!
//! Offsets are computed by the protocol from a validated [`crate::Layout`]
//! and validated peer values, so an out-of-range offset here is a bug in
//! this crate, not a peer's doing: it panics with a clear message rather than
//! touching memory outside the mapping.

use std::fs::File;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use memmap2::{MmapOptions, MmapRaw};

/// Errors from creating or mapping a region.
#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    /// The backing file could not be created, opened, sized or mapped.
    #[error("Cannot map shared region {path}")]
    Map {
        /// The backing file.
        path: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The mapping is too small or not 64-byte aligned.
    #[error("Shared region of {len} bytes is unusable: {reason}")]
    Unusable {
        /// Size of the mapping.
        len: usize,
        /// Why it cannot be used.
        reason: &'static str,
    },
}

/// A mapping of the shared region, handing out offset-based access only.
#[derive(Debug)]
pub struct Region {
    /// Keeps the mapping alive; never dereferenced directly.
    _map: MmapRaw,
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: `Region` owns a shared mapping that stays valid for its lifetime.
// All access goes through atomics or raw copies that tolerate concurrent
// writers, so sharing or moving the handle between threads adds no data race
// that other processes could not already cause.
unsafe impl Send for Region {}
// SAFETY: as for `Send`; no method hands out a reference into the mapping.
unsafe impl Sync for Region {}

impl Region {
    /// Smallest region the protocol accepts.
    pub const MIN_LEN: usize = 64 * 1024;

    /// Maps an already-open file (a /dev/shm file, a memfd, or a PCI BAR
    /// resource) shared and writable, `len` bytes from `offset`.
    pub fn map_file(file: &File, offset: u64, len: usize, name: &str) -> Result<Self, RegionError> {
        let map = MmapOptions::new()
            .offset(offset)
            .len(len)
            .map_raw(file)
            .map_err(|source| RegionError::Map {
                path: name.to_owned(),
                source,
            })?;
        Self::from_map(map)
    }

    /// Creates (or truncates) `path` with `len` bytes and maps it shared.
    pub fn create(path: &Path, len: usize) -> Result<Self, RegionError> {
        let err = |source| RegionError::Map {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(err)?;
        file.set_len(len as u64).map_err(err)?;
        Self::map_file(&file, 0, len, &path.display().to_string())
    }

    /// Opens an existing region file and maps all of it shared.
    pub fn open(path: &Path) -> Result<Self, RegionError> {
        let err = |source| RegionError::Map {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(err)?;
        let len = file.metadata().map_err(err)?.len();
        let len = usize::try_from(len).map_err(|_| RegionError::Unusable {
            len: usize::MAX,
            reason: "larger than the address space",
        })?;
        Self::map_file(&file, 0, len, &path.display().to_string())
    }

    /// An anonymous region, for tests that run every node in one process.
    pub fn anonymous(len: usize) -> Result<Self, RegionError> {
        let map = MmapOptions::new()
            .len(len)
            .map_anon()
            .map_err(|source| RegionError::Map {
                path: "<anonymous>".into(),
                source,
            })?;
        Self::from_map(map.into())
    }

    fn from_map(map: MmapRaw) -> Result<Self, RegionError> {
        let len = map.len();
        if len < Self::MIN_LEN {
            return Err(RegionError::Unusable {
                len,
                reason: "smaller than 64 KiB",
            });
        }
        let base = NonNull::new(map.as_mut_ptr()).ok_or(RegionError::Unusable {
            len,
            reason: "mapped at address 0",
        })?;
        if base.as_ptr() as usize % 64 != 0 {
            return Err(RegionError::Unusable {
                len,
                reason: "not 64-byte aligned",
            });
        }
        Ok(Self {
            _map: map,
            base,
            len,
        })
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
        let end = off.checked_add(size);
        assert!(
            end.is_some_and(|end| end <= self.len) && off % align == 0,
            "bug: region access at {off:#x}+{size} (align {align}) outside {} bytes",
            self.len
        );
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

    /// Copies `src` into the region at `off`.
    #[inline]
    pub fn write_bytes(&self, off: usize, src: &[u8]) {
        let dst = self.ptr(off, src.len(), 1);
        // SAFETY: `dst..dst+len` is inside the mapping (checked by `ptr`);
        // `src` is a Rust slice, which cannot overlap the mapping because no
        // reference into the region is ever created. Bytes have no invalid
        // values, so a concurrent peer write only changes the data.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) }
    }

    /// Copies `dst.len()` bytes from the region at `off` into `dst`.
    #[inline]
    pub fn read_bytes(&self, off: usize, dst: &mut [u8]) {
        let src = self.ptr(off, dst.len(), 1);
        // SAFETY: the source range is inside the mapping (checked by `ptr`);
        // `dst` is a Rust slice outside it. Any byte pattern is a valid `u8`.
        unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) }
    }

    /// Sets `len` bytes at `off` to zero.
    pub fn zero(&self, off: usize, len: usize) {
        let dst = self.ptr(off, len, 1);
        // SAFETY: the range is inside the mapping (checked by `ptr`).
        unsafe { std::ptr::write_bytes(dst, 0, len) }
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
mod tests {
    use super::*;

    #[test]
    fn atomics_and_bytes_round_trip() {
        let region = Region::anonymous(Region::MIN_LEN).unwrap();
        region.store_u32(64, 7, Ordering::Relaxed);
        assert_eq!(region.fetch_add_u32(64, 1, Ordering::Relaxed), 7);
        assert_eq!(region.load_u32(64, Ordering::Relaxed), 8);
        assert_eq!(region.cas_u64(128, 0, 9, Ordering::AcqRel), Ok(0));
        assert_eq!(region.cas_u64(128, 0, 10, Ordering::AcqRel), Err(9));
        region.write_bytes(1000, b"hello");
        let mut out = [0u8; 5];
        region.read_bytes(1000, &mut out);
        assert_eq!(&out, b"hello");
    }

    #[test]
    #[should_panic(expected = "outside")]
    fn out_of_bounds_is_caught() {
        let region = Region::anonymous(Region::MIN_LEN).unwrap();
        region.load_u32(Region::MIN_LEN - 2, Ordering::Relaxed);
    }

    #[test]
    fn file_backed_regions_are_shared_between_mappings() {
        let path = std::env::temp_dir().join(format!("vni-region-test-{}", std::process::id()));
        let a = Region::create(&path, Region::MIN_LEN).unwrap();
        let b = Region::open(&path).unwrap();
        a.store_u64(8, 0xfeed, Ordering::Release);
        assert_eq!(b.load_u64(8, Ordering::Acquire), 0xfeed);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn tiny_mappings_are_refused() {
        assert!(matches!(
            Region::anonymous(4096),
            Err(RegionError::Unusable { .. })
        ));
    }
}
