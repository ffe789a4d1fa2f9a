//! Starting the lab: the region created and formatted, the ivshmem
//! server, one QEMU per node, vCPUs pinned, each guest agent waited for,
//! the guest network set up, and every driver waited for until it runs.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::error::{causes, SupervisorError};
use super::event::{emit, Event, CONSOLE_TAIL};
use super::record::{Recorder, Running};
use crate::agent::{AgentError, GuestAgent};
use crate::crash::panicked;
use crate::driver;
use crate::ivshmem_server::{IvshmemError, IvshmemServer};
use crate::lab::{LabDir, NodeRecord, NodeState, Plan};
use crate::logs::tail;
use crate::netns::LabNet;
use crate::qemu::{self, NodeSpec, Qmp};
use crate::sections::{self, FileStep, Sections};
use crate::topology::{Driver, Network, Node, Topology};

/// Timeout of one QMP call.
pub(super) const QMP_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn start(
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
    let sections = Sections::of_lab(&topology, &plan.accel, &plan.shm);
    if let Some(sections) = &sections {
        emit(&Event::Step {
            message: format!(
                "making {} write-protected sections of {} MiB",
                sections.files.len(),
                sections.geometry.section_len >> 20
            ),
        });
        sections.create().map_err(SupervisorError::Sections)?;
    }
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
        let running = spawn_node(
            lab,
            &plan,
            &topology,
            node,
            &socket,
            net.as_ref(),
            sections.as_ref(),
        )?;
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
pub(super) fn load_plan(lab: &LabDir) -> Result<(Plan, Topology), SupervisorError> {
    let plan = lab.plan().ok_or_else(|| SupervisorError::NoPlan {
        path: lab.plan_path(),
    })?;
    let topology = Topology::parse(&plan.topology_text, &plan.topology_path)
        .map_err(SupervisorError::Topology)?;
    Ok((plan, topology))
}

/// Starts the ivshmem server on `socket`, serving `shm`.
pub(super) fn start_server(socket: &Path, shm: File) -> Result<IvshmemServer, SupervisorError> {
    IvshmemServer::start(socket, shm, qemu::VECTORS).map_err(|e| match e {
        IvshmemError::Listen { path, source } => SupervisorError::IvshmemListen { path, source },
        e => SupervisorError::IvshmemServer(e),
    })
}

/// Gives a node its network: with `network: vni`, starts its VNI driver
/// (the user-space one or the kernel module, see [`crate::driver`]); with `virtio-net`, names
/// the node's virtio-net NIC `vni0` (so that every tool finds the lab's
/// interface by one name) and gives it the node's MTU and address.
pub(super) async fn setup_network(
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
pub(super) async fn driver_log(agent: &GuestAgent, which: Driver) -> String {
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
pub(super) async fn wait_for_vni(
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

/// Creates the shared-memory file (0600, replacing a dead lab's) and
/// formats the VNI region in it with `geometry`.
pub(super) fn create_region(
    path: &Path,
    topology: &Topology,
    geometry: &vni_protocol::Geometry,
) -> Result<File, SupervisorError> {
    let file = sections::fresh_file(path, topology.shared_memory).map_err(|(step, source)| {
        let path = path.to_owned();
        match step {
            FileStep::Create => SupervisorError::CreateRegion { path, source },
            FileStep::Size => SupervisorError::SizeRegion { path, source },
        }
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

pub(super) fn spawn_node(
    lab: &LabDir,
    plan: &Plan,
    topology: &Topology,
    node: &Node,
    socket: &Path,
    net: Option<&LabNet>,
    sections: Option<&Sections>,
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
        sections,
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

pub(super) fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => "unknown".into(),
    }
}

pub(super) async fn wait_node(
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
pub(super) async fn pin_vcpus(
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

/// Makes every socket in the lab directory (QEMU's QMP, agent and
/// network sockets, the control socket) mode 0600: the umask leaves
/// sockets 0700, and only the lab's user may talk to them.
pub(super) fn tighten_sockets(lab: &LabDir) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::NetnsError;
    use std::io;
    use std::path::PathBuf;

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
