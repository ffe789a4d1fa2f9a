//! What the host offers a lab: QEMU, an accelerator that really works,
//! shared memory. Probed once ([`HostFacts::probe`]); decisions about the
//! facts are pure functions, tested without the host.
//!
//! The accelerator needs care: on some hosts `/dev/kvm` exists and answers
//! KVM ioctls, but the CPU exposes no vmx/svm (a paravirtual or nested KVM
//! flavour), and a stock guest kernel hangs right after "Booting from ROM".
//! `auto` therefore takes KVM only when the device opens *and* the CPU shows
//! hardware virtualisation, and says why when it falls back to TCG.

use std::path::Path;
use std::process::Command;

use crate::topology::Accel;

/// Errors about the host.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostError {
    /// `accel: kvm` was asked for where KVM cannot run a guest.
    #[error("KVM was requested but cannot be used: {0}")]
    NoKvm(String),
    /// Host packages are missing and cannot be installed here.
    #[error("Host packages missing: {0}. Install them with `vni-lab doctor --install` as root (apt-get)")]
    Missing(String),
    /// apt-get failed.
    #[error("`{0}` failed")]
    Apt(String),
}

/// What `/dev/kvm` looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum KvmDevice {
    /// No such device.
    Missing,
    /// It exists but this user cannot open it.
    NoAccess,
    /// It opens read-write.
    Opens,
}

/// Facts about this host that a lab depends on.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HostFacts {
    /// `/dev/kvm`.
    pub kvm_device: KvmDevice,
    /// The CPU flags show vmx or svm.
    pub cpu_virtualization: bool,
    /// We run under a hypervisor (CPU flag `hypervisor`).
    pub nested: bool,
    /// `qemu-system-x86_64 --version`, first line.
    pub qemu: Option<String>,
    /// Free bytes in /dev/shm, where lab regions live.
    pub shm_free: Option<u64>,
    /// Running as root.
    pub root: bool,
}

/// The accelerator a lab will use, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AccelDecision {
    /// `kvm` or `tcg`, as QEMU's `-accel` takes it.
    pub accel: &'static str,
    /// Why, in words.
    pub reason: String,
}

fn cpu_flags(cpuinfo: &str) -> (bool, bool) {
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or("");
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    (has("vmx") || has("svm"), has("hypervisor"))
}

impl HostFacts {
    /// Looks at this host.
    pub fn probe() -> Self {
        let kvm_device = if !Path::new("/dev/kvm").exists() {
            KvmDevice::Missing
        } else if std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
        {
            KvmDevice::Opens
        } else {
            KvmDevice::NoAccess
        };
        let (cpu_virtualization, nested) =
            cpu_flags(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default());
        let qemu = Command::new("qemu-system-x86_64")
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(str::to_owned)
            });
        HostFacts {
            kvm_device,
            cpu_virtualization,
            nested,
            qemu,
            shm_free: free_bytes(Path::new("/dev/shm")),
            // SAFETY: geteuid has no preconditions and cannot fail.
            root: unsafe { libc::geteuid() } == 0,
        }
    }

    /// The accelerator for `requested`, or why the request cannot be met.
    pub fn accel(&self, requested: Accel) -> Result<AccelDecision, HostError> {
        let kvm_problem = match (self.kvm_device, self.cpu_virtualization) {
            (KvmDevice::Opens, true) => None,
            (KvmDevice::Missing, _) => Some("/dev/kvm does not exist".to_owned()),
            (KvmDevice::NoAccess, _) => Some("/dev/kvm exists but cannot be opened (add the user to group kvm)".to_owned()),
            (KvmDevice::Opens, false) => Some(
                "/dev/kvm opens but the CPU shows no vmx/svm flag: a paravirtual or nested KVM that hangs stock guest kernels"
                    .to_owned(),
            ),
        };
        match (requested, kvm_problem) {
            (Accel::Tcg, _) => Ok(AccelDecision {
                accel: "tcg",
                reason: "requested in the lab file".into(),
            }),
            (Accel::Kvm, None) | (Accel::Auto, None) => Ok(AccelDecision {
                accel: "kvm",
                reason: "/dev/kvm opens and the CPU has hardware virtualisation".into(),
            }),
            (Accel::Kvm, Some(problem)) => Err(HostError::NoKvm(problem)),
            (Accel::Auto, Some(problem)) => Ok(AccelDecision {
                accel: "tcg",
                reason: problem,
            }),
        }
    }
}

/// A host command and the Debian package that provides it.
pub type Tool = (&'static str, &'static str);

/// What running guests needs.
pub const QEMU_TOOL: Tool = ("qemu-system-x86_64", "qemu-system-x86");

/// What building the guest image needs.
pub const IMAGE_TOOLS: &[Tool] = &[
    ("debootstrap", "debootstrap"),
    ("cpio", "cpio"),
    ("depmod", "kmod"),
    ("modprobe", "kmod"),
    ("dpkg-deb", "dpkg"),
    ("gzip", "gzip"),
];

/// Every host tool labs need.
pub fn host_tools() -> impl Iterator<Item = Tool> {
    std::iter::once(QEMU_TOOL).chain(IMAGE_TOOLS.iter().copied())
}

/// True when `tool` is an executable file in a `PATH` directory.
pub fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// The host tools among `tools` that are not installed.
pub fn missing(tools: impl Iterator<Item = Tool>) -> Vec<Tool> {
    tools.filter(|(tool, _)| !on_path(tool)).collect()
}

/// Installs the Debian packages of `tools` with apt-get (`apt-get update`
/// first: a fresh machine has no package lists). Needs root.
pub fn install(tools: &[Tool], say: &mut dyn FnMut(&str)) -> Result<(), HostError> {
    let mut packages: Vec<&str> = tools.iter().map(|t| t.1).collect();
    packages.sort_unstable();
    packages.dedup();
    if packages.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(HostError::Missing(packages.join(" ")));
    }
    say(&format!("installing host packages: {}", packages.join(" ")));
    let ok = |cmd: &mut Command| {
        cmd.stdin(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !ok(Command::new("apt-get").args(["update", "-q"])) {
        return Err(HostError::Apt("apt-get update".into()));
    }
    let mut apt = Command::new("apt-get");
    apt.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&packages);
    if !ok(&mut apt) {
        return Err(HostError::Apt(format!(
            "apt-get install {}",
            packages.join(" ")
        )));
    }
    Ok(())
}

fn free_bytes(path: &Path) -> Option<u64> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a NUL-terminated string and `stat` points to
    // writable memory the size of `statvfs`, which statvfs fills on success.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it initialised `stat`.
    let stat = unsafe { stat.assume_init() };
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(kvm_device: KvmDevice, cpu_virtualization: bool) -> HostFacts {
        HostFacts {
            kvm_device,
            cpu_virtualization,
            nested: true,
            qemu: None,
            shm_free: None,
            root: true,
        }
    }

    #[test]
    fn auto_takes_kvm_only_where_it_really_works() {
        let real = facts(KvmDevice::Opens, true);
        assert_eq!(real.accel(Accel::Auto).unwrap().accel, "kvm");
        assert_eq!(real.accel(Accel::Tcg).unwrap().accel, "tcg");

        // The case of this project's machines: the device opens, no vmx/svm.
        let paravirtual = facts(KvmDevice::Opens, false);
        let d = paravirtual.accel(Accel::Auto).unwrap();
        assert_eq!(d.accel, "tcg");
        assert!(d.reason.contains("no vmx/svm"), "{}", d.reason);
        assert!(
            matches!(paravirtual.accel(Accel::Kvm), Err(HostError::NoKvm(r)) if r.contains("vmx/svm"))
        );

        for device in [KvmDevice::Missing, KvmDevice::NoAccess] {
            assert_eq!(facts(device, true).accel(Accel::Auto).unwrap().accel, "tcg");
            assert!(facts(device, true).accel(Accel::Kvm).is_err());
        }
    }

    #[test]
    fn cpu_flags_are_read_from_the_flags_line() {
        assert_eq!(
            cpu_flags("processor: 0\nflags\t\t: fpu vme vmx sse\n"),
            (true, false)
        );
        assert_eq!(cpu_flags("flags\t\t: fpu svm hypervisor\n"), (true, true));
        assert_eq!(cpu_flags("flags\t\t: fpu hypervisor vmxx\n"), (false, true));
        assert_eq!(cpu_flags(""), (false, false));
    }

    #[test]
    fn path_lookup_finds_real_tools_only() {
        assert!(on_path("sh"));
        assert!(!on_path("no-such-tool-vni-lab"));
    }

    #[test]
    fn probing_this_host_is_consistent() {
        let host = HostFacts::probe();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        assert_eq!(host.cpu_virtualization, cpu_flags(&cpuinfo).0);
        let decision = host.accel(Accel::Auto).unwrap();
        let kvm_usable = host.kvm_device == KvmDevice::Opens && host.cpu_virtualization;
        assert_eq!(
            decision.accel == "kvm",
            kvm_usable,
            "{decision:?} for {host:?}"
        );
        assert!(host.shm_free.is_some(), "/dev/shm should be there");
    }
}
