//! `vni-lab`: Mint-like labs of QEMU guests sharing one memory region.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vni_lab::host::{host_tools, on_path, HostFacts, Tool, IMAGE_TOOLS};
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
    /// Guest images.
    Image {
        #[command(subcommand)]
        action: ImageCommand,
    },
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

#[derive(Subcommand, Debug)]
enum ImageCommand {
    /// Builds the guest image (Debian kernel and a small root filesystem)
    /// unless an image of the same recipe and kernel is cached. Needs root
    /// (debootstrap). Prints the image directory.
    Build {
        /// Debian suite of the guests.
        #[arg(long, default_value = "bookworm")]
        suite: String,
        /// Build even when a cached image matches.
        #[arg(long)]
        force: bool,
        /// No progress output.
        #[arg(long)]
        quiet: bool,
    },
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
        Command::Doctor { install, json } => doctor(install, json),
        Command::Image {
            action:
                ImageCommand::Build {
                    suite,
                    force,
                    quiet,
                },
        } => {
            let mut progress = Progress::new(quiet);
            let image =
                vni_lab::image::ensure(&suite, &vni_lab::image::cache_dir(), force, &mut |s| {
                    progress.step(s)
                })
                .context("cannot build the guest image")?;
            progress.done();
            println!(
                "{} (kernel {}, initramfs {} MiB)",
                image.dir.display(),
                image.manifest.kernel_release,
                image.manifest.initrd_bytes >> 20
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Progress of long work: a spinner on a terminal, plain lines otherwise,
/// nothing with --quiet.
enum Progress {
    Quiet,
    Lines,
    Spinner(indicatif::ProgressBar),
}

impl Progress {
    fn new(quiet: bool) -> Self {
        use std::io::IsTerminal;
        if quiet {
            Progress::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            Progress::Spinner(bar)
        } else {
            Progress::Lines
        }
    }

    fn step(&mut self, what: &str) {
        match self {
            Progress::Quiet => {}
            Progress::Lines => eprintln!("vni-lab: {what}"),
            Progress::Spinner(bar) => bar.set_message(what.to_owned()),
        }
    }

    fn done(&mut self) {
        if let Progress::Spinner(bar) = self {
            bar.finish_and_clear();
        }
    }
}

fn doctor(install: bool, json: bool) -> anyhow::Result<ExitCode> {
    let missing = || -> Vec<Tool> { host_tools().filter(|(tool, _)| !on_path(tool)).collect() };
    let mut host = HostFacts::probe();
    if install && !missing().is_empty() {
        anyhow::ensure!(host.root, "installing host packages needs root (apt-get)");
        let mut packages: Vec<&str> = missing().iter().map(|m| m.1).collect();
        packages.sort_unstable();
        packages.dedup();
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
    let missing = missing();
    let ready = missing.is_empty();
    if json {
        let tools: serde_json::Map<String, serde_json::Value> = host_tools()
            .map(|(tool, _)| (tool.to_owned(), on_path(tool).into()))
            .collect();
        let report =
            serde_json::json!({ "ready": ready, "host": host, "accel": accel, "tools": tools });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        match &host.qemu {
            Some(version) => println!("ok      QEMU: {version}"),
            None => println!("MISSING QEMU: qemu-system-x86_64 not found"),
        }
        for (tool, package) in IMAGE_TOOLS {
            let state = if on_path(tool) { "ok     " } else { "MISSING" };
            println!("{state} {tool} (package {package}; builds the guest image)");
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
                "not root (building the image and installing packages need root)"
            }
        );
        if !ready {
            println!("\nInstall what is missing: vni-lab doctor --install (as root)");
        }
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
