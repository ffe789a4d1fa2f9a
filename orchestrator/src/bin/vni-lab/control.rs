//! `status`, `exec` and `console`: looking at and into a running lab.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use vni_lab::agent::{AgentError, GuestAgent};
use vni_lab::lab::{self, LabDir, NodeState};
use vni_lab::topology::Topology;

/// Exit status when vni-lab itself fails around a guest command.
const EXEC_FAILED: u8 = 125;
/// Exit status when the guest cannot find or run the command.
const EXEC_NOT_FOUND: u8 = 127;
/// Timeout of one guest-agent call (not of the command).
const AGENT_CALL: Duration = Duration::from_secs(10);

/// The validated lab file a lab was started from.
fn topology(lab: &LabDir) -> anyhow::Result<Topology> {
    let plan = lab
        .plan()
        .with_context(|| format!("lab {} has no readable plan", lab.name))?;
    Topology::parse(&plan.topology_text, &plan.topology_path)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("lab {}'s recorded topology", lab.name))
}

/// A live lab and one of its nodes, or a message naming what exists.
fn node_of(name: Option<&str>, node: &str) -> anyhow::Result<(LabDir, Topology)> {
    let lab = lab::find(&lab::run_dir(), name)?;
    if !lab.is_live() {
        bail!(
            "lab {} is not running (left over by a killed vni-lab); `vni-lab down {}` cleans it",
            lab.name,
            lab.name
        );
    }
    let topology = topology(&lab)?;
    if topology.node(node).is_none() {
        let names: Vec<&str> = topology.nodes.iter().map(|n| n.name.as_str()).collect();
        bail!(
            "lab {} has no node {node:?}; its nodes: {}",
            lab.name,
            names.join(", ")
        );
    }
    Ok((lab, topology))
}

pub fn status(name: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let run = lab::run_dir();
    let labs = match name {
        Some(_) => vec![lab::find(&run, name)?],
        None => lab::list(&run),
    };
    let mut reports = Vec::new();
    for lab in &labs {
        let live = lab.is_live();
        let state = lab.state().unwrap_or_default();
        let topology = topology(lab).ok();
        let nodes: Vec<serde_json::Value> = state
            .nodes
            .iter()
            .map(|n| {
                let spec = topology.as_ref().and_then(|t| t.node(&n.name));
                let running = n.state != NodeState::Exited && lab::cmdline_mentions(n.pid, &lab.dir);
                serde_json::json!({
                    "name": n.name,
                    "state": if running || n.state == NodeState::Exited { n.state } else { NodeState::Exited },
                    "qemu_pid": n.pid,
                    "qemu_running": running,
                    "ready_after": n.ready_after,
                    "exit": n.exit,
                    "ip": spec.map(|s| s.ip.to_string()),
                    "mac": spec.map(|s| s.mac.to_string()),
                })
            })
            .collect();
        let plan = lab.plan();
        reports.push(serde_json::json!({
            "name": lab.name,
            "state": if !live { "leftover" } else if state.ready { "up" } else { "starting" },
            "dir": lab.dir,
            "supervisor_pid": state.supervisor,
            "started_at": state.started_at,
            "accel": plan.as_ref().map(|p| p.accel.clone()),
            "kernel_release": plan.as_ref().map(|p| p.kernel_release.clone()),
            "shm": state.shm,
            "nodes": nodes,
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(ExitCode::SUCCESS);
    }
    if reports.is_empty() {
        println!("No lab is up (labs live in {}).", run.display());
        return Ok(ExitCode::SUCCESS);
    }
    for r in &reports {
        let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
        println!(
            "Lab {}: {} ({}, kernel {}, supervisor pid {})",
            s(&r["name"]),
            s(&r["state"]),
            s(&r["accel"]).to_uppercase(),
            s(&r["kernel_release"]),
            r["supervisor_pid"]
        );
        println!(
            "  {:<12} {:<9} {:<18} {:<17} {:>8}",
            "NODE", "STATE", "ADDRESS", "MAC", "QEMU PID"
        );
        for n in r["nodes"].as_array().into_iter().flatten() {
            println!(
                "  {:<12} {:<9} {:<18} {:<17} {:>8}",
                s(&n["name"]),
                s(&n["state"]),
                s(&n["ip"]),
                s(&n["mac"]),
                n["qemu_pid"]
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Holds a node's agent lock: the agent channel takes one client at a time,
/// so concurrent `exec`s on one node queue here instead of colliding.
struct AgentLock(#[allow(dead_code, reason = "held for its flock")] File);

impl AgentLock {
    fn take(path: &Path, timeout: Duration) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let deadline = Instant::now() + timeout;
        loop {
            // SAFETY: flock on an fd we own; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(AgentLock(file));
            }
            if Instant::now() >= deadline {
                bail!("another vni-lab command holds this node's guest agent for over {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub fn exec(
    name: Option<&str>,
    node: &str,
    command: &[String],
    timeout: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let result = (|| -> anyhow::Result<ExitCode> {
        let (lab, topology) = node_of(name, node)?;
        let timeout = timeout.unwrap_or(topology.command_timeout);
        let _lock = AgentLock::take(&lab.agent_lock_path(node), timeout + AGENT_CALL)?;
        let socket = lab.node(node).agent;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let output = runtime.block_on(async {
            let agent = GuestAgent::connect(&socket, AGENT_CALL).await?;
            let args: Vec<&str> = command[1..].iter().map(String::as_str).collect();
            agent.exec(&command[0], &args, timeout).await
        });
        let output = match output {
            Ok(output) => output,
            Err(AgentError::Failed {
                what: "guest-exec",
                message,
            }) => {
                eprintln!("vni-lab: {node}: cannot run {:?}: {message}", command[0]);
                return Ok(ExitCode::from(EXEC_NOT_FOUND));
            }
            Err(e) => return Err(e).with_context(|| format!("{node}: {:?}", command[0])),
        };
        std::io::stdout().write_all(&output.stdout)?;
        std::io::stdout().flush()?;
        std::io::stderr().write_all(&output.stderr)?;
        Ok(match (output.code, output.signal) {
            (Some(code), _) => ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)),
            (None, Some(sig)) => ExitCode::from(u8::try_from(128 + (sig & 0x7f)).unwrap_or(1)),
            (None, None) => ExitCode::from(EXEC_FAILED),
        })
    })();
    result.or_else(|e| {
        eprintln!("vni-lab: {e:#}");
        Ok(ExitCode::from(EXEC_FAILED))
    })
}

pub fn console(name: Option<&str>, node: &str, follow: bool) -> anyhow::Result<ExitCode> {
    let lab = lab::find(&lab::run_dir(), name)?;
    let topology = topology(&lab)?;
    if topology.node(node).is_none() {
        let names: Vec<&str> = topology.nodes.iter().map(|n| n.name.as_str()).collect();
        bail!(
            "lab {} has no node {node:?}; its nodes: {}",
            lab.name,
            names.join(", ")
        );
    }
    let path = lab.node(node).console;
    let mut file = File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n > 0 {
            out.write_all(&buf[..n])?;
            continue;
        }
        out.flush()?;
        if !follow || !lab.dir.exists() {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(200));
        // A console file replaced under us (a restarted node) starts over.
        let pos = file.stream_position()?;
        if std::fs::metadata(&path)
            .map(|m| m.len() < pos)
            .unwrap_or(false)
        {
            file.seek(SeekFrom::Start(0))?;
        }
    }
}
