//! `test`: boots a lab (or uses the one that is up), runs the checks,
//! writes the results, tears down what it started.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use vni_lab::driver;
use vni_lab::lab::{self, LabDir, LabFile, LaunchError, Mode, RunningLab, Supervisor};
use vni_lab::own_kernel::KernelFlags;
use vni_lab::suite::report::{self, Report};
use vni_lab::suite::{self, CaseResult, Counts, Observer, Status};
use vni_lab::test_spec::Check;

use crate::Progress;

/// What `vni-lab test` was asked.
#[derive(clap::Args, Debug)]
pub struct Options {
    /// The lab file (YAML).
    pub file: PathBuf,
    /// The lab's name (default: the file's).
    #[arg(long)]
    pub name: Option<String>,
    /// Also write the JSON results here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also write the JUnit XML here.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Also write the results as KTAP (version 1, as kernel test tooling
    /// reads it: a test per check, a subtest per node or pair) here.
    #[arg(long, value_name = "FILE")]
    pub ktap: Option<PathBuf>,
    /// What goes to stdout: the table of results as they come (table),
    /// or, at the end, the whole report as KTAP or JSON, for a pipe; the
    /// table then goes to stderr.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Results folder: results.json, junit.xml, each node's console, QEMU
    /// and driver log, the region (default: vni-lab-results/LAB; an
    /// earlier run's results there are replaced).
    #[arg(long, value_name = "DIR")]
    pub artifacts: Option<PathBuf>,
    /// Run only these checks (comma-separated), instead of the file's.
    #[arg(long, value_delimiter = ',', value_parser = Check::from_name)]
    pub checks: Vec<Check>,
    /// Multiply every timeout by this (default: the file's
    /// tests.timeout_scale, else 1 with KVM, 4 with TCG).
    #[arg(long)]
    pub timeout_scale: Option<f64>,
    /// Leave a lab this run started up afterwards.
    #[arg(long)]
    pub keep: bool,
    /// Plain lines only, and fewer of them.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub kernel: KernelFlags,
}

/// What `vni-lab test` prints on stdout.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One row per case as it finishes, and the summary line.
    Table,
    /// The report as KTAP version 1 once the run is over.
    Ktap,
    /// The report as JSON (as results.json) once the run is over.
    Json,
}

/// The file every results folder has, so a later run knows it may clear it.
pub const RESULTS: &str = "results.json";

struct Table<'a> {
    progress: &'a mut Progress,
    done: usize,
    total: usize,
    /// Rows go to stderr: stdout is for the report.
    to_stderr: bool,
}

impl Table<'_> {
    fn row(&mut self, line: &str) {
        row(self.progress, self.to_stderr, line);
    }
}

/// A line of the results table, on stdout or (when stdout carries a
/// report) on stderr.
fn row(progress: &mut Progress, to_stderr: bool, line: &str) {
    if to_stderr {
        progress.err(line);
    } else {
        progress.out(line);
    }
}

impl Observer for Table<'_> {
    fn started(&mut self, check: &str, subject: &str) {
        self.progress.step(&format!(
            "[{}/{}] {check} {subject}",
            self.done + 1,
            self.total
        ));
    }

    fn finished(&mut self, result: &CaseResult) {
        self.done += 1;
        self.row(&report::row(result));
        if result.status != Status::Passed && result.status != Status::Skipped {
            if let Some(details) = &result.details {
                for line in details.lines().take(30) {
                    self.row(&format!("      {line}"));
                }
            }
        }
    }
}

/// Empties `dir` if it holds an earlier run's results; refuses a folder
/// that holds something else.
pub fn prepare_artifacts(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_none();
        if !empty && !dir.join(RESULTS).exists() {
            bail!(
                "{} is not empty and holds no earlier results; choose another --artifacts folder",
                dir.display()
            );
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

/// Boots lab `name` from `file` and follows it until it is up, as `up
/// --detach` does, with its consoles and logs kept in `logs` when it goes
/// down; on failure, why, in words (the first line says it in short).
/// `interrupt` tears a lab that is starting down again.
pub fn boot(
    runtime: &tokio::runtime::Runtime,
    file: &LabFile,
    name: &str,
    logs: &Path,
    progress: &mut Progress,
    interrupt: impl std::future::Future<Output = ()>,
) -> anyhow::Result<Result<(), String>> {
    let logs = std::path::absolute(logs).with_context(|| format!("{}", logs.display()))?;
    let exe = crate::own_exe()?;
    let prepared = match lab::prepare(file, name, Some(&logs), progress) {
        Ok(prepared) => prepared,
        Err(e) => return Ok(Err(format!("{:#}", anyhow::Error::new(e)))),
    };
    let ready = runtime.block_on(async {
        Supervisor::start(prepared, &exe, Mode::Detached, progress)
            .await?
            .until_ready(progress, interrupt)
            .await
    });
    Ok(match ready {
        Ok(_) => Ok(()),
        // The supervisor's own account: what failed, then the details.
        Err(LaunchError::DidNotComeUp { message, .. }) => Err(message),
        Err(e) => Err(format!("{:#}", anyhow::Error::new(e))),
    })
}

/// Copies what a lab that is still up can tell: consoles (from the lab
/// directory), driver logs (from the guests), the region.
async fn collect(lab: &RunningLab, to: &Path) {
    for node in &lab.topology.nodes {
        let paths = lab.dir.node(&node.name);
        let _ = std::fs::copy(
            &paths.console,
            to.join(format!("{}.console.log", node.name)),
        );
        let log = lab
            .exec(
                &node.name,
                &["/bin/sh", "-c", &driver::log(node.driver, 100_000)],
                None,
                Duration::from_secs(20),
            )
            .await
            .ok()
            .map(|out| out.stdout);
        let text = log.unwrap_or_else(|| b"(the guest did not give its driver log)\n".to_vec());
        let _ = std::fs::write(to.join(format!("{}.driver.log", node.name)), text);
    }
    let region = vni_protocol::Region::open(&lab.plan.shm)
        .ok()
        .and_then(|r| vni_protocol::inspect(&r).ok());
    if let Some(region) = region {
        if let Ok(json) = serde_json::to_string_pretty(&region) {
            let _ = std::fs::write(to.join("region.json"), json);
        }
    }
}

pub fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

pub fn test(opts: Options) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut progress = Progress::new(opts.quiet);
    let Some(lab_file) = crate::load::read_lab(&opts.file, &opts.kernel, &mut progress, "test")?
    else {
        eprintln!("vni-lab: nothing was run");
        return Ok(ExitCode::from(2));
    };
    let (text, mut topology) = (lab_file.text.clone(), lab_file.topology.clone());
    if !opts.checks.is_empty() {
        let mut checks = opts.checks.clone();
        checks.sort();
        checks.dedup();
        topology.tests.checks = checks;
    }
    if let Some(scale) = opts.timeout_scale {
        if !(0.1..=100.0).contains(&scale) {
            bail!("--timeout-scale {scale}: from 0.1 to 100");
        }
        topology.tests.timeout_scale = Some(scale);
    }
    let name = opts.name.clone().unwrap_or_else(|| topology.name.clone());
    if let Err(allowed) = vni_lab::topology::check_name(&name) {
        bail!("--name {name:?}: {allowed}");
    }
    let artifacts = opts
        .artifacts
        .clone()
        .unwrap_or_else(|| PathBuf::from("vni-lab-results").join(&name));
    prepare_artifacts(&artifacts)?;

    // Ctrl-C from here on ends the run in order: during the boot, the
    // lab starting is torn down; during the checks, the case under way is
    // recorded as interrupted. Either way the results are written.
    let (runtime, mut interrupt) = crate::runtime::with_interrupt()?;

    let lab = LabDir::new(&lab::run_dir(), &name);
    let reused = lab.is_live();
    let rows_to_stderr = opts.format != Format::Table;
    let mut cases = Vec::new();
    let mut booted = false;
    if reused {
        let plan = lab.plan().context("the running lab has no readable plan")?;
        if plan.topology_text != text {
            bail!(
                "lab {name} is up from another version of {} (or another file); take it down with `vni-lab down {name}`, or test under another --name",
                opts.file.display()
            );
        }
        if !lab.state().is_some_and(|s| s.ready) {
            bail!("lab {name} is still starting; run the test once `vni-lab status` says it is up");
        }
        progress.note(&format!("testing lab {name}, which is up (it stays up)"));
    } else {
        progress.note(&format!("starting lab {name} for the test"));
        let stop = async {
            interrupt.recv().await;
        };
        match boot(&runtime, &lab_file, &name, &artifacts, &mut progress, stop)? {
            Ok(()) => booted = true,
            Err(why) => {
                let first = why
                    .lines()
                    .next()
                    .unwrap_or("the lab did not come up")
                    .to_owned();
                let mut case = CaseResult::new("boot", "lab", Status::Error, first);
                case.details = Some(why);
                case.seconds = started.elapsed().as_secs_f64();
                row(&mut progress, rows_to_stderr, &report::row(&case));
                cases.push(case);
            }
        }
    }

    let plan = lab.plan();
    let accel = plan.as_ref().map_or_else(
        || {
            vni_lab::host::HostFacts::probe()
                .accel(topology.accel)
                .map(|a| a.accel.to_owned())
                .unwrap_or_default()
        },
        |p| p.accel.clone(),
    );
    let kernel_release = plan
        .as_ref()
        .map(|p| p.kernel_release.clone())
        .unwrap_or_default();
    let scale = suite::timeout_scale(&topology, &accel);
    if booted || reused {
        if booted {
            let up = format!(
                "{} nodes up ({})",
                topology.nodes.len(),
                accel.to_uppercase()
            );
            let mut ok = CaseResult::new("boot", "lab", Status::Passed, up);
            ok.seconds = started.elapsed().as_secs_f64();
            row(&mut progress, rows_to_stderr, &report::row(&ok));
            cases.push(ok);
        }
        let total = suite::plan(&topology).len();
        let mut table = Table {
            progress: &mut progress,
            done: 0,
            total,
            to_stderr: rows_to_stderr,
        };
        let results = runtime.block_on(async {
            let mut stop = Box::pin(async {
                interrupt.recv().await;
                "SIGINT".to_owned()
            });
            suite::run(&lab, &topology, scale, &mut table, &mut stop).await
        });
        cases.extend(results);
        progress.step("collecting consoles and driver logs");
        if let Ok(running) = RunningLab::open(lab.clone()) {
            runtime.block_on(collect(&running, &artifacts));
        }
    }
    if booted && !opts.keep {
        progress.step(&format!("taking lab {name} down"));
        crate::up::down_one(&lab)?;
    }
    progress.done();

    let counts = Counts::of(&cases);
    let report = Report {
        lab: name.clone(),
        topology: opts.file.clone(),
        accel,
        kernel_release,
        reused_lab: reused,
        timeout_scale: scale,
        started_at,
        seconds: started.elapsed().as_secs_f64(),
        counts,
        artifacts: artifacts.clone(),
        cases,
    };
    let json = serde_json::to_string_pretty(&report)?;
    let junit = report.junit();
    let ktap = vni_lab::suite::ktap::ktap(&report);
    write(&artifacts.join(RESULTS), &json)?;
    write(&artifacts.join("junit.xml"), &junit)?;
    write(&artifacts.join("results.ktap"), &ktap)?;
    if let Some(path) = &opts.ktap {
        write(path, &ktap)?;
    }
    if let Some(path) = &opts.json {
        write(path, &json)?;
    }
    if let Some(path) = &opts.junit {
        write(path, &junit)?;
    }
    match opts.format {
        Format::Table => {}
        Format::Ktap => print!("{ktap}"),
        Format::Json => println!("{json}"),
    }
    let summary = format!(
        "vni-lab test {name}: {} passed, {} failed, {} errors, {} skipped in {:.0} s; results and logs in {}",
        counts.passed,
        counts.failed,
        counts.errors,
        counts.skipped,
        report.seconds,
        artifacts.display()
    );
    let kept = (booted && opts.keep)
        .then(|| format!("Lab {name} is still up (--keep); stop it with `vni-lab down {name}`."));
    for line in std::iter::once(summary).chain(kept) {
        if rows_to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }
    Ok(if counts.ok() && counts.passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
