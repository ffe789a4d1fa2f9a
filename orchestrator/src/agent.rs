//! The QEMU guest agent (QGA): besides the shared region, the orchestrator's
//! only way into a guest.
//!
//! Built on the `qapi` crate, which has no timeouts of its own: every call
//! here has one. A connection starts with `guest-sync`, as the agent needs
//! after any reconnect (stale replies of an earlier client may still be in
//! the channel), and readiness is found by reconnecting until a sync
//! succeeds, giving up early if QEMU itself has exited.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qapi::futures::{QapiService, QgaStreamTokio};
use qapi::qga;
use tokio::io::WriteHalf;
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

type Service = QapiService<QgaStreamTokio<WriteHalf<UnixStream>>>;

/// How long one connection attempt may take while waiting for a boot.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between connection attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Errors talking to a guest agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent socket could not be opened.
    #[error("Cannot connect to the guest agent at {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A call got no answer in time.
    #[error("Guest agent did not answer {what} within {after:?}")]
    Timeout {
        /// The call.
        what: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// The agent answered with an error, or the connection broke.
    #[error("Guest agent {what} failed: {message}")]
    Failed {
        /// The call.
        what: &'static str,
        /// What went wrong.
        message: String,
    },
    /// The guest never became ready.
    #[error("Guest agent not ready after {0:?}")]
    NotReady(Duration),
    /// QEMU exited while we waited for its guest.
    #[error("QEMU exited before its guest agent answered")]
    QemuExited,
}

/// What a command run in the guest did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit code, when it exited normally.
    pub code: Option<i64>,
    /// Signal, when it was killed by one.
    pub signal: Option<i64>,
    /// Captured standard output.
    pub stdout: Vec<u8>,
    /// Captured standard error.
    pub stderr: Vec<u8>,
}

/// A connection to one guest's agent.
pub struct GuestAgent {
    service: Service,
    events: JoinHandle<()>,
    call_timeout: Duration,
}

impl std::fmt::Debug for GuestAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestAgent")
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

impl Drop for GuestAgent {
    fn drop(&mut self) {
        self.events.abort();
    }
}

async fn bounded<T, E: std::fmt::Display>(
    what: &'static str,
    after: Duration,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, AgentError> {
    match tokio::time::timeout(after, call).await {
        Err(_) => Err(AgentError::Timeout { what, after }),
        Ok(Err(e)) => Err(AgentError::Failed {
            what,
            message: e.to_string(),
        }),
        Ok(Ok(v)) => Ok(v),
    }
}

impl GuestAgent {
    /// Connects to the agent socket at `path` and syncs; each call then
    /// gets `call_timeout`.
    pub async fn connect(path: &Path, call_timeout: Duration) -> Result<Self, AgentError> {
        let stream = qapi::futures::QgaStreamTokio::open_uds(path)
            .await
            .map_err(|source| AgentError::Connect {
                path: path.to_owned(),
                source,
            })?;
        let (service, events) = stream.spawn_tokio();
        let agent = GuestAgent {
            service,
            events,
            call_timeout,
        };
        // A fresh value each time: a reply left over from an earlier
        // client cannot pass for ours.
        let id =
            (Instant::now().elapsed().subsec_nanos() ^ std::process::id()) as i32 & 0x3fff_ffff;
        bounded("guest-sync", call_timeout, agent.service.guest_sync(id)).await?;
        Ok(agent)
    }

    /// Reconnects until the agent answers, for at most `timeout`; stops at
    /// once when `qemu_alive` says QEMU has exited.
    pub async fn wait_ready(
        path: &Path,
        timeout: Duration,
        call_timeout: Duration,
        mut qemu_alive: impl FnMut() -> bool,
    ) -> Result<Self, AgentError> {
        let deadline = Instant::now() + timeout;
        loop {
            if !qemu_alive() {
                return Err(AgentError::QemuExited);
            }
            let attempt =
                tokio::time::timeout(ATTEMPT_TIMEOUT, Self::connect(path, ATTEMPT_TIMEOUT)).await;
            if let Ok(Ok(mut agent)) = attempt {
                agent.call_timeout = call_timeout;
                return Ok(agent);
            }
            if Instant::now() >= deadline {
                return Err(AgentError::NotReady(timeout));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Runs `path` with `args` in the guest, capturing its output, and waits
    /// at most `timeout` for it to finish.
    pub async fn exec(
        &self,
        path: &str,
        args: &[&str],
        timeout: Duration,
    ) -> Result<ExecOutput, AgentError> {
        let pid = self.spawn(path, args).await?;
        self.wait(pid, timeout).await
    }

    /// Starts `path` with `args` in the guest, capturing its output, and
    /// returns its guest pid at once (see [`GuestAgent::wait`]).
    pub async fn spawn(&self, path: &str, args: &[&str]) -> Result<i64, AgentError> {
        let started = bounded(
            "guest-exec",
            self.call_timeout,
            self.service.execute(qga::guest_exec {
                path: path.to_owned(),
                arg: Some(args.iter().map(|a| (*a).to_owned()).collect()),
                env: None,
                input_data: None,
                capture_output: Some(qga::GuestExecCaptureOutput::flag(true)),
            }),
        )
        .await?;
        Ok(started.pid)
    }

    /// Waits at most `timeout` for the command started as `pid` to finish,
    /// and returns what it did. On timeout the command keeps running.
    pub async fn wait(&self, pid: i64, timeout: Duration) -> Result<ExecOutput, AgentError> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(20);
        loop {
            let status = bounded(
                "guest-exec-status",
                self.call_timeout,
                self.service.execute(qga::guest_exec_status { pid }),
            )
            .await?;
            if status.exited {
                return Ok(ExecOutput {
                    code: status.exitcode,
                    signal: status.signal,
                    stdout: status.out_data.unwrap_or_default(),
                    stderr: status.err_data.unwrap_or_default(),
                });
            }
            if Instant::now() >= deadline {
                return Err(AgentError::Timeout {
                    what: "a guest command to finish",
                    after: timeout,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_socket_is_a_connect_error_and_waiting_gives_up() {
        let path = Path::new("/nonexistent/qga.sock");
        let err = GuestAgent::connect(path, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, AgentError::Connect { .. }), "{err}");
        let err = GuestAgent::wait_ready(
            path,
            Duration::from_millis(300),
            Duration::from_secs(1),
            || true,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, AgentError::NotReady(_)), "{err}");
        let err = GuestAgent::wait_ready(
            path,
            Duration::from_secs(60),
            Duration::from_secs(1),
            || false,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, AgentError::QemuExited), "{err}");
    }

    #[tokio::test]
    async fn a_silent_agent_times_out() {
        // Something listens but never answers: guest-sync must not hang.
        let dir = std::env::temp_dir().join(format!("vni-agent-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("silent.sock");
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let err = GuestAgent::connect(&path, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                AgentError::Timeout {
                    what: "guest-sync",
                    ..
                }
            ),
            "{err}"
        );
        keep.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
