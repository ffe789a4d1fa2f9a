//! The lab supervisor: one process per running lab, started by `up`
//! (`vni-lab supervise`, hidden), in its own session so that it outlives
//! `up --detach` and no terminal signal reaches it.
//!
//! It creates and formats the shared region, runs the ivshmem server,
//! starts one QEMU per node, pins vCPUs, waits for every guest agent, and
//! then watches. It reports what happens as JSON lines on stdout
//! ([`Event`]), which `up` turns into progress and errors. It stops on
//! SIGTERM, SIGINT or SIGHUP (`down`, `up`'s Ctrl-C), or, when `up` runs in
//! the foreground, when `up` itself goes away (its stdin closes), and a
//! boot that fails stops it too. Stopping always tears everything down:
//! QEMUs (SIGTERM, then SIGKILL), the server and its socket, the
//! shared-memory file, the lab directory.
//!
//! Its QEMUs get `PR_SET_PDEATHSIG`: if the supervisor itself is killed
//! with SIGKILL, they die with it, and the next `up` or `down` cleans the
//! files it left ([`crate::lab::LabDir::clean_leftover`]).
//!
//! Its parts: [`start`] boots the lab, [`watch`] watches it and serves
//! [`faults`], [`teardown`] stops it; [`record`] keeps its state in the lab
//! directory, [`event`] reports to the command that started it, [`error`]
//! says what went wrong.

mod error;
mod event;
mod faults;
mod record;
mod start;
mod teardown;
mod watch;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::ivshmem_server::IvshmemServer;
use crate::lab::{LabDir, LabLock, State};
use crate::netns::LabNet;

pub use self::error::SupervisorError;
use self::event::{emit, timestamp};
pub use self::event::{Event, CONSOLE_TAIL};
use self::record::{Recorder, Running};
use self::start::start;
pub use self::start::SOCKET_BUFFER_MAX;
use self::teardown::teardown;
use self::watch::watch_nodes;

pub use crate::crash::panicked;

/// Why the start stopped.
enum Stop {
    /// A signal or `up` going away.
    Asked(&'static str),
    /// The boot failed.
    Failed(SupervisorError),
}

/// Runs the supervisor of the lab in `dir` (its plan already written),
/// holding `lock`. `tied`: stop when stdin closes. Returns the process
/// exit code: 0 after a clean stop, 1 after a failed start.
pub fn supervise(dir: &Path, lock: LabLock, tied: bool) -> i32 {
    // Everything the lab creates, QEMU's sockets and logs included, is
    // for this user only.
    // SAFETY: umask only changes this process's file creation mask.
    unsafe { libc::umask(0o077) };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(source) => {
            emit(&Event::Failed {
                message: SupervisorError::Runtime { source }.to_string(),
            });
            return 1;
        }
    };
    let code = runtime.block_on(run(dir, tied));
    drop(lock);
    code
}

async fn run(dir: &Path, tied: bool) -> i32 {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lab = LabDir {
        name,
        dir: dir.to_owned(),
    };
    let recorder = Recorder {
        lab: lab.clone(),
        state: Arc::new(Mutex::new(State {
            supervisor: std::process::id(),
            started_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            ..State::default()
        })),
    };
    recorder.update(|_| {});
    let mut nodes: Vec<Running> = Vec::new();
    let mut server: Option<IvshmemServer> = None;
    // `network: virtio-net-tap`: held until the end, after the QEMUs.
    let mut net: Option<LabNet> = None;
    let mut stop = Box::pin(stop_requested(tied));

    let started = Instant::now();
    let boot = start(&lab, &recorder, &mut nodes, &mut server, &mut net, started);
    let outcome = tokio::select! {
        result = boot => result.map_err(Stop::Failed),
        why = &mut stop => Err(Stop::Asked(why)),
    };
    let code = match outcome {
        Ok(()) => {
            recorder.update(|s| s.ready = true);
            emit(&Event::Ready {
                after: started.elapsed().as_secs_f64(),
            });
            let why = watch_nodes(&lab, &mut nodes, &recorder, &mut stop, net.as_ref()).await;
            eprintln!("{} stopping: {why}", timestamp());
            0
        }
        Err(Stop::Asked(why)) => {
            eprintln!("{} stopping during start: {why}", timestamp());
            0
        }
        Err(Stop::Failed(e)) => {
            emit(&Event::Failed {
                message: e.to_string(),
            });
            1
        }
    };
    teardown(&lab, &recorder, nodes, server).await;
    emit(&Event::Down);
    code
}

/// Resolves when the lab should stop: a signal, or stdin closing when
/// `tied`.
async fn stop_requested(tied: bool) -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    let mut hup = signal(SignalKind::hangup()).ok();
    let closed = async {
        if tied {
            // A blocking read on a detached thread (the runtime must not
            // wait for it at exit): `up` never writes, so the read
            // returns only when `up` is gone.
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                let mut stdin = std::io::stdin().lock();
                loop {
                    match std::io::Read::read(&mut stdin, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                let _ = tx.send(());
            });
            let _ = rx.await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    tokio::select! {
        _ = recv(&mut term) => "SIGTERM",
        _ = recv(&mut int) => "SIGINT",
        _ = recv(&mut hup) => "SIGHUP",
        _ = closed => "vni-lab up went away",
    }
}
