//! One handle on a lab that is up, for every command that acts on one
//! (`exec`, `fault`, `inspect`, `shell`, `test`, `bench`, `soak`): the
//! lab found by name, the lab file it was started from, its nodes, a
//! command run in a node through its guest agent (queued on the node's
//! agent lock, so that commands of several vni-lab processes take turns),
//! and a fault asked of its supervisor.

use std::time::Duration;

use crate::agent::{AgentError, ExecOutput, GuestAgent};
use crate::fault::{self, FaultError, Request};
use crate::lab::{self, AgentLock, LabDir, LabError, Plan};
use crate::topology::{Node, Topology, TopologyError};

/// Timeout of one guest-agent call (not of the command it runs).
const AGENT_CALL: Duration = Duration::from_secs(10);

/// Why a running lab cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RunningError {
    /// No such lab, several, or its directory is unreadable.
    #[error(transparent)]
    Lab(#[from] LabError),
    /// Its supervisor is gone.
    #[error(
        "Lab {0} is not running (left over by a killed vni-lab); `vni-lab down {0}` cleans it"
    )]
    Leftover(String),
    /// It has no plan to read (it is still being prepared, or broken).
    #[error("Lab {0} has no readable plan")]
    NoPlan(String),
    /// The lab file it recorded does not parse any more (another
    /// vni-lab's format).
    #[error("Lab {lab}'s recorded lab file")]
    Topology {
        /// The lab.
        lab: String,
        /// What the parser said.
        #[source]
        source: TopologyError,
    },
    /// No such node.
    #[error("Lab {lab} has no node {node:?}; its nodes: {nodes}")]
    NoNode {
        /// The lab.
        lab: String,
        /// The node asked for.
        node: String,
        /// The nodes it has.
        nodes: String,
    },
}

/// A lab that is up (or was, when it was opened).
#[derive(Clone, Debug)]
pub struct RunningLab {
    /// Its directory.
    pub dir: LabDir,
    /// The plan its supervisor follows.
    pub plan: Plan,
    /// The lab file it was started from.
    pub topology: Topology,
}

impl RunningLab {
    /// The live lab called `name`, or the only one when `name` is `None`.
    pub fn find(name: Option<&str>) -> Result<RunningLab, RunningError> {
        let dir = lab::find(&lab::run_dir(), name)?;
        if !dir.is_live() {
            return Err(RunningError::Leftover(dir.name));
        }
        RunningLab::open(dir)
    }

    /// The lab in `dir`, live or not (its plan and lab file read).
    pub fn open(dir: LabDir) -> Result<RunningLab, RunningError> {
        let plan = dir
            .plan()
            .ok_or_else(|| RunningError::NoPlan(dir.name.clone()))?;
        let topology =
            Topology::parse(&plan.topology_text, &plan.topology_path).map_err(|source| {
                RunningError::Topology {
                    lab: dir.name.clone(),
                    source,
                }
            })?;
        Ok(RunningLab {
            dir,
            plan,
            topology,
        })
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        &self.dir.name
    }

    /// Node `name`, or an error naming the nodes there are.
    pub fn node(&self, name: &str) -> Result<&Node, RunningError> {
        self.topology
            .node(name)
            .ok_or_else(|| RunningError::NoNode {
                lab: self.dir.name.clone(),
                node: name.to_owned(),
                nodes: self
                    .topology
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Runs `command` in `node` through its guest agent, with `input` as
    /// its standard input, queued on the node's agent lock.
    pub async fn exec(
        &self,
        node: &str,
        command: &[&str],
        input: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<ExecOutput, AgentError> {
        let held = HeldAgent::connect(&self.dir, node, timeout + AGENT_CALL, AGENT_CALL)
            .await
            .map_err(|e| match e {
                HoldError::Agent(e) => e,
                lock @ HoldError::Lock(_) => AgentError::Failed {
                    what: "agent lock",
                    message: lock.to_string(),
                },
            })?;
        let (program, args) = command.split_first().ok_or_else(|| AgentError::Failed {
            what: "guest-exec",
            message: "no command".into(),
        })?;
        held.agent
            .exec_with_input(program, args, input, timeout)
            .await
    }

    /// Runs `script` with sh in `node`: its stdout, or why it failed (the
    /// agent, or a non-zero exit with its stderr), in one line that names
    /// the node.
    pub async fn sh(&self, node: &str, script: &str, timeout: Duration) -> Result<String, String> {
        let out = self
            .exec(node, &["/bin/sh", "-c", script], None, timeout)
            .await
            .map_err(|e| format!("{node}: {e}"))?;
        if out.code != Some(0) {
            return Err(format!(
                "{node}: `{script}` exited {:?}: {}",
                out.code,
                String::from_utf8_lossy(&out.stderr).trim_end()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Asks the lab's supervisor for `request`, each step of it on
    /// `progress`: its final message. Allows for a restart's boot.
    pub async fn fault(
        &self,
        request: &Request,
        progress: impl FnMut(&str),
    ) -> Result<String, FaultError> {
        let timeout =
            self.topology.boot_timeout + self.topology.command_timeout + Duration::from_secs(30);
        fault::request(&self.dir.control_socket(), request, timeout, progress).await
    }
}

/// A node's guest agent, connected while its agent lock is held: the agent
/// channel takes one client at a time, so every vni-lab command takes the
/// lock first and their calls never interleave. One `exec` holds it for a
/// call, a test run for the whole run.
#[derive(Debug)]
pub struct HeldAgent {
    /// The connection.
    pub agent: GuestAgent,
    _lock: AgentLock,
}

/// Why a [`HeldAgent`] could not be had.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    /// Another command held the node's agent lock for longer than the wait.
    #[error("{0}")]
    Lock(String),
    /// The agent did not answer.
    #[error(transparent)]
    Agent(#[from] AgentError),
}

impl HeldAgent {
    /// Takes `node`'s agent lock in the lab at `dir` (waiting at most
    /// `wait`), then connects to its agent, each call allowed `call`.
    pub async fn connect(
        dir: &LabDir,
        node: &str,
        wait: Duration,
        call: Duration,
    ) -> Result<HeldAgent, HoldError> {
        let path = dir.agent_lock_path(node);
        let lock = AgentLock::take(&path, wait)
            .map_err(|e| HoldError::Lock(format!("{}: {e}", path.display())))?;
        let agent = GuestAgent::connect(&dir.node(node).agent, call).await?;
        Ok(HeldAgent { agent, _lock: lock })
    }
}
