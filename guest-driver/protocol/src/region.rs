//! A mapping of the shared region: a /dev/shm file, a memfd, a PCI BAR's
//! resource file, or anonymous memory for tests.
//!
//! The access rules live with the access code, in `vni_core::region`: a
//! [`Region`] owns the mapping and dereferences to the core's
//! [`vni_core::Region`], which hands out atomics and copies only.

use std::fs::File;
use std::ops::Deref;
use std::path::Path;

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
    #[error(transparent)]
    Unusable(#[from] vni_core::RegionError),
}

/// A mapping of the shared region; dereferences to the core's access type.
#[derive(Debug)]
pub struct Region {
    /// Declared first so that it is dropped before the mapping it points to.
    access: vni_core::Region,
    /// Keeps the mapping alive; never dereferenced directly.
    _map: MmapRaw,
}

impl Deref for Region {
    type Target = vni_core::Region;

    fn deref(&self) -> &vni_core::Region {
        &self.access
    }
}

impl Region {
    /// Smallest region the protocol accepts.
    pub const MIN_LEN: usize = vni_core::Region::MIN_LEN;

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
        let len = usize::try_from(len).map_err(|_| {
            RegionError::Unusable(vni_core::RegionError::Unusable {
                len: usize::MAX,
                reason: "larger than the address space",
            })
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
        // SAFETY: `map` is a shared, writable mapping of `map.len()` bytes
        // that lives in `_map` as long as `access` (fields drop in order,
        // `access` first), and this crate makes no reference into it.
        let access = unsafe { vni_core::Region::from_raw_parts(map.as_mut_ptr(), map.len()) }?;
        Ok(Self { access, _map: map })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::Ordering;

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
            Err(RegionError::Unusable(_))
        ));
    }
}
