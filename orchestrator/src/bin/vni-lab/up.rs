//! `up`, `down` and the hidden `supervise`: starting and stopping labs.

use std::fs::File;
use std::io::IsTerminal;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::AsyncBufReadExt;
use vni_lab::host::{self, HostFacts, QEMU_TOOL};
use vni_lab::image;
use vni_lab::kmod;
use vni_lab::lab::{self, LabDir, LabLock, Plan};
use vni_lab::own_kernel::{self, KernelFlags, OwnKernelError};
use vni_lab::qemu;
use vni_lab::supervisor::{self, Event};
use vni_lab::topology::{self, Driver, Kernel, Topology};

use crate::Progress;

/// The fd the lab lock is handed to the supervisor on.
const LOCK_FD: i32 = 3;
/// How long `down` waits for a supervisor to tear its lab down.
const DOWN_TIMEOUT: Duration = Duration::from_secs(30);

pub fn up(
    file: &Path,
    detach: bool,
    name: Option<String>,
    quiet: bool,
    keep_logs: Option<PathBuf>,
    kernel_flags: &KernelFlags,
) -> anyhow::Result<ExitCode> {
    let keep_logs = keep_logs
        .map(|p| std::path::absolute(&p).with_context(|| format!("--keep-logs {}", p.display())))
        .transpose()?;
    let mut progress = Progress::new(quiet);
    let Some((topology_text, topology)) =
        crate::test::load_lab_with(file, kernel_flags, &mut |s| progress.step(s), "start")?
    else {
        eprintln!("vni-lab: nothing was started");
        return Ok(ExitCode::FAILURE);
    };
    let name = name.unwrap_or_else(|| topology.name.clone());
    if let Err(allowed) = topology::check_name(&name) {
        bail!("--name {name:?}: {allowed}");
    }
    // A kernel of one's own: refused now for what it lacks, not later
    // with a boot timeout.
    let (mut own_tree, mut own_release) = (None, None);
    match own_kernel::check(&topology) {
        Ok(None) => {}
        Ok(Some(checked)) => {
            own_tree = checked.tree.clone();
            own_release = checked.release.clone();
            let release = checked
                .release
                .as_deref()
                .unwrap_or("(release not in its image)");
            progress.note(&format!(
                "kernel {release}: checked against {}",
                checked.source
            ));
            if !checked.unchecked.is_empty() {
                progress.note(&format!(
                    "kernel {release}: only its .config could tell about {} (not checked)",
                    checked.unchecked.join(", ")
                ));
            }
        }
        Err(e @ (OwnKernelError::Missing { .. } | OwnKernelError::NoTree { .. })) => {
            eprintln!("vni-lab: {e}");
            eprintln!("vni-lab: nothing was started");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e).context("cannot check the kernel"),
    }

    // A tree of one's own to build the kernel driver against: built, and
    // by the rustc here.
    let own_tree = match own_tree.as_deref().map(kmod::OwnTree::open).transpose() {
        Ok(tree) => tree,
        Err(e @ (kmod::KmodError::Rustc { .. } | kmod::KmodError::NotBuilt { .. })) => {
            eprintln!("vni-lab: {e}");
            eprintln!("vni-lab: nothing was started");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e).context("cannot check the kernel tree"),
    };

    // The host: QEMU (installed when missing and we are root), an
    // accelerator, the CPUs nodes are pinned to.
    let lacking = host::missing(std::iter::once(QEMU_TOOL));
    host::install(&lacking, &mut |s| progress.note(s))?;
    let facts = HostFacts::probe();
    let accel = facts.accel(topology.accel)?;
    check_host_cpus(&topology)?;

    // The guest image, built when missing.
    let suite = topology.kernel.suite();
    let mut manifest = None;
    let needs_built_image = topology.image.is_none() || !matches!(topology.kernel, Kernel::Path(_));
    let (kernel, initrd, release) = if needs_built_image {
        let build = |progress: &mut Progress| {
            image::ensure(suite, &image::cache_dir(), false, &mut |s| {
                progress.step(&format!("guest image: {s}"))
            })
        };
        let built = match build(&mut progress) {
            Err(image::ImageError::MissingTool { .. }) => {
                let lacking = host::missing(host::IMAGE_TOOLS.iter().copied());
                host::install(&lacking, &mut |s| progress.note(s))?;
                build(&mut progress)
            }
            built => built,
        }
        .context("cannot get the guest image")?;
        manifest = Some(built.manifest.clone());
        (built.kernel, built.initrd, built.manifest.kernel_release)
    } else {
        Default::default()
    };
    // The kernel module, for the nodes that run it, built against the
    // kernel's tree: a tree of one's own (the check above found it), or
    // the build root of the image's kernel (validation made sure it is
    // Debian's Rust-enabled one), with perf built from the same source.
    let (kernel_module, tools) = if !topology.uses(Driver::Kernel) {
        (None, Vec::new())
    } else if let Some(tree) = &own_tree {
        let module =
            own_tree_module(tree, &mut progress).context("cannot build the VNI kernel module")?;
        (Some(module), Vec::new())
    } else if let Some(manifest) = &manifest {
        let (module, perf) = kernel_module(manifest, &mut progress)?;
        (Some(module), perf.into_iter().collect())
    } else {
        (None, Vec::new())
    };
    let (kernel, release) = match &topology.kernel {
        // (The release its boot header says, as `uname -r` will.)
        Kernel::Path(path) => (
            path.clone(),
            own_release.unwrap_or_else(|| "custom".to_owned()),
        ),
        _ => (kernel, release),
    };
    let base_initrd = topology.image.clone().unwrap_or(initrd);
    let guest_bins = vni_lab::guest_bin::locate(&mut |s| progress.step(s))?;

    // Lab files are for this user only.
    // SAFETY: umask only changes this process's file creation mask.
    unsafe { libc::umask(0o077) };
    let lab = LabDir::new(&lab::run_dir(), &name);
    let mut cleaned = None;
    let lock = lab.create(&mut cleaned)?;
    if let Some(cleaned) = cleaned {
        progress.note(&format!(
            "cleaned up lab {name} left over by a killed vni-lab ({cleaned})"
        ));
    }
    // The lab runs from its own copies: a rebuilt image or kernel never
    // changes a running lab (nor a node restarted in it).
    let prepare = || -> anyhow::Result<()> {
        let lab_kernel = lab.dir.join("vmlinuz");
        // Not fs::copy: it would carry the source's mode past the umask.
        let copy_kernel = || -> std::io::Result<u64> {
            std::io::copy(&mut File::open(&kernel)?, &mut File::create(&lab_kernel)?)
        };
        copy_kernel().with_context(|| format!("cannot copy the kernel {}", kernel.display()))?;
        let initrd = lab.dir.join("initrd");
        vni_lab::guest_bin::overlay_initrd(
            &base_initrd,
            &guest_bins,
            topology.modules.as_deref(),
            kernel_module.as_deref(),
            &tools,
            &initrd,
        )?;
        let plan = Plan {
            name: name.clone(),
            topology_path: file.to_owned(),
            topology_text: topology_text.clone(),
            accel: accel.accel.to_owned(),
            kernel: lab_kernel,
            initrd,
            kernel_release: release.clone(),
            sandbox: qemu::supports_sandbox(),
            shm: lab.default_shm(),
            keep_logs: keep_logs.clone(),
        };
        lab.write_json(&lab.plan_path(), &plan)?;
        Ok(())
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let prepared = prepare()
        .with_context(|| format!("cannot prepare the lab directory {}", lab.dir.display()));
    let runtime = match prepared.and_then(|()| Ok(runtime?)) {
        Ok(runtime) => runtime,
        Err(e) => {
            drop(lock);
            let _ = lab.clean_leftover();
            return Err(e);
        }
    };
    progress.step(&format!(
        "starting lab {name}: {} nodes, {} ({})",
        topology.nodes.len(),
        accel.accel.to_uppercase(),
        accel.reason
    ));

    let result = runtime.block_on(drive(&lab, lock, &topology, detach, &mut progress));
    progress.done();
    result
}

/// The VNI kernel module for the image's kernel: its build root prepared
/// and the module built when they are not cached. With it, the tree's
/// perf, when the tree has one (trees built before perf joined the
/// recipe have none; a new recipe builds a new tree).
fn kernel_module(
    manifest: &image::Manifest,
    progress: &mut Progress,
) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
    let cache = image::cache_dir();
    let mut step = |s: &str| progress.step(&format!("kernel module: {s}"));
    let tree = kmod::ensure_tree(manifest, &cache, &mut step)
        .context("cannot prepare the kernel tree for the VNI kernel module")?;
    let checkout = vni_lab::guest_bin::module_source().ok_or(kmod::KmodError::NoSource)?;
    let module = kmod::ensure_module(&tree, &checkout, &cache, &mut step)
        .context("cannot build the VNI kernel module")?;
    let perf = tree.perf();
    Ok((module, perf.is_file().then_some(perf)))
}

/// The VNI kernel module built against a kernel tree of one's own.
fn own_tree_module(
    tree: &kmod::OwnTree,
    progress: &mut Progress,
) -> Result<PathBuf, kmod::KmodError> {
    let checkout = vni_lab::guest_bin::module_source().ok_or(kmod::KmodError::NoSource)?;
    let mut step = |s: &str| progress.step(&format!("kernel module: {s}"));
    kmod::ensure_own_module(tree, &checkout, &image::cache_dir(), &mut step)
}

/// Checks that pinned CPUs exist on this host.
fn check_host_cpus(topology: &Topology) -> anyhow::Result<()> {
    // SAFETY: sysconf has no preconditions.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as u32;
    for node in &topology.nodes {
        if let Some(cpu) = node.host_cpus.iter().find(|&&c| c >= online) {
            bail!(
                "node {}: host_cpus names CPU {cpu}, but this host has CPUs 0-{} only",
                node.name,
                online - 1
            );
        }
    }
    Ok(())
}

/// Starts the supervisor and follows its events until the lab is up
/// (`detach`) or gone.
async fn drive(
    lab: &LabDir,
    lock: LabLock,
    topology: &Topology,
    detach: bool,
    progress: &mut Progress,
) -> anyhow::Result<ExitCode> {
    let exe = crate::own_exe()?;
    let log = File::create(lab.supervisor_log())
        .with_context(|| format!("cannot create {}", lab.supervisor_log().display()))?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("supervise")
        .arg(&lab.dir)
        .stdin(if detach {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(log);
    if !detach {
        command.arg("--tied");
    }
    let lock_fd = lock.file().as_raw_fd();
    let in_child = move || {
        // The lock must lose close-on-exec to survive the exec: dup2 does
        // that for a new fd, but is a no-op when the lock already sits on
        // LOCK_FD.
        let moved = if lock_fd == LOCK_FD {
            // SAFETY: fcntl(F_SETFD) on an fd we own changes only its flags.
            unsafe { libc::fcntl(LOCK_FD, libc::F_SETFD, 0) }
        } else {
            // SAFETY: dup2 of an fd we own onto LOCK_FD, which nothing in
            // the child uses.
            unsafe { libc::dup2(lock_fd, LOCK_FD) }
        };
        // SAFETY: setsid takes no arguments and touches no memory.
        if moved < 0 || unsafe { libc::setsid() } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: `in_child` runs between fork and exec and makes only
    // async-signal-safe system calls (fcntl, dup2, setsid); it allocates
    // nothing.
    unsafe { command.pre_exec(in_child) };
    let mut child = match tokio::process::Command::from(command).spawn() {
        Ok(child) => child,
        Err(e) => {
            drop(lock);
            let _ = lab.clean_leftover();
            return Err(e).context("cannot start the lab supervisor");
        }
    };
    // The supervisor holds the lock now (same open file).
    drop(lock);
    let supervisor = child.id().unwrap_or(0);
    let stdout = child.stdout.take().context("supervisor stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();

    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let started = Instant::now();
    let total = topology.nodes.len();
    let mut ready = 0;
    let mut failed: Option<String> = None;
    let mut stopping = false;
    let mut up = false;
    let mut down = false;
    loop {
        let line = tokio::select! {
            line = lines.next_line() => line,
            _ = interrupt.recv() => { stop(supervisor, &mut stopping, progress); continue; }
            _ = terminate.recv() => { stop(supervisor, &mut stopping, progress); continue; }
        };
        let Ok(Some(line)) = line else { break };
        let Ok(event) = serde_json::from_str::<Event>(&line) else {
            continue;
        };
        match event {
            Event::Step { message } => progress.step(&message),
            Event::NodeStarted { .. } => {}
            Event::NodeReady { node, after } => {
                ready += 1;
                progress.step(&format!(
                    "{ready}/{total} nodes ready ({node} after {after:.1} s)"
                ));
            }
            Event::Ready { after } => {
                up = true;
                progress.done();
                print_lab(lab, topology, after);
                crate::control::show_traffic(lab, topology).await;
                if detach {
                    println!(
                        "Lab {} is up. Run commands with `vni-lab exec NODE -- CMD`; stop it with `vni-lab down {}`.",
                        lab.name, lab.name
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                println!(
                    "Lab {} is up. In another terminal: `vni-lab exec NODE -- CMD`. Ctrl-C tears it down.",
                    lab.name
                );
            }
            Event::NodeExited { node, status } => {
                progress.note(&format!("node {node}: QEMU exited ({status})"));
            }
            Event::Failed { message } => {
                progress.done();
                failed = Some(message);
            }
            Event::Down => down = true,
        }
    }
    let status = child.wait().await.ok();
    progress.done();
    if !down {
        // The supervisor died without tearing down (killed): clean after it.
        let log = supervisor::tail(&lab.supervisor_log(), 20);
        let cleaned = lab.clean_leftover();
        eprintln!(
            "vni-lab: the lab supervisor ended unexpectedly ({}); its log ends with:\n{log}",
            status.map_or("unknown".into(), |s| s.to_string()),
        );
        match cleaned {
            Ok(c) => eprintln!("vni-lab: cleaned up after it ({c})"),
            Err(e) => eprintln!("vni-lab: cleaning up after it failed: {e}"),
        }
        return Ok(ExitCode::from(2));
    }
    if let Some(message) = failed {
        eprintln!(
            "vni-lab: lab {} did not come up after {:.1} s:\n{message}",
            lab.name,
            started.elapsed().as_secs_f64()
        );
        eprintln!("vni-lab: everything was torn down");
        return Ok(ExitCode::FAILURE);
    }
    if up {
        eprintln!("vni-lab: lab {} is down", lab.name);
    } else {
        eprintln!(
            "vni-lab: start of lab {} interrupted; everything was torn down",
            lab.name
        );
    }
    Ok(if stopping || up {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn stop(supervisor: u32, stopping: &mut bool, progress: &mut Progress) {
    if !*stopping {
        progress.note("tearing the lab down");
    }
    *stopping = true;
    if let Ok(pid) = i32::try_from(supervisor) {
        // SAFETY: kill has no memory effects; the supervisor is our child
        // and not yet reaped, so the pid is still its.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

fn print_lab(lab: &LabDir, topology: &Topology, after: f64) {
    let state = lab.state().unwrap_or_default();
    println!("Lab {} up after {after:.1} s:", lab.name);
    println!(
        "  {:<12} {:<18} {:<17} {:>8}  {:>6}",
        "NODE", "ADDRESS", "MAC", "QEMU PID", "READY"
    );
    for node in &topology.nodes {
        let record = state.nodes.iter().find(|n| n.name == node.name);
        println!(
            "  {:<12} {:<18} {:<17} {:>8}  {:>5.1}s",
            node.name,
            node.ip.to_string(),
            node.mac.to_string(),
            record.map_or(0, |r| r.pid),
            record.and_then(|r| r.ready_after).unwrap_or(0.0)
        );
    }
}

pub fn down(name: Option<&str>, all: bool) -> anyhow::Result<ExitCode> {
    let run = lab::run_dir();
    let labs = if all {
        lab::list(&run)
    } else {
        vec![lab::find(&run, name)?]
    };
    for lab in labs {
        down_one(&lab)?;
    }
    Ok(ExitCode::SUCCESS)
}

pub fn down_one(lab: &LabDir) -> anyhow::Result<()> {
    if lab.is_live() {
        let pid = lab.state().map(|s| s.supervisor).unwrap_or(0);
        lab::signal_if_ours(pid, &lab.dir, libc::SIGTERM);
        if !lab.wait_dead(DOWN_TIMEOUT) {
            eprintln!(
                "vni-lab: the supervisor of {} did not stop within {DOWN_TIMEOUT:?}; killing it",
                lab.name
            );
            lab::signal_if_ours(pid, &lab.dir, libc::SIGKILL);
            lab.wait_dead(Duration::from_secs(5));
        }
        if lab.dir.exists() {
            lab.clean_leftover()?;
        }
        eprintln!("vni-lab: lab {} is down", lab.name);
    } else {
        let cleaned = lab.clean_leftover()?;
        eprintln!(
            "vni-lab: lab {} was left over by a killed vni-lab; cleaned up ({cleaned})",
            lab.name
        );
    }
    Ok(())
}

pub fn supervise(dir: &Path, tied: bool) -> anyhow::Result<ExitCode> {
    if std::io::stdout().is_terminal() {
        bail!("`supervise` is started by `vni-lab up`, not by hand");
    }
    // The lock arrives on LOCK_FD; check that it is this lab's lock file
    // before taking ownership of the descriptor.
    let lock_path = dir.join("lock");
    let expected = std::fs::metadata(&lock_path)
        .with_context(|| format!("no lock file {}", lock_path.display()))?;
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a `stat` into memory we own; it fails cleanly
    // on a closed fd.
    let rc = unsafe { libc::fstat(LOCK_FD, stat.as_mut_ptr()) };
    if rc != 0 {
        bail!("no lab lock on fd {LOCK_FD}: start labs with `vni-lab up`");
    }
    // SAFETY: fstat returned 0, so it initialised `stat`.
    let stat = unsafe { stat.assume_init() };
    if stat.st_ino != expected.ino() || stat.st_dev != expected.dev() {
        bail!("fd {LOCK_FD} is not the lock of {}", dir.display());
    }
    // The lock is the supervisor's alone: its QEMUs must not inherit it, or
    // a QEMU outliving the supervisor would keep a dead lab "live".
    // SAFETY: fcntl(F_SETFD) on an open fd changes only its flags.
    if unsafe { libc::fcntl(LOCK_FD, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        bail!("cannot mark the lab lock close-on-exec");
    }
    // SAFETY: LOCK_FD is open (fstat succeeded), refers to the lab's lock
    // file, and nothing else in this process owns it.
    let file = unsafe { File::from_raw_fd(LOCK_FD) };
    let code = supervisor::supervise(dir, LabLock::from_file(file), tied);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}
