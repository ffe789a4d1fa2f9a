//! Configuration 1's write-protected sections on the host: a file per
//! node and the directory, created and sized before any QEMU starts (QEMU
//! 7.2 creates a missing `readonly=on` file read-write), each node's QEMU
//! mapping its own section read-write and every other one read-only, and
//! all of them removed when the lab goes down.
//!
//! A guest sees them as `ivshmem-plain` devices at fixed PCI slots
//! ([`vni_protocol::directory`]): the directory on the root bus, the
//! sections behind one `pci-bridge` per 32 nodes. The `ivshmem-doorbell`
//! device stays, for interrupts.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use vni_protocol::directory::{
    self, section_slot, BRIDGE_SLOT, DIRECTORY_SLOT, DIR_LEN, SECTIONS_PER_BRIDGE,
};
use vni_protocol::{NodeId, SectionGeometry, MAX_NODES};

use crate::topology::Topology;

/// A section file or the directory could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot {what} {}", path.display())]
pub struct SectionsError {
    /// What was being done.
    what: &'static str,
    /// The file.
    path: PathBuf,
    /// What the OS said.
    #[source]
    source: io::Error,
}

/// The sections of a lab whose region file is `shm`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sections {
    /// Their geometry, which the directory holds.
    pub geometry: SectionGeometry,
    /// The directory's file.
    pub directory: PathBuf,
    /// Node `n`'s section file, `files[n]`.
    pub files: Vec<PathBuf>,
}

/// The directory's file beside the region file `shm`.
fn directory_path(shm: &Path) -> PathBuf {
    suffixed(shm, "-dir")
}

/// Node `node`'s section file beside the region file `shm`.
fn section_path(shm: &Path, node: NodeId) -> PathBuf {
    suffixed(shm, &format!("-s{node}"))
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

impl Sections {
    /// The sections of a lab of `topology` run by `accel` (`kvm` or
    /// `tcg`) beside its region file `shm`: `None` for configuration 2 and
    /// for virtio-net labs.
    pub fn of_lab(topology: &Topology, accel: &str, shm: &Path) -> Option<Self> {
        let geometry = topology.sections_for(accel)?;
        Some(Sections::new(shm, geometry))
    }

    /// The sections of `geometry` beside the region file `shm`.
    pub fn new(shm: &Path, geometry: SectionGeometry) -> Self {
        Sections {
            geometry,
            directory: directory_path(shm),
            files: (0..geometry.nodes as usize)
                .map(|n| section_path(shm, n))
                .collect(),
        }
    }

    /// Creates every file (mode 0600; one a dead lab left is replaced) at
    /// its size, zeroed, and writes the directory.
    pub fn create(&self) -> Result<(), SectionsError> {
        let header = directory::encode(&self.geometry);
        let dir = create(&self.directory, DIR_LEN as u64)?;
        dir.write_all_at(&header, 0)
            .map_err(|source| SectionsError {
                what: "write the directory",
                path: self.directory.clone(),
                source,
            })?;
        for file in &self.files {
            create(file, self.geometry.section_len)?;
        }
        Ok(())
    }

    /// Removes the directory and every section file beside the region
    /// file `shm`; how many there were.
    pub fn remove(shm: &Path) -> usize {
        std::iter::once(directory_path(shm))
            .chain((0..MAX_NODES).map(|n| section_path(shm, n)))
            .filter(|path| std::fs::remove_file(path).is_ok())
            .count()
    }

    /// The QEMU arguments that give node `me` the directory and every
    /// section: read-only all but its own.
    pub fn qemu_args(&self, me: NodeId) -> Vec<String> {
        let mut args = Vec::new();
        let mut device = |object: String, device: String| {
            args.extend(["-object".into(), object, "-device".into(), device]);
        };
        device(
            format!(
                "memory-backend-file,id=vni-dir,mem-path={},size={DIR_LEN},share=on,readonly=on",
                self.directory.display()
            ),
            format!("ivshmem-plain,memdev=vni-dir,addr={DIRECTORY_SLOT:#x}"),
        );
        let bridges = self.files.len().div_ceil(SECTIONS_PER_BRIDGE);
        for b in 0..bridges {
            args.extend([
                "-device".into(),
                format!(
                    "pci-bridge,id=vni-bridge{b},chassis_nr={},addr={:#x}",
                    b + 1,
                    usize::from(BRIDGE_SLOT) + b
                ),
            ]);
        }
        for (node, file) in self.files.iter().enumerate() {
            let at = section_slot(node);
            let readonly = if node == me { "" } else { ",readonly=on" };
            args.extend([
                "-object".into(),
                format!(
                    "memory-backend-file,id=vni-s{node},mem-path={},size={},share=on{readonly}",
                    file.display(),
                    self.geometry.section_len
                ),
                "-device".into(),
                format!(
                    "ivshmem-plain,memdev=vni-s{node},bus=vni-bridge{},addr={:#x}",
                    at.bridge, at.slot
                ),
            ]);
        }
        args
    }
}

impl Sections {
    /// What is wrong with how the QEMU of node `me` maps the sections, as
    /// its `/proc/PID/maps` text `maps` says: each must be mapped shared,
    /// its own read-write and every other read-only. Empty when nothing.
    pub fn mapping_problems(&self, me: NodeId, maps: &str) -> Vec<String> {
        let mut problems = Vec::new();
        for (node, file) in self.files.iter().enumerate() {
            let file = file.to_string_lossy();
            let perms: Vec<&str> = maps
                .lines()
                .filter_map(|line| {
                    let mut fields = line.split_whitespace();
                    let perms = fields.nth(1)?;
                    (fields.nth(3)? == file).then_some(perms)
                })
                .collect();
            let want = if node == me { "rw-s" } else { "r--s" };
            if perms.is_empty() {
                problems.push(format!("node {me} does not map node {node}'s section"));
            } else if let Some(bad) = perms.iter().find(|&&p| p != want) {
                problems.push(format!(
                    "node {me} maps node {node}'s section {bad}, not {want}"
                ));
            }
        }
        problems
    }
}

/// Creates `path` (0600, replacing a dead lab's) at `len` bytes.
fn create(path: &Path, len: u64) -> Result<File, SectionsError> {
    fresh_file(path, len).map_err(|(step, source)| SectionsError {
        what: match step {
            FileStep::Create => "create",
            FileStep::Size => "size",
        },
        path: path.to_owned(),
        source,
    })
}

/// The step of [`fresh_file`] that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileStep {
    /// Creating the file.
    Create,
    /// Giving it its size.
    Size,
}

/// Creates the shared-memory file `path` for this user only (mode 0600)
/// at `len` bytes, zeroed. A file already there is a dead lab's (the name
/// belongs to a lab directory whose lock the caller holds) and is
/// replaced. On failure: which step, and why.
pub fn fresh_file(path: &Path, len: u64) -> Result<File, (FileStep, io::Error)> {
    let _ = std::fs::remove_file(path);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| (FileStep::Create, e))?;
    file.set_len(len).map_err(|e| (FileStep::Size, e))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own, removed when dropped.
    struct Tmp(PathBuf);

    impl Tmp {
        fn new(tag: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("vni-sections-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Tmp(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn sections(dir: &Path, nodes: u32, total: usize) -> Sections {
        let geometry = SectionGeometry::fit(total, nodes, 2048, 1000).unwrap();
        Sections::new(&dir.join("shm"), geometry)
    }

    /// The `-object` arguments, one per backend.
    fn objects(args: &[String]) -> Vec<&str> {
        args.windows(2)
            .filter(|w| w[0] == "-object")
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn a_node_maps_its_own_section_writable_and_every_other_read_only() {
        let s = sections(Path::new("/dev/shm/lab"), 3, 64 << 20);
        for me in 0..3 {
            let args = s.qemu_args(me);
            let objects = objects(&args);
            assert_eq!(objects.len(), 4, "{objects:?}");
            assert!(objects[0].contains("mem-path=/dev/shm/lab/shm-dir,"));
            assert!(objects[0].ends_with(",readonly=on"), "{}", objects[0]);
            for (node, object) in objects[1..].iter().enumerate() {
                assert!(object.contains(&format!("mem-path=/dev/shm/lab/shm-s{node},")));
                assert!(object.contains(",size=16777216,"), "{object}");
                assert_eq!(object.contains("readonly=on"), node != me, "{me}: {object}");
            }
        }
    }

    #[test]
    fn sixty_four_sections_sit_behind_two_bridges_at_fixed_slots() {
        let s = sections(Path::new("/dev/shm/lab"), 64, 1 << 30);
        let args = s.qemu_args(5);
        let devices: Vec<&str> = args
            .windows(2)
            .filter(|w| w[0] == "-device")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(devices.len(), 1 + 2 + 64);
        assert_eq!(devices[0], "ivshmem-plain,memdev=vni-dir,addr=0x11");
        assert_eq!(
            devices[1],
            "pci-bridge,id=vni-bridge0,chassis_nr=1,addr=0x12"
        );
        assert_eq!(
            devices[2],
            "pci-bridge,id=vni-bridge1,chassis_nr=2,addr=0x13"
        );
        assert_eq!(
            devices[3],
            "ivshmem-plain,memdev=vni-s0,bus=vni-bridge0,addr=0x0"
        );
        assert_eq!(
            devices[66],
            "ivshmem-plain,memdev=vni-s63,bus=vni-bridge1,addr=0x1f"
        );
        assert_eq!(objects(&args).len(), 65);
    }

    #[test]
    fn a_qemu_must_map_its_own_section_writable_and_the_others_read_only() {
        let s = sections(Path::new("/dev/shm/lab"), 3, 64 << 20);
        let line = |perms: &str, node: usize| {
            format!("7f0000000000-7f0001000000 {perms} 00000000 00:1a 1234    /dev/shm/lab/shm-s{node}\n")
        };
        let good = [line("r--s", 0), line("rw-s", 1), line("r--s", 2)].concat();
        assert_eq!(s.mapping_problems(1, &good), Vec::<String>::new());
        let writable_peer = [line("rw-s", 0), line("rw-s", 1), line("r--s", 2)].concat();
        assert_eq!(
            s.mapping_problems(1, &writable_peer),
            ["node 1 maps node 0's section rw-s, not r--s"]
        );
        let missing = [line("r--s", 0), line("rw-s", 1)].concat();
        assert_eq!(
            s.mapping_problems(1, &missing),
            ["node 1 does not map node 2's section"]
        );
        let private = [line("r--s", 0), line("rw-p", 1), line("r--s", 2)].concat();
        assert_eq!(s.mapping_problems(1, &private).len(), 1);
    }

    #[test]
    fn files_are_made_sized_and_private_with_the_directory_and_removed_after() {
        use std::os::unix::fs::MetadataExt;
        let dir = Tmp::new("files");
        let shm = dir.path().join("shm");
        let s = sections(dir.path(), 2, 1 << 20);
        std::fs::write(s.files[1].as_path(), b"a dead lab's").unwrap();
        s.create().unwrap();
        for file in &s.files {
            let meta = std::fs::metadata(file).unwrap();
            assert_eq!(meta.len(), s.geometry.section_len);
            assert_eq!(meta.mode() & 0o777, 0o600);
        }
        let bytes = std::fs::read(&s.directory).unwrap();
        assert_eq!(bytes.len(), DIR_LEN);
        let header: [u8; directory::DIR_HEADER_LEN] =
            bytes[..directory::DIR_HEADER_LEN].try_into().unwrap();
        assert_eq!(directory::parse(&header), Ok(s.geometry));
        assert_eq!(Sections::remove(&shm), 3);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(Sections::remove(&shm), 0);
    }
}
