//! The ivshmem device of a lab guest, reached from userspace through VFIO.
//!
//! QEMU's `ivshmem-doorbell` is PCI device 1af4:1110 with three BARs: BAR0
//! holds four 32-bit registers (interrupt mask, interrupt status, the
//! device's own peer id `IVPosition`, and `Doorbell`), BAR1 the MSI-X
//! table, BAR2 the shared memory. A guest rings peer P's vector V by
//! writing `P << 16 | V` to `Doorbell`; QEMU signals P's eventfd, and P's
//! QEMU raises MSI-X vector V in P's guest.
//!
//! Here the device is bound to `vfio-pci` (the guest runs with an emulated
//! IOMMU, `intel_iommu=on`), its registers are read and written through
//! the VFIO device file, BAR2 is mapped through it, and each MSI-X vector
//! is delivered to an eventfd (`VFIO_DEVICE_SET_IRQS`). rust-vmm's
//! `vfio-ioctls` does the VFIO container, group and device work.
//!
//! One step is easy to miss: the PCI command register needs the
//! bus-master bit. Without it, QEMU drops every MSI-X message silently (a
//! device that may not master the bus may not write MSI messages either),
//! and no doorbell ever arrives.

use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use vfio_bindings::bindings::vfio::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR2_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vni_protocol::Region;

/// PCI vendor of ivshmem (Red Hat, Inc.).
pub const VENDOR: u16 = 0x1af4;
/// PCI device id of ivshmem.
pub const DEVICE: u16 = 0x1110;

const REG_IV_POSITION: u64 = 8;
const REG_DOORBELL: u64 = 12;
const PCI_COMMAND: u64 = 4;
const PCI_COMMAND_MEMORY: u16 = 0x2;
const PCI_COMMAND_MASTER: u16 = 0x4;
const SYSFS_PCI: &str = "/sys/bus/pci";

/// Errors reaching the device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// No ivshmem device in this guest.
    #[error("No ivshmem device (PCI {VENDOR:04x}:{DEVICE:04x}) in this guest")]
    NotFound,
    /// A sysfs or module step failed.
    #[error("Cannot {what}")]
    Setup {
        /// What was being done.
        what: String,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A VFIO call failed.
    #[error("VFIO: cannot {what}: {message}")]
    Vfio {
        /// What was being done.
        what: &'static str,
        /// What vfio-ioctls said.
        message: String,
    },
    /// The device does not look like ivshmem-doorbell.
    #[error("The ivshmem device {0}")]
    Unexpected(String),
    /// BAR2 could not be mapped.
    #[error(transparent)]
    Map(#[from] vni_protocol::RegionError),
}

fn setup(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DeviceError {
    let what = what.into();
    move |source| DeviceError::Setup { what, source }
}

fn vfio(what: &'static str) -> impl FnOnce(vfio_ioctls::VfioError) -> DeviceError {
    move |e| DeviceError::Vfio {
        what,
        message: e.to_string(),
    }
}

/// Reads a sysfs hex attribute such as `vendor` (`0x1af4`).
fn hex_attr(path: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(path).ok()?;
    u16::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()
}

/// PCI capability id of MSI-X.
const CAP_MSIX: u8 = 0x11;

/// Whether the device whose configuration space is `config` has MSI-X:
/// its capability list walked from the pointer at 0x34 (at most 48 steps,
/// whatever the list says).
fn has_msix(config: &[u8]) -> bool {
    const STATUS_CAP_LIST: u8 = 0x10;
    if config
        .get(6)
        .is_none_or(|&status| status & STATUS_CAP_LIST == 0)
    {
        return false;
    }
    let mut at = config.get(0x34).copied().unwrap_or(0);
    for _ in 0..48 {
        if at < 0x40 {
            return false;
        }
        match (config.get(usize::from(at)), config.get(usize::from(at) + 1)) {
            (Some(&CAP_MSIX), _) => return true,
            (Some(_), Some(&next)) => at = next & !3,
            _ => return false,
        }
    }
    false
}

/// The sysfs directory of the ivshmem doorbell device: the first ivshmem
/// device with MSI-X (a lab in write-protected sections also has
/// `ivshmem-plain` devices, without it).
pub fn find() -> Result<PathBuf, DeviceError> {
    let devices = Path::new(SYSFS_PCI).join("devices");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&devices)
        .map_err(setup(format!("list {}", devices.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            hex_attr(&p.join("vendor")) == Some(VENDOR)
                && hex_attr(&p.join("device")) == Some(DEVICE)
                && std::fs::read(p.join("config")).is_ok_and(|c| has_msix(&c))
        })
        .collect();
    found.sort();
    found.into_iter().next().ok_or(DeviceError::NotFound)
}

/// The driver a PCI device is bound to, if any.
fn driver_of(sysfs: &Path) -> Option<String> {
    let link = std::fs::read_link(sysfs.join("driver")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

/// Binds the device at `sysfs` to vfio-pci (loading the module when
/// needed), unbinding whatever had it.
pub fn bind_vfio(sysfs: &Path) -> Result<(), DeviceError> {
    if driver_of(sysfs).as_deref() == Some("vfio-pci") {
        return Ok(());
    }
    let drivers = Path::new(SYSFS_PCI).join("drivers");
    if !drivers.join("vfio-pci").exists() {
        let status = Command::new("modprobe")
            .arg("vfio-pci")
            .status()
            .map_err(setup("run modprobe vfio-pci"))?;
        if !status.success() {
            return Err(DeviceError::Setup {
                what: "load vfio-pci".into(),
                source: std::io::Error::other(format!("modprobe vfio-pci: {status}")),
            });
        }
    }
    let bdf = sysfs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::fs::write(sysfs.join("driver_override"), "vfio-pci")
        .map_err(setup(format!("set driver_override of {bdf}")))?;
    if driver_of(sysfs).is_some() {
        std::fs::write(sysfs.join("driver/unbind"), &bdf)
            .map_err(setup(format!("unbind {bdf}")))?;
    }
    std::fs::write(Path::new(SYSFS_PCI).join("drivers_probe"), &bdf)
        .map_err(setup(format!("probe {bdf} with vfio-pci")))?;
    match driver_of(sysfs) {
        Some(d) if d == "vfio-pci" => Ok(()),
        other => Err(DeviceError::Unexpected(format!(
            "{bdf} is bound to {other:?} after binding it to vfio-pci"
        ))),
    }
}

/// The ivshmem device, owned through VFIO.
pub struct Ivshmem {
    bdf: String,
    // Declared before the container: the device must close first.
    device: VfioDevice,
    _container: Arc<VfioContainer>,
    vectors: Vec<EventFd>,
}

impl std::fmt::Debug for Ivshmem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ivshmem")
            .field("bdf", &self.bdf)
            .field("vectors", &self.vectors.len())
            .finish_non_exhaustive()
    }
}

impl Ivshmem {
    /// Finds the device, binds it to vfio-pci, opens it, lets it master the
    /// bus and routes its first `vectors` MSI-X vectors to eventfds.
    pub fn open(vectors: u32) -> Result<Self, DeviceError> {
        let sysfs = find()?;
        bind_vfio(&sysfs)?;
        let bdf = sysfs
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let container = Arc::new(VfioContainer::new(None).map_err(vfio("open the container"))?);
        let ops: Arc<dyn VfioOps> = container.clone();
        let device = VfioDevice::new(&sysfs, ops, false).map_err(vfio("open the device"))?;

        // Memory decoding and bus mastering (MSI-X needs the latter).
        let mut cmd = [0u8; 2];
        device.region_read(VFIO_PCI_CONFIG_REGION_INDEX, &mut cmd, PCI_COMMAND);
        let command = u16::from_le_bytes(cmd) | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER;
        device.region_write(
            VFIO_PCI_CONFIG_REGION_INDEX,
            &command.to_le_bytes(),
            PCI_COMMAND,
        );

        let available = device
            .get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX)
            .map_or(0, |irq| irq.count);
        if available < vectors {
            return Err(DeviceError::Unexpected(format!(
                "has {available} MSI-X vectors; the VNI needs {vectors} (QEMU: ivshmem-doorbell,vectors={vectors})"
            )));
        }
        let fds = (0..vectors)
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(setup("create an eventfd")))
            .collect::<Result<Vec<_>, _>>()?;
        device
            .enable_msix(fds.iter().collect())
            .map_err(vfio("route MSI-X to eventfds"))?;
        Ok(Ivshmem {
            bdf,
            device,
            _container: container,
            vectors: fds,
        })
    }

    /// The PCI address (e.g. `0000:00:02.0`).
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let mut buf = [0u8; 4];
        self.device
            .region_read(VFIO_PCI_BAR0_REGION_INDEX, &mut buf, offset);
        u32::from_le_bytes(buf)
    }

    /// This device's ivshmem peer id (`IVPosition`), as the server gave it.
    pub fn position(&self) -> Result<u16, DeviceError> {
        let raw = self.read_reg(REG_IV_POSITION);
        u16::try_from(raw).map_err(|_| {
            DeviceError::Unexpected(format!("reports peer id {raw:#x}, beyond 16 bits"))
        })
    }

    /// Rings `vector` of peer `peer`.
    pub fn ring(&self, peer: u16, vector: u16) {
        let value = (u32::from(peer) << 16) | u32::from(vector);
        self.device.region_write(
            VFIO_PCI_BAR0_REGION_INDEX,
            &value.to_le_bytes(),
            REG_DOORBELL,
        );
    }

    /// The eventfd of `vector`.
    pub fn vector(&self, vector: usize) -> Option<&EventFd> {
        self.vectors.get(vector)
    }

    /// Waits up to `timeout` for doorbells on `vector`; returns how many
    /// arrived (0 on timeout).
    pub fn wait(&self, vector: usize, timeout: Duration) -> Result<u64, DeviceError> {
        let fd = self
            .vector(vector)
            .ok_or_else(|| DeviceError::Unexpected(format!("has no vector {vector} routed")))?;
        let mut poll = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `poll` is one valid pollfd that outlives the call.
        let rc = unsafe { libc::poll(&mut poll, 1, millis) };
        if rc < 0 {
            return Err(DeviceError::Setup {
                what: "wait for a doorbell".into(),
                source: std::io::Error::last_os_error(),
            });
        }
        if rc == 0 {
            return Ok(0);
        }
        fd.read().map_err(setup("read a doorbell eventfd"))
    }

    /// Bytes of shared memory (BAR2).
    pub fn region_len(&self) -> u64 {
        self.device.get_region_size(VFIO_PCI_BAR2_REGION_INDEX)
    }

    /// Maps the shared memory (BAR2) through the VFIO device file.
    pub fn map_region(&self) -> Result<Region, DeviceError> {
        if self.device.get_region_flags(VFIO_PCI_BAR2_REGION_INDEX) & VFIO_REGION_INFO_FLAG_MMAP
            == 0
        {
            return Err(DeviceError::Unexpected(
                "BAR2 cannot be mapped through VFIO".into(),
            ));
        }
        let len = usize::try_from(self.region_len())
            .map_err(|_| DeviceError::Unexpected("BAR2 is larger than the address space".into()))?;
        let offset = self.device.get_region_offset(VFIO_PCI_BAR2_REGION_INDEX);
        // SAFETY: the device fd stays open for as long as `self.device`
        // lives, which outlasts this borrow (it is duplicated right away).
        let borrowed = unsafe { BorrowedFd::borrow_raw(self.device.as_raw_fd()) };
        let file = File::from(
            borrowed
                .try_clone_to_owned()
                .map_err(setup("duplicate the VFIO device fd"))?,
        );
        Ok(Region::map_file(
            &file,
            offset,
            len,
            &format!("ivshmem BAR2 of {}", self.bdf),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration space with the capabilities `caps` (id, offset),
    /// chained in that order.
    fn config(caps: &[(u8, u8)]) -> Vec<u8> {
        let mut c = vec![0u8; 256];
        if let Some(&(_, first)) = caps.first() {
            c[6] = 0x10;
            c[0x34] = first;
        }
        for (i, &(id, at)) in caps.iter().enumerate() {
            c[usize::from(at)] = id;
            c[usize::from(at) + 1] = caps.get(i + 1).map_or(0, |&(_, next)| next);
        }
        c
    }

    #[test]
    fn the_doorbell_device_is_the_one_with_msix() {
        assert!(has_msix(&config(&[(CAP_MSIX, 0x40)])));
        assert!(has_msix(&config(&[(0x09, 0x40), (CAP_MSIX, 0x50)])));
        // ivshmem-plain: no capabilities, or others only.
        assert!(!has_msix(&config(&[])));
        assert!(!has_msix(&config(&[(0x09, 0x40)])));
        // A list that loops, or points into the header, ends.
        let mut looping = config(&[(0x09, 0x40)]);
        looping[0x41] = 0x40;
        assert!(!has_msix(&looping));
        let mut short = config(&[(CAP_MSIX, 0x40)]);
        short.truncate(0x40);
        assert!(!has_msix(&short));
    }
}
