//! Why the supervisor could not start its lab or carry out a fault, as
//! one typed error whose text reaches `up` and `vni-lab fault`.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use crate::agent::AgentError;
use crate::ivshmem_server::IvshmemError;
use crate::netns::NetnsError;
use crate::qemu::QmpError;
use crate::topology::TopologyError;

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
    /// Configuration 1's section files could not be made.
    #[error("{}", causes(.0))]
    Sections(#[source] crate::sections::SectionsError),
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
pub(super) fn causes(error: &dyn std::error::Error) -> String {
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
