//! `vni-lab soak FILE`: the lab under mixed traffic for a long time, a
//! node killed or restarted at random every period, and at the end a
//! report: every fault, every test frame (none may arrive corrupted or
//! twice), every slot of the region accounted for.
//!
//! Each period, every node that is up receives test frames (`vni-frames
//! recv`) and sends a paced stream of checksummed frames of every size to
//! the next node up; two nodes the fault leaves alone run iperf3 TCP. A
//! third of the way in, the fault: a kill (the node stays down until a
//! later period restarts it) or a restart. At the end of the period the
//! tallies of the nodes that lived through it are read.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use vni_frames::{Sent, Tally};
use vni_lab::fault::{Fault, Request};
use vni_lab::lab::{LabDir, RunningLab};
use vni_lab::soak::{Accounting, Chaos, Event, Period, Soak};
use vni_lab::topology::Network;

use crate::Progress;

#[derive(clap::Args, Debug)]
pub struct Options {
    /// The lab file (YAML); topologies/four-node.yaml is the usual one.
    file: PathBuf,
    /// How long to soak.
    #[arg(long, default_value = "30m", value_parser = crate::parse_duration)]
    duration: Duration,
    /// A fault every this long (at least 40s).
    #[arg(long, default_value = "1m", value_parser = crate::parse_duration)]
    every: Duration,
    /// Seed of the faults (the same seed, the same nodes hit the same way).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Results folder (default: vni-lab-soak/<lab name>): results.json,
    /// report.md, logs/.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Plain lines only, and fewer of them.
    #[arg(short, long)]
    quiet: bool,
}

/// Pause between test frames of one sender.
const GAP_US: u64 = 10_000;

pub fn soak(options: Options) -> anyhow::Result<ExitCode> {
    let mut progress = Progress::new(options.quiet);
    let flags = vni_lab::own_kernel::KernelFlags::default();
    let Some(file) = crate::load::read_lab(&options.file, &flags, &mut progress, "soak")? else {
        eprintln!("vni-lab: nothing was run");
        return Ok(ExitCode::from(2));
    };
    let topology = file.topology.clone();
    if topology.network != Network::Vni {
        bail!(
            "{}: soak needs the VNI (network: vni)",
            options.file.display()
        );
    }
    if topology.nodes.len() < 3 {
        bail!(
            "{}: soak needs at least 3 nodes (one to hit, two to carry traffic); it has {}",
            options.file.display(),
            topology.nodes.len()
        );
    }
    if options.every < Duration::from_secs(40) {
        bail!("--every must be at least 40s (a restart under TCG takes 15-25 s)");
    }
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| Path::new("vni-lab-soak").join(&topology.name));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let logs = out.join("logs");
    let name = format!("soak-{}", topology.name);
    let mut soak = Soak {
        lab: name.clone(),
        nodes: topology.nodes.len(),
        seed: options.seed,
        duration: options.duration.as_secs_f64(),
        every: options.every.as_secs_f64(),
        ..Soak::default()
    };
    let started = Instant::now();
    let (runtime, mut interrupt) = crate::runtime::with_interrupt()?;
    let booted = crate::test::boot(&runtime, &file, &name, &logs, &mut progress, async {
        interrupt.recv().await;
    })?;
    progress.done();
    if let Err(why) = booted {
        eprintln!("vni-lab: the lab did not come up: {why}");
        write(&out, &soak)?;
        return Ok(ExitCode::FAILURE);
    }
    let lab = RunningLab::open(LabDir::new(&vni_lab::lab::run_dir(), &name))?;
    let interrupted = runtime.block_on(async {
        tokio::select! {
            () = run(&lab, &options, &out, &mut soak) => false,
            _ = interrupt.recv() => true,
        }
    });
    if interrupted {
        eprintln!("vni-lab: interrupted; accounting for the region and tearing down");
    }
    soak.end = runtime.block_on(finish(&lab));
    soak.elapsed = started.elapsed().as_secs_f64();
    crate::up::down_one(&lab.dir).context("tearing the soak's lab down")?;
    write(&out, &soak)?;
    let problems = soak.problems();
    let f = soak.frames();
    println!(
        "vni-lab soak {}: {} in {:.0} s: {} periods, {} test frames received, {} corrupted, {} delivered twice; {}",
        soak.lab,
        if problems.is_empty() { "PASSED" } else { "FAILED" },
        soak.elapsed,
        soak.periods.len(),
        f.received,
        f.damaged,
        f.duplicated,
        match &soak.end {
            Some(end) => format!("{} of {} slots free at the end", end.free, end.slots),
            None => "region not accounted for".to_owned(),
        }
    );
    for problem in &problems {
        println!("  problem: {problem}");
    }
    println!("Report: {}", out.join("report.md").display());
    Ok(if problems.is_empty() && !interrupted {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn write(out: &Path, soak: &Soak) -> anyhow::Result<()> {
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(soak)?,
    )?;
    std::fs::write(out.join("report.md"), soak.markdown())?;
    Ok(())
}

async fn run(lab: &RunningLab, options: &Options, out: &Path, soak: &mut Soak) {
    let topology = &lab.topology;
    let nodes = &topology.nodes;
    let mut up = vec![true; nodes.len()];
    let mut chaos = Chaos::new(options.seed);
    let call = topology.command_timeout;
    let started = Instant::now();
    let every = options.every;
    let traffic = every - Duration::from_secs(15);
    let base_run = 0x50a0_0000u32 ^ (options.seed as u32).wrapping_mul(7919);
    let mut index = 0u32;
    while started.elapsed() + every <= options.duration || index == 0 {
        let period_start = Instant::now();
        let at = started.elapsed().as_secs_f64();
        let run_id = base_run.wrapping_add(index);
        let (victim, event) = chaos.pick(&up);
        let live: Vec<usize> = (0..nodes.len()).filter(|&i| up[i]).collect();
        let mut period = Period {
            at,
            node: nodes[victim].name.clone(),
            event: Some(event),
            ..Period::default()
        };

        // Receivers first, then senders: each live node to the next.
        let recv_secs = traffic.as_secs() + 3;
        for &i in &live {
            let script = format!(
                "(vni-frames recv --run {run_id} --seconds {recv_secs} > /run/soak-recv-{run_id}.json 2>&1 &)"
            );
            if let Err(e) = lab.sh(&nodes[i].name, &script, call).await {
                period.notes.push(e);
            }
        }
        // Sending takes longer than the pauses add up to (each frame costs
        // a millisecond or two under TCG): aim at two thirds of the time,
        // so that every sender is done before its receivers stop.
        let count = traffic.as_micros() as u64 * 2 / 3 / GAP_US;
        for (k, &i) in live.iter().enumerate() {
            let to = &nodes[live[(k + 1) % live.len()]];
            let script = format!(
                "(vni-frames send --to {} --run {run_id} --count {count} --size 60 --max-size 1514 --step 97 --gap-us {GAP_US} \
                 > /run/soak-send-{run_id}.json 2>&1 &)",
                to.mac
            );
            if let Err(e) = lab.sh(&nodes[i].name, &script, call).await {
                period.notes.push(e);
            }
        }
        // TCP between two nodes the fault leaves alone.
        let spared: Vec<usize> = live.iter().copied().filter(|&i| i != victim).collect();
        let pair = (spared.len() >= 2).then(|| (spared[0], spared[1]));
        if let Some((a, b)) = pair {
            let server = "[ -f /run/iperf3.pid ] && kill -0 $(cat /run/iperf3.pid) 2>/dev/null || iperf3 -s -D -I /run/iperf3.pid";
            let client = format!(
                "(sleep 1; iperf3 -c {} -t {} -J > /run/soak-iperf-{run_id}.json 2>&1 &)",
                nodes[b].ip.addr(),
                traffic.as_secs().saturating_sub(5).max(5)
            );
            if let Err(e) = lab.sh(&nodes[b].name, server, call).await {
                period.notes.push(e);
            } else if let Err(e) = lab.sh(&nodes[a].name, &client, call).await {
                period.notes.push(e);
            }
        }

        // The fault, a third of the way in.
        tokio::time::sleep_until((period_start + every / 3).into()).await;
        inject(lab, &mut period, event).await;
        up[victim] = period.ok && event == Event::Restart;

        // The tallies of those that lived through it.
        tokio::time::sleep_until((period_start + traffic + Duration::from_secs(5)).into()).await;
        let survivors: Vec<usize> = live.iter().copied().filter(|&i| i != victim).collect();
        for &i in &survivors {
            let node = &nodes[i].name;
            let result = lab.sh(
                node,
                &format!(
                    "cd /run; cat soak-recv-{run_id}.json soak-send-{run_id}.json; rm -f soak-recv-{run_id}.json soak-send-{run_id}.json"
                ),
                call,
            )
            .await;
            match result {
                Ok(text) => {
                    let mut lines = text.lines().filter(|l| l.starts_with('{'));
                    match lines
                        .next()
                        .and_then(|l| serde_json::from_str::<Tally>(l).ok())
                    {
                        Some(tally) => period.frames.add_tally(&tally),
                        None => period.notes.push(format!("{node}: no receive tally")),
                    }
                    match lines
                        .next()
                        .and_then(|l| serde_json::from_str::<Sent>(l).ok())
                    {
                        Some(sent) => period.frames.sent += sent.sent,
                        None => period.notes.push(format!("{node}: no send count")),
                    }
                }
                Err(e) => period.notes.push(e),
            }
        }
        if let Some((a, _)) = pair.filter(|(a, b)| up[*a] && up[*b]) {
            let text = lab
                .sh(
                    &nodes[a].name,
                    &format!(
                        "cat /run/soak-iperf-{run_id}.json; rm -f /run/soak-iperf-{run_id}.json"
                    ),
                    call,
                )
                .await
                .unwrap_or_default();
            period.tcp_mbit = vni_lab::suite::parse_iperf(&text, false)
                .ok()
                .map(|r| r.bits_per_second / 1e6);
        }
        if !options.quiet {
            eprintln!(
                "vni-lab: [{:>5.0} s] {} {}: {} ({:.1} s); frames {} sent, {} received, {} corrupted; TCP {}",
                at,
                period.node,
                format!("{event:?}").to_lowercase(),
                if period.ok { "done" } else { "FAILED" },
                period.took,
                period.frames.sent,
                period.frames.received,
                period.frames.damaged,
                period.tcp_mbit.map_or("-".into(), |m| format!("{m:.0} Mbit/s"))
            );
        }
        soak.periods.push(period);
        let _ = write(out, soak);
        index += 1;
        tokio::time::sleep_until((period_start + every).into()).await;
    }
    // Every node back for the accounting.
    for (i, _) in up.iter().enumerate().filter(|(_, &u)| !u) {
        let mut period = Period {
            at: started.elapsed().as_secs_f64(),
            node: nodes[i].name.clone(),
            event: Some(Event::Restart),
            ..Period::default()
        };
        inject(lab, &mut period, Event::Restart).await;
        soak.periods.push(period);
    }
}

/// Asks the lab's supervisor for `event` on `period.node`; records whether
/// it was done, its message (or why not) and how long it took.
async fn inject(lab: &RunningLab, period: &mut Period, event: Event) {
    let request = Request {
        node: period.node.clone(),
        fault: match event {
            Event::Kill => Fault::Kill,
            Event::Restart => Fault::Restart,
        },
    };
    let started = Instant::now();
    match lab.fault(&request, |_| {}).await {
        Ok(message) => (period.ok, period.outcome) = (true, message),
        Err(e) => period.outcome = e.to_string(),
    }
    period.took = started.elapsed().as_secs_f64();
}

/// The region once the lab idles: every slot free, held or queued, every
/// node in RUN; waits up to 15 s for the drivers to give idle slots back.
async fn finish(lab: &RunningLab) -> Option<Accounting> {
    let (shm, topology) = (&lab.plan.shm, &lab.topology);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let region = vni_protocol::Region::open(shm).ok()?;
        let report = vni_protocol::inspect(&region).ok()?;
        let accounting = Accounting {
            slots: report.pool.slots,
            free: report.pool.free,
            held: report.nodes.iter().map(|n| n.slots_held).sum(),
            queued: report.nodes.iter().map(|n| n.slots_queued).sum(),
            not_running: topology
                .nodes
                .iter()
                .filter(|n| !report.runs(n.id))
                .map(|n| n.name.clone())
                .collect(),
            protocol_errors: report
                .nodes
                .iter()
                .map(|n| n.counters.protocol_errors)
                .sum(),
            lock_recoveries: report.lock.recoveries,
        };
        if (accounting.whole() && accounting.not_running.is_empty()) || Instant::now() >= deadline {
            return Some(accounting);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
