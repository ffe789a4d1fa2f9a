//! `vni-lab`: Mint-like labs of QEMU guests sharing one memory region.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vni_lab::topology::{self, Topology, TopologyError};

#[derive(Parser, Debug)]
#[command(
    name = "vni-lab",
    version,
    about = "Mint-like labs: QEMU guests that share one memory region and talk through the VNI",
    after_help = "Lab files are described in README.md (\"Topology files\"); topologies/schema.json is their JSON Schema."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Checks a lab file and prints what it describes. Exits 0 when it is
    /// valid, 1 when it is not (every problem listed with file:line:col),
    /// 2 when it cannot be read.
    Validate {
        /// The lab file (YAML).
        file: PathBuf,
        /// Print the validated lab as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Prints the JSON Schema of lab files (for editors).
    Schema,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vni-lab: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { file, json } => match Topology::load(&file) {
            Ok(lab) if json => {
                println!("{}", serde_json::to_string_pretty(&lab)?);
                Ok(ExitCode::SUCCESS)
            }
            Ok(lab) => {
                print_summary(&file, &lab);
                Ok(ExitCode::SUCCESS)
            }
            Err(e @ TopologyError::Invalid { .. }) => {
                eprintln!("{e}");
                Ok(ExitCode::FAILURE)
            }
            Err(e) => Err(e).context("cannot validate"),
        },
        Command::Schema => {
            println!("{}", serde_json::to_string_pretty(&topology::schema())?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_summary(file: &std::path::Path, lab: &Topology) {
    let g = &lab.vni.geometry;
    println!(
        "{}: lab {:?} is valid: {} nodes, {} MiB shared, buffer configuration {}, {} slots of {} bytes, MTU {}",
        file.display(),
        lab.name,
        lab.nodes.len(),
        lab.shared_memory >> 20,
        g.config,
        g.slot_count,
        g.slot_size,
        lab.vni.mtu
    );
    for n in &lab.nodes {
        let pinned = if n.host_cpus.is_empty() {
            String::new()
        } else {
            format!(", host CPUs {:?}", n.host_cpus)
        };
        println!(
            "  {:<12} {:<18} {}  {} vCPU, {} MiB{pinned}",
            n.name,
            n.ip.to_string(),
            n.mac,
            n.vcpus,
            n.memory >> 20
        );
    }
}
