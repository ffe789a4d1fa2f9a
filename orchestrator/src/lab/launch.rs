//! The lab's supervisor: a process of its own (`vni-lab supervise DIR`,
//! in a session of its own) that boots the prepared lab and owns it until
//! it goes down. It holds the lab's lock, handed over on fd [`LOCK_FD`],
//! and reports what happens as typed [`Event`]s, one JSON line each on
//! its stdout, which [`Supervisor`] reads for the command that started
//! it: every command that boots a lab follows the same events, and none
//! reads another's human output.
//!
//! [`Mode::Detached`]: the lab outlives the command (`up --detach`,
//! `test`, `bench`, `soak`). [`Mode::Tied`]: the supervisor tears the lab
//! down when the command's end of its stdin closes (`up` in the
//! foreground).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use crate::lab::{LabDir, LabLock, Prepared, Reporter};
use crate::logs;
use crate::supervisor::Event;

/// The fd the lab lock is handed to the supervisor on.
pub const LOCK_FD: i32 = 3;

/// Lines of the supervisor's log shown when it dies.
const LOG_TAIL: usize = 20;

/// Whether the lab outlives the command that started it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// It stays up until `vni-lab down`.
    Detached,
    /// It goes down when the command ends.
    Tied,
}

/// Why a lab did not come up, or did not go down in order.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The supervisor could not be started.
    #[error("Cannot start the lab supervisor")]
    Spawn(#[source] std::io::Error),
    /// The supervisor reported a failure and tore everything down.
    #[error("Lab {lab} did not come up after {after:.1} s:\n{message}")]
    DidNotComeUp {
        /// The lab.
        lab: String,
        /// Seconds since the start.
        after: f64,
        /// What went wrong, with the console tail where it helps.
        message: String,
    },
    /// The supervisor ended without tearing down (it was killed).
    #[error(
        "The lab supervisor ended unexpectedly ({status}); {cleaned}; its log ends with:\n{log}"
    )]
    Died {
        /// How it ended.
        status: String,
        /// What cleaning up after it did.
        cleaned: String,
        /// The end of its log.
        log: String,
    },
    /// The start was interrupted; the supervisor tore everything down.
    #[error("The start of lab {0} was interrupted; everything was torn down")]
    Interrupted(String),
}

/// A lab's supervisor, started by this process, and its events.
#[derive(Debug)]
pub struct Supervisor {
    lab: LabDir,
    nodes: usize,
    child: Child,
    pid: u32,
    events: Option<Lines<BufReader<ChildStdout>>>,
    started: Instant,
    stopping: bool,
    ready: bool,
    down: bool,
    failed: Option<String>,
}

impl Supervisor {
    /// Starts the supervisor of `prepared` (running `exe supervise`,
    /// `exe` being vni-lab), saying so on `reporter`, and hands it the
    /// lab's lock. On failure the lab directory is removed again. (Async
    /// because the child is the runtime's: its stdout is read there.)
    pub async fn start(
        prepared: Prepared,
        exe: &Path,
        mode: Mode,
        reporter: &mut dyn Reporter,
    ) -> Result<Supervisor, LaunchError> {
        let Prepared {
            lab,
            lock,
            topology,
            accel,
        } = prepared;
        reporter.step(&format!(
            "starting lab {}: {} nodes, {} ({})",
            lab.name,
            topology.nodes.len(),
            accel.accel.to_uppercase(),
            accel.reason
        ));
        // For this user only, as everything in the lab directory (this
        // process's umask is the caller's).
        let log = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(lab.supervisor_log());
        let log = match log {
            Ok(log) => log,
            Err(e) => {
                drop(lock);
                let _ = lab.clean_leftover();
                return Err(LaunchError::Spawn(e));
            }
        };
        let mut command = std::process::Command::new(exe);
        command
            .arg("supervise")
            .arg(&lab.dir)
            .stdin(match mode {
                Mode::Detached => Stdio::null(),
                Mode::Tied => Stdio::piped(),
            })
            .stdout(Stdio::piped())
            .stderr(log);
        if mode == Mode::Tied {
            command.arg("--tied");
        }
        let lock_fd = lock.file().as_raw_fd();
        let in_child = move || {
            // The lock must lose close-on-exec to survive the exec: dup2
            // does that for a new fd, but is a no-op when the lock already
            // sits on LOCK_FD.
            let moved = if lock_fd == LOCK_FD {
                // SAFETY: fcntl(F_SETFD) on an fd we own changes only its flags.
                unsafe { libc::fcntl(LOCK_FD, libc::F_SETFD, 0) }
            } else {
                // SAFETY: dup2 of an fd we own onto LOCK_FD, which nothing
                // in the child uses.
                unsafe { libc::dup2(lock_fd, LOCK_FD) }
            };
            // SAFETY: setsid takes no arguments and touches no memory.
            if moved < 0 || unsafe { libc::setsid() } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The lab's files are for this user only.
            // SAFETY: umask only changes the child's file creation mask.
            unsafe { libc::umask(0o077) };
            Ok(())
        };
        // SAFETY: `in_child` runs between fork and exec and makes only
        // async-signal-safe system calls (fcntl, dup2, setsid, umask); it
        // allocates nothing.
        unsafe { command.pre_exec(in_child) };
        let mut child = match tokio::process::Command::from(command).spawn() {
            Ok(child) => child,
            Err(e) => {
                drop(lock);
                let _ = lab.clean_leftover();
                return Err(LaunchError::Spawn(e));
            }
        };
        // The supervisor holds the lock now (the same open file).
        drop(lock);
        let events = child.stdout.take().map(|out| BufReader::new(out).lines());
        Ok(Supervisor {
            lab,
            nodes: topology.nodes.len(),
            pid: child.id().unwrap_or(0),
            child,
            events,
            started: Instant::now(),
            stopping: false,
            ready: false,
            down: false,
            failed: None,
        })
    }

    /// The lab it supervises.
    pub fn lab(&self) -> &LabDir {
        &self.lab
    }

    /// The supervisor's next event; `None` once it closed its stdout
    /// (it exited).
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            let line = self.events.as_mut()?.next_line().await;
            let Ok(Some(line)) = line else {
                self.events = None;
                return None;
            };
            // (Anything else on its stdout is not an event of ours.)
            let Ok(event) = serde_json::from_str::<Event>(&line) else {
                continue;
            };
            match &event {
                Event::Ready { .. } => self.ready = true,
                Event::Failed { message } => self.failed = Some(message.clone()),
                Event::Down => self.down = true,
                _ => {}
            }
            return Some(event);
        }
    }

    /// Asks the supervisor to tear the lab down (SIGTERM); its events go
    /// on until [`Event::Down`]. True the first time.
    pub fn stop(&mut self) -> bool {
        let first = !self.stopping;
        self.stopping = true;
        if let Ok(pid) = i32::try_from(self.pid) {
            if pid > 0 {
                // SAFETY: kill has no memory effects; the supervisor is our
                // child and not yet reaped, so the pid is still its.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        first
    }

    /// Follows the start until every node is ready, with each step and
    /// node on `reporter`: the seconds it took. When `interrupt`
    /// completes first, the lab is torn down ([`LaunchError::Interrupted`]).
    pub async fn until_ready(
        &mut self,
        reporter: &mut dyn Reporter,
        interrupt: impl std::future::Future<Output = ()>,
    ) -> Result<f64, LaunchError> {
        let mut interrupt = std::pin::pin!(interrupt);
        let mut interrupted = false;
        let mut ready = 0;
        loop {
            let event = tokio::select! {
                event = self.next() => event,
                () = &mut interrupt, if !interrupted => {
                    interrupted = true;
                    if self.stop() {
                        reporter.note("tearing the lab down");
                    }
                    continue;
                }
            };
            match event {
                None => return Err(self.ended().await),
                Some(Event::Step { message }) => reporter.step(&message),
                Some(Event::NodeReady { node, after }) => {
                    ready += 1;
                    reporter.step(&format!(
                        "{ready}/{} nodes ready ({node} after {after:.1} s)",
                        self.nodes
                    ));
                }
                Some(Event::NodeExited { node, status }) => {
                    reporter.note(&format!("node {node}: QEMU exited ({status})"));
                }
                Some(Event::Ready { after }) if !self.stopping => return Ok(after),
                Some(_) => {}
            }
        }
    }

    /// Waits for the supervisor to exit, after its last event: `Ok` when
    /// the lab came up and went down in order, else why not. Cleans up
    /// after a supervisor that died without tearing down.
    pub async fn wait(mut self) -> Result<(), LaunchError> {
        while self.next().await.is_some() {}
        match self.ended().await {
            LaunchError::Interrupted(_) if self.ready => Ok(()),
            e => Err(e),
        }
    }

    /// Why the supervisor ended (it closed its stdout): died, failed, or
    /// stopped (interrupted, when it never was ready).
    async fn ended(&mut self) -> LaunchError {
        let status = self.child.wait().await.ok();
        if !self.down {
            // Killed without tearing down: clean after it.
            let log = logs::tail(&self.lab.supervisor_log(), LOG_TAIL);
            let cleaned = match self.lab.clean_leftover() {
                Ok(c) => format!("cleaned up after it ({c})"),
                Err(e) => format!("cleaning up after it failed: {e}"),
            };
            return LaunchError::Died {
                status: status.map_or("unknown".into(), |s| s.to_string()),
                cleaned,
                log,
            };
        }
        match self.failed.take() {
            Some(message) => LaunchError::DidNotComeUp {
                lab: self.lab.name.clone(),
                after: self.started.elapsed().as_secs_f64(),
                message,
            },
            None => LaunchError::Interrupted(self.lab.name.clone()),
        }
    }
}

/// The supervisor's side of the hand-over: the lab lock on [`LOCK_FD`],
/// checked to be `dir`'s lock file, and made close-on-exec so that no
/// QEMU inherits it (a QEMU outliving the supervisor would keep a dead
/// lab "live").
pub fn adopt_lock(dir: &Path) -> std::io::Result<LabLock> {
    use std::io::{Error, ErrorKind};
    let lock_path = dir.join("lock");
    let expected = std::fs::metadata(&lock_path)?;
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a `stat` into memory we own; it fails cleanly
    // on a closed fd.
    if unsafe { libc::fstat(LOCK_FD, stat.as_mut_ptr()) } != 0 {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("no lab lock on fd {LOCK_FD}: start labs with `vni-lab up`"),
        ));
    }
    // SAFETY: fstat returned 0, so it initialised `stat`.
    let stat = unsafe { stat.assume_init() };
    if stat.st_ino != expected.ino() || stat.st_dev != expected.dev() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("fd {LOCK_FD} is not the lock of {}", dir.display()),
        ));
    }
    // SAFETY: fcntl(F_SETFD) on an open fd changes only its flags.
    if unsafe { libc::fcntl(LOCK_FD, libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: LOCK_FD is open (fstat succeeded), refers to the lab's lock
    // file, and nothing else in this process owns it.
    let file = unsafe { File::from_raw_fd(LOCK_FD) };
    Ok(LabLock::from_file(file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::AccelDecision;
    use crate::lab::Silent;
    use crate::topology::Topology;

    /// A lab prepared in a run directory of its own, and a stand-in for
    /// `vni-lab supervise` that says `events` (JSON lines) and exits.
    fn prepared(test: &str, events: &[&str]) -> (Prepared, std::path::PathBuf) {
        let run = std::env::temp_dir().join(format!("vni-launch-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run);
        std::fs::create_dir_all(&run).unwrap();
        let lab = LabDir::new(&run, "t");
        let lock = lab.create(&mut None).unwrap();
        let topology = Topology::parse(
            "name: t\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n  - {name: b, ip: 10.0.0.2/24}\n",
            Path::new("t.yaml"),
        )
        .unwrap();
        let script = run.join("supervise");
        let lines: String = events.iter().map(|e| format!("echo '{e}'\n")).collect();
        std::fs::write(&script, format!("#!/bin/sh\n{lines}")).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let prepared = Prepared {
            lab,
            lock,
            topology,
            accel: AccelDecision {
                accel: "tcg",
                reason: "test".into(),
            },
        };
        (prepared, script)
    }

    #[tokio::test]
    async fn a_lab_that_comes_up_and_goes_down_is_followed_to_the_end() {
        let (prepared, exe) = prepared(
            "up",
            &[
                r#"{"event":"step","message":"starting"}"#,
                r#"{"event":"node-ready","node":"a","after":1.0}"#,
                r#"{"event":"ready","after":2.5}"#,
                r#"{"event":"down"}"#,
            ],
        );
        let mut supervisor = Supervisor::start(prepared, &exe, Mode::Detached, &mut Silent)
            .await
            .unwrap();
        let after = supervisor
            .until_ready(&mut Silent, std::future::pending())
            .await
            .unwrap();
        assert_eq!(after, 2.5);
        supervisor.wait().await.unwrap();
        let _ = std::fs::remove_dir_all(exe.parent().unwrap());
    }

    #[tokio::test]
    async fn a_failed_start_is_the_supervisors_own_account() {
        let (prepared, exe) = prepared(
            "failed",
            &[
                r#"{"event":"failed","message":"node a: the guest kernel panicked"}"#,
                r#"{"event":"down"}"#,
            ],
        );
        let mut supervisor = Supervisor::start(prepared, &exe, Mode::Detached, &mut Silent)
            .await
            .unwrap();
        let e = supervisor
            .until_ready(&mut Silent, std::future::pending())
            .await
            .unwrap_err();
        assert!(
            matches!(&e, LaunchError::DidNotComeUp { message, .. } if message == "node a: the guest kernel panicked"),
            "{e:?}"
        );
        let _ = std::fs::remove_dir_all(exe.parent().unwrap());
    }

    #[tokio::test]
    async fn a_supervisor_that_dies_is_cleaned_up_after() {
        let (prepared, exe) = prepared("died", &[r#"{"event":"step","message":"starting"}"#]);
        let dir = prepared.lab.dir.clone();
        let mut supervisor = Supervisor::start(prepared, &exe, Mode::Detached, &mut Silent)
            .await
            .unwrap();
        let e = supervisor
            .until_ready(&mut Silent, std::future::pending())
            .await
            .unwrap_err();
        assert!(matches!(e, LaunchError::Died { .. }), "{e:?}");
        assert!(!dir.exists(), "the lab directory is removed");
        let _ = std::fs::remove_dir_all(exe.parent().unwrap());
    }
}
