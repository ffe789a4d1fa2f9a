//! `vni-lab fault`: kills, pauses, resumes or restarts a node of a running
//! lab (through its supervisor), or makes it a rogue (in the guest).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use vni_lab::driver;
use vni_lab::fault::{Fault, FaultError, Request};
use vni_lab::lab::RunningLab;
use vni_lab::topology::Network;

/// What `vni-lab fault` does to the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    /// SIGKILL to the node's QEMU.
    Kill,
    /// Stop its vCPUs (QMP stop): a hung node.
    Pause,
    /// Let them run again (QMP cont).
    Resume,
    /// Kill it if it runs and boot it again with the same identity; waits
    /// until its VNI driver is in RUN.
    Restart,
    /// Stop its VNI driver and run a rogue in its place for --duration:
    /// garbage over the region while the others carry on.
    Rogue,
}

#[derive(clap::Args, Debug)]
pub struct Options {
    /// The lab (default: the only one up).
    #[arg(long)]
    lab: Option<String>,
    /// The node.
    node: String,
    /// What to do to it.
    action: Action,
    /// With kill: first stop the node's driver and have a stand-in (as the
    /// same node) take slots and the region's lock and leave buffer
    /// management half changed, so that the node dies holding the lock.
    #[arg(long)]
    holding_lock: bool,
    /// With rogue: how long it damages the region.
    #[arg(long, default_value = "20s", value_parser = crate::parse_duration)]
    duration: Duration,
    /// With rogue: seed of its random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Only the final line.
    #[arg(short, long)]
    quiet: bool,
}

pub fn fault(options: Options) -> anyhow::Result<ExitCode> {
    if options.holding_lock && options.action != Action::Kill {
        bail!("--holding-lock goes with kill only");
    }
    let lab = RunningLab::find(options.lab.as_deref())?;
    lab.node(&options.node)?;
    if (options.holding_lock || options.action == Action::Rogue)
        && lab.topology.network != Network::Vni
    {
        bail!(
            "lab {} runs virtio-net, not the VNI: there is no region lock or rogue to speak of",
            lab.name()
        );
    }
    let runtime = crate::runtime::runtime()?;
    let result = runtime.block_on(inject(&lab, &options));
    match result {
        Ok(message) => {
            println!("{message}");
            Ok(ExitCode::SUCCESS)
        }
        Err(Failure::Refused(message)) => {
            eprintln!("vni-lab: {message}");
            Ok(ExitCode::FAILURE)
        }
        Err(Failure::Other(e)) => Err(e),
    }
}

/// Why a fault did not happen.
enum Failure {
    /// The supervisor or the guest said no (exit 1).
    Refused(String),
    /// vni-lab could not ask (exit 2).
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

async fn inject(lab: &RunningLab, options: &Options) -> Result<String, Failure> {
    let topology = &lab.topology;
    let node = lab.node(&options.node).map_err(anyhow::Error::new)?;
    let say = |message: &str| {
        if !options.quiet {
            eprintln!("vni-lab: {message}");
        }
    };
    let fault = match options.action {
        Action::Kill => Fault::Kill,
        Action::Pause => Fault::Pause,
        Action::Resume => Fault::Resume,
        Action::Restart => Fault::Restart,
        Action::Rogue => return rogue(lab, options).await,
    };
    if options.holding_lock {
        let peer = topology
            .nodes
            .iter()
            .find(|n| n.id != node.id)
            .context("a lab of one node has nobody to hold the lock against")?;
        say(&format!(
            "{}: stopping its VNI driver; a stand-in takes the region lock",
            node.name
        ));
        let script = format!(
            "{}; vni-driver hold-lock --node {} --mac {} --peer-node {} > {HOLD_LOG} 2>&1 < /dev/null &",
            driver::stop(node.driver),
            node.id,
            node.mac,
            peer.id
        );
        guest(lab, &node.name, &script, topology.command_timeout).await?;
        let deadline = tokio::time::Instant::now() + topology.command_timeout;
        loop {
            let log = guest(
                lab,
                &node.name,
                &format!("cat {HOLD_LOG}"),
                topology.command_timeout,
            )
            .await?;
            if log.contains("holding") {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Failure::Refused(format!(
                    "{}: the stand-in never took the lock:\n{}",
                    node.name,
                    log.trim_end()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        say(&format!("{}: holds the region lock", node.name));
    }
    let request = Request {
        node: node.name.clone(),
        fault,
    };
    match lab.fault(&request, say).await {
        Ok(message) => Ok(message),
        Err(FaultError::Failed(message)) => Err(Failure::Refused(message)),
        Err(e) => Err(Failure::Other(
            anyhow::Error::new(e).context(format!("lab {}", lab.name())),
        )),
    }
}

/// Where the lock-holding stand-in logs, in the guest.
const HOLD_LOG: &str = "/run/vni-hold.log";

/// Runs `script` with sh in `node`; its stdout, or why it failed.
async fn guest(
    lab: &RunningLab,
    node: &str,
    script: &str,
    timeout: Duration,
) -> Result<String, Failure> {
    lab.sh(node, script, timeout)
        .await
        .map_err(Failure::Refused)
}

/// The rogue: the node's driver stopped, `vni-driver rogue` in its place.
async fn rogue(lab: &RunningLab, options: &Options) -> Result<String, Failure> {
    let topology = &lab.topology;
    let node = lab.node(&options.node).map_err(anyhow::Error::new)?;
    if !options.quiet {
        eprintln!(
            "vni-lab: {}: its VNI driver stops; a rogue damages the region for {:?}",
            node.name, options.duration
        );
    }
    let script = format!(
        "{}; vni-driver rogue --node {} --mac {} --seconds {} --seed {}",
        driver::stop(node.driver),
        node.id,
        node.mac,
        options.duration.as_secs().max(1),
        options.seed
    );
    let report = guest(
        lab,
        &node.name,
        &script,
        options.duration + topology.command_timeout,
    )
    .await?;
    Ok(format!(
        "{}: rogue done: {} (its driver stays stopped; `vni-lab fault {} restart` brings it back)",
        node.name,
        report.trim(),
        node.name
    ))
}
