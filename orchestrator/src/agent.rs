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
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use qapi::futures::{QapiService, QgaStreamTokio};
use qapi::qga;
use tokio::io::{AsyncReadExt, AsyncWriteExt, WriteHalf};
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

/// A sync id no earlier client of any agent used: a counter, the process
/// and the time, within the positive `i32` range the agent takes.
fn fresh_id() -> i64 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let mixed = nanos
        ^ std::process::id().rotate_left(13)
        ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(23);
    i64::from(mixed & 0x7fff_ffff)
}

/// The agent's own resynchronisation (`guest-sync-delimited`), done on the
/// raw stream before the `qapi` client takes it over. The channel may hold
/// replies meant for earlier clients (an agent that starts late answers
/// every request queued while it was down), and the `qapi` client would
/// take them for replies to its own commands. So: a 0xFF byte resets the
/// agent's parser, the agent puts 0xFF before its answer, and everything
/// is read and dropped until a delimited answer carries our id. Nothing
/// can follow it, since nothing else was asked.
async fn sync(stream: &mut UnixStream, id: i64) -> std::io::Result<()> {
    let request =
        format!("{{\"execute\":\"guest-sync-delimited\",\"arguments\":{{\"id\":{id}}}}}\n");
    let mut bytes = vec![0xff];
    bytes.extend_from_slice(request.as_bytes());
    stream.write_all(&bytes).await?;
    loop {
        // Skip to the next delimiter, then read its line.
        while stream.read_u8().await? != 0xff {}
        let mut line = Vec::new();
        loop {
            match stream.read_u8().await? {
                b'\n' => break,
                0xff => line.clear(),
                b => line.push(b),
            }
            if line.len() > 4096 {
                break;
            }
        }
        let answer: Option<serde_json::Value> = serde_json::from_slice(&line).ok();
        if answer.as_ref().and_then(|a| a["return"].as_i64()) == Some(id) {
            return Ok(());
        }
    }
}

impl GuestAgent {
    /// Connects to the agent socket at `path` and syncs; each call then
    /// gets `call_timeout`.
    pub async fn connect(path: &Path, call_timeout: Duration) -> Result<Self, AgentError> {
        let mut stream = UnixStream::connect(path)
            .await
            .map_err(|source| AgentError::Connect {
                path: path.to_owned(),
                source,
            })?;
        let after = call_timeout;
        match tokio::time::timeout(after, sync(&mut stream, fresh_id())).await {
            Err(_) => {
                return Err(AgentError::Timeout {
                    what: "guest-sync",
                    after,
                })
            }
            Ok(Err(e)) => {
                return Err(AgentError::Failed {
                    what: "guest-sync",
                    message: e.to_string(),
                })
            }
            Ok(Ok(())) => {}
        }
        let (service, events) = QgaStreamTokio::open(stream).spawn_tokio();
        Ok(GuestAgent {
            service,
            events,
            call_timeout,
        })
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
        self.exec_with_input(path, args, None, timeout).await
    }

    /// [`GuestAgent::exec`] with `input` as the command's standard input
    /// (the agent writes it, then closes the pipe; without it the
    /// command's standard input is empty).
    pub async fn exec_with_input(
        &self,
        path: &str,
        args: &[&str],
        input: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<ExecOutput, AgentError> {
        let pid = self.start(path, args, input).await?;
        self.wait(pid, timeout).await
    }

    /// Starts `path` with `args` in the guest, capturing its output, and
    /// returns its guest pid at once (see [`GuestAgent::wait`]).
    pub async fn spawn(&self, path: &str, args: &[&str]) -> Result<i64, AgentError> {
        self.start(path, args, None).await
    }

    async fn start(
        &self,
        path: &str,
        args: &[&str],
        input: Option<Vec<u8>>,
    ) -> Result<i64, AgentError> {
        let started = bounded(
            "guest-exec",
            self.call_timeout,
            self.service.execute(qga::guest_exec {
                path: path.to_owned(),
                arg: Some(args.iter().map(|a| (*a).to_owned()).collect()),
                env: None,
                input_data: input,
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

    /// A socket in a directory of its own for a fake agent to listen on.
    fn fake_agent(tag: &str) -> (PathBuf, PathBuf, tokio::net::UnixListener) {
        let dir = std::env::temp_dir().join(format!("vni-agent-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.sock");
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        (dir, path, listener)
    }

    #[tokio::test]
    async fn a_silent_agent_times_out() {
        // Something listens but never answers: guest-sync must not hang.
        let (dir, path, listener) = fake_agent("silent");
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

    #[tokio::test]
    async fn replies_meant_for_earlier_clients_are_skipped() {
        use tokio::io::AsyncBufReadExt;
        let (dir, path, listener) = fake_agent("stale");
        let agent_side = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = tokio::io::split(stream);
            let mut lines = tokio::io::BufReader::new(read).split(b'\n');
            // Our sync, behind its 0xFF.
            let sync = lines.next_segment().await.unwrap().unwrap();
            assert_eq!(sync[0], 0xff);
            let sync: serde_json::Value = serde_json::from_slice(&sync[1..]).unwrap();
            assert_eq!(sync["execute"], "guest-sync-delimited");
            let id = sync["arguments"]["id"].as_i64().unwrap();
            // Two replies an earlier client left (one plain, one
            // delimited), then ours.
            let mut replies = b"{\"return\": 17}\n\xff{\"return\": 18}\n\xff".to_vec();
            replies.extend_from_slice(format!("{{\"return\": {id}}}\n").as_bytes());
            write.write_all(&replies).await.unwrap();
            // Then guest-exec and its status.
            for reply in [
                r#"{"return": {"pid": 42}}"#,
                r#"{"return": {"exited": true, "exitcode": 0, "out-data": "aGk="}}"#,
            ] {
                let request = lines.next_segment().await.unwrap().unwrap();
                assert!(String::from_utf8_lossy(&request).contains("guest-exec"));
                write
                    .write_all(format!("{reply}\n").as_bytes())
                    .await
                    .unwrap();
            }
        });
        let agent = GuestAgent::connect(&path, Duration::from_secs(5))
            .await
            .unwrap();
        let out = agent
            .exec("/bin/echo", &["hi"], Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!((out.code, out.stdout.as_slice()), (Some(0), &b"hi"[..]));
        agent_side.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
