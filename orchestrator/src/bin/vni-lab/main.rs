//! `vni-lab`: Mint-like labs of QEMU guests sharing one memory region.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod bench;
mod control;
mod fault;
mod install;
mod load;
mod progress;
mod runtime;
mod shell;
mod soak;
mod test;
mod up;

use progress::Progress;
use vni_lab::host::{host_tools, missing, on_path, HostFacts, IMAGE_TOOLS};
use vni_lab::topology::{self, Topology, TopologyError};

#[derive(Parser, Debug)]
#[command(
    name = "vni-lab",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("VNI_LAB_COMMIT"), ")"),
    about = "Mint-like labs: QEMU guests that share one memory region and talk through the VNI",
    after_help = "Lab files are described in docs/src/lab-files.md; topologies/schema.json is their JSON Schema."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Boots a lab and waits until every node runs on the region.
    ///
    /// Boots a lab: one QEMU guest per node, all sharing one memory region
    /// (ivshmem), starts the VNI driver in each, waits until every node is
    /// running on the region, and shows a ping across it. Builds the guest
    /// image first when it is missing, and installs missing host packages
    /// when run as root. In the foreground, Ctrl-C tears the lab down.
    /// --kernel, --modules, --initrd, --append and --kernel-tree replace
    /// the lab file's guest settings; a kernel of one's own is checked
    /// first (its .config, else its modules) and refused, before anything
    /// boots, with the options it lacks. Exits 0 once the lab is up
    /// (--detach) or torn down, 1 when the lab file is invalid, the kernel
    /// lacks what the lab needs or a node fails to boot, 2 on other errors.
    Up {
        /// The lab file (YAML).
        file: PathBuf,
        /// Return once every node is ready and leave the lab running
        /// (stop it with `vni-lab down`).
        #[arg(short, long)]
        detach: bool,
        /// Run the lab under this name instead of the file's (to run two
        /// labs of one file at once).
        #[arg(long)]
        name: Option<String>,
        /// Plain lines only, and fewer of them.
        #[arg(short, long)]
        quiet: bool,
        /// When the lab goes down (or fails to come up), copy every node's
        /// console and QEMU log, and the supervisor's log, into this
        /// directory.
        #[arg(long, value_name = "DIR")]
        keep_logs: Option<PathBuf>,
        #[command(flatten)]
        kernel: vni_lab::own_kernel::KernelFlags,
    },
    /// Runs the VNI checks on a lab (JUnit, JSON, artifacts).
    ///
    /// Tests a lab's VNI: boots the lab (or uses it when it is up), checks
    /// every node (driver, interface, MTU, region), then runs raw-frame
    /// checks with pnet (unicast, broadcast, multicast, every frame size,
    /// a burst, echo round trips), an nc string and iperf3 TCP and UDP on
    /// each node pair, and finally checks the region (every slot back, no
    /// protocol errors). Which checks run and their thresholds come from
    /// the file's `tests:` section, and, last, a `kernel` case per node:
    /// its console must show no crash fingerprint (BUG:, Oops, WARNING:,
    /// ...). Prints a line per case (or, with --format ktap|json, the
    /// report on stdout and the lines on stderr); writes JSON, JUnit XML,
    /// KTAP, consoles and driver logs to the artifacts folder. The kernel
    /// flags are `up`'s: `vni-lab test LAB --kernel-tree . --ktap
    /// results.ktap` tests a kernel tree's kernel. Takes
    /// down a lab it started. Exits 0 when every case passed, 1 when one
    /// failed or could not run (a boot failure included), 2 when nothing
    /// could be run (an invalid file, bad options).
    Test(test::Options),
    /// Measures the VNI against virtio-net: latency, throughput, loss.
    ///
    /// Measures latency, throughput and loss: each case (node count, MTU,
    /// the VNI in buffer configuration 2 or 1 with interrupts or polling,
    /// with the user-space or the kernel driver, or virtio-net on the same
    /// guests, over QEMU's networking or bridged TAPs) boots a lab of its own derived
    /// from FILE, then runs raw-frame echo and ping round trips, iperf3
    /// TCP on one pair and on all pairs at once (sampling the region's
    /// buffer use and counting drops), and a UDP sweep up to saturation.
    /// Writes results.json, report.md (tables, VNI / virtio-net ratios,
    /// where the driver's time goes) and SVG plots. The default sweep
    /// (30 cases) takes about 45 minutes under TCG; --quick about three.
    /// Exits 0 when every case was measured, 1 when one could not be, 2
    /// on an invalid file
    Bench(bench::Options),
    /// Kills, pauses, resumes or restarts a node, or runs a rogue.
    ///
    /// Injects a fault into a running lab: kills a node's QEMU (SIGKILL;
    /// with --holding-lock, while a stand-in for its driver holds the
    /// region's lock), pauses or resumes its vCPUs, restarts it with the
    /// same identity (waiting until its VNI driver is in RUN again), or
    /// runs a rogue in place of its driver that writes garbage into the
    /// region for --duration. Exits 0 once the fault is in place, 1 when
    /// the lab refused it (the node is not running, say), 2 on other
    /// errors.
    Fault(fault::Options),
    /// Runs mixed traffic and random faults on a lab for a long time.
    ///
    /// Soaks a lab (not for CI: 30 minutes by default): mixed traffic on
    /// every node (paced streams of checksummed test frames of every size
    /// around the ring of nodes, iperf3 TCP between two), a node killed or
    /// restarted at random every period, and a report at the end: every
    /// fault, every frame (none may arrive corrupted or twice), every slot
    /// of the region accounted for. Writes results.json and report.md.
    /// Exits 0 when all held, 1 when not, 2 on an invalid file.
    Soak(soak::Options),
    /// Tears a lab down and cleans what it left.
    ///
    /// Tears a lab down: every QEMU, the ivshmem server, the shared memory,
    /// the lab directory. Also cleans a lab left over by a killed vni-lab.
    Down {
        /// The lab (default: the only one up).
        lab: Option<String>,
        /// Tear down every lab.
        #[arg(long, conflicts_with = "lab")]
        all: bool,
    },
    /// Shows the labs that are up and their nodes.
    Status {
        /// One lab only.
        lab: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Runs a command in a node.
    ///
    /// Runs a command in a node through its guest agent. The command's
    /// stdout, stderr and exit status become vni-lab's own (128+N when a
    /// signal N killed it; 125 when vni-lab itself failed; 127 when the
    /// command was not found). Standard input, when it is not a terminal,
    /// is read to its end first and becomes the command's (at most
    /// 16 MiB): `echo hi | vni-lab exec node1 -- cat`.
    Exec {
        /// The lab (default: the only one up).
        #[arg(long)]
        lab: Option<String>,
        /// Pass standard input on even when it is a terminal (read to its
        /// end, Ctrl-D, before the command starts).
        #[arg(short, long)]
        interactive: bool,
        /// Give up after this long (default: the lab's timeouts.command).
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<std::time::Duration>,
        /// The node.
        node: String,
        /// The command and its arguments (after `--`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Shows the shared region: nodes, lock, pool, queues, counters.
    ///
    /// Prints the lab's shared region as it is now, read from the host:
    /// nodes and their states, the lock, pool use per node, queue depths,
    /// counters, protocol errors.
    Inspect {
        /// The lab (default: the only one up).
        lab: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Print again every this many seconds until interrupted.
        #[arg(long, value_parser = parse_duration)]
        watch: Option<std::time::Duration>,
    },
    /// Opens an interactive shell on a node.
    ///
    /// Opens an interactive login shell (bash, as root) on a node, with
    /// this terminal: its window size is passed on, Ctrl-] leaves (the
    /// shell is hung up), `exit` ends it. Up to 4 shells per node at once;
    /// they do not use the guest agent, so they work while `vni-lab test`
    /// runs. Exits with the shell's status (0 when left with Ctrl-]), 1
    /// when the node went away, 2 when no shell could be had (no such lab
    /// or node, no terminal, every port in use).
    Shell {
        /// The lab (default: the only one up).
        #[arg(long)]
        lab: Option<String>,
        /// The node.
        node: String,
    },
    /// Prints a node's serial console log.
    Console {
        /// The lab (default: the only one up).
        #[arg(long)]
        lab: Option<String>,
        /// The node.
        node: String,
        /// Keep printing what the console writes until the lab goes down.
        #[arg(short, long)]
        follow: bool,
    },
    /// The lab supervisor (started by `up`; not for direct use).
    #[command(hide = true)]
    Supervise {
        /// The lab directory.
        dir: PathBuf,
        /// Stop when stdin closes (`up` in the foreground).
        #[arg(long)]
        tied: bool,
    },
    /// Checks a lab file.
    ///
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
    /// Prints the kernel config fragment a lab's guest kernel needs.
    ///
    /// One `CONFIG_…=y` line per option (modules serve as well), each
    /// after a comment saying what needs it, ready for the kernel's
    /// `scripts/kconfig/merge_config.sh`: `vni-lab kconfig --driver kernel
    /// > vni.config; scripts/kconfig/merge_config.sh .config vni.config`.
    Kconfig {
        /// The VNI drivers the lab runs (comma-separated: user, kernel).
        #[arg(long, value_delimiter = ',', value_enum, default_value = "user")]
        driver: Vec<topology::Driver>,
        /// What carries the frames: vni, virtio-net or virtio-net-tap.
        #[arg(long, value_enum, default_value = "vni")]
        network: topology::Network,
    },
    /// Prints a shell completion script.
    ///
    /// Prints a shell completion script, made from these very options:
    /// `vni-lab completions bash > /etc/bash_completion.d/vni-lab`, or for
    /// zsh a `_vni-lab` file in a directory of `$fpath`, for fish
    /// `~/.config/fish/completions/vni-lab.fish`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Prints vni-lab's man page.
    ///
    /// Prints vni-lab's man page (roff, one page with every command):
    /// `vni-lab man > /usr/local/share/man/man1/vni-lab.1`, or `vni-lab
    /// man | man -l -`.
    Man,
    /// Installs vni-lab to run without its source checkout.
    ///
    /// Installs vni-lab (this executable), its static guest binaries and
    /// the kernel module's source (under ROOT/share/vni-lab), its man page
    /// and its bash, zsh and fish completions under a prefix, so that
    /// ROOT/bin/vni-lab runs from any directory once the checkout is gone:
    /// `cargo run --release -p vni-lab -- install`. Runs from the source
    /// checkout. Exits 0 once installed, 2 on an error.
    Install {
        /// The prefix (default: /usr/local as root, ~/.local otherwise).
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// No progress output.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Guest images.
    Image {
        #[command(subcommand)]
        action: ImageCommand,
    },
    /// Checks that this host can run labs.
    ///
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
        /// Debian suite of the guests: bookworm (kernel 6.1), trixie
        /// (kernel 6.12) or trixie-backports (trixie with the backports'
        /// 7.3 cloud kernel, which runs the VNI kernel module).
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

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    vni_lab::units::parse_duration(text)
}

/// This program, to run again as a child (`up`, the supervisor). Through
/// `/proc/self/exe` where there is one, which still reaches this binary
/// when a rebuild has replaced the file meanwhile (a long `bench` while
/// cargo builds); the path it was started from otherwise.
pub fn own_exe() -> anyhow::Result<PathBuf> {
    let proc_exe = PathBuf::from("/proc/self/exe");
    if proc_exe.exists() {
        return Ok(proc_exe);
    }
    std::env::current_exe().context("cannot find vni-lab's own executable")
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
        Command::Up {
            file,
            detach,
            name,
            quiet,
            keep_logs,
            kernel,
        } => up::up(&file, detach, name, quiet, keep_logs, &kernel),
        Command::Test(options) => test::test(options),
        Command::Bench(options) => bench::bench(options),
        Command::Fault(options) => fault::fault(options),
        Command::Soak(options) => soak::soak(options),
        Command::Down { lab, all } => up::down(lab.as_deref(), all),
        Command::Status { lab, json } => control::status(lab.as_deref(), json),
        Command::Exec {
            lab,
            interactive,
            timeout,
            node,
            command,
        } => control::exec(lab.as_deref(), &node, &command, timeout, interactive),
        Command::Inspect { lab, json, watch } => control::inspect(lab.as_deref(), json, watch),
        Command::Shell { lab, node } => shell::shell(lab.as_deref(), &node),
        Command::Console { lab, node, follow } => control::console(lab.as_deref(), &node, follow),
        Command::Supervise { dir, tied } => up::supervise(&dir, tied),
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
        Command::Kconfig { driver, network } => {
            let needs = vni_lab::kconfig::requirements(&driver, network);
            print!("{}", vni_lab::kconfig::fragment(&needs));
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            let mut cli = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cli, "vni-lab", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Install { root, quiet } => install::install(
            &root.unwrap_or_else(install::default_root),
            <Cli as clap::CommandFactory>::command(),
            quiet,
        ),
        Command::Man => {
            let cli = <Cli as clap::CommandFactory>::command();
            let mut out = std::io::stdout().lock();
            man_page(&cli, &mut out).context("cannot write the man page")?;
            Ok(ExitCode::SUCCESS)
        }
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

fn doctor(install: bool, json: bool) -> anyhow::Result<ExitCode> {
    let mut host = HostFacts::probe();
    if install {
        let lacking = missing(host_tools());
        vni_lab::host::install(&lacking, &mut |s| eprintln!("vni-lab: {s}"))?;
        host = HostFacts::probe();
    }
    let accel = host
        .accel(topology::Accel::Auto)
        .context("choosing an accelerator")?;
    let ready = missing(host_tools()).is_empty();
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
        "{}: lab {:?} is valid: {} nodes, {} MiB shared, buffer configuration {}, {} slots of {} bytes, MTU {}, lease {}",
        file.display(),
        lab.name,
        lab.nodes.len(),
        lab.shared_memory >> 20,
        g.config,
        g.slot_count,
        g.slot_size,
        lab.vni.mtu,
        match lab.vni.lease {
            Some(lease) => format!("{lease:?}"),
            None => format!(
                "{:?} with KVM, {:?} under TCG",
                vni_lab::topology::KVM_LEASE,
                vni_lab::topology::TCG_LEASE
            ),
        }
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

/// vni-lab's man page: the top-level page, then a section per command
/// with its options (clap_mangen renders each), so that one `man vni-lab`
/// shows everything.
fn man_page(cli: &clap::Command, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cli.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    for sub in cli.get_subcommands().filter(|c| !c.is_hide_set()) {
        let name = format!("vni-lab {}", sub.get_name());
        writeln!(out, ".SH \"{}\"", name.to_uppercase())?;
        let page = clap_mangen::Man::new(sub.clone().bin_name(name));
        page.render_synopsis_section(out)?;
        page.render_description_section(out)?;
        page.render_options_section(out)?;
    }
    man.render_version_section(out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The top-level help lists each command with one short line (the
    /// long text is `vni-lab CMD --help`'s), and `--version` names the
    /// commit.
    #[test]
    fn the_top_level_help_has_one_line_per_command() {
        let cli = <Cli as clap::CommandFactory>::command();
        for sub in cli.get_subcommands().filter(|c| !c.is_hide_set()) {
            let about = sub.get_about().map(ToString::to_string).unwrap_or_default();
            assert!(
                !about.is_empty() && about.len() <= 70 && !about.contains('\n'),
                "{}: {about:?}",
                sub.get_name()
            );
            let long = sub
                .get_long_about()
                .map(ToString::to_string)
                .unwrap_or_default();
            assert!(
                long.is_empty() || long.len() > about.len(),
                "{}",
                sub.get_name()
            );
        }
        assert!(cli.get_version().unwrap_or_default().contains("(commit "));
    }

    #[test]
    fn completions_and_the_man_page_cover_every_command() {
        let cli = <Cli as clap::CommandFactory>::command();
        let names: Vec<String> = cli
            .get_subcommands()
            .filter(|c| !c.is_hide_set())
            .map(|c| c.get_name().to_owned())
            .collect();
        assert!(names.iter().any(|n| n == "exec"), "{names:?}");
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cli.clone(), "vni-lab", &mut script);
            let script = String::from_utf8(script).unwrap();
            for name in &names {
                assert!(script.contains(name.as_str()), "{shell}: no {name}");
            }
            assert!(script.contains("interactive"), "{shell}: exec's options");
        }
        let mut page = Vec::new();
        man_page(&cli, &mut page).unwrap();
        let page = String::from_utf8(page).unwrap();
        assert!(
            page.starts_with(".ie") || page.contains(".TH vni-lab"),
            "{page}"
        );
        for name in &names {
            assert!(
                page.contains(&format!(".SH \"VNI-LAB {}\"", name.to_uppercase())),
                "man: no {name}"
            );
        }
    }
}
