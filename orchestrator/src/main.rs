//! `vni-lab`: Mint-like labs of QEMU guests sharing one memory region.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vni_lab::host::HostFacts;
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
    /// Checks the host: QEMU, the accelerator labs will use (and why),
    /// shared memory. Exits 0 when labs can run, 1 when something is
    /// missing.
    Doctor {
        /// Install missing host packages with apt-get (needs root).
        #[arg(long)]
        install: bool,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Host packages labs need, by the command that proves them present.
const HOST_PACKAGES: &[(&str, &str)] = &[("qemu-system-x86_64", "qemu-system-x86")];

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
        Command::Doctor { install, json } => doctor(install, json),
    }
}

fn doctor(install: bool, json: bool) -> anyhow::Result<ExitCode> {
    let mut host = HostFacts::probe();
    if install && host.qemu.is_none() {
        anyhow::ensure!(
            host.root,
            "installing host packages needs root (apt-get); run as root or install qemu-system-x86"
        );
        let packages: Vec<&str> = HOST_PACKAGES.iter().map(|p| p.1).collect();
        eprintln!("vni-lab: installing {}", packages.join(" "));
        let ok =
            |cmd: &mut std::process::Command| cmd.status().map(|s| s.success()).unwrap_or(false);
        anyhow::ensure!(
            ok(std::process::Command::new("apt-get").args(["update", "-q"])),
            "apt-get update failed"
        );
        let mut apt = std::process::Command::new("apt-get");
        apt.env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&packages);
        anyhow::ensure!(
            ok(&mut apt),
            "apt-get install {} failed",
            packages.join(" ")
        );
        host = HostFacts::probe();
    }
    let accel = host
        .accel(topology::Accel::Auto)
        .context("choosing an accelerator")?;
    let ready = host.qemu.is_some();
    if json {
        let report = serde_json::json!({ "ready": ready, "host": host, "accel": accel });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let mark = |ok: bool| if ok { "ok     " } else { "MISSING" };
        match &host.qemu {
            Some(version) => println!("{} QEMU: {version}", mark(true)),
            None => println!("{} QEMU: qemu-system-x86_64 not found (vni-lab doctor --install, or apt-get install qemu-system-x86)", mark(false)),
        }
        println!("ok      accelerator: {} ({})", accel.accel, accel.reason);
        match host.shm_free {
            Some(free) => println!(
                "ok      /dev/shm: {} MiB free (a default lab region is 64 MiB)",
                free >> 20
            ),
            None => println!(
                "note    /dev/shm: not found; lab regions will live in the temporary directory"
            ),
        }
        println!(
            "note    user: {}",
            if host.root {
                "root"
            } else {
                "not root (installing packages needs root)"
            }
        );
    }
    Ok(if ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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
