//! Everything a lab needs before it boots, in the order `up` needs it:
//! the lab's name; a kernel of one's own checked for what the lab needs
//! (and its tree, for the kernel driver); the host's QEMU (installed when
//! missing, as root) and accelerator; the guest image, the VNI kernel
//! module and perf (built when not cached); the guest binaries; then a
//! new lab directory holding the lab's own copies of the kernel and
//! initramfs and the [`Plan`] the supervisor follows.
//!
//! What goes wrong is a [`PrepareError`]; [`PrepareError::is_refusal`]
//! tells the lab the user asked for (which cannot run here as asked) from
//! vni-lab failing to get what it needs. Nothing is left behind on
//! failure: the lab directory is made last, and removed again when
//! filling it fails.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::guest_bin::{self, GuestBinError};
use crate::host::{self, AccelDecision, HostError, HostFacts, QEMU_TOOL};
use crate::image::{self, ImageError, Manifest};
use crate::kmod::{self, KmodError};
use crate::lab::{self, Cleaned, LabDir, LabError, LabFile, LabLock, Plan, Reporter};
use crate::own_kernel::{self, OwnKernelError};
use crate::qemu;
use crate::topology::{self, Driver, Kernel, Topology};

/// Why a lab could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The lab's name is not allowed.
    #[error("Lab name {0}")]
    Name(String),
    /// A kernel of one's own lacks what the lab needs, or cannot be read.
    #[error(transparent)]
    OwnKernel(OwnKernelError),
    /// A pinned CPU that this host does not have.
    #[error("Node {node}: host_cpus names CPU {cpu}, but this host has CPUs 0-{last} only")]
    HostCpus {
        /// The node.
        node: String,
        /// The CPU it names.
        cpu: u32,
        /// The host's last CPU.
        last: u32,
    },
    /// QEMU, the image's tools or the accelerator.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The guest image.
    #[error("Cannot get the guest image")]
    Image(#[source] ImageError),
    /// The kernel's tree (one's own, or the build root) or the module.
    #[error("Cannot build the VNI kernel module")]
    Module(#[source] KmodError),
    /// The guest binaries.
    #[error(transparent)]
    GuestBin(#[from] GuestBinError),
    /// The lab directory: taken by a running lab, or not writable.
    #[error(transparent)]
    Lab(#[from] LabError),
    /// Filling the lab directory.
    #[error("Cannot prepare the lab directory {}", .dir.display())]
    Fill {
        /// The lab directory (removed again).
        dir: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
}

impl PrepareError {
    /// The kernel the lab names cannot run it (it lacks options, or its
    /// tree is not built or was built by another rustc): a check of the
    /// kernel that failed, exit status 1 (docs/src/kernel-ci.md#exit-status).
    /// Everything else, bad input included (a name, a CPU the host lacks,
    /// a lab of that name already up), is vni-lab unable to do what was
    /// asked, exit status 2. Either way nothing was started.
    pub fn is_refusal(&self) -> bool {
        match self {
            PrepareError::OwnKernel(e) => matches!(
                e,
                OwnKernelError::Missing { .. } | OwnKernelError::NoTree { .. }
            ),
            PrepareError::Module(e) => {
                matches!(e, KmodError::Rustc { .. } | KmodError::NotBuilt { .. })
            }
            _ => false,
        }
    }
}

/// A lab ready to boot: its directory (holding the plan), its lock, and
/// how it will run.
#[derive(Debug)]
pub struct Prepared {
    /// The lab directory.
    pub lab: LabDir,
    /// Its lock, to hand to the supervisor.
    pub lock: LabLock,
    /// The lab.
    pub topology: Topology,
    /// KVM or TCG, and why.
    pub accel: AccelDecision,
}

/// Prepares lab `name` from `file`: see the module docs. `keep_logs`
/// is where the supervisor copies consoles and logs at teardown.
pub fn prepare(
    file: &LabFile,
    name: &str,
    keep_logs: Option<&Path>,
    reporter: &mut dyn Reporter,
) -> Result<Prepared, PrepareError> {
    topology::check_name(name).map_err(PrepareError::Name)?;
    let topology = &file.topology;
    // A kernel of one's own: refused now for what it lacks, not later
    // with a boot timeout.
    let (own_tree, own_release) = match own_kernel::check(topology) {
        Ok(None) => (None, None),
        Ok(Some(checked)) => {
            let release = checked
                .release
                .as_deref()
                .unwrap_or("(release not in its image)");
            reporter.note(&format!(
                "kernel {release}: checked against {}",
                checked.source
            ));
            if !checked.unchecked.is_empty() {
                reporter.note(&format!(
                    "kernel {release}: only its .config could tell about {} (not checked)",
                    checked.unchecked.join(", ")
                ));
            }
            (checked.tree, checked.release)
        }
        Err(e) => return Err(PrepareError::OwnKernel(e)),
    };
    // A tree of one's own to build the kernel driver against: built, and
    // by the rustc here.
    let own_tree = own_tree
        .as_deref()
        .map(kmod::OwnTree::open)
        .transpose()
        .map_err(PrepareError::Module)?;

    // The host: QEMU (installed when missing and we are root), an
    // accelerator, the CPUs nodes are pinned to.
    host::install(&host::missing(std::iter::once(QEMU_TOOL)), &mut |s| {
        reporter.note(s)
    })?;
    let accel = HostFacts::probe().accel(topology.accel)?;
    check_host_cpus(topology)?;

    // The guest image, built when missing.
    let needs_built_image = topology.image.is_none() || !matches!(topology.kernel, Kernel::Path(_));
    let built = if needs_built_image {
        Some(guest_image(topology.kernel.suite(), reporter)?)
    } else {
        None
    };
    // The kernel module, for the nodes that run it, built against the
    // kernel's tree: a tree of one's own (the check above found it), or
    // the build root of the image's kernel (validation made sure it is
    // Debian's Rust-enabled one), with perf built from the same source.
    let (kernel_module, tools) = match (&own_tree, &built) {
        _ if !topology.uses(Driver::Kernel) => (None, Vec::new()),
        (Some(tree), _) => (Some(own_tree_module(tree, reporter)?), Vec::new()),
        (None, Some(image)) => {
            let (module, perf) = kernel_module(&image.manifest, reporter)?;
            (Some(module), perf.into_iter().collect())
        }
        (None, None) => (None, Vec::new()),
    };
    let (kernel, release) = match &topology.kernel {
        // (The release its boot header says, as `uname -r` will.)
        Kernel::Path(path) => (
            path.clone(),
            own_release.unwrap_or_else(|| "custom".to_owned()),
        ),
        // (Debian's kernels always come with the built image.)
        _ => built
            .as_ref()
            .map(|b| (b.kernel.clone(), b.manifest.kernel_release.clone()))
            .unwrap_or_default(),
    };
    let base_initrd = topology
        .image
        .clone()
        .or_else(|| built.map(|b| b.initrd))
        .unwrap_or_default();
    let guest_bins = guest_bin::locate(&mut |s| reporter.step(s))?;

    // Lab files are for this user only.
    let _umask = Umask::set(0o077);
    let lab = LabDir::new(&lab::run_dir(), name);
    let mut cleaned: Option<Cleaned> = None;
    let lock = lab.create(&mut cleaned)?;
    if let Some(cleaned) = cleaned {
        reporter.note(&format!(
            "cleaned up lab {name} left over by a killed vni-lab ({cleaned})"
        ));
    }
    // The lab runs from its own copies: a rebuilt image or kernel never
    // changes a running lab (nor a node restarted in it).
    let fill = || -> std::io::Result<()> {
        let lab_kernel = lab.dir.join("vmlinuz");
        // Not fs::copy: it would carry the source's mode past the umask.
        std::io::copy(&mut File::open(&kernel)?, &mut File::create(&lab_kernel)?)?;
        let lab_initrd = lab.dir.join("initrd");
        guest_bin::overlay_initrd(
            &base_initrd,
            &guest_bins,
            topology.modules.as_deref(),
            kernel_module.as_deref(),
            &tools,
            &lab_initrd,
        )
        .map_err(std::io::Error::other)?;
        let plan = Plan {
            name: name.to_owned(),
            topology_path: file.path.clone(),
            topology_text: file.text.clone(),
            accel: accel.accel.to_owned(),
            kernel: lab_kernel,
            initrd: lab_initrd,
            kernel_release: release.clone(),
            sandbox: qemu::supports_sandbox(),
            shm: lab.default_shm(),
            keep_logs: keep_logs.map(Path::to_owned),
        };
        lab.write_json(&lab.plan_path(), &plan)
            .map_err(std::io::Error::other)
    };
    if let Err(source) = fill() {
        drop(lock);
        let _ = lab.clean_leftover();
        return Err(PrepareError::Fill {
            dir: lab.dir.clone(),
            source,
        });
    }
    Ok(Prepared {
        lab,
        lock,
        topology: topology.clone(),
        accel,
    })
}

/// The guest image of `suite`, built when missing (its tools installed
/// first when missing, as root).
fn guest_image(suite: &str, reporter: &mut dyn Reporter) -> Result<image::Image, PrepareError> {
    let build = |reporter: &mut dyn Reporter| {
        image::ensure(suite, &image::cache_dir(), false, &mut |s| {
            reporter.step(&format!("guest image: {s}"))
        })
    };
    match build(reporter) {
        Err(ImageError::MissingTool { .. }) => {
            let lacking = host::missing(host::IMAGE_TOOLS.iter().copied());
            host::install(&lacking, &mut |s| reporter.note(s))?;
            build(reporter)
        }
        built => built,
    }
    .map_err(PrepareError::Image)
}

/// The VNI kernel module for the image's kernel: its build root prepared
/// and the module built when they are not cached. With it, the tree's
/// perf, when the tree has one (trees built before perf joined the
/// recipe have none; a new recipe builds a new tree).
fn kernel_module(
    manifest: &Manifest,
    reporter: &mut dyn Reporter,
) -> Result<(PathBuf, Option<PathBuf>), PrepareError> {
    let cache = image::cache_dir();
    let mut step = |s: &str| reporter.step(&format!("kernel module: {s}"));
    let tree = kmod::ensure_tree(manifest, &cache, &mut step).map_err(PrepareError::Module)?;
    let checkout = guest_bin::module_source()
        .ok_or(KmodError::NoSource)
        .map_err(PrepareError::Module)?;
    let module =
        kmod::ensure_module(&tree, &checkout, &cache, &mut step).map_err(PrepareError::Module)?;
    let perf = tree.perf();
    Ok((module, perf.is_file().then_some(perf)))
}

/// The VNI kernel module built against a kernel tree of one's own.
fn own_tree_module(
    tree: &kmod::OwnTree,
    reporter: &mut dyn Reporter,
) -> Result<PathBuf, PrepareError> {
    let checkout = guest_bin::module_source()
        .ok_or(KmodError::NoSource)
        .map_err(PrepareError::Module)?;
    let mut step = |s: &str| reporter.step(&format!("kernel module: {s}"));
    kmod::ensure_own_module(tree, &checkout, &image::cache_dir(), &mut step)
        .map_err(PrepareError::Module)
}

/// Checks that pinned CPUs exist on this host.
fn check_host_cpus(topology: &Topology) -> Result<(), PrepareError> {
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as u32;
    for node in &topology.nodes {
        if let Some(&cpu) = node.host_cpus.iter().find(|&&c| c >= online) {
            return Err(PrepareError::HostCpus {
                node: node.name.clone(),
                cpu,
                last: online - 1,
            });
        }
    }
    Ok(())
}

/// The process's file creation mask, set while the lab directory is
/// filled and put back when dropped.
struct Umask(libc::mode_t);

impl Umask {
    fn set(mask: libc::mode_t) -> Umask {
        // SAFETY: umask only changes this process's file creation mask.
        Umask(unsafe { libc::umask(mask) })
    }
}

impl Drop for Umask {
    fn drop(&mut self) {
        // SAFETY: as in `set`.
        unsafe { libc::umask(self.0) };
    }
}
