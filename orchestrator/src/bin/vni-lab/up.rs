//! `up`, `down` and the hidden `supervise`: starting and stopping labs.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use tokio::signal::unix::{signal, SignalKind};
use vni_lab::lab::{self, LabDir, LaunchError, Mode, Prepared, Supervisor};
use vni_lab::own_kernel::KernelFlags;
use vni_lab::supervisor::{self, Event};
use vni_lab::topology::Topology;

use crate::Progress;

pub fn up(
    file: &Path,
    detach: bool,
    name: Option<String>,
    quiet: bool,
    keep_logs: Option<PathBuf>,
    kernel_flags: &KernelFlags,
) -> anyhow::Result<ExitCode> {
    let keep_logs = keep_logs
        .map(|p| std::path::absolute(&p).with_context(|| format!("--keep-logs {}", p.display())))
        .transpose()?;
    let exe = crate::own_exe()?;
    let runtime = crate::runtime::runtime()?;
    let mut progress = Progress::new(quiet);
    let Some(lab_file) = crate::load::read_lab(file, kernel_flags, &mut progress, "start")? else {
        eprintln!("vni-lab: nothing was started");
        return Ok(ExitCode::FAILURE);
    };
    let name = name.unwrap_or_else(|| lab_file.topology.name.clone());
    let prepared = match lab::prepare(&lab_file, &name, keep_logs.as_deref(), &mut progress) {
        Ok(prepared) => prepared,
        Err(e) if e.is_refusal() => {
            progress.done();
            eprintln!("vni-lab: {e}");
            eprintln!("vni-lab: nothing was started");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e).context("cannot start the lab"),
    };
    let result = runtime.block_on(drive(prepared, &exe, detach, &mut progress));
    progress.done();
    result
}

/// Starts the supervisor of `prepared` and follows it until the lab is up
/// (`detach`) or down again; Ctrl-C or SIGTERM tears it down.
async fn drive(
    prepared: Prepared,
    exe: &Path,
    detach: bool,
    progress: &mut Progress,
) -> anyhow::Result<ExitCode> {
    let topology = prepared.topology.clone();
    let mode = if detach { Mode::Detached } else { Mode::Tied };
    let mut supervisor = Supervisor::start(prepared, exe, mode, progress).await?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let signalled = async {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    };
    let after = match supervisor.until_ready(progress, signalled).await {
        Ok(after) => after,
        Err(e) => return Ok(failed(&e, progress)),
    };
    progress.done();
    let lab = supervisor.lab().clone();
    print_lab(&lab, &topology, after);
    show_traffic(&lab).await;
    if detach {
        println!(
            "Lab {} is up. Run commands with `vni-lab exec NODE -- CMD`; stop it with `vni-lab down {}`.",
            lab.name, lab.name
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "Lab {} is up. In another terminal: `vni-lab exec NODE -- CMD`. Ctrl-C tears it down.",
        lab.name
    );
    loop {
        let event = tokio::select! {
            event = supervisor.next() => event,
            _ = interrupt.recv() => { stop(&mut supervisor, progress); continue; }
            _ = terminate.recv() => { stop(&mut supervisor, progress); continue; }
        };
        match event {
            None => break,
            Some(Event::NodeExited { node, status }) => {
                progress.note(&format!("node {node}: QEMU exited ({status})"));
            }
            Some(_) => {}
        }
    }
    progress.done();
    match supervisor.wait().await {
        Ok(()) => {
            eprintln!("vni-lab: lab {} is down", lab.name);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Ok(failed(&e, progress)),
    }
}

/// Says why the lab is not up (or did not go down in order): the exit
/// status `up` ends with.
fn failed(e: &LaunchError, progress: &mut Progress) -> ExitCode {
    progress.done();
    eprintln!("vni-lab: {e}");
    match e {
        LaunchError::DidNotComeUp { .. } => {
            eprintln!("vni-lab: everything was torn down");
            ExitCode::FAILURE
        }
        // Asked for: the lab is gone, as it should be.
        LaunchError::Interrupted(_) => ExitCode::SUCCESS,
        LaunchError::Spawn(_) | LaunchError::Died { .. } => ExitCode::from(2),
    }
}

fn stop(supervisor: &mut Supervisor, progress: &mut Progress) {
    if supervisor.stop() {
        progress.note("tearing the lab down");
    }
}

/// Pings every other node from the first one and prints one line each:
/// `up`'s proof that frames cross the lab.
async fn show_traffic(lab: &LabDir) {
    let Ok(running) = lab::RunningLab::open(lab.clone()) else {
        return;
    };
    let topology = &running.topology;
    let Some(first) = topology.nodes.first() else {
        return;
    };
    for other in &topology.nodes[1..] {
        let ip = other.ip.addr().to_string();
        let line = match running
            .exec(
                &first.name,
                &["ping", "-q", "-c", "3", "-i", "0.2", "-W", "2", &ip],
                None,
                std::time::Duration::from_secs(20),
            )
            .await
        {
            Ok(out) => summarise_ping(&String::from_utf8_lossy(&out.stdout)),
            Err(e) => format!("cannot ping: {e}"),
        };
        let over = topology.network.label();
        println!(
            "  traffic: {} -> {} ({ip}) over {over}: {line}",
            first.name, other.name
        );
    }
}

/// "3/3 replies, rtt avg 2.1 ms" from ping's summary.
fn summarise_ping(out: &str) -> String {
    let counts = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .and_then(|l| {
            let nums: Vec<&str> = l.split_whitespace().collect();
            Some(format!("{}/{} replies", nums.get(3)?, nums.first()?))
        });
    let avg = out
        .lines()
        .find(|l| l.starts_with("rtt"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .map(|avg| format!(", rtt avg {avg} ms"));
    match counts {
        Some(counts) => format!("{counts}{}", avg.unwrap_or_default()),
        None => "no answer".into(),
    }
}

fn print_lab(lab: &LabDir, topology: &Topology, after: f64) {
    let state = lab.state().unwrap_or_default();
    println!("Lab {} up after {after:.1} s:", lab.name);
    println!(
        "  {:<12} {:<18} {:<17} {:>8}  {:>6}",
        "NODE", "ADDRESS", "MAC", "QEMU PID", "READY"
    );
    for node in &topology.nodes {
        let record = state.nodes.iter().find(|n| n.name == node.name);
        println!(
            "  {:<12} {:<18} {:<17} {:>8}  {:>5.1}s",
            node.name,
            node.ip.to_string(),
            node.mac.to_string(),
            record.map_or(0, |r| r.pid),
            record.and_then(|r| r.ready_after).unwrap_or(0.0)
        );
    }
}

pub fn down(name: Option<&str>, all: bool) -> anyhow::Result<ExitCode> {
    let run = lab::run_dir();
    let labs = if all {
        lab::list(&run)
    } else {
        vec![lab::find(&run, name)?]
    };
    for lab in labs {
        down_one(&lab)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Takes `lab` down and says so.
pub fn down_one(lab: &LabDir) -> anyhow::Result<()> {
    let down = lab.down()?;
    eprintln!("vni-lab: lab {} {down}", lab.name);
    Ok(())
}

pub fn supervise(dir: &Path, tied: bool) -> anyhow::Result<ExitCode> {
    if std::io::stdout().is_terminal() {
        bail!("`supervise` is started by `vni-lab up`, not by hand");
    }
    let lock = lab::launch::adopt_lock(dir)
        .with_context(|| format!("cannot take over the lock of {}", dir.display()))?;
    let code = supervisor::supervise(dir, lock, tied);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ping_summaries() {
        let out = "PING 10.10.0.2 (10.10.0.2) 56(84) bytes of data.\n\n--- 10.10.0.2 ping statistics ---\n3 packets transmitted, 3 received, 0% packet loss, time 403ms\nrtt min/avg/max/mdev = 1.881/4.052/7.562/2.504 ms\n";
        assert_eq!(super::summarise_ping(out), "3/3 replies, rtt avg 4.052 ms");
        let lost = "3 packets transmitted, 0 received, 100% packet loss, time 2030ms\n";
        assert_eq!(super::summarise_ping(lost), "0/3 replies");
        assert_eq!(super::summarise_ping(""), "no answer");
    }
}
