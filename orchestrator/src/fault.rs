//! Faults injected into a running lab (`vni-lab fault`): what a client asks
//! the lab's supervisor over its control socket, and the answers.
//!
//! The supervisor owns every QEMU of its lab, so faults go through it: it
//! kills its own child (no pid can be reused under it), pauses and resumes
//! vCPUs over QMP, and restarts a node with the same identity (name, id,
//! MAC, address; a new ivshmem peer id) and starts its VNI driver again.
//!
//! The wire format is JSON lines on a Unix stream socket (mode 0600, in the
//! lab directory): one [`Request`], then [`Reply`] lines, the last one
//! `done` or `failed`. One request is served at a time.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// What happens to a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[derive(clap::ValueEnum)]
pub enum Fault {
    /// SIGKILL to its QEMU: the node dies at once, whatever it held.
    Kill,
    /// Its vCPUs stop (QMP `stop`): a hung node.
    Pause,
    /// Stopped vCPUs run again (QMP `cont`).
    Resume,
    /// Killed if it runs, then booted again with the same identity; its
    /// VNI driver is started and must reach RUN.
    Restart,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Resume => "resume",
            Fault::Restart => "restart",
        })
    }
}

/// A client's request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The node's name.
    pub node: String,
    /// What to do.
    pub fault: Fault,
}

/// The supervisor's answers, one JSON object per line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "kebab-case")]
pub enum Reply {
    /// A step of a longer fault (a restart).
    Progress {
        /// What happens.
        message: String,
    },
    /// The fault is in place.
    Done {
        /// What was done.
        message: String,
    },
    /// The fault could not be injected; the lab is as it was, or the
    /// message says otherwise.
    Failed {
        /// Why.
        message: String,
    },
}

/// Errors of a fault request.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// The supervisor's socket cannot be reached.
    #[error("cannot reach the lab's supervisor at {path}: {source}")]
    Connect {
        /// The socket.
        path: std::path::PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The conversation broke off.
    #[error("the lab's supervisor stopped answering: {0}")]
    Io(#[from] std::io::Error),
    /// No final answer in time.
    #[error("no answer from the lab's supervisor within {0:?}")]
    Timeout(Duration),
    /// The supervisor refused or failed.
    #[error("{0}")]
    Failed(String),
}

/// Asks the supervisor listening on `socket` for `request`, passing each
/// progress message to `progress`; returns the final message.
pub async fn request(
    socket: &Path,
    request: &Request,
    timeout: Duration,
    mut progress: impl FnMut(&str),
) -> Result<String, FaultError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| FaultError::Connect {
            path: socket.to_owned(),
            source,
        })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_string(request).map_err(std::io::Error::other)?;
    line.push('\n');
    write.write_all(line.as_bytes()).await?;
    let mut lines = BufReader::new(read).lines();
    let answer = async {
        while let Some(line) = lines.next_line().await? {
            match serde_json::from_str::<Reply>(&line) {
                Ok(Reply::Progress { message }) => progress(&message),
                Ok(Reply::Done { message }) => return Ok(message),
                Ok(Reply::Failed { message }) => return Err(FaultError::Failed(message)),
                Err(e) => {
                    return Err(FaultError::Io(std::io::Error::other(format!(
                        "unreadable answer {line:?}: {e}"
                    ))))
                }
            }
        }
        Err(FaultError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "it closed the connection without an answer",
        )))
    };
    tokio::time::timeout(timeout, answer)
        .await
        .map_err(|_| FaultError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_are_json_lines() {
        let request = Request {
            node: "node2".into(),
            fault: Fault::Restart,
        };
        let text = serde_json::to_string(&request).unwrap();
        assert_eq!(text, r#"{"node":"node2","fault":"restart"}"#);
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), request);
        let done = Reply::Done {
            message: "ok".into(),
        };
        assert_eq!(
            serde_json::to_string(&done).unwrap(),
            r#"{"reply":"done","message":"ok"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"node":"n","fault":"explode"}"#).is_err());
    }

    #[tokio::test]
    async fn a_client_follows_progress_to_the_answer() {
        let dir = std::env::temp_dir().join(format!("vni-fault-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("control.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            let asked: Request =
                serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
            assert_eq!(asked.fault, Fault::Kill);
            for reply in [
                Reply::Progress {
                    message: "step".into(),
                },
                Reply::Failed {
                    message: "no such node".into(),
                },
            ] {
                let line = serde_json::to_string(&reply).unwrap() + "\n";
                write.write_all(line.as_bytes()).await.unwrap();
            }
        });
        let mut steps = Vec::new();
        let request = Request {
            node: "nodeX".into(),
            fault: Fault::Kill,
        };
        let got = super::request(&socket, &request, Duration::from_secs(5), |m| {
            steps.push(m.to_owned())
        })
        .await;
        server.await.unwrap();
        assert_eq!(steps, ["step"]);
        assert!(matches!(got, Err(FaultError::Failed(m)) if m == "no such node"));
        let gone = super::request(
            &dir.join("missing.sock"),
            &request,
            Duration::from_secs(1),
            |_| {},
        )
        .await;
        assert!(matches!(gone, Err(FaultError::Connect { .. })), "{gone:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
