//! `vni-driver`: runs inside a lab guest (built static, put in the guest's
//! initramfs by `vni-lab up`).

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use vni_driver::cli::{Cli, Cmd};
use vni_driver::device::Ivshmem;
use vni_driver::run::Config;

/// Doorbell vectors the lab's QEMUs give each node (the protocol's count).
const VECTORS: u32 = vni_protocol::DOORBELL_VECTORS as u32;

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vni-driver: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Run {
            node,
            mac,
            mtu,
            addresses,
            interface,
            notification,
            profile,
            busy_poll_us,
        } => {
            let config = Config {
                node,
                mac,
                mtu,
                addresses,
                interface,
                notification,
                profile,
                busy_poll: Duration::from_micros(busy_poll_us),
            };
            let stop = Arc::new(AtomicBool::new(false));
            for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
                signal_hook::flag::register(signal, stop.clone())?;
            }
            let stats = vni_driver::run::run(&config, &stop)?;
            eprintln!("vni-driver: stopped ({stats:?})");
            if profile {
                let mut json = stats.profile.to_json();
                json["doorbells"] = stats.doorbells.into();
                eprintln!("vni-driver: profile {json}");
            }
        }
        Cmd::HoldLock {
            node,
            mac,
            peer_node,
        } => {
            let region = Arc::new(Ivshmem::open(VECTORS)?.map_region()?);
            let mut ep = vni_protocol::Endpoint::attach(region, node, mac)?;
            ep.set_state(vni_protocol::NodeState::Run)?;
            ep.freeze_inside_lock(peer_node)?;
            println!("holding");
            std::io::stdout().flush()?;
            loop {
                std::thread::park();
            }
        }
        Cmd::Rogue {
            node,
            mac,
            seconds,
            rate,
            seed,
        } => println!("{}", rogue(node, mac, seconds, rate, seed)?),
        Cmd::Probe => probe(&Ivshmem::open(VECTORS)?)?,
        Cmd::Ring { peer, vector } => Ivshmem::open(VECTORS)?.ring(peer, vector),
        Cmd::Bells {
            peer,
            count,
            answer,
        } => {
            let device = Ivshmem::open(VECTORS)?;
            if answer {
                answer_bells(&device, peer)?;
            } else {
                let rtts = ring_bells(&device, peer, count)?;
                println!("{rtts}");
            }
        }
        Cmd::Wait { vector, timeout } => {
            let device = Ivshmem::open(VECTORS)?;
            println!("armed");
            std::io::stdout().flush()?;
            let count = device.wait(vector, Duration::from_secs(timeout))?;
            if count == 0 {
                println!("timeout");
                return Ok(ExitCode::FAILURE);
            }
            println!("doorbell {count}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The rogue node: damage for `seconds`, heartbeat kept, attached again
/// when fenced; what it did as JSON.
fn rogue(
    node: usize,
    mac: vni_protocol::MacAddr,
    seconds: u64,
    rate: u32,
    seed: u64,
) -> anyhow::Result<serde_json::Value> {
    use vni_sim::hostile::{Rogue, ROGUE_ATTACKS};
    let region = Arc::new(Ivshmem::open(VECTORS)?.map_region()?);
    let attach = || -> anyhow::Result<vni_protocol::Endpoint> {
        let mut ep = vni_protocol::Endpoint::attach(region.clone(), node, mac)?;
        ep.set_state(vni_protocol::NodeState::Run)?;
        Ok(ep)
    };
    let mut ep = Some(attach()?);
    let mut rogue = Rogue::new(region.clone(), node, seed)?;
    let mut done = [0u64; ROGUE_ATTACKS.len()];
    let (mut fenced, mut attaches) = (0u64, 1u64);
    let step = Duration::from_secs(1) / rate.max(1);
    let until = std::time::Instant::now() + Duration::from_secs(seconds);
    let mut last_attach = std::time::Instant::now();
    while std::time::Instant::now() < until {
        done[rogue.step()] += 1;
        let ticked = ep.as_mut().map(|e| e.tick().is_ok());
        match ticked {
            Some(true) => {}
            Some(false) => {
                fenced += 1;
                ep = None;
            }
            // Back as a new incarnation, as a broken driver would be.
            None if last_attach.elapsed() >= Duration::from_secs(1) => {
                last_attach = std::time::Instant::now();
                if let Ok(e) = attach() {
                    ep = Some(e);
                    attaches += 1;
                }
            }
            None => {}
        }
        std::thread::sleep(step);
    }
    let attacks: serde_json::Map<String, serde_json::Value> = ROGUE_ATTACKS
        .iter()
        .zip(done)
        .map(|(name, n)| ((*name).to_owned(), n.into()))
        .collect();
    Ok(serde_json::json!({
        "steps": done.iter().sum::<u64>(),
        "attacks": attacks,
        "fenced": fenced,
        "attaches": attaches,
    }))
}

/// Rings `peer` and waits for its answer, `count` times after a first
/// answer says it listens; the round trips as JSON.
fn ring_bells(device: &Ivshmem, peer: u16, count: u32) -> anyhow::Result<serde_json::Value> {
    // The peer may still be arming its vectors: a doorbell before that is
    // lost, so ring until one is answered, then drop late answers.
    let mut answered = false;
    for _ in 0..100 {
        device.ring(peer, 0);
        if device.wait(0, Duration::from_millis(200))? > 0 {
            answered = true;
            break;
        }
    }
    if !answered {
        anyhow::bail!("peer {peer} did not answer a doorbell within 20 s");
    }
    std::thread::sleep(Duration::from_millis(300));
    while device.wait(0, Duration::ZERO)? > 0 {}
    let mut samples = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let start = std::time::Instant::now();
        device.ring(peer, 0);
        if device.wait(0, Duration::from_secs(2))? == 0 {
            anyhow::bail!(
                "peer {peer} stopped answering after {} doorbells",
                samples.len()
            );
        }
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    let n = samples.len().max(1);
    Ok(serde_json::json!({
        "count": samples.len(),
        "p50_us": samples.get(n / 2).or(samples.last()).copied().unwrap_or(0.0),
        "mean_us": samples.iter().sum::<f64>() / n as f64,
        "min_us": samples.first().copied().unwrap_or(0.0),
        "max_us": samples.last().copied().unwrap_or(0.0),
    }))
}

/// Answers every doorbell with one to `peer`, until none came for 3 s.
fn answer_bells(device: &Ivshmem, peer: u16) -> anyhow::Result<()> {
    while device.wait(0, Duration::from_secs(3))? > 0 {
        device.ring(peer, 0);
    }
    Ok(())
}

fn probe(device: &Ivshmem) -> anyhow::Result<()> {
    let region = device.map_region()?;
    let layout = match vni_protocol::Layout::read(&region) {
        Ok((layout, epoch)) => serde_json::json!({
            "config": layout.geometry.config.number(),
            "slots": layout.geometry.slot_count,
            "slot_size": layout.geometry.slot_size,
            "max_nodes": layout.geometry.max_nodes,
            "epoch": epoch,
        }),
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    };
    let report = serde_json::json!({
        "device": device.bdf(),
        "position": device.position()?,
        "region_bytes": device.region_len(),
        "layout": layout,
    });
    println!("{report}");
    Ok(())
}
