//! `status`, `exec` and `console`: looking at and into a running lab.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use vni_lab::agent::AgentError;
use vni_lab::lab::{self, LabDir, NodeState, RunningLab};
use vni_lab::topology::Topology;

/// Exit status when vni-lab itself fails around a guest command.
const EXEC_FAILED: u8 = 125;
/// Exit status when the guest cannot find or run the command.
const EXEC_NOT_FOUND: u8 = 127;

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
        let topology = RunningLab::open(lab.clone()).ok().map(|r| r.topology);
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

/// The most standard input `exec` passes on: the guest agent carries it in
/// one message (base64, so a third more), and QEMU's guest agent reads
/// messages of up to 64 MiB.
pub const EXEC_STDIN_MAX: u64 = 16 << 20;

/// Standard input for the guest command: all of it when `force` or when
/// it is not a terminal, nothing (`None`) when it is empty or a terminal.
fn exec_input(force: bool) -> anyhow::Result<Option<Vec<u8>>> {
    use std::io::{IsTerminal as _, Read as _};
    let stdin = std::io::stdin();
    if !force && stdin.is_terminal() {
        return Ok(None);
    }
    let mut data = Vec::new();
    stdin
        .lock()
        .take(EXEC_STDIN_MAX + 1)
        .read_to_end(&mut data)
        .context("cannot read standard input")?;
    if data.len() as u64 > EXEC_STDIN_MAX {
        anyhow::bail!(
            "standard input holds more than {} MiB, the most `exec` passes to a guest command",
            EXEC_STDIN_MAX >> 20
        );
    }
    Ok((!data.is_empty()).then_some(data))
}

pub fn exec(
    name: Option<&str>,
    node: &str,
    command: &[String],
    timeout: Option<Duration>,
    stdin: bool,
) -> anyhow::Result<ExitCode> {
    let result = (|| -> anyhow::Result<ExitCode> {
        let lab = RunningLab::find(name)?;
        lab.node(node)?;
        let timeout = timeout.unwrap_or(lab.topology.command_timeout);
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        let input = exec_input(stdin)?;
        let runtime = crate::runtime::runtime()?;
        let output = match runtime.block_on(lab.exec(node, &args, input, timeout)) {
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
    let lab = RunningLab::open(lab::find(&lab::run_dir(), name)?)?;
    lab.node(node)?;
    let path = lab.dir.node(node).console;
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
        if !follow || !lab.dir.dir.exists() {
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

pub fn inspect(
    name: Option<&str>,
    json: bool,
    watch: Option<Duration>,
) -> anyhow::Result<ExitCode> {
    let running = RunningLab::open(lab::find(&lab::run_dir(), name)?)?;
    let (lab, topology) = (&running.dir, &running.topology);
    let shm = lab
        .state()
        .and_then(|s| s.shm)
        .with_context(|| format!("lab {} has no shared memory yet", lab.name))?;
    let region = vni_protocol::Region::open(&shm)
        .with_context(|| format!("cannot map {}", shm.display()))?;
    loop {
        let report = vni_protocol::inspect(&region)
            .map_err(|e| anyhow::anyhow!("the region of lab {} is not readable: {e}", lab.name))?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            if watch.is_some() {
                print!("\x1b[H\x1b[2J");
            }
            print_region(lab, topology, &report);
        }
        match watch {
            Some(every) if lab.is_live() => std::thread::sleep(every),
            _ => return Ok(ExitCode::SUCCESS),
        }
    }
}

fn print_region(lab: &LabDir, topology: &Topology, r: &vni_protocol::RegionReport) {
    let g = &r.geometry;
    // What fails the protocol's validation prints as `?`: a misbehaving
    // node wrote it, and it is no figure.
    let checked = |ok: bool, value: String| if ok { value } else { "?".to_string() };
    println!(
        "Lab {}: buffer configuration {}, {} slots of {} bytes, {} free; lock {} (holder {}, {} recoveries)",
        lab.name,
        g.config.number(),
        r.pool.slots,
        g.slot_size,
        checked(r.trusted("pool.free"), r.pool.free.to_string()),
        if r.lock.held { "held" } else { "free" },
        r.lock
            .holder
            .node
            .map_or("none".into(), |n| n.to_string()),
        checked(r.trusted("lock.recoveries"), r.lock.recoveries.to_string())
    );
    println!(
        "  {:<3} {:<10} {:<6} {:<17} {:>5} {:>6} {:>6} {:>10} {:>10} {:>8} {:>8} {:>6}",
        "ID",
        "NODE",
        "STATE",
        "MAC",
        "BELL",
        "HELD",
        "QUEUE",
        "TX FRAMES",
        "RX FRAMES",
        "TX DROP",
        "RX DROP",
        "ERRORS"
    );
    let mut any_untrusted = !r.untrusted.is_empty();
    for n in &r.nodes {
        let name = topology
            .nodes
            .get(n.id)
            .map_or("-", |node| node.name.as_str());
        if n.state == Some(vni_protocol::NodeState::Reset)
            && topology.nodes.get(n.id).is_none()
            && n.untrusted.is_empty()
        {
            continue;
        }
        any_untrusted |= !n.untrusted.is_empty();
        let counter = |v: u64| checked(n.trusted("counters"), v.to_string());
        println!(
            "  {:<3} {:<10} {:<6} {:<17} {:>5} {:>6} {:>6} {:>10} {:>10} {:>8} {:>8} {:>6}",
            n.id,
            name,
            n.state
                .map_or("?".into(), |s| format!("{s:?}").to_uppercase()),
            checked(n.trusted("mac"), n.mac.to_string()),
            n.doorbell_peer.map_or("-".into(), |p| p.to_string()),
            n.slots_held,
            checked(n.trusted("queue_depth"), n.queue_depth.to_string()),
            counter(n.counters.tx_frames),
            counter(n.counters.rx_frames),
            counter(n.counters.tx_dropped),
            counter(n.counters.rx_dropped),
            counter(n.counters.protocol_errors)
        );
    }
    if any_untrusted {
        let mut fields: Vec<String> = r.untrusted.iter().map(|f| f.to_string()).collect();
        for n in &r.nodes {
            fields.extend(n.untrusted.iter().map(|f| format!("node {} {f}", n.id)));
        }
        println!(
            "  ? = fails the protocol's validation (a misbehaving node wrote it): {}",
            fields.join(", ")
        );
    }
}
