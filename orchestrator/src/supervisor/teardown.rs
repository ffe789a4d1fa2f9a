//! Tearing the lab down: QEMUs (SIGTERM, then SIGKILL), the server, the
//! shared-memory file and the lab directory, logs kept first when asked.

use std::path::Path;
use std::sync::PoisonError;
use std::time::Duration;

use super::event::timestamp;
use super::record::{signal, Recorder, Running};
use crate::ivshmem_server::IvshmemServer;
use crate::lab::LabDir;
use crate::sections::Sections;

/// How long QEMU gets to exit after SIGTERM before SIGKILL.
pub(super) const QEMU_GRACE: Duration = Duration::from_secs(5);
pub(super) async fn teardown(
    lab: &LabDir,
    recorder: &Recorder,
    nodes: Vec<Running>,
    server: Option<IvshmemServer>,
) {
    for running in &nodes {
        if running.exit.borrow().is_none() {
            signal(running.pid, libc::SIGTERM);
        }
    }
    for running in &nodes {
        let mut exit = running.exit.clone();
        let gone = tokio::time::timeout(QEMU_GRACE, exit.wait_for(Option::is_some))
            .await
            .is_ok();
        if !gone {
            eprintln!(
                "{} {} did not exit on SIGTERM; SIGKILL",
                timestamp(),
                running.node.name
            );
            signal(running.pid, libc::SIGKILL);
            let _ = exit.wait_for(Option::is_some).await;
        }
    }
    drop(server);
    let shm = recorder
        .state
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .shm
        .clone();
    if let Some(shm) = shm {
        let _ = std::fs::remove_file(&shm);
        Sections::remove(&shm);
    }
    if let Some(to) = lab.plan().and_then(|p| p.keep_logs) {
        if let Err(e) = keep_logs(lab, &nodes, &to) {
            eprintln!(
                "{} cannot keep the logs in {}: {e}",
                timestamp(),
                to.display()
            );
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&lab.dir) {
        eprintln!("{} cannot remove {}: {e}", timestamp(), lab.dir.display());
    }
}

/// Copies every node's console and QEMU log, and the supervisor's log,
/// into `to` (created if needed): `NODE.console.log`, `NODE.qemu.log`,
/// `supervisor.log`.
pub(super) fn keep_logs(lab: &LabDir, nodes: &[Running], to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for running in nodes {
        let name = &running.node.name;
        let paths = lab.node(name);
        for (from, suffix) in [(&paths.console, "console"), (&paths.qemu_log, "qemu")] {
            if from.exists() {
                std::fs::copy(from, to.join(format!("{name}.{suffix}.log")))?;
            }
        }
    }
    std::fs::copy(lab.supervisor_log(), to.join("supervisor.log"))?;
    Ok(())
}
