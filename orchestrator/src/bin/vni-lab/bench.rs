//! `bench`: runs each case of the sweep in a lab of its own, measures it,
//! takes it down, and keeps the results folder current after every case.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use vni_lab::bench::report::Results;
use vni_lab::bench::{self, CaseOutcome, CaseSpec, Drops, Matrix, Params, UdpPoint};
use vni_lab::lab::{self, LabDir, LabFile};
use vni_lab::suite::{self, Context, Guests, Subject};
use vni_lab::topology::{Driver, Network, Notification, Topology};

use crate::test::{boot, prepare_artifacts, write, RESULTS};
use crate::Progress;
use vni_lab::own_kernel::KernelFlags;

/// What `vni-lab bench` was asked.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// The lab file the cases are derived from (its guest, accelerator,
    /// timeouts, shared memory and slot size are kept; its first node's
    /// address starts the nodes' addresses).
    pub file: PathBuf,
    /// The smoke run: two nodes, MTU 1500, configuration 2, interrupts,
    /// and both virtio-net baselines, each measured for about a second.
    #[arg(long)]
    pub quick: bool,
    /// Results folder (default: vni-lab-bench/NAME, NAME the file's lab
    /// name; an earlier run's results there are replaced).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Node counts (comma-separated); every MTU is measured at the first.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(2..=64))]
    pub nodes: Vec<u32>,
    /// MTUs (comma-separated); the other node counts use the first. The
    /// VNI and virtio-net on TAPs take at most 65521 (a TAP's limit),
    /// virtio-net on QEMU's networking 65535.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(68..=65535))]
    pub mtus: Vec<u32>,
    /// Buffer configurations (comma-separated: 2, 1).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u32).range(1..=2))]
    pub buffers: Vec<u32>,
    /// Notification modes (comma-separated: interrupt, polling).
    #[arg(long, value_delimiter = ',', value_parser = notification_parser())]
    pub notifications: Vec<Notification>,
    /// The VNI's drivers (comma-separated: user, kernel; default user).
    /// With the kernel driver every case, virtio-net's too, boots Debian's
    /// Rust-enabled kernel (unless the lab file names a kernel).
    #[arg(long, value_delimiter = ',', value_enum)]
    pub drivers: Vec<Driver>,
    /// Every MTU at every node count (54 cases with the defaults).
    #[arg(long)]
    pub full: bool,
    /// Leave out both virtio-net baselines (no ratios then).
    #[arg(long)]
    pub no_baseline: bool,
    /// Plain lines only, and fewer of them.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub kernel: KernelFlags,
}

impl Options {
    fn matrix(&self) -> Matrix {
        let mut m = if self.quick {
            Matrix::quick()
        } else {
            Matrix::sweep()
        };
        if !self.nodes.is_empty() {
            m.nodes = self.nodes.iter().map(|&n| n as usize).collect();
        }
        if !self.mtus.is_empty() {
            m.mtus.clone_from(&self.mtus);
        }
        if !self.buffers.is_empty() {
            m.buffers.clone_from(&self.buffers);
        }
        if !self.notifications.is_empty() {
            m.notifications.clone_from(&self.notifications);
        }
        if !self.drivers.is_empty() {
            m.drivers.clone_from(&self.drivers);
        }
        m.full = self.full;
        m.baseline = !self.no_baseline;
        m
    }
}

fn mbit(bits: f64) -> f64 {
    bits / 1e6
}

/// Measures one lab that is up, into `out`. Stops at the first thing that
/// makes the rest meaningless (a node failing preflight); a measurement
/// that fails on its own is noted and the others go on.
async fn measure(
    lab: &LabDir,
    topology: &Topology,
    params: &Params,
    scale: f64,
    out: &mut CaseOutcome,
    progress: &mut Progress,
    label: &str,
) -> Result<(), String> {
    let names: Vec<String> = topology.nodes.iter().map(|n| n.name.clone()).collect();
    let guests = Guests::connect(lab, &names, scale).await;
    let mut ctx = Context::new(lab, topology, guests, scale);
    let vni = topology.network == Network::Vni;
    progress.step(&format!("{label}: checking every node"));
    for (i, name) in names.iter().enumerate() {
        match ctx.run("preflight", &Subject::Node(i)).await {
            Ok(v) if v.passed => {}
            Ok(v) => return Err(format!("{name} failed preflight: {}", v.message)),
            Err(t) => return Err(t.message),
        }
    }
    let note = |out: &mut CaseOutcome, what: &str, why: String| {
        out.problems.push(format!("{what}: {why}"));
    };

    progress.step(&format!("{label}: echo round trips"));
    match ctx.echo_rtts(0, 1, params.echo_count).await {
        Ok(r) => out.echo = Some(r),
        Err(t) => note(out, "echo", t.message),
    }
    progress.step(&format!("{label}: ping"));
    match ctx
        .ping(0, 1, params.ping_count, params.ping_interval)
        .await
    {
        Ok(r) => out.ping = Some(r),
        Err(t) => note(out, "ping", t.message),
    }
    progress.step(&format!("{label}: TCP, one pair"));
    match ctx.iperf_run(0, 1, None, params.tcp_time).await {
        Ok(Ok(f)) => {
            out.tcp_pair_mbit = Some(mbit(f.bits_per_second));
            out.tcp_pair_retransmits = f.retransmits;
        }
        Ok(Err((why, _))) => note(out, "TCP one pair", why),
        Err(t) => note(out, "TCP one pair", t.message),
    }

    progress.step(&format!("{label}: TCP, all pairs at once"));
    let before = ctx.interface_drops().await;
    let region_before = ctx.region_drops();
    match ctx
        .iperf_together(&bench::ring(names.len()), None, params.tcp_time)
        .await
    {
        Ok(c) => {
            let per_pair: Vec<Result<f64, String>> = c
                .pairs
                .iter()
                .map(|p| {
                    p.as_ref()
                        .map(|f| mbit(f.bits_per_second))
                        .map_err(Clone::clone)
                })
                .collect();
            out.tcp_all = Some(bench::all_pairs(&per_pair));
            out.occupancy = c.occupancy;
        }
        Err(t) => note(out, "TCP all pairs", t.message),
    }
    let after = ctx.interface_drops().await;
    if let (Ok(before), Ok(after)) = (before, after) {
        let sum = |v: &[(u64, u64)]| {
            v.iter()
                .fold((0u64, 0u64), |(t, r), &(a, b)| (t + a, r + b))
        };
        let ((t0, r0), (t1, r1)) = (sum(&before), sum(&after));
        let region = region_before.zip(ctx.region_drops());
        out.drops = Some(Drops {
            interface_tx: t1.saturating_sub(t0),
            interface_rx: r1.saturating_sub(r0),
            driver_tx: region.map(|((t0, _), (t1, _))| t1.saturating_sub(t0)),
            driver_rx: region.map(|((_, r0), (_, r1))| r1.saturating_sub(r0)),
        });
    }

    for &rate in &params.udp_rates {
        progress.step(&format!("{label}: UDP at {} Mbit/s", rate / 1_000_000));
        match ctx.iperf_run(0, 1, Some(rate), params.udp_time).await {
            Ok(Ok(f)) => {
                let lost = f.lost_percent.unwrap_or(0.0);
                out.udp.push(UdpPoint {
                    offered_mbit: mbit(rate as f64),
                    received_mbit: mbit(f.bits_per_second),
                    lost_percent: lost,
                });
                if lost >= params.saturation_loss {
                    break;
                }
            }
            Ok(Err((why, _))) => {
                note(out, &format!("UDP at {}", rate / 1_000_000), why);
                break;
            }
            Err(t) => {
                note(out, &format!("UDP at {}", rate / 1_000_000), t.message);
                break;
            }
        }
    }

    if let Some(each) = bench::udp_all_rate(&out.udp, params.saturation_loss) {
        progress.step(&format!(
            "{label}: UDP, all pairs at once, {each:.0} Mbit/s each"
        ));
        let rate = (each * 1e6) as u64;
        match ctx
            .iperf_together(&bench::ring(names.len()), Some(rate), params.udp_time)
            .await
        {
            Ok(c) => {
                let per_pair: Vec<Result<(f64, f64), String>> = c
                    .pairs
                    .iter()
                    .map(|p| {
                        p.as_ref()
                            .map(|f| (mbit(f.bits_per_second), f.lost_percent.unwrap_or(0.0)))
                            .map_err(Clone::clone)
                    })
                    .collect();
                out.udp_all = Some(bench::udp_all(each, &per_pair));
            }
            Err(t) => note(out, "UDP all pairs", t.message),
        }
    }

    if vni {
        progress.step(&format!("{label}: region check and driver profiles"));
        out.region_ok = match ctx.run("region", &Subject::Lab).await {
            Ok(v) => {
                if !v.passed {
                    note(out, "region", v.message);
                }
                Some(v.passed)
            }
            Err(t) => {
                note(out, "region", t.message);
                None
            }
        };
        let peers = ctx.doorbell_peers();
        out.profiles = ctx.stop_drivers_for_profile().await;
        if let (Some(Some(a)), Some(Some(b))) = (peers.first(), peers.get(1)) {
            progress.step(&format!("{label}: doorbell round trips"));
            match ctx.doorbell_rtt(0, 1, (*a, *b), params.doorbells).await {
                Ok(json) => match serde_json::from_value(json) {
                    Ok(bells) => out.doorbell = Some(bells),
                    Err(e) => note(out, "doorbells", e.to_string()),
                },
                Err(t) => note(out, "doorbells", t.message),
            }
        }
    }
    ctx.kill_leftovers().await;
    Ok(())
}

/// A line summing up a case.
fn summary(c: &CaseOutcome) -> String {
    if let Some(e) = &c.error {
        return format!(
            "{:<28} error: {}",
            c.id,
            e.lines().next().unwrap_or_default()
        );
    }
    let ms = |r: &Option<vni_frames::Rtts>| {
        r.as_ref()
            .map_or("–".to_owned(), |r| format!("{:.3}", r.p50_us / 1e3))
    };
    let m = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.0}"));
    let mut line = format!(
        "{:<28} echo p50 {} ms, ping p50 {} ms, TCP {} Mbit/s (all pairs {}), UDP saturation {} Mbit/s ({:.0} s)",
        c.id,
        ms(&c.echo),
        ms(&c.ping),
        m(c.tcp_pair_mbit),
        m(c.tcp_all.as_ref().map(|a| a.sum_mbit)),
        m(c.udp_saturation_mbit()),
        c.seconds
    );
    if !c.problems.is_empty() {
        line.push_str(&format!("; {} problem(s)", c.problems.len()));
    }
    line
}

/// Writes results.json, report.md and the plots into `out`.
fn publish(results: &Results, out: &Path) -> anyhow::Result<()> {
    write(&out.join(RESULTS), &serde_json::to_string_pretty(results)?)?;
    write(&out.join("report.md"), &results.markdown())?;
    bench::plot::write_all(results, out)
}

pub fn bench(opts: Options) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    // The command line's kernel goes into the base, and so into every
    // case's lab file.
    let mut progress = Progress::new(opts.quiet);
    let Some(LabFile {
        text: base_text,
        topology: base,
        ..
    }) = crate::load::read_lab(&opts.file, &opts.kernel, &mut progress, "bench")?
    else {
        eprintln!("vni-lab: nothing was run");
        return Ok(ExitCode::from(2));
    };
    let matrix = opts.matrix();
    let cases = matrix.cases();
    let params = if opts.quick {
        Params::quick()
    } else {
        Params::full()
    };
    // Derive every lab file first: a base that cannot give one of them is
    // refused before anything boots.
    let mut labs: Vec<(CaseSpec, String, String)> = Vec::new();
    for case in &cases {
        let name = format!("bench-{}", case.id());
        match bench::derive_lab(&base_text, case, &name, matrix.common_kernel()) {
            Ok(text) => {
                if let Err(e) = Topology::parse(&text, &opts.file) {
                    eprintln!("case {}: {e}", case.id());
                    eprintln!("vni-lab: nothing was run");
                    return Ok(ExitCode::from(2));
                }
                labs.push((*case, name, text));
            }
            Err(e) => {
                eprintln!("{}: {e}", opts.file.display());
                eprintln!("vni-lab: nothing was run");
                return Ok(ExitCode::from(2));
            }
        }
    }
    for (_, name, _) in &labs {
        if LabDir::new(&lab::run_dir(), name).is_live() {
            bail!("lab {name} is up already (an earlier bench?); take it down with `vni-lab down {name}`");
        }
    }
    let out = opts
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("vni-lab-bench").join(&base.name));
    prepare_artifacts(&out)?;
    for (case, _, text) in &labs {
        write(&out.join("labs").join(format!("{}.yaml", case.id())), text)?;
    }

    let (runtime, mut interrupt) = crate::runtime::with_interrupt()?;
    progress.note(&format!(
        "{} cases, each in a lab of its own, results in {}",
        labs.len(),
        out.display()
    ));
    let first = labs
        .first()
        .and_then(|(_, _, text)| Topology::parse(text, &opts.file).ok());
    let mut results = Results {
        base: opts.file.display().to_string(),
        command: std::env::args()
            .map(|a| a.rsplit('/').next().unwrap_or_default().to_owned())
            .take(1)
            .chain(std::env::args().skip(1))
            .collect::<Vec<_>>()
            .join(" "),
        started_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
        seconds: 0.0,
        accel: String::new(),
        kernel_release: String::new(),
        host_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        guest_vcpus: first.as_ref().map_or(1, |t| t.nodes[0].vcpus),
        guest_memory_mib: first.as_ref().map_or(0, |t| t.nodes[0].memory >> 20),
        params: params.clone(),
        cases: Vec::new(),
    };
    let mut interrupted = false;
    for (i, (case, name, text)) in labs.iter().enumerate() {
        let case_started = Instant::now();
        let label = format!("[{}/{}] {}", i + 1, labs.len(), case.id());
        let mut outcome = CaseOutcome::new(*case);
        let file = out.join("labs").join(format!("{}.yaml", case.id()));
        let logs = out.join("logs").join(case.id());
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("cannot create {}", logs.display()))?;
        progress.step(&format!("{label}: starting lab {name}"));
        let booted = LabFile::read(&file)
            .context("a derived lab file")
            .and_then(|lab_file| {
                let stop = async {
                    interrupt.recv().await;
                };
                boot(&runtime, &lab_file, name, &logs, &mut progress, stop)
            });
        match booted {
            Err(e) => outcome.error = Some(format!("{e:#}")),
            Ok(Err(why)) => outcome.error = Some(format!("the lab did not come up: {why}")),
            Ok(Ok(())) => {
                outcome.boot_seconds = case_started.elapsed().as_secs_f64();
                let lab = LabDir::new(&lab::run_dir(), name);
                let topology = Topology::parse(text, &file).context("a derived lab file")?;
                if let Some(plan) = lab.plan() {
                    results.accel.clone_from(&plan.accel);
                    results.kernel_release.clone_from(&plan.kernel_release);
                }
                let scale = suite::timeout_scale(&topology, &results.accel);
                let done = runtime.block_on(async {
                    tokio::select! {
                        r = measure(&lab, &topology, &params, scale, &mut outcome, &mut progress, &label) => Some(r),
                        _ = interrupt.recv() => None,
                    }
                });
                match done {
                    Some(Ok(())) => {}
                    Some(Err(why)) => outcome.error = Some(why),
                    None => {
                        outcome.error = Some("interrupted (SIGINT)".into());
                        interrupted = true;
                    }
                }
                progress.step(&format!("{label}: taking lab {name} down"));
                crate::up::down_one(&lab)?;
            }
        }
        outcome.seconds = case_started.elapsed().as_secs_f64();
        progress.out(&summary(&outcome));
        results.cases.push(outcome);
        results.seconds = started.elapsed().as_secs_f64();
        publish(&results, &out)?;
        if interrupted {
            break;
        }
    }
    progress.done();
    let errors = results.cases.iter().filter(|c| c.error.is_some()).count();
    for line in results.headline_lines() {
        println!("{line}");
    }
    println!(
        "vni-lab bench: {} cases, {} could not be measured, in {:.0} min; report in {}",
        results.cases.len(),
        errors,
        results.seconds / 60.0,
        out.join("report.md").display()
    );
    Ok(if errors == 0 && !interrupted {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `interrupt` or `polling`, the protocol's names, offered as possible values.
fn notification_parser() -> impl clap::builder::TypedValueParser<Value = Notification> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Notification::NAMES)
        .map(|name| name.parse().unwrap_or_default())
}
