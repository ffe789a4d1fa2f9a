//! The lab's guests as a test run sees them: one agent connection per node,
//! held (with the node's agent lock) for the whole run, and a diagnosis
//! when a node stops answering: panicked, QEMU gone, or hung.

use std::time::Duration;

use crate::agent::{AgentError, ExecOutput, GuestAgent};
use crate::lab::running::{HeldAgent, HoldError};
use crate::lab::{self, LabDir, NodeState};
use crate::logs;
use crate::supervisor;

/// Timeout of one agent call (not of the command it runs), before scaling.
const AGENT_CALL: Duration = Duration::from_secs(10);
/// Console lines shown when a node fails.
const CONSOLE_TAIL: usize = 25;

/// Why a case could not run: a test error, not a failure of the VNI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trouble {
    /// One line.
    pub message: String,
    /// More: a console tail, a command's output.
    pub details: Option<String>,
}

impl Trouble {
    /// A trouble with no details.
    pub fn new(message: impl Into<String>) -> Self {
        Trouble {
            message: message.into(),
            details: None,
        }
    }
}

struct Guest {
    name: String,
    /// Its agent, held for the run (with its lock), or why the node
    /// cannot be used (any more).
    agent: Result<HeldAgent, Trouble>,
}

/// Every node of a lab, reachable through its guest agent.
pub struct Guests {
    lab: LabDir,
    guests: Vec<Guest>,
    call: Duration,
    /// Commands started and not yet waited for: (node, pid).
    running: Vec<(String, i64)>,
}

impl std::fmt::Debug for Guests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let down: Vec<(&str, &str)> = self
            .guests
            .iter()
            .filter_map(|g| Some((g.name.as_str(), g.agent.as_ref().err()?.message.as_str())))
            .collect();
        f.debug_struct("Guests")
            .field("lab", &self.lab.name)
            .field("down", &down)
            .finish_non_exhaustive()
    }
}

impl Guests {
    /// Connects to every node's agent, taking its agent lock. A node that
    /// cannot be reached is recorded as down, with the reason.
    pub async fn connect(lab: &LabDir, nodes: &[String], scale: f64) -> Self {
        let call = AGENT_CALL.mul_f64(scale.max(1.0));
        let mut guests = Vec::new();
        for name in nodes {
            let agent = match HeldAgent::connect(lab, name, call, call).await {
                Ok(held) => Ok(held),
                Err(HoldError::Lock(e)) => Err(Trouble::new(format!("{name}: {e}"))),
                Err(HoldError::Agent(e)) => Err(diagnose(lab, name, &e)),
            };
            guests.push(Guest {
                name: name.clone(),
                agent,
            });
        }
        Guests {
            lab: lab.clone(),
            guests,
            call,
            running: Vec::new(),
        }
    }

    fn guest(&self, node: &str) -> &Guest {
        self.guests
            .iter()
            .find(|g| g.name == node)
            .expect("nodes come from the lab's topology")
    }

    /// Why `node` cannot be used, if it cannot.
    pub fn down(&self, node: &str) -> Option<&Trouble> {
        self.guest(node).agent.as_ref().err()
    }

    /// Marks `node` as unusable for the rest of the run.
    pub fn set_down(&mut self, node: &str, why: Trouble) {
        if let Some(g) = self.guests.iter_mut().find(|g| g.name == node) {
            if g.agent.is_ok() {
                g.agent = Err(why);
            }
        }
    }

    fn agent(&self, node: &str) -> Result<&GuestAgent, Trouble> {
        self.guest(node)
            .agent
            .as_ref()
            .map(|held| &held.agent)
            .map_err(Trouble::clone)
    }

    /// What a failed agent call means: the node is down (its trouble, and
    /// it is marked so) unless only the command was slow.
    fn failed(&mut self, node: &str, e: AgentError, what: &str) -> Trouble {
        match e {
            AgentError::Timeout {
                what: "a guest command to finish",
                after,
            } => Trouble::new(format!("{node}: {what} did not finish within {after:.0?}")),
            AgentError::Failed {
                what: "guest-exec",
                message,
            } => Trouble::new(format!("{node}: cannot run {what}: {message}")),
            e => {
                let trouble = diagnose(&self.lab, node, &e);
                self.set_down(node, trouble.clone());
                trouble
            }
        }
    }

    /// Starts `command` in `node` and returns its guest pid.
    pub async fn spawn(&mut self, node: &str, command: &[&str]) -> Result<i64, Trouble> {
        let result = self.agent(node)?.spawn(command[0], &command[1..]).await;
        let pid = result.map_err(|e| self.failed(node, e, command[0]))?;
        self.running.push((node.to_owned(), pid));
        Ok(pid)
    }

    /// Waits for the command `pid` in `node`; on timeout it is killed.
    pub async fn wait(
        &mut self,
        node: &str,
        pid: i64,
        what: &str,
        timeout: Duration,
    ) -> Result<ExecOutput, Trouble> {
        let result = self.agent(node)?.wait(pid, timeout).await;
        if result.is_err() {
            self.kill(node, pid).await;
        }
        self.running.retain(|(n, p)| !(n == node && *p == pid));
        result.map_err(|e| self.failed(node, e, what))
    }

    /// Runs `command` in `node` to its end, for at most `timeout`.
    pub async fn run(
        &mut self,
        node: &str,
        command: &[&str],
        timeout: Duration,
    ) -> Result<ExecOutput, Trouble> {
        let pid = self.spawn(node, command).await?;
        self.wait(node, pid, command[0], timeout).await
    }

    /// Runs a shell script in `node`.
    pub async fn sh(
        &mut self,
        node: &str,
        script: &str,
        timeout: Duration,
    ) -> Result<ExecOutput, Trouble> {
        self.run(node, &["/bin/sh", "-c", script], timeout).await
    }

    /// Kills every command a case started and left running (it ended
    /// early on an error), so none outlives its case.
    pub async fn kill_leftovers(&mut self) {
        for (node, pid) in std::mem::take(&mut self.running) {
            self.kill(&node, pid).await;
        }
    }

    /// Kills the command `pid` in `node` and reaps it, ignoring errors (it
    /// may have ended already).
    pub async fn kill(&mut self, node: &str, pid: i64) {
        self.running.retain(|(n, p)| !(n == node && *p == pid));
        let Ok(agent) = self.agent(node) else { return };
        let script = format!("kill -9 {pid} 2>/dev/null; true");
        let _ = agent.exec("/bin/sh", &["-c", &script], self.call).await;
        let _ = agent.wait(pid, Duration::from_millis(500)).await;
    }
}

/// Says why `node` does not answer: its kernel panicked, its QEMU exited,
/// or it hangs; with the console tail.
pub fn diagnose(lab: &LabDir, node: &str, error: &AgentError) -> Trouble {
    let console = logs::tail(&lab.node(node).console, CONSOLE_TAIL);
    let record = lab
        .state()
        .and_then(|s| s.nodes.into_iter().find(|n| n.name == node));
    let qemu_running = record
        .as_ref()
        .is_some_and(|r| r.state != NodeState::Exited && lab::cmdline_mentions(r.pid, &lab.dir));
    let message = if supervisor::panicked(&console) {
        format!("{node}: the guest kernel panicked")
    } else if !qemu_running {
        let exit = record
            .and_then(|r| r.exit)
            .unwrap_or_else(|| "status unknown".into());
        format!("{node}: its QEMU exited ({exit})")
    } else {
        format!("{node}: the guest does not answer its agent; it may hang ({error})")
    };
    Trouble {
        message,
        details: Some(format!("--- last lines of {node}'s console:\n{console}")),
    }
}
