//! `vni-sim`: runs VNI nodes as host processes sharing one region file.
//!
//! - `vni-sim stress`: every byte and the per-pair order of random-size
//!   frames among N nodes, then an audit that every slot is back.
//! - `vni-sim bench`: frames/s and GB/s per configuration, node count and
//!   frame size, against this machine's memcpy bandwidth in the same run.
//!
//! `worker` and `hold-lock` are internal: the coordinator and the crash
//! test start them.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use vni_protocol::{BufferConfig, Endpoint, MacAddr, NodeState, Region};
use vni_sim::{self as sim, Pattern, Sizes, WorkerPlan};

mod bench;

#[derive(Parser, Debug)]
#[command(
    name = "vni-sim",
    version,
    about = "Runs VNI nodes as processes on one shared region: stress test and benchmark"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Sends random-size frames (1 B to 64 KiB) among N processes, checks
    /// every byte and the order per sender-receiver pair, then checks that
    /// every slot is back in the pool. Exits 1 on any problem.
    Stress {
        /// Nodes (processes).
        #[arg(long, default_value_t = 4)]
        nodes: usize,
        /// Buffer configuration: 1 (per-pair rings) or 2 (shared pool).
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=2))]
        config: u32,
        /// Frames per sender-receiver pair.
        #[arg(long, default_value_t = 20_000)]
        frames_per_pair: u64,
        /// Region size in MiB.
        #[arg(long, default_value_t = 64)]
        region_mib: usize,
        /// Slot size in bytes (a multiple of 64).
        #[arg(long, default_value_t = vni_protocol::Geometry::DEFAULT_SLOT_SIZE)]
        slot_size: u32,
        /// Seed of frame sizes and contents.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Who sends to whom.
        #[arg(long, value_enum, default_value_t = Pattern::AllToAll)]
        pattern: Pattern,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Measures frames/s and GB/s (see docs/src/benchmarks.md#the-protocol-on-the-host-vni-sim-bench).
    Bench(bench::BenchArgs),
    /// Internal: one node of a run (JSON plan as argument).
    #[command(hide = true)]
    Worker { plan: String },
    /// Internal, for crash tests: attach, take the lock, leave buffer
    /// management half changed, print HOLDING, and hang.
    #[command(hide = true)]
    HoldLock {
        #[arg(long)]
        region: PathBuf,
        #[arg(long)]
        node: usize,
        #[arg(long)]
        dest: usize,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vni-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Worker { plan } => {
            let plan: WorkerPlan = serde_json::from_str(&plan).context("bad worker plan")?;
            let report =
                sim::run_worker(&plan).with_context(|| format!("worker for node {}", plan.node))?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Stress {
            nodes,
            config,
            frames_per_pair,
            region_mib,
            slot_size,
            seed,
            pattern,
            timeout_secs,
        } => {
            let config = BufferConfig::from_number(config).context("config must be 1 or 2")?;
            let plan = WorkerPlan {
                region: PathBuf::new(),
                node: 0,
                nodes,
                pattern,
                sizes: Sizes::Mixed,
                frames_per_pair,
                duration_ms: 0,
                seed,
            };
            let exe = std::env::current_exe()?;
            let report = sim::run(
                &exe,
                config,
                region_mib << 20,
                slot_size,
                &plan,
                Duration::from_secs(timeout_secs),
            )?;
            let frames: u64 = report.workers.iter().map(|w| w.received).sum();
            let bytes: u64 = report.workers.iter().map(|w| w.received_bytes).sum();
            let secs = report.workers.iter().map(|w| w.seconds).fold(0.0, f64::max);
            println!(
                "stress: config {config}, {nodes} nodes: {frames} frames, {:.2} GB checked in {secs:.1} s; pool {}/{} free after",
                bytes as f64 / 1e9,
                report.region_after.pool.free,
                report.region_after.pool.slots
            );
            let problems = report.problems(&plan);
            for p in &problems {
                println!("  problem: {p}");
            }
            Ok(if problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Bench(args) => bench::run(&args),
        Command::HoldLock { region, node, dest } => {
            let region = Arc::new(Region::open(&region)?);
            let mut ep = Endpoint::attach(region, node, MacAddr::for_node(node))?;
            ep.set_state(NodeState::Run)?;
            let start = std::time::Instant::now();
            while ep.running_peers() & 1 << dest == 0 {
                if start.elapsed() > Duration::from_secs(30) {
                    bail!("node {dest} never came up");
                }
                ep.tick()?;
                std::thread::sleep(Duration::from_millis(1));
            }
            ep.freeze_inside_lock(dest)?;
            println!("HOLDING");
            std::io::stdout().flush()?;
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}
