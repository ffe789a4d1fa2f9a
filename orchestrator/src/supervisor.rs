//! The lab supervisor: one process per running lab, started by `up`
//! (`vni-lab supervise`, hidden), in its own session so that it outlives
//! `up --detach` and no terminal signal reaches it.
//!
//! It creates and formats the shared region, runs the ivshmem server,
//! starts one QEMU per node, pins vCPUs, waits for every guest agent, and
//! then watches. It reports what happens as JSON lines on stdout
//! ([`Event`]), which `up` turns into progress and errors. It stops on
//! SIGTERM, SIGINT or SIGHUP (`down`, `up`'s Ctrl-C), or, when `up` runs in
//! the foreground, when `up` itself goes away (its stdin closes), and a
//! boot that fails stops it too. Stopping always tears everything down:
//! QEMUs (SIGTERM, then SIGKILL), the server and its socket, the
//! shared-memory file, the lab directory.
//!
//! Its QEMUs get `PR_SET_PDEATHSIG`: if the supervisor itself is killed
//! with SIGKILL, they die with it, and the next `up` or `down` cleans the
//! files it left ([`crate::lab::LabDir::clean_leftover`]).

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::agent::{AgentError, GuestAgent};
use crate::driver;
use crate::ivshmem_server::{IvshmemError, IvshmemServer};
use crate::lab::{LabDir, LabLock, NodeRecord, NodeState, Plan, State};
use crate::netns::{LabNet, NetnsError};
use crate::qemu::{self, NodeSpec, Qmp, QmpError};
use crate::topology::{Driver, Network, Node, Topology, TopologyError};

/// Lines of a console shown with a boot failure.
pub const CONSOLE_TAIL: usize = 30;
/// How long QEMU gets to exit after SIGTERM before SIGKILL.
const QEMU_GRACE: Duration = Duration::from_secs(5);
/// Timeout of one QMP call.
const QMP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the supervisor could not start the lab or carry out a fault. Each
/// message says what could not be done and why, the OS's reason included;
/// it reaches `up` ([`Event::Failed`]) and `vni-lab fault` (its replies) as
/// text.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The async runtime could not be made.
    #[error("cannot start the supervisor's runtime: {source}")]
    Runtime {
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The lab directory has no plan that can be read.
    #[error("no readable plan in {}", path.display())]
    NoPlan {
        /// Where the plan should be.
        path: PathBuf,
    },
    /// The plan's lab file is not valid.
    #[error("{}", causes(.0))]
    Topology(#[source] TopologyError),
    /// The shared-memory file could not be created.
    #[error("cannot create the shared memory {}: {source}", path.display())]
    CreateRegion {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The shared-memory file could not be given its size.
    #[error("cannot size the shared memory {}: {source}", path.display())]
    SizeRegion {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The region does not fit in this host's address space.
    #[error("region too large: {size} bytes")]
    RegionTooLarge {
        /// The lab's `shared_memory`.
        size: u64,
    },
    /// The shared-memory file could not be mapped.
    #[error("{}", causes(.0))]
    MapRegion(#[source] vni_protocol::RegionError),
    /// The region could not be formatted.
    #[error("cannot format the region: {}", causes(.0))]
    FormatRegion(#[source] vni_protocol::LayoutError),
    /// The ivshmem server's socket could not be bound.
    #[error("cannot listen on the ivshmem socket {}: {source}", path.display())]
    IvshmemListen {
        /// The socket.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The ivshmem server could not start for another reason.
    #[error("cannot start the ivshmem server: {}", causes(.0))]
    IvshmemServer(#[source] IvshmemError),
    /// The lab's network namespace (`network: virtio-net-tap`) could not
    /// be made.
    #[error(transparent)]
    Network(NetnsError),
    /// A node's QEMU log could not be created.
    #[error("cannot create {}: {source}", path.display())]
    QemuLog {
        /// The log.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A node's QEMU log could not be shared between stdout and stderr.
    #[error("cannot share {}: {source}", path.display())]
    ShareQemuLog {
        /// The log.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A node's QEMU could not be started.
    #[error("{node}: cannot start {program}: {source}")]
    SpawnQemu {
        /// The node.
        node: String,
        /// The QEMU binary.
        program: &'static str,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// Talking QMP to a node's QEMU failed.
    #[error("node {node}: {}", causes(.source))]
    Qmp {
        /// The node.
        node: String,
        /// What went wrong.
        #[source]
        source: QmpError,
    },
    /// A vCPU thread could not be pinned.
    #[error("node {node}: cannot pin vCPU {vcpu} to CPU {cpu}: {source}")]
    PinVcpu {
        /// The node.
        node: String,
        /// The vCPU's index.
        vcpu: usize,
        /// The host CPU.
        cpu: u32,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A node did not boot: its kernel panicked, its QEMU exited, or its
    /// agent did not answer in time.
    #[error("node {node}: {what}{details}")]
    Boot {
        /// The node.
        node: String,
        /// What happened.
        what: String,
        /// QEMU's last words and the console's tail, each after a
        /// `\n--- ` header.
        details: String,
    },
    /// The script giving a node its network could not be run.
    #[error("node {node}: cannot {what}: {}", causes(.source))]
    SetupNetwork {
        /// The node.
        node: String,
        /// What the script does.
        what: &'static str,
        /// Why it could not run.
        #[source]
        source: AgentError,
    },
    /// The script giving a node its network failed.
    #[error("node {node}: could not {what}: {stderr}")]
    SetupNetworkFailed {
        /// The node.
        node: String,
        /// What the script does.
        what: &'static str,
        /// What it said.
        stderr: String,
    },
    /// The region could not be opened to watch the VNI drivers.
    #[error("{}", causes(.0))]
    OpenRegion(#[source] vni_protocol::RegionError),
    /// The region's state could not be read.
    #[error("{}", causes(.0))]
    InspectRegion(#[source] vni_protocol::LayoutError),
    /// A node's QEMU exited while the supervisor waited for it.
    #[error("node {node}: QEMU exited ({status})")]
    QemuExited {
        /// The node.
        node: String,
        /// How it exited.
        status: String,
    },
    /// VNI drivers that did not reach RUN, or died: per node, why and
    /// the end of its driver's log.
    #[error("{0}")]
    VniDriver(String),
    /// A fault names a node the lab does not have.
    #[error("lab {lab} has no node {node:?}; its nodes: {}", nodes.join(", "))]
    NoSuchNode {
        /// The lab.
        lab: String,
        /// The name asked for.
        node: String,
        /// The lab's nodes.
        nodes: Vec<String>,
    },
    /// A fault needs a running QEMU, and the node's exited.
    #[error(
        "node {node} is not running (its QEMU exited: {status}); `vni-lab fault {node} restart` boots it again"
    )]
    NotRunning {
        /// The node.
        node: String,
        /// How its QEMU exited.
        status: String,
    },
    /// A node cannot be restarted: the ivshmem server's socket is gone.
    #[error(
        "node {node} cannot be restarted: the ivshmem server's socket {} is gone (removed by hand?), \
         so a new QEMU could not reach the region; the lab runs on without it. \
         `vni-lab down {lab}` and `up` again to restart nodes",
        socket.display()
    )]
    SocketGone {
        /// The node.
        node: String,
        /// The ivshmem server's socket.
        socket: PathBuf,
        /// The lab.
        lab: String,
    },
    /// A node's QEMU did not exit after SIGKILL.
    #[error("node {node}: QEMU survived SIGKILL for {after:?}")]
    KillTimeout {
        /// The node.
        node: String,
        /// How long it was given.
        after: Duration,
    },
    /// The task reaping a node's QEMU is gone.
    #[error("node {node}: its QEMU's watcher is gone")]
    WatcherGone {
        /// The node.
        node: String,
    },
}

/// `error` and the errors under it as one line, `a: b: c`, so that the
/// text sent to `up` keeps the OS's reason that lower-level errors hold as
/// their source. A source whose text is already said is not repeated.
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        next = cause.source();
    }
    text
}

/// What the supervisor tells `up`, one JSON object per line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A step of the start.
    Step {
        /// What happens.
        message: String,
    },
    /// A node's QEMU started.
    NodeStarted {
        /// Node name.
        node: String,
        /// QEMU's pid.
        pid: u32,
    },
    /// A node's guest agent answered.
    NodeReady {
        /// Node name.
        node: String,
        /// Seconds since the lab started.
        after: f64,
    },
    /// Every node is ready.
    Ready {
        /// Seconds since the lab started.
        after: f64,
    },
    /// A node's QEMU exited while the lab ran.
    NodeExited {
        /// Node name.
        node: String,
        /// How.
        status: String,
    },
    /// The lab could not start; the supervisor tears down and exits.
    Failed {
        /// What went wrong, with the console tail where it helps.
        message: String,
    },
    /// Everything is torn down.
    Down,
}

/// Writes events to stdout; a reader that went away (`up --detach` after
/// ready) is not an error.
fn emit(event: &Event) {
    if let Ok(line) = serde_json::to_string(event) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    eprintln!("{} {event:?}", timestamp());
}

fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("[{}.{:03}]", now.as_secs(), now.subsec_millis())
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub use crate::crash::panicked;

/// A node's QEMU as the supervisor holds it.
struct Running {
    node: Node,
    pid: u32,
    /// `Some(status)` once QEMU exited.
    exit: watch::Receiver<Option<String>>,
    /// Its exit has been recorded and announced.
    reported: bool,
}

/// Why the start stopped.
enum Stop {
    /// A signal or `up` going away.
    Asked(&'static str),
    /// The boot failed.
    Failed(SupervisorError),
}

/// Shared, persisted state.
#[derive(Clone)]
struct Recorder {
    lab: LabDir,
    state: Arc<Mutex<State>>,
}

impl Recorder {
    fn update(&self, change: impl FnOnce(&mut State)) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        change(&mut state);
        if let Err(e) = self.lab.write_json(&self.lab.state_path(), &*state) {
            eprintln!("{} cannot record state: {}", timestamp(), causes(&e));
        }
    }

    fn node(&self, name: &str, change: impl FnOnce(&mut NodeRecord)) {
        self.update(|s| {
            if let Some(n) = s.nodes.iter_mut().find(|n| n.name == name) {
                change(n);
            }
        });
    }
}

/// Runs the supervisor of the lab in `dir` (its plan already written),
/// holding `lock`. `tied`: stop when stdin closes. Returns the process
/// exit code: 0 after a clean stop, 1 after a failed start.
pub fn supervise(dir: &Path, lock: LabLock, tied: bool) -> i32 {
    // Everything the lab creates, QEMU's sockets and logs included, is
    // for this user only.
    // SAFETY: umask only changes this process's file creation mask.
    unsafe { libc::umask(0o077) };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(source) => {
            emit(&Event::Failed {
                message: SupervisorError::Runtime { source }.to_string(),
            });
            return 1;
        }
    };
    let code = runtime.block_on(run(dir, tied));
    drop(lock);
    code
}

async fn run(dir: &Path, tied: bool) -> i32 {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let lab = LabDir {
        name,
        dir: dir.to_owned(),
    };
    let recorder = Recorder {
        lab: lab.clone(),
        state: Arc::new(Mutex::new(State {
            supervisor: std::process::id(),
            started_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            ..State::default()
        })),
    };
    recorder.update(|_| {});
    let mut nodes: Vec<Running> = Vec::new();
    let mut server: Option<IvshmemServer> = None;
    // `network: virtio-net-tap`: held until the end, after the QEMUs.
    let mut net: Option<LabNet> = None;
    let mut stop = Box::pin(stop_requested(tied));

    let started = Instant::now();
    let boot = start(&lab, &recorder, &mut nodes, &mut server, &mut net, started);
    let outcome = tokio::select! {
        result = boot => result.map_err(Stop::Failed),
        why = &mut stop => Err(Stop::Asked(why)),
    };
    let code = match outcome {
        Ok(()) => {
            recorder.update(|s| s.ready = true);
            emit(&Event::Ready {
                after: started.elapsed().as_secs_f64(),
            });
            let why = watch_nodes(&lab, &mut nodes, &recorder, &mut stop, net.as_ref()).await;
            eprintln!("{} stopping: {why}", timestamp());
            0
        }
        Err(Stop::Asked(why)) => {
            eprintln!("{} stopping during start: {why}", timestamp());
            0
        }
        Err(Stop::Failed(e)) => {
            emit(&Event::Failed {
                message: e.to_string(),
            });
            1
        }
    };
    teardown(&lab, &recorder, nodes, server).await;
    emit(&Event::Down);
    code
}

/// Resolves when the lab should stop: a signal, or stdin closing when
/// `tied`.
async fn stop_requested(tied: bool) -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut int = signal(SignalKind::interrupt()).ok();
    let mut hup = signal(SignalKind::hangup()).ok();
    let closed = async {
        if tied {
            // A blocking read on a detached thread (the runtime must not
            // wait for it at exit): `up` never writes, so the read
            // returns only when `up` is gone.
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                let mut stdin = std::io::stdin().lock();
                loop {
                    match std::io::Read::read(&mut stdin, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
                let _ = tx.send(());
            });
            let _ = rx.await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    tokio::select! {
        _ = recv(&mut term) => "SIGTERM",
        _ = recv(&mut int) => "SIGINT",
        _ = recv(&mut hup) => "SIGHUP",
        _ = closed => "vni-lab up went away",
    }
}

async fn start(
    lab: &LabDir,
    recorder: &Recorder,
    nodes: &mut Vec<Running>,
    server: &mut Option<IvshmemServer>,
    net: &mut Option<LabNet>,
    started: Instant,
) -> Result<(), SupervisorError> {
    let (plan, topology) = load_plan(lab)?;

    let geometry = topology.vni.geometry_for(&plan.accel);
    emit(&Event::Step {
        message: format!(
            "formatting {} MiB of shared memory (lease {} ms)",
            topology.shared_memory >> 20,
            geometry.lease_ms
        ),
    });
    recorder.update(|s| s.shm = Some(plan.shm.clone()));
    let shm = create_region(&plan.shm, &topology, &geometry)?;
    let socket = lab.ivshmem_socket();
    *server = Some(start_server(&socket, shm)?);

    if topology.network == Network::VirtioNetTap {
        emit(&Event::Step {
            message: "making the lab's network namespace: a bridge and a TAP per node".into(),
        });
        *net = Some(LabNet::create(topology.nodes.len()).map_err(SupervisorError::Network)?);
    }

    emit(&Event::Step {
        message: format!(
            "booting {} nodes ({})",
            topology.nodes.len(),
            plan.accel.to_uppercase()
        ),
    });
    for node in &topology.nodes {
        let running = spawn_node(lab, &plan, &topology, node, &socket, net.as_ref())?;
        recorder.update(|s| {
            s.nodes.push(NodeRecord {
                name: node.name.clone(),
                pid: running.pid,
                state: NodeState::Booting,
                ready_after: None,
                exit: None,
            });
        });
        emit(&Event::NodeStarted {
            node: node.name.clone(),
            pid: running.pid,
        });
        nodes.push(running);
        // A stream's client needs its server listening.
        if topology.network == Network::VirtioNet && node.id == 0 {
            let socket = lab.dir.join("net.sock");
            let until = Instant::now() + Duration::from_secs(10);
            while !socket.exists() && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    // Every node at once, sharing one deadline; the first failure (a
    // panic, QEMU gone, the deadline) ends the wait for all.
    let waits = nodes.iter().map(|running| {
        Box::pin(wait_node(
            lab,
            &topology,
            running,
            recorder,
            topology.boot_timeout,
            topology.command_timeout,
            started,
        ))
    });
    let agents = futures::future::try_join_all(waits).await?;

    // Every driver attached and in RUN: each node can reach every other.
    // The agents are dropped afterwards: their channels take one client
    // at a time, and `vni-lab exec` is next.
    if topology.network.is_virtio() {
        return Ok(());
    }
    emit(&Event::Step {
        message: "waiting for every node's VNI driver".into(),
    });
    wait_for_vni(
        &plan.shm,
        &topology,
        started + topology.boot_timeout,
        nodes,
        &agents,
    )
    .await
}

/// The lab's plan and its validated lab file.
fn load_plan(lab: &LabDir) -> Result<(Plan, Topology), SupervisorError> {
    let plan = lab.plan().ok_or_else(|| SupervisorError::NoPlan {
        path: lab.plan_path(),
    })?;
    let topology = Topology::parse(&plan.topology_text, &plan.topology_path)
        .map_err(SupervisorError::Topology)?;
    Ok((plan, topology))
}

/// Starts the ivshmem server on `socket`, serving `shm`.
fn start_server(socket: &Path, shm: File) -> Result<IvshmemServer, SupervisorError> {
    IvshmemServer::start(socket, shm, qemu::VECTORS).map_err(|e| match e {
        IvshmemError::Listen { path, source } => SupervisorError::IvshmemListen { path, source },
        e => SupervisorError::IvshmemServer(e),
    })
}

/// Gives a node its network: with `network: vni`, starts its VNI driver
/// (the user-space one or the kernel module, see [`crate::driver`]); with `virtio-net`, names
/// the node's virtio-net NIC `vni0` (so that every tool finds the lab's
/// interface by one name) and gives it the node's MTU and address.
async fn setup_network(
    agent: &GuestAgent,
    running: &Running,
    topology: &Topology,
    timeout: Duration,
) -> Result<(), SupervisorError> {
    let node = &running.node;
    let (what, script) = match topology.network {
        Network::Vni => (
            match node.driver {
                Driver::User => "start the VNI driver",
                Driver::Kernel => "load the VNI kernel module",
            },
            driver::start(node, topology),
        ),
        Network::VirtioNet | Network::VirtioNetTap => {
            let script = format!(
                "modprobe virtio_net; \
                 for d in /sys/class/net/*; do [ \"$(cat $d/address)\" = {mac} ] && n=${{d##*/}}; done; \
                 [ -n \"$n\" ] || {{ echo no NIC with MAC {mac} >&2; exit 1; }}; \
                 ip link set \"$n\" name vni0 && ip link set vni0 mtu {mtu} && ip addr add {ip} dev vni0 && ip link set vni0 up",
                mac = node.mac,
                mtu = topology.vni.mtu,
                ip = node.ip
            );
            ("configure its virtio-net NIC", script)
        }
    };
    // Sockets may ask for room for bursts: NAPI hands up to 64 frames at
    // once to a receiver that TCG runs slowly (iperf3's UDP test asks for
    // 2 MiB at both ends, and checks it got them, see `suite::checks`).
    // (Written to /proc: not every image has sysctl.)
    // And the relay of the node's shell ports (`vni-lab shell`), which
    // needs no network, first.
    let script = format!(
        "setsid vni-shell serve > /run/vni-shell.log 2>&1 < /dev/null & \
         echo {SOCKET_BUFFER_MAX} > /proc/sys/net/core/rmem_max; echo {SOCKET_BUFFER_MAX} > /proc/sys/net/core/wmem_max; {script}"
    );
    let out = agent
        .exec("/bin/sh", &["-c", &script], timeout)
        .await
        .map_err(|source| SupervisorError::SetupNetwork {
            node: node.name.clone(),
            what,
            source,
        })?;
    if out.code != Some(0) {
        return Err(SupervisorError::SetupNetworkFailed {
            node: node.name.clone(),
            what,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}

/// The largest socket receive buffer a guest's programs may ask for.
pub const SOCKET_BUFFER_MAX: u32 = 4 << 20;

/// The last lines of a node's driver log, or why they cannot be had.
async fn driver_log(agent: &GuestAgent, which: Driver) -> String {
    agent
        .exec(
            "/bin/sh",
            &["-c", &driver::log(which, 50)],
            Duration::from_secs(10),
        )
        .await
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("(cannot read it: {})", causes(&e)))
}

/// Waits until every node's entry in the region says RUN, reading the
/// region from the host. On timeout, says which nodes are not there and
/// shows their driver's log.
async fn wait_for_vni(
    shm: &Path,
    topology: &Topology,
    deadline: Instant,
    nodes: &[Running],
    agents: &[GuestAgent],
) -> Result<(), SupervisorError> {
    let region = vni_protocol::Region::open(shm).map_err(SupervisorError::OpenRegion)?;
    loop {
        let report = vni_protocol::inspect(&region).map_err(SupervisorError::InspectRegion)?;
        let missing: Vec<&Node> = topology
            .nodes
            .iter()
            .filter(|n| !report.runs(n.id))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if let Some(gone) = nodes.iter().find(|n| n.exit.borrow().is_some()) {
            return Err(SupervisorError::QemuExited {
                node: gone.node.name.clone(),
                status: gone.exit.borrow().clone().unwrap_or_default(),
            });
        }
        // A driver that died will not get there: say so now.
        let mut dead = Vec::new();
        for node in &missing {
            if let Some(agent) = agents.get(node.id) {
                let check = driver::alive(node.driver);
                if let Ok(out) = agent
                    .exec("/bin/sh", &["-c", &check], Duration::from_secs(10))
                    .await
                {
                    if out.code != Some(0) {
                        dead.push(*node);
                    }
                }
            }
        }
        if !dead.is_empty() || Instant::now() >= deadline {
            let (failed, why) = if dead.is_empty() {
                (missing, "did not reach RUN within timeouts.boot")
            } else {
                (dead, "exited")
            };
            let mut message = String::new();
            for node in failed {
                message.push_str(&format!("node {}: its VNI driver {why}", node.name));
                if let Some(agent) = agents.get(node.id) {
                    let log = driver_log(agent, node.driver).await;
                    message.push_str(&format!(
                        "\n--- {}:\n{}\n",
                        driver::log_name(node.driver),
                        log.trim_end()
                    ));
                }
            }
            return Err(SupervisorError::VniDriver(message));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Creates the shared-memory file (0600, refusing an existing one) and
/// formats the VNI region in it with `geometry`.
fn create_region(
    path: &Path,
    topology: &Topology,
    geometry: &vni_protocol::Geometry,
) -> Result<File, SupervisorError> {
    use std::os::unix::fs::OpenOptionsExt;
    // The name belongs to this lab directory, whose lock we hold: a file
    // there now is a dead lab's.
    let _ = std::fs::remove_file(path);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| SupervisorError::CreateRegion {
            path: path.to_owned(),
            source,
        })?;
    file.set_len(topology.shared_memory)
        .map_err(|source| SupervisorError::SizeRegion {
            path: path.to_owned(),
            source,
        })?;
    let len =
        usize::try_from(topology.shared_memory).map_err(|_| SupervisorError::RegionTooLarge {
            size: topology.shared_memory,
        })?;
    let region = vni_protocol::Region::map_file(&file, 0, len, &path.display().to_string())
        .map_err(SupervisorError::MapRegion)?;
    vni_protocol::format(&region, geometry).map_err(SupervisorError::FormatRegion)?;
    Ok(file)
}

fn spawn_node(
    lab: &LabDir,
    plan: &Plan,
    topology: &Topology,
    node: &Node,
    socket: &Path,
    net: Option<&LabNet>,
) -> Result<Running, SupervisorError> {
    let paths = lab.node(&node.name);
    let spec = NodeSpec {
        lab: &plan.name,
        node,
        accel: &plan.accel,
        kernel: &plan.kernel,
        initrd: &plan.initrd,
        append: &topology.append,
        ivshmem: socket,
        paths: &paths,
        sandbox: plan.sandbox,
        netdev: match topology.network {
            Network::Vni => None,
            Network::VirtioNet => Some(qemu::baseline_netdev(
                &lab.dir,
                node.id,
                topology.nodes.len(),
                lab.seed(),
            )),
            Network::VirtioNetTap => Some(qemu::tap_netdev(&LabNet::tap_name(node.id))),
        },
    };
    let log = File::create(&paths.qemu_log).map_err(|source| SupervisorError::QemuLog {
        path: paths.qemu_log.clone(),
        source,
    })?;
    let log2 = log
        .try_clone()
        .map_err(|source| SupervisorError::ShareQemuLog {
            path: paths.qemu_log.clone(),
            source,
        })?;
    let mut command = std::process::Command::new(qemu::QEMU);
    command
        .args(qemu::args(&spec))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    if let Some(net) = net {
        net.enter_on_spawn(&mut command);
    }
    let cpus = node.host_cpus.clone();
    let in_child = move || {
        // SAFETY: prctl(PR_SET_PDEATHSIG) takes plain integers and only
        // changes this (child) process's death signal.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if !cpus.is_empty() {
            qemu::pin_thread(0, &cpus)?;
        }
        Ok(())
    };
    // SAFETY: `in_child` runs between fork and exec and only makes
    // async-signal-safe system calls (prctl, sched_setaffinity) on memory it
    // owns; it allocates nothing.
    unsafe { command.pre_exec(in_child) };
    let mut child = tokio::process::Command::from(command)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SupervisorError::SpawnQemu {
            node: node.name.clone(),
            program: qemu::QEMU,
            source,
        })?;
    let pid = child.id().unwrap_or(0);
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let status = match child.wait().await {
            Ok(status) => describe(status),
            Err(e) => format!("unknown ({e})"),
        };
        let _ = tx.send(Some(status));
    });
    Ok(Running {
        node: node.clone(),
        pid,
        exit: rx,
        reported: false,
    })
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => "unknown".into(),
    }
}

async fn wait_node(
    lab: &LabDir,
    topology: &Topology,
    running: &Running,
    recorder: &Recorder,
    boot_timeout: Duration,
    command_timeout: Duration,
    started: Instant,
) -> Result<GuestAgent, SupervisorError> {
    let deadline = started + boot_timeout;
    let name = &running.node.name;
    let paths = lab.node(name);
    if !running.node.host_cpus.is_empty() {
        pin_vcpus(&paths.qmp, &running.node, &running.exit).await?;
    }
    let exit = running.exit.clone();
    let ready = GuestAgent::wait_ready(
        &paths.agent,
        deadline.saturating_duration_since(Instant::now()),
        command_timeout,
        || exit.borrow().is_none(),
    )
    .await;
    match ready {
        Ok(agent) => {
            setup_network(&agent, running, topology, command_timeout).await?;
            let after = started.elapsed().as_secs_f64();
            recorder.node(name, |n| {
                n.state = NodeState::Ready;
                n.ready_after = Some(after);
            });
            emit(&Event::NodeReady {
                node: name.clone(),
                after,
            });
            Ok(agent)
        }
        Err(e) => {
            // Give QEMU a moment to finish writing after a panic.
            let mut exit = running.exit.clone();
            let _ =
                tokio::time::timeout(Duration::from_millis(500), exit.wait_for(Option::is_some))
                    .await;
            let console = tail(&paths.console, CONSOLE_TAIL);
            let status = running.exit.borrow().clone();
            let what = match (&status, panicked(&console)) {
                (_, true) => "the guest kernel panicked".to_owned(),
                (Some(status), false) => format!("QEMU exited during boot ({status})"),
                (None, false) => match e {
                    AgentError::NotReady(_) => format!(
                        "its guest agent did not answer within timeouts.boot ({:?})",
                        boot_timeout
                    ),
                    e => causes(&e),
                },
            };
            let mut details = String::new();
            if status.is_some() {
                let qemu_log = tail(&paths.qemu_log, 10);
                if !qemu_log.trim().is_empty() {
                    details.push_str(&format!("\n--- QEMU said:\n{qemu_log}"));
                }
            }
            details.push_str(&format!(
                "\n--- last lines of {name}'s console:\n{}",
                if console.trim().is_empty() {
                    "(empty)".to_owned()
                } else {
                    console
                }
            ));
            Err(SupervisorError::Boot {
                node: name.clone(),
                what,
                details,
            })
        }
    }
}

/// Pins vCPU i of `node` to host CPU `host_cpus[i % len]` (Mint gives each
/// OS node its own cores).
async fn pin_vcpus(
    qmp_socket: &Path,
    node: &Node,
    exit: &watch::Receiver<Option<String>>,
) -> Result<(), SupervisorError> {
    // QEMU creates the socket early; wait for it like for the agent.
    let deadline = Instant::now() + QMP_TIMEOUT;
    let qmp = loop {
        match Qmp::connect(qmp_socket, QMP_TIMEOUT).await {
            Ok(qmp) => break qmp,
            Err(source) if Instant::now() >= deadline || exit.borrow().is_some() => {
                return Err(SupervisorError::Qmp {
                    node: node.name.clone(),
                    source,
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let threads = qmp
        .vcpu_threads()
        .await
        .map_err(|source| SupervisorError::Qmp {
            node: node.name.clone(),
            source,
        })?;
    for (i, tid) in threads.iter().enumerate() {
        let cpu = node.host_cpus[i % node.host_cpus.len()];
        qemu::pin_thread(*tid, &[cpu]).map_err(|source| SupervisorError::PinVcpu {
            node: node.name.clone(),
            vcpu: i,
            cpu,
            source,
        })?;
    }
    Ok(())
}

/// What woke the watch.
enum Next {
    Stop(&'static str),
    Exited(usize),
    Request(tokio::net::UnixStream),
}

/// After the start: records QEMUs that exit and serves `vni-lab fault`
/// requests on the control socket, until asked to stop.
async fn watch_nodes(
    lab: &LabDir,
    nodes: &mut [Running],
    recorder: &Recorder,
    stop: &mut std::pin::Pin<Box<impl std::future::Future<Output = &'static str>>>,
    net: Option<&LabNet>,
) -> &'static str {
    tighten_sockets(lab);
    let control = match tokio::net::UnixListener::bind(lab.control_socket()) {
        Ok(listener) => {
            tighten_sockets(lab);
            Some(listener)
        }
        Err(e) => {
            eprintln!(
                "{} no control socket, faults cannot be injected: {e}",
                timestamp()
            );
            None
        }
    };
    loop {
        let waits: Vec<_> = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| !n.reported)
            .map(|(i, n)| {
                let mut exit = n.exit.clone();
                Box::pin(async move {
                    let _ = exit.wait_for(Option::is_some).await;
                    i
                })
            })
            .collect();
        let exited = async move {
            if waits.is_empty() {
                std::future::pending().await
            } else {
                futures::future::select_all(waits).await.0
            }
        };
        let request = async {
            match &control {
                Some(listener) => loop {
                    if let Ok((stream, _)) = listener.accept().await {
                        break stream;
                    }
                },
                None => std::future::pending().await,
            }
        };
        let next = tokio::select! {
            why = &mut *stop => Next::Stop(why),
            i = exited => Next::Exited(i),
            stream = request => Next::Request(stream),
        };
        match next {
            Next::Stop(why) => return why,
            Next::Exited(i) => record_exit(&mut nodes[i], recorder),
            Next::Request(stream) => {
                tokio::select! {
                    why = &mut *stop => return why,
                    () = serve_fault(lab, nodes, recorder, stream, net) => {}
                }
            }
        }
    }
}

/// Makes every socket in the lab directory (QEMU's QMP, agent and
/// network sockets, the control socket) mode 0600: the umask leaves
/// sockets 0700, and only the lab's user may talk to them.
fn tighten_sockets(lab: &LabDir) {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let Ok(entries) = std::fs::read_dir(&lab.dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_socket()) {
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600));
        }
    }
}

/// Records and announces that a node's QEMU exited.
fn record_exit(running: &mut Running, recorder: &Recorder) {
    running.reported = true;
    let name = running.node.name.clone();
    let status = running.exit.borrow().clone().unwrap_or_default();
    recorder.node(&name, |n| {
        n.state = NodeState::Exited;
        n.exit = Some(status.clone());
    });
    emit(&Event::NodeExited { node: name, status });
}

/// Reads one fault request from `stream` and answers it.
async fn serve_fault(
    lab: &LabDir,
    nodes: &mut [Running],
    recorder: &Recorder,
    stream: tokio::net::UnixStream,
    net: Option<&LabNet>,
) {
    use crate::fault::{Reply, Request};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let line = tokio::time::timeout(QMP_TIMEOUT, lines.next_line()).await;
    let (replies, mut rx) = tokio::sync::mpsc::unbounded_channel::<Reply>();
    let request: Result<Request, String> = match line {
        Ok(Ok(Some(line))) => {
            serde_json::from_str(&line).map_err(|e| format!("bad request {line:?}: {e}"))
        }
        _ => Err("no request".to_owned()),
    };
    let work = async {
        let outcome = match request {
            Ok(request) => {
                eprintln!("{} fault: {} {}", timestamp(), request.fault, request.node);
                inject(lab, nodes, recorder, &request, &replies, net)
                    .await
                    .map_err(|e| e.to_string())
            }
            Err(e) => Err(e),
        };
        let last = match outcome {
            Ok(message) => Reply::Done { message },
            Err(message) => Reply::Failed { message },
        };
        eprintln!("{} fault: {last:?}", timestamp());
        let _ = replies.send(last);
        drop(replies);
    };
    // The client may go away; the fault is carried through regardless.
    let forward = async {
        while let Some(reply) = rx.recv().await {
            if let Ok(mut line) = serde_json::to_string(&reply) {
                line.push('\n');
                let _ = write.write_all(line.as_bytes()).await;
            }
        }
    };
    tokio::join!(work, forward);
}

/// Injects `request`'s fault; the final message, or why it failed.
async fn inject(
    lab: &LabDir,
    nodes: &mut [Running],
    recorder: &Recorder,
    request: &crate::fault::Request,
    replies: &tokio::sync::mpsc::UnboundedSender<crate::fault::Reply>,
    net: Option<&LabNet>,
) -> Result<String, SupervisorError> {
    use crate::fault::{Fault, Reply};

    let Some(i) = nodes.iter().position(|n| n.node.name == request.node) else {
        return Err(SupervisorError::NoSuchNode {
            lab: lab.name.clone(),
            node: request.node.clone(),
            nodes: nodes.iter().map(|n| n.node.name.clone()).collect(),
        });
    };
    let name = request.node.clone();
    let paths = lab.node(&name);
    let exited = nodes[i].exit.borrow().clone();
    if let (Some(status), Fault::Kill | Fault::Pause | Fault::Resume) = (&exited, request.fault) {
        return Err(SupervisorError::NotRunning {
            node: name,
            status: status.clone(),
        });
    }
    match request.fault {
        Fault::Kill => {
            let pid = nodes[i].pid;
            kill_node(&mut nodes[i], recorder).await?;
            Ok(format!("node {name}: QEMU (pid {pid}) killed with SIGKILL"))
        }
        Fault::Pause | Fault::Resume => {
            let qmp_err = |source| SupervisorError::Qmp {
                node: name.clone(),
                source,
            };
            let qmp = Qmp::connect(&paths.qmp, QMP_TIMEOUT)
                .await
                .map_err(qmp_err)?;
            if request.fault == Fault::Pause {
                qmp.pause().await.map_err(qmp_err)?;
                recorder.node(&name, |n| n.state = NodeState::Paused);
                Ok(format!("node {name}: vCPUs stopped"))
            } else {
                qmp.resume().await.map_err(qmp_err)?;
                recorder.node(&name, |n| n.state = NodeState::Ready);
                Ok(format!("node {name}: vCPUs running again"))
            }
        }
        Fault::Restart => {
            let socket = lab.ivshmem_socket();
            if !socket.exists() {
                return Err(SupervisorError::SocketGone {
                    node: name,
                    socket,
                    lab: lab.name.clone(),
                });
            }
            let (plan, topology) = load_plan(lab)?;
            let shm = plan.shm.clone();
            let before = node_in_region(&shm, nodes[i].node.id);
            if exited.is_none() {
                let _ = replies.send(Reply::Progress {
                    message: format!("killing node {name}"),
                });
                kill_node(&mut nodes[i], recorder).await?;
            } else if !nodes[i].reported {
                record_exit(&mut nodes[i], recorder);
            }
            // Keep the last life's console; QEMU truncates the file.
            let _ = std::fs::rename(&paths.console, paths.console.with_extension("console.prev"));
            let _ = replies.send(Reply::Progress {
                message: format!("booting node {name} again"),
            });
            let started = Instant::now();
            let node = nodes[i].node.clone();
            let running = spawn_node(lab, &plan, &topology, &node, &socket, net)?;
            recorder.node(&name, |n| {
                n.pid = running.pid;
                n.state = NodeState::Booting;
                n.ready_after = None;
                n.exit = None;
            });
            emit(&Event::NodeStarted {
                node: name.clone(),
                pid: running.pid,
            });
            nodes[i] = running;
            let agent = wait_node(
                lab,
                &topology,
                &nodes[i],
                recorder,
                topology.boot_timeout,
                topology.command_timeout,
                started,
            )
            .await?;
            if topology.network == Network::Vni {
                let _ = replies.send(Reply::Progress {
                    message: format!("waiting for node {name}'s VNI driver"),
                });
                let deadline = started + topology.boot_timeout;
                loop {
                    let now = node_in_region(&shm, node.id);
                    if now.is_some_and(|(run, _)| run) && now != before {
                        break;
                    }
                    if let Some(status) = nodes[i].exit.borrow().clone() {
                        return Err(SupervisorError::QemuExited { node: name, status });
                    }
                    if Instant::now() >= deadline {
                        let log = driver_log(&agent, node.driver).await;
                        return Err(SupervisorError::VniDriver(format!(
                            "node {name}: its VNI driver did not reach RUN within timeouts.boot\n--- {}:\n{}",
                            driver::log_name(node.driver),
                            log.trim_end()
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            tighten_sockets(lab);
            Ok(format!(
                "node {name}: restarted (QEMU pid {}), ready after {:.1} s",
                nodes[i].pid,
                started.elapsed().as_secs_f64()
            ))
        }
    }
}

/// Whether node `id` is in RUN in the region, and the incarnation it is
/// (generation and ivshmem peer id; both change when it attaches again).
fn node_in_region(shm: &Path, id: usize) -> Option<(bool, (u32, Option<u16>))> {
    let region = vni_protocol::Region::open(shm).ok()?;
    let report = vni_protocol::inspect(&region).ok()?;
    let node = report.nodes.get(id)?;
    Some((report.runs(id), (node.generation, node.doorbell_peer)))
}

/// SIGKILL to a node's QEMU, waiting until it is reaped and recorded.
async fn kill_node(running: &mut Running, recorder: &Recorder) -> Result<(), SupervisorError> {
    signal(running.pid, libc::SIGKILL);
    let mut exit = running.exit.clone();
    tokio::time::timeout(QMP_TIMEOUT, exit.wait_for(Option::is_some))
        .await
        .map_err(|_| SupervisorError::KillTimeout {
            node: running.node.name.clone(),
            after: QMP_TIMEOUT,
        })?
        .map_err(|_| SupervisorError::WatcherGone {
            node: running.node.name.clone(),
        })?;
    record_exit(running, recorder);
    Ok(())
}

async fn teardown(
    lab: &LabDir,
    recorder: &Recorder,
    nodes: Vec<Running>,
    server: Option<IvshmemServer>,
) {
    for running in &nodes {
        if running.exit.borrow().is_none() {
            signal(running.pid, libc::SIGTERM);
        }
    }
    for running in &nodes {
        let mut exit = running.exit.clone();
        let gone = tokio::time::timeout(QEMU_GRACE, exit.wait_for(Option::is_some))
            .await
            .is_ok();
        if !gone {
            eprintln!(
                "{} {} did not exit on SIGTERM; SIGKILL",
                timestamp(),
                running.node.name
            );
            signal(running.pid, libc::SIGKILL);
            let _ = exit.wait_for(Option::is_some).await;
        }
    }
    drop(server);
    let shm = recorder
        .state
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .shm
        .clone();
    if let Some(shm) = shm {
        let _ = std::fs::remove_file(shm);
    }
    if let Some(to) = lab.plan().and_then(|p| p.keep_logs) {
        if let Err(e) = keep_logs(lab, &nodes, &to) {
            eprintln!(
                "{} cannot keep the logs in {}: {e}",
                timestamp(),
                to.display()
            );
        }
    }
    if let Err(e) = std::fs::remove_dir_all(&lab.dir) {
        eprintln!("{} cannot remove {}: {e}", timestamp(), lab.dir.display());
    }
}

/// Copies every node's console and QEMU log, and the supervisor's log,
/// into `to` (created if needed): `NODE.console.log`, `NODE.qemu.log`,
/// `supervisor.log`.
fn keep_logs(lab: &LabDir, nodes: &[Running], to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for running in nodes {
        let name = &running.node.name;
        let paths = lab.node(name);
        for (from, suffix) in [(&paths.console, "console"), (&paths.qemu_log, "qemu")] {
            if from.exists() {
                std::fs::copy(from, to.join(format!("{name}.{suffix}.log")))?;
            }
        }
    }
    std::fs::copy(lab.supervisor_log(), to.join("supervisor.log"))?;
    Ok(())
}

fn signal(pid: u32, sig: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 0 {
            // SAFETY: kill has no memory effects; `pid` is our own child,
            // not yet reaped (its watcher reaps it), so it cannot be reused.
            unsafe { libc::kill(pid, sig) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_one_json_object_per_line() {
        let event = Event::NodeReady {
            node: "node0".into(),
            after: 9.5,
        };
        let line = serde_json::to_string(&event).unwrap();
        assert_eq!(line, r#"{"event":"node-ready","node":"node0","after":9.5}"#);
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), event);
    }

    /// What the OS says for a path under a missing directory.
    const ENOENT: &str = "No such file or directory";

    /// A directory that does not exist, unique to this test.
    fn missing_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "vni-lab-supervisor-{test}-{}-missing",
            std::process::id()
        ));
        assert!(!dir.exists(), "{} exists", dir.display());
        dir
    }

    fn lab() -> Topology {
        Topology::parse(
            "name: t\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n  - {name: b, ip: 10.0.0.2/24}\n",
            Path::new("t.yaml"),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn the_ivshmem_socket_error_says_why_it_cannot_listen() {
        let socket = missing_dir("ivshmem").join("ivshmem.sock");
        let shm = File::open("/dev/null").unwrap();
        let e = start_server(&socket, shm).expect_err("no directory to bind in");
        assert!(matches!(e, SupervisorError::IvshmemListen { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "cannot listen on the ivshmem socket {}: ",
                socket.display()
            )),
            "{text}"
        );
        assert!(text.contains(ENOENT), "{text}");
        // The OS's error stays reachable as the source.
        let source = std::error::Error::source(&e).expect("a source");
        assert!(source.downcast_ref::<io::Error>().is_some(), "{source:?}");
    }

    #[test]
    fn the_region_error_says_why_it_cannot_be_created() {
        let path = missing_dir("region").join("shm");
        let lab = lab();
        let e = create_region(&path, &lab, &lab.vni.geometry)
            .expect_err("no directory to create it in");
        assert!(matches!(e, SupervisorError::CreateRegion { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "cannot create the shared memory {}: ",
                path.display()
            )),
            "{text}"
        );
        assert!(text.contains(ENOENT), "{text}");
    }

    #[test]
    fn the_qemu_log_error_says_why_it_cannot_be_created() {
        let dir = missing_dir("qemu-log");
        let lab_dir = LabDir {
            name: "t".into(),
            dir: dir.clone(),
        };
        let topology = lab();
        let plan = Plan {
            name: "t".into(),
            topology_path: "t.yaml".into(),
            topology_text: String::new(),
            accel: "tcg".into(),
            kernel: "bzImage".into(),
            initrd: "initrd".into(),
            kernel_release: String::new(),
            sandbox: false,
            shm: dir.join("shm"),
            keep_logs: None,
        };
        let socket = dir.join("ivshmem.sock");
        let e = spawn_node(
            &lab_dir,
            &plan,
            &topology,
            &topology.nodes[0],
            &socket,
            None,
        )
        .err()
        .expect("no directory for the log");
        assert!(matches!(e, SupervisorError::QemuLog { .. }), "{e:?}");
        let text = e.to_string();
        let log = lab_dir.node("a").qemu_log;
        assert!(
            text.starts_with(&format!("cannot create {}: ", log.display())),
            "{text}"
        );
        assert!(text.contains(ENOENT), "{text}");
    }

    /// A lower-level error that keeps the OS's reason only as its source
    /// (`Cannot map shared region PATH`) gets it into the text sent to
    /// `up`.
    #[tokio::test]
    async fn the_region_watch_error_keeps_the_reason_under_it() {
        let path = missing_dir("watch").join("shm");
        let e = wait_for_vni(&path, &lab(), Instant::now(), &[], &[])
            .await
            .expect_err("no region to open");
        assert!(matches!(e, SupervisorError::OpenRegion(_)), "{e:?}");
        let text = e.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains(ENOENT), "{text}");
    }

    #[test]
    fn causes_are_said_once() {
        let os = || io::Error::from_raw_os_error(libc::EADDRINUSE);
        let reason = os().to_string();
        // IvshmemError's `Listen` keeps the reason as its source only:
        // it is added, once, however deep.
        let e = SupervisorError::IvshmemServer(IvshmemError::Listen {
            path: "/x.sock".into(),
            source: os(),
        });
        assert_eq!(
            e.to_string(),
            format!("cannot start the ivshmem server: Cannot listen on ivshmem socket /x.sock: {reason}")
        );
        assert_eq!(causes(&e), e.to_string());
        // NetnsError says its source itself: not repeated.
        let e = SupervisorError::Network(NetnsError::Create(os()));
        assert_eq!(causes(&e).matches(&reason).count(), 1, "{e}");
    }
}
