//! The lab file: which OS nodes a lab has and how they share memory.
//!
//! Parsed in two phases, as ripgrep parses its flags: [`RawTopology`] is
//! the file as written (serde, unknown keys refused); [`Topology::parse`]
//! turns it into a validated [`Topology`] that cannot hold an invalid lab,
//! collecting every problem with its file, line, field and what is allowed.
//!
//! The smallest useful file:
//!
//! ```yaml
//! name: two-node
//! nodes:
//!   - name: node0
//!     ip: 10.10.0.1/24
//!   - name: node1
//!     ip: 10.10.0.2/24
//! ```

use std::collections::HashMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use schemars::JsonSchema;
use serde::Deserialize;
use vni_protocol::{BufferConfig, Geometry, Layout, MacAddr, SectionGeometry, MAX_NODES};

use crate::spans::{Pos, Spans};
use crate::test_spec::{RawTests, Tests};
use crate::units::{DurationSpec, SizeSpec};

/// Default guest memory: 8 nodes fit in 24 GiB with room to spare.
pub const DEFAULT_MEMORY: u64 = 512 << 20;
const _: () = assert!(
    8 * DEFAULT_MEMORY < 20 << 30,
    "8 default nodes must fit a 24 GiB host"
);
/// Default size of the shared region.
pub const DEFAULT_SHARED_MEMORY: u64 = 64 << 20;
/// Default time the user-space driver keeps polling after its last frame:
/// long enough to catch the answer of a round trip under TCG, short
/// enough to cost no CPU in an idle lab. (The kernel driver's default is
/// 0: see [`Vni::busy_poll_for`].)
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_millis(1);
/// Longest busy-poll window.
pub const MAX_BUSY_POLL: Duration = Duration::from_millis(100);
/// Default lease (how long a node's heartbeat may stand still before its
/// peers declare it dead) with KVM: the protocol's own default, as on
/// Mint's hardware.
pub const KVM_LEASE: Duration = Duration::from_millis(Geometry::DEFAULT_LEASE_MS as u64);
/// Default lease under TCG. A TCG guest stands still whenever the host
/// does not run its vCPU thread, and on a loaded two-core host that was
/// seen to last over a second: with the 1 s lease, live nodes were
/// declared dead while inside the region lock, and what they wrote when
/// they ran again broke the pool
/// (docs/src/known-problems.md#live-nodes-declared-dead-when-the-host-starves-them).
pub const TCG_LEASE: Duration = Duration::from_secs(3);
/// The lease's bounds (the region header's).
pub const LEASE_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(10)..=Duration::from_secs(600);
/// Default boot timeout (TCG on a small host is slow).
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// Default timeout of one command run in a guest.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest MTU (Linux's own limit for an Ethernet device; virtio-net).
pub const MAX_MTU: u32 = 65_535;
/// Largest MTU of the VNI: Linux lets a TAP's frames, Ethernet header
/// included, reach 65535 bytes.
pub const MAX_VNI_MTU: u32 = 65_521;

/// What the schema says a name is (as [`check_name`] checks it).
const NAME_PATTERN: &str = "^[a-z0-9][a-z0-9-]{0,31}$";
/// An IPv4 address with a prefix length.
const IP_PATTERN: &str = r"^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])/([0-9]|[12][0-9]|3[0-2])$";
/// A MAC address, colon-separated.
const MAC_PATTERN: &str = "^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$";
/// A CPU list ([`parse_cpus`]).
const CPUS_PATTERN: &str = r"^\s*[0-9]+(\s*-\s*[0-9]+)?(\s*,\s*[0-9]+(\s*-\s*[0-9]+)?)*\s*$";
/// One line.
const LINE_PATTERN: &str = r"^[^\n]*$";

/// Host CPUs: a list of CPU numbers, or a string like `0-3,6`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum CpuSpec {
    /// CPU numbers.
    List(#[schemars(length(min = 1), inner(range(max = 4095)))] Vec<u32>),
    /// Ranges, e.g. `0-3,6`.
    Text(#[schemars(regex(pattern = CPUS_PATTERN))] String),
}

/// A lab file as written.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "vni-lab topology")]
pub struct RawTopology {
    /// Lab name: lowercase letters, digits and '-', 1 to 32 characters,
    /// starting with a letter or digit.
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// The OS nodes (one QEMU guest each), 2 to 64.
    #[schemars(length(min = 2, max = MAX_NODES))]
    pub nodes: Vec<RawNode>,
    /// Settings every node gets unless it sets its own.
    #[serde(default)]
    pub defaults: RawDefaults,
    /// Size of the memory region all nodes share (ivshmem): a power of two
    /// from 1M to 4G. Default 64M.
    pub shared_memory: Option<SizeSpec>,
    /// The virtual network interface.
    #[serde(default)]
    pub vni: RawVni,
    /// Accelerator: `auto` (KVM where it really works, else TCG), `kvm`, `tcg`.
    #[serde(default)]
    pub accel: Accel,
    /// Guest kernel and image (bring your own for kernel CI).
    #[serde(default)]
    pub guest: RawGuest,
    /// How long to wait.
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// What `vni-lab test` checks, and its thresholds.
    #[serde(default)]
    pub tests: RawTests,
    /// The network between the nodes: `vni` (the VNI over the shared
    /// region; default), `virtio-net` (a virtio-net NIC per node joined
    /// by QEMU's own networking: the baseline the VNI is measured against)
    /// or `virtio-net-tap` (a virtio-net NIC per node on a TAP with
    /// offloads, the TAPs bridged in a network namespace of the lab's own:
    /// the stronger baseline).
    #[serde(default)]
    pub network: Network,
}

/// What carries the nodes' frames.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Deserialize,
    JsonSchema,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Network {
    /// The VNI driver over the shared region.
    #[default]
    Vni,
    /// A virtio-net NIC per node on QEMU's networking (`-netdev stream`
    /// for two nodes, `-netdev dgram` multicast for more).
    VirtioNet,
    /// A virtio-net NIC per node on a TAP (`-netdev tap` with `vnet_hdr`:
    /// offloads on, TCP segments cross whole), the TAPs joined by a bridge
    /// in a network namespace the lab makes for itself (needs root).
    VirtioNetTap,
}

impl Network {
    /// Whether the nodes use virtio-net NICs (either baseline) rather
    /// than the VNI.
    pub fn is_virtio(self) -> bool {
        self != Network::Vni
    }

    /// What carries the frames, for people.
    pub fn label(self) -> &'static str {
        match self {
            Network::Vni => "the VNI",
            Network::VirtioNet => "virtio-net",
            Network::VirtioNetTap => "virtio-net on bridged TAPs",
        }
    }
}

/// One node as written.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    /// Node name: lowercase letters, digits and '-', 1 to 32 characters.
    #[schemars(regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// IPv4 address with prefix length on the VNI, e.g. `10.10.0.1/24`. All
    /// nodes share one subnet (the VNI is one Ethernet segment).
    #[schemars(regex(pattern = IP_PATTERN))]
    pub ip: String,
    /// MAC address of the VNI interface; derived from the lab and node
    /// names when absent (stable across runs).
    #[schemars(regex(pattern = MAC_PATTERN))]
    pub mac: Option<String>,
    /// Virtual CPUs, 1 to 64. Default 1.
    #[schemars(range(min = 1, max = 64))]
    pub vcpus: Option<u32>,
    /// Guest memory, at least 128M. Default 512M.
    pub memory: Option<SizeSpec>,
    /// Host CPUs this node's vCPUs are pinned to (Mint gives each node its
    /// own cores). Default: not pinned.
    pub host_cpus: Option<CpuSpec>,
    /// This node's VNI driver, overriding `vni.driver` (a lab may mix
    /// kernel and user-space nodes).
    pub driver: Option<Driver>,
}

/// Defaults for every node.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    /// Virtual CPUs per node, 1 to 64.
    #[schemars(range(min = 1, max = 64))]
    pub vcpus: Option<u32>,
    /// Memory per node.
    pub memory: Option<SizeSpec>,
}

/// VNI settings as written.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawVni {
    /// Buffer configuration: 2 (one pool shared by all frames, the study's
    /// choice; default) or 1 (one ring per sender-receiver pair).
    #[schemars(range(min = 1, max = 2))]
    pub buffers: Option<u32>,
    /// Bytes per slot: a multiple of 64 from 64 to 65536. Default 2048.
    #[schemars(range(min = 64, max = 65536), extend("multipleOf" = 64))]
    pub slot_size: Option<u32>,
    /// Slots (config 2: in the pool; config 1: per ring, a power of two).
    /// Default: as many as the shared memory holds.
    #[schemars(range(min = 1))]
    pub slot_count: Option<u32>,
    /// MTU of the interface, 68 to 65521 (65535 with `network: virtio-net`). Default 1500.
    #[schemars(range(min = 68, max = MAX_MTU))]
    pub mtu: Option<u32>,
    /// How a receiver learns of frames: `interrupt` (doorbell; default) or
    /// `polling`.
    #[serde(default)]
    #[schemars(schema_with = "notification_schema")]
    pub notification: Option<Notification>,
    /// How long a driver keeps polling after its last frame before it
    /// sleeps (`0` sleeps at once), e.g. `500us`, `2ms`; at most 100ms.
    /// Default 1ms for the user-space driver, 0 for the kernel driver.
    pub busy_poll: Option<DurationSpec>,
    /// How long a node's heartbeat may stand still before its peers
    /// declare it dead, fence it and take its buffers back, e.g. `1s`,
    /// `500ms`; 10ms to 600s. Default 1s with KVM, 3s under TCG (whose
    /// guests stand still whenever the host does not run them).
    pub lease: Option<DurationSpec>,
    /// Time the driver loop's phases; each driver prints where its time
    /// went (a `vni-driver: profile {...}` line in its log) when it stops.
    /// Default false.
    pub profile: Option<bool>,
    /// Which VNI driver the nodes run: `user` (the user-space driver over
    /// VFIO and a TAP) or `kernel` (the Rust kernel module `vni.ko`, on
    /// Debian's Rust-enabled kernel or a kernel tree of one's own with Rust
    /// support). Default: `kernel` on that kernel
    /// (`guest.kernel: trixie-backports`), the faster one there;
    /// otherwise `user`. `nodes[].driver` overrides it per node.
    pub driver: Option<Driver>,
}

/// Guest settings as written.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawGuest {
    /// `bookworm` (Debian 12, kernel 6.1; default), `trixie` (Debian 13,
    /// kernel 6.12), `trixie-backports` (Debian 13 with the backports'
    /// 7.3 cloud kernel, which has Rust support; the default when a node
    /// runs the kernel driver), or the path of a kernel image (bzImage) to
    /// boot.
    pub kernel: Option<String>,
    /// Directory of modules for a kernel given by path (lib/modules/VERSION).
    pub modules: Option<PathBuf>,
    /// Root filesystem image to use instead of the built one.
    pub image: Option<PathBuf>,
    /// Extra kernel command line for every node, appended after vni-lab's
    /// own arguments (e.g. `loglevel=7`).
    #[schemars(regex(pattern = LINE_PATTERN))]
    pub append: Option<String>,
}

/// Timeouts as written.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// Until a node answers through its guest agent. Default 120s.
    pub boot: Option<DurationSpec>,
    /// For one command run in a guest. Default 60s.
    pub command: Option<DurationSpec>,
}

pub use vni_protocol::Notification;

/// The schema of the lab file's `notification` key, from the protocol's
/// one definition of the modes (names and descriptions).
fn notification_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let modes: Vec<serde_json::Value> = Notification::ALL
        .iter()
        .map(|mode| {
            serde_json::json!({
                "const": mode.name(),
                "description": mode.description(),
                "type": "string",
            })
        })
        .collect();
    generator.definitions_mut().insert(
        "Notification".into(),
        serde_json::json!({
            "description": "How a receiving node learns that frames wait.",
            "oneOf": modes,
        }),
    );
    schemars::json_schema!({
        "anyOf": [{ "$ref": "#/$defs/Notification" }, { "type": "null" }]
    })
}

/// Which accelerator runs the guests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, JsonSchema, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM where it really works, TCG otherwise.
    #[default]
    Auto,
    /// KVM, or fail.
    Kvm,
    /// TCG (software emulation).
    Tcg,
}

/// Which VNI driver a node runs.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Deserialize,
    JsonSchema,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// The user-space driver: the ivshmem device through VFIO, frames to
    /// and from a TAP interface. Runs on any kernel with VFIO and TUN.
    #[default]
    User,
    /// The Rust kernel module `vni.ko`, an Ethernet driver as in Mint.
    /// Needs Debian's Rust-enabled kernel (`guest.kernel:
    /// trixie-backports`) or a kernel of one's own built with
    /// `CONFIG_RUST`, whose tree vni-lab builds the module against
    /// (`--kernel-tree`).
    Kernel,
}

impl Driver {
    /// The name in lab files.
    pub fn name(self) -> &'static str {
        match self {
            Driver::User => "user",
            Driver::Kernel => "kernel",
        }
    }
}

/// The kernel a lab boots.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Kernel {
    /// Debian 12's distribution kernel (6.1).
    Bookworm,
    /// Debian 13's distribution kernel (6.12).
    Trixie,
    /// Debian 13 with the backports' cloud kernel (7.3, Rust support).
    TrixieBackports,
    /// A kernel image of the user's.
    Path(PathBuf),
}

impl Topology {
    /// Whether any node runs `driver` (on the VNI network).
    pub fn uses(&self, driver: Driver) -> bool {
        self.network == Network::Vni && self.nodes.iter().any(|n| n.driver == driver)
    }

    /// Configuration 1's write-protected sections for guests run by
    /// `accel`: `shared_memory` divided among the nodes, each section the
    /// largest power of two that fits (validation refused a lab file where
    /// a ring could not hold a largest frame). `None` for configuration 2
    /// and for virtio-net labs.
    pub fn sections_for(&self, accel: &str) -> Option<SectionGeometry> {
        let geometry = self.vni.geometry_for(accel);
        if self.network != Network::Vni || geometry.config != BufferConfig::PerPair {
            return None;
        }
        SectionGeometry::fit(
            usize::try_from(self.shared_memory).ok()?,
            u32::try_from(self.nodes.len()).ok()?,
            geometry.slot_size,
            geometry.lease_ms,
        )
        .ok()
    }
}

impl Kernel {
    /// The image suite it boots (a kernel of the user's boots bookworm's
    /// root filesystem).
    pub fn suite(&self) -> &'static str {
        match self {
            Kernel::Bookworm | Kernel::Path(_) => "bookworm",
            Kernel::Trixie => "trixie",
            Kernel::TrixieBackports => "trixie-backports",
        }
    }
}

/// A validated node.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Node {
    /// Index: the node's id in the shared region.
    pub id: usize,
    /// Name.
    pub name: String,
    /// Address and prefix on the VNI.
    pub ip: Ipv4Net,
    /// MAC address of the VNI interface.
    pub mac: MacAddr,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Guest memory in bytes.
    pub memory: u64,
    /// Host CPUs to pin to (empty: not pinned).
    pub host_cpus: Vec<u32>,
    /// Its VNI driver.
    pub driver: Driver,
}

/// Validated VNI settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Vni {
    /// Region geometry, buffer configuration included.
    pub geometry: Geometry,
    /// MTU of the interface.
    pub mtu: u32,
    /// Interrupts or polling.
    pub notification: Notification,
    /// Polling after the last frame before sleeping, as the lab file says
    /// (`None`: each driver's default, see [`Vni::busy_poll_for`]).
    pub busy_poll: Option<Duration>,
    /// Drivers time their loop's phases.
    pub profile: bool,
    /// The lease as the lab file says (`None`: by accelerator, see
    /// [`Vni::lease_for`]).
    pub lease: Option<Duration>,
}

impl Vni {
    /// The region's lease for guests run by `accel` (`kvm` or `tcg`): the
    /// lab file's `vni.lease`, or [`KVM_LEASE`] / [`TCG_LEASE`].
    pub fn lease_for(&self, accel: &str) -> Duration {
        self.lease
            .unwrap_or(if accel == "kvm" { KVM_LEASE } else { TCG_LEASE })
    }

    /// The geometry the region is formatted with for guests run by
    /// `accel`: the lab's, with [`Vni::lease_for`].
    pub fn geometry_for(&self, accel: &str) -> Geometry {
        let lease_ms = self.lease_for(accel).as_millis();
        Geometry {
            lease_ms: u32::try_from(lease_ms).unwrap_or(u32::MAX),
            ..self.geometry
        }
    }

    /// How long `driver` keeps polling after its last frame: the lab
    /// file's `vni.busy_poll`, or the driver's default. The user-space
    /// driver's is [`DEFAULT_BUSY_POLL`]: it saves a wake-up of the
    /// driver process. The kernel driver's is 0: its frames reach the
    /// socket from the interrupt's NAPI poll with no process to wake, and
    /// each poll it keeps going takes the guest's only vCPU from the
    /// program the frame is for (measured on a three-node kernel lab
    /// under TCG: raw-frame echo p50 1.10 ms with 1 ms, 0.35-0.40 ms
    /// with 0).
    pub fn busy_poll_for(&self, driver: Driver) -> Duration {
        self.busy_poll.unwrap_or(match driver {
            Driver::User => DEFAULT_BUSY_POLL,
            Driver::Kernel => Duration::ZERO,
        })
    }
}

/// A lab that can be started: every field checked.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Topology {
    /// Lab name.
    pub name: String,
    /// Nodes, in file order (their ids).
    pub nodes: Vec<Node>,
    /// Bytes of shared memory.
    pub shared_memory: u64,
    /// VNI settings.
    pub vni: Vni,
    /// Accelerator.
    pub accel: Accel,
    /// Kernel to boot.
    pub kernel: Kernel,
    /// Modules for a kernel given by path.
    pub modules: Option<PathBuf>,
    /// Root filesystem override.
    pub image: Option<PathBuf>,
    /// Extra kernel command line.
    pub append: String,
    /// Boot timeout.
    pub boot_timeout: Duration,
    /// Command timeout.
    pub command_timeout: Duration,
    /// What `vni-lab test` checks.
    pub tests: Tests,
    /// What carries the frames.
    pub network: Network,
}

/// One thing wrong with a lab file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Where in the file, when known.
    pub pos: Option<Pos>,
    /// The field, as a path (`nodes[1].ip`).
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// Why a lab file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The file cannot be read.
    #[error("Cannot read topology {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file has problems; all of them are listed.
    #[error("{}", list(.path, .problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

fn list(path: &Path, problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(|p| p.render(path)).collect();
    lines.join("\n")
}

impl Problem {
    /// `file:line:col: field: message`.
    pub fn render(&self, path: &Path) -> String {
        let at = match self.pos {
            Some(pos) => format!("{}:{}:{}", path.display(), pos.line, pos.col),
            None => path.display().to_string(),
        };
        if self.field.is_empty() {
            format!("{at}: {}", self.message)
        } else {
            format!("{at}: {}: {}", self.field, self.message)
        }
    }
}

/// Collects problems, each located by its field path.
struct Checker<'a> {
    spans: &'a Spans,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn report(&mut self, field: impl Into<String>, message: impl fmt::Display) {
        let field = field.into();
        self.problems.push(Problem {
            pos: self.spans.find(&field),
            field,
            message: message.to_string(),
        });
    }
}

/// The naming rule for labs and nodes (used in paths and derived MACs):
/// `Ok`, or what is allowed.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        return Ok(());
    }
    Err(format!("{name:?} is not allowed: use 1 to 32 lowercase letters, digits or '-', not starting with '-'"))
}

/// Parses `0-3,6` into CPU numbers.
pub fn parse_cpus(text: &str) -> Result<Vec<u32>, String> {
    let bad = || format!("{text:?} is not a CPU list like 0-3,6");
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim) {
        let (first, last): (u32, u32) = match part.split_once('-') {
            Some((a, b)) => (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            ),
            None => {
                let cpu = part.parse().map_err(|_| bad())?;
                (cpu, cpu)
            }
        };
        if first > last || last >= 4096 {
            return Err(bad());
        }
        cpus.extend(first..=last);
    }
    Ok(cpus)
}

/// A stable, locally administered unicast MAC for `node` of `lab`.
pub fn derived_mac(lab: &str, node: &str) -> MacAddr {
    let hash = format!("{lab}/{node}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let b = hash.to_le_bytes();
    MacAddr([0x02, b[0], b[1], b[2], b[3], b[4]])
}

impl Topology {
    /// Reads and validates the lab file at `path`.
    pub fn load(path: &Path) -> Result<Self, TopologyError> {
        let source = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&source, path)
    }

    /// Validates `source`, the contents of the lab file `path` (relative
    /// paths in it are taken from the file's directory).
    pub fn parse(source: &str, path: &Path) -> Result<Self, TopologyError> {
        let invalid = |problems| TopologyError::Invalid {
            path: path.to_owned(),
            problems,
        };
        let raw: RawTopology =
            serde_yaml::from_str(source).map_err(|e| invalid(vec![yaml_problem(&e)]))?;
        let spans = Spans::of(source);
        let mut check = Checker {
            spans: &spans,
            problems: Vec::new(),
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let topology = Self::check(raw, base, &mut check);
        match topology {
            Some(t) if check.problems.is_empty() => Ok(t),
            _ => Err(invalid(check.problems)),
        }
    }

    fn check(raw: RawTopology, base: &Path, check: &mut Checker<'_>) -> Option<Self> {
        if let Err(problem) = check_name(&raw.name) {
            check.report("name", problem);
        }
        if !(2..=MAX_NODES).contains(&raw.nodes.len()) {
            check.report(
                "nodes",
                format!(
                    "{} nodes given; a lab has 2 to {MAX_NODES}",
                    raw.nodes.len()
                ),
            );
        }
        let size = |check: &mut Checker<'_>, field: &str, spec: &Option<SizeSpec>, default: u64| {
            spec.as_ref().map_or(default, |spec| {
                spec.to_bytes().unwrap_or_else(|e| {
                    check.report(field, e);
                    default
                })
            })
        };
        let duration = |check: &mut Checker<'_>,
                        field: &str,
                        spec: &Option<DurationSpec>,
                        default: Duration| {
            let Some(spec) = spec else {
                return default;
            };
            let d = spec.to_duration().unwrap_or_else(|e| {
                check.report(field, e);
                default
            });
            if d.is_zero() || d > Duration::from_secs(3600) {
                check.report(field, format!("{d:?} is outside 1ms to 1h"));
            }
            d
        };

        let default_vcpus = raw.defaults.vcpus.unwrap_or(1);
        let default_memory = size(
            check,
            "defaults.memory",
            &raw.defaults.memory,
            DEFAULT_MEMORY,
        );
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut addresses: HashMap<Ipv4Addr, usize> = HashMap::new();
        let mut macs: HashMap<MacAddr, usize> = HashMap::new();
        let mut pinned: HashMap<u32, usize> = HashMap::new();
        let mut subnet: Option<Ipv4Net> = None;
        // The kernel driver is the default on the kernel it is built for
        // (measured faster there than the user-space driver in every
        // figure, docs/src/benchmarks.md#current-figures); elsewhere the user-space
        // driver, which any kernel with VFIO and TUN runs.
        let default_driver = if raw.guest.kernel.as_deref() == Some("trixie-backports") {
            Driver::Kernel
        } else {
            Driver::User
        };
        let mut nodes = Vec::new();
        for (id, n) in raw.nodes.iter().enumerate() {
            let at = |field: &str| format!("nodes[{id}].{field}");
            let mut duplicate_name = false;
            if let Err(problem) = check_name(&n.name) {
                check.report(at("name"), problem);
            } else if let Some(first) = names.insert(n.name.clone(), id) {
                duplicate_name = true;
                check.report(
                    at("name"),
                    format!(
                        "{:?} is also the name of nodes[{first}]; names must be unique",
                        n.name
                    ),
                );
            }
            let ip = match n.ip.parse::<Ipv4Net>() {
                Ok(ip) => ip,
                Err(_) => {
                    check.report(
                        at("ip"),
                        format!(
                            "{:?} is not an IPv4 address with prefix length, like 10.10.0.1/24",
                            n.ip
                        ),
                    );
                    continue;
                }
            };
            if ip.prefix_len() < 31 && (ip.addr() == ip.network() || ip.addr() == ip.broadcast()) {
                check.report(
                    at("ip"),
                    format!("{ip} is the network or broadcast address of {}", ip.trunc()),
                );
            }
            if let Some(first) = addresses.insert(ip.addr(), id) {
                check.report(
                    at("ip"),
                    format!(
                        "{} is also the address of nodes[{first}]; addresses must be unique",
                        ip.addr()
                    ),
                );
            }
            match subnet {
                None => subnet = Some(ip.trunc()),
                Some(s) if s != ip.trunc() => check.report(
                    at("ip"),
                    format!("{ip} is not in {s}, the subnet of nodes[0]; the VNI is one Ethernet segment, so all nodes share one subnet"),
                ),
                Some(_) => {}
            }
            let mac = match &n.mac {
                None => derived_mac(&raw.name, &n.name),
                Some(text) => {
                    match text.parse::<MacAddr>() {
                        Ok(mac) if mac.is_group() || mac == MacAddr::default() => {
                            check.report(at("mac"), format!("{mac} is a group or zero address; a node needs a unicast address"));
                            mac
                        }
                        Ok(mac) => mac,
                        Err(e) => {
                            check.report(
                                at("mac"),
                                e.to_string().trim_start_matches("Invalid MAC address "),
                            );
                            MacAddr::default()
                        }
                    }
                }
            };
            // A MAC derived from a duplicate name repeats that problem.
            let derived_from_duplicate = n.mac.is_none() && duplicate_name;
            if let Some(first) = macs.insert(mac, id).filter(|_| !derived_from_duplicate) {
                check.report(
                    at("mac"),
                    format!(
                        "{mac} is also the MAC address of nodes[{first}]; set distinct addresses"
                    ),
                );
            }
            let vcpus = n.vcpus.unwrap_or(default_vcpus);
            if !(1..=64).contains(&vcpus) {
                check.report(
                    if n.vcpus.is_some() {
                        at("vcpus")
                    } else {
                        "defaults.vcpus".into()
                    },
                    format!("{vcpus} is outside 1 to 64"),
                );
            }
            let memory = size(check, &at("memory"), &n.memory, default_memory);
            if memory < 128 << 20 {
                check.report(
                    at("memory"),
                    format!(
                        "{} MiB is too little: a guest needs at least 128M",
                        memory >> 20
                    ),
                );
            }
            let host_cpus = match &n.host_cpus {
                None => Vec::new(),
                Some(CpuSpec::List(list)) => list.clone(),
                Some(CpuSpec::Text(text)) => parse_cpus(text).unwrap_or_else(|e| {
                    check.report(at("host_cpus"), e);
                    Vec::new()
                }),
            };
            for &cpu in &host_cpus {
                if let Some(other) = pinned.insert(cpu, id).filter(|&other| other != id) {
                    check.report(at("host_cpus"), format!("host CPU {cpu} is also given to nodes[{other}]; Mint gives each node its own cores"));
                }
            }
            nodes.push(Node {
                id,
                name: n.name.clone(),
                ip,
                mac,
                vcpus,
                memory,
                host_cpus,
                driver: n.driver.or(raw.vni.driver).unwrap_or(default_driver),
            });
        }

        let shared_memory = size(
            check,
            "shared_memory",
            &raw.shared_memory,
            DEFAULT_SHARED_MEMORY,
        );
        if !shared_memory.is_power_of_two() || !(1 << 20..=4 << 30).contains(&shared_memory) {
            check.report(
                "shared_memory",
                format!("{shared_memory} bytes: must be a power of two from 1M to 4G (ivshmem)"),
            );
        }
        let config = match raw.vni.buffers.unwrap_or(2) {
            1 => BufferConfig::PerPair,
            2 => BufferConfig::SharedPool,
            other => {
                check.report(
                    "vni.buffers",
                    format!(
                        "{other}: use 1 (one ring per sender-receiver pair) or 2 (one shared pool)"
                    ),
                );
                BufferConfig::SharedPool
            }
        };
        let slot_size = raw.vni.slot_size.unwrap_or(Geometry::DEFAULT_SLOT_SIZE);
        let mtu = raw.vni.mtu.unwrap_or(1500);
        if !(68..=MAX_MTU).contains(&mtu) {
            check.report("vni.mtu", format!("{mtu} is outside 68 to {MAX_MTU}"));
        } else if mtu > MAX_VNI_MTU && raw.network != Network::VirtioNet {
            check.report(
                "vni.mtu",
                format!(
                    "{mtu}: a TAP interface (the VNI's, or virtio-net-tap's) takes at most {MAX_VNI_MTU} (its frames, Ethernet header included, stop at 65535 bytes); {MAX_MTU} is for network: virtio-net"
                ),
            );
        }
        let geometry = Self::geometry(
            check,
            config,
            shared_memory,
            raw.nodes.len(),
            slot_size,
            raw.vni.slot_count,
        );
        if config == BufferConfig::PerPair && raw.network == Network::Vni {
            Self::sections(check, shared_memory, raw.nodes.len(), slot_size);
        }

        // The first node on the kernel driver, and where that was said.
        let kernel_node = (raw.network == Network::Vni)
            .then(|| nodes.iter().find(|n| n.driver == Driver::Kernel))
            .flatten()
            .map(|n| match raw.nodes.get(n.id).and_then(|r| r.driver) {
                Some(_) => (n.name.clone(), format!("nodes[{}].driver", n.id)),
                None => (n.name.clone(), "vni.driver".to_owned()),
            });
        let kernel = match raw.guest.kernel.as_deref() {
            None if kernel_node.is_some() => Kernel::TrixieBackports,
            None | Some("bookworm") => Kernel::Bookworm,
            Some("trixie") => Kernel::Trixie,
            Some("trixie-backports") => Kernel::TrixieBackports,
            Some(path) => {
                Kernel::Path(Self::existing(check, base, "guest.kernel", Path::new(path)))
            }
        };
        if let Some((node, field)) = &kernel_node {
            match &kernel {
                Kernel::TrixieBackports => {}
                // Built against the kernel's own tree: whether it has one,
                // with Rust, is checked before booting (own_kernel::check).
                Kernel::Path(_) => {}
                other => check.report(
                    field,
                    format!("node {node} runs the kernel driver, but guest.kernel {} has no Rust support: use guest.kernel: trixie-backports (Debian's 7.3 kernel), a kernel of your own built with CONFIG_RUST (--kernel-tree), or driver: user", other.suite()),
                ),
            }
        }
        let modules = raw
            .guest
            .modules
            .as_deref()
            .map(|p| Self::existing(check, base, "guest.modules", p));
        if modules.is_some() && !matches!(kernel, Kernel::Path(_)) {
            check.report("guest.modules", "modules go with a kernel given by path");
        }
        let image = raw
            .guest
            .image
            .as_deref()
            .map(|p| Self::existing(check, base, "guest.image", p));
        let append = raw.guest.append.unwrap_or_default();
        if append.contains('\n') {
            check.report("guest.append", "one line of kernel arguments, no newline");
        }
        let boot_timeout = duration(
            check,
            "timeouts.boot",
            &raw.timeouts.boot,
            DEFAULT_BOOT_TIMEOUT,
        );
        let command_timeout = duration(
            check,
            "timeouts.command",
            &raw.timeouts.command,
            DEFAULT_COMMAND_TIMEOUT,
        );

        // An optional duration that must lie in `range` (`wrong` says
        // how one outside it is wrong).
        let bounded = |check: &mut Checker<'_>,
                       field: &str,
                       spec: &Option<DurationSpec>,
                       range: std::ops::RangeInclusive<Duration>,
                       wrong: &str| {
            match spec.as_ref()?.to_duration() {
                Ok(d) if range.contains(&d) => Some(d),
                Ok(d) => {
                    check.report(field, format!("{d:?} {wrong}"));
                    None
                }
                Err(e) => {
                    check.report(field, e);
                    None
                }
            }
        };
        let busy_poll = bounded(
            check,
            "vni.busy_poll",
            &raw.vni.busy_poll,
            Duration::ZERO..=MAX_BUSY_POLL,
            "is longer than 100ms",
        );
        let lease = bounded(
            check,
            "vni.lease",
            &raw.vni.lease,
            LEASE_RANGE,
            "is outside 10ms to 600s",
        );

        let tests = Tests::from_raw(&raw.tests, &mut |field, message| {
            check.report(field, message)
        });

        Some(Topology {
            name: raw.name,
            nodes,
            shared_memory,
            vni: Vni {
                geometry: geometry?,
                mtu,
                notification: raw.vni.notification.unwrap_or_default(),
                busy_poll,
                profile: raw.vni.profile.unwrap_or(false),
                lease,
            },
            accel: raw.accel,
            kernel,
            modules,
            image,
            append,
            boot_timeout,
            command_timeout,
            tests,
            network: raw.network,
        })
    }

    /// The region geometry for these settings, or the reason it does not fit.
    fn geometry(
        check: &mut Checker<'_>,
        config: BufferConfig,
        shared_memory: u64,
        nodes: usize,
        slot_size: u32,
        slot_count: Option<u32>,
    ) -> Option<Geometry> {
        let len = usize::try_from(shared_memory).ok()?;
        let nodes = u32::try_from(nodes.clamp(2, MAX_NODES)).ok()?;
        let mut geometry = match Geometry::fit(config, len, nodes, slot_size) {
            Ok(g) => g,
            Err(e) => {
                let field = if slot_size % 64 != 0 || !(64..=65536).contains(&slot_size) {
                    "vni.slot_size"
                } else {
                    "shared_memory"
                };
                check.report(field, format!("{} MiB cannot hold {nodes} nodes with buffers {} and {slot_size}-byte slots: {e}", shared_memory >> 20, config.number()));
                return None;
            }
        };
        if let Some(count) = slot_count {
            let most = geometry.slot_count;
            geometry.slot_count = count;
            if let Err(e) = Layout::new(&geometry, len) {
                check.report(
                    "vni.slot_count",
                    format!(
                        "{count}: {e} (at most {most} fit in {} MiB)",
                        shared_memory >> 20
                    ),
                );
                return None;
            }
        }
        Some(geometry)
    }

    /// Checks that configuration 1's sections fit: each node's share of
    /// `shared_memory`, as a power of two, must hold a ring that takes a
    /// largest frame for every other node.
    fn sections(check: &mut Checker<'_>, shared_memory: u64, nodes: usize, slot_size: u32) {
        let (Ok(len), Ok(count)) = (usize::try_from(shared_memory), u32::try_from(nodes)) else {
            return;
        };
        if !(2..=MAX_NODES).contains(&nodes) || slot_size % 64 != 0 {
            return; // said elsewhere
        }
        if let Err(e) = SectionGeometry::fit(len, count, slot_size, Geometry::DEFAULT_LEASE_MS) {
            check.report(
                "shared_memory",
                format!(
                    "{} MiB cannot hold {nodes} write-protected sections (buffers 1: each node's share, rounded down to a power of two, holds a ring for every other node) with {slot_size}-byte slots: {e}",
                    shared_memory >> 20
                ),
            );
        }
    }

    fn existing(check: &mut Checker<'_>, base: &Path, field: &str, path: &Path) -> PathBuf {
        let full = base.join(path);
        if !full.exists() {
            check.report(field, format!("{} does not exist", full.display()));
        }
        full
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// A serde_yaml error as a located problem.
fn yaml_problem(e: &serde_yaml::Error) -> Problem {
    let message = e.to_string();
    // serde_yaml appends " at line L column C"; the location is printed
    // in front instead.
    let message = match message.rfind(" at line ") {
        Some(cut) => message[..cut].to_owned(),
        None => message,
    };
    // It also prefixes the field path ("nodes[0]: unknown field ...").
    let (field, message) = match message.split_once(": ") {
        Some((field, rest)) if !field.contains(' ') => (field.to_owned(), rest.to_owned()),
        _ => (String::new(), message),
    };
    let pos = e.location().map(|l| Pos {
        line: l.line(),
        col: l.column(),
    });
    Problem {
        pos,
        field,
        message,
    }
}

/// The JSON Schema of the lab file format, for editors.
pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(RawTopology)).expect("a schema is JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Topology, Vec<Problem>> {
        Topology::parse(src, Path::new("lab.yaml")).map_err(|e| match e {
            TopologyError::Invalid { problems, .. } => problems,
            other => panic!("{other}"),
        })
    }

    const MINIMAL: &str = "name: two-node\nnodes:\n  - name: node0\n    ip: 10.10.0.1/24\n  - name: node1\n    ip: 10.10.0.2/24\n";

    #[test]
    fn the_minimal_file_gets_sensible_defaults() {
        let t = parse(MINIMAL).unwrap();
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(t.nodes[1].ip.to_string(), "10.10.0.2/24");
        assert_eq!((t.nodes[0].vcpus, t.nodes[0].memory), (1, DEFAULT_MEMORY));
        assert_eq!(t.shared_memory, DEFAULT_SHARED_MEMORY);
        assert_eq!(t.vni.geometry.config, BufferConfig::SharedPool);
        assert_eq!(t.vni.mtu, 1500);
        assert_eq!(t.vni.notification, Notification::Interrupt);
        assert_eq!((t.accel, &t.kernel), (Accel::Auto, &Kernel::Bookworm));
        assert_eq!(t.nodes[0].mac, derived_mac("two-node", "node0"));
        assert_ne!(t.nodes[0].mac, t.nodes[1].mac);
        assert!(!t.nodes[0].mac.is_group());
        assert_eq!(parse(MINIMAL).unwrap(), t, "derivation is stable");
    }

    #[test]
    fn the_kernel_driver_brings_debians_rust_kernel() {
        // ... and is the default on it; the user-space driver elsewhere.
        let on_rust = Topology::parse(
            &format!("{MINIMAL}guest: {{kernel: trixie-backports}}\n"),
            Path::new("x.yaml"),
        )
        .unwrap();
        assert!(on_rust.nodes.iter().all(|n| n.driver == Driver::Kernel));
        let plain = Topology::parse(MINIMAL, Path::new("x.yaml")).unwrap();
        assert!(plain.nodes.iter().all(|n| n.driver == Driver::User));
        let src = format!("{MINIMAL}vni: {{driver: kernel}}\n");
        let t = parse(&src).unwrap();
        assert_eq!(t.kernel, Kernel::TrixieBackports);
        assert!(t.nodes.iter().all(|n| n.driver == Driver::Kernel));
        assert!(t.uses(Driver::Kernel) && !t.uses(Driver::User));
        // Per node, in a lab of the user-space driver: a mixed lab.
        let mixed = MINIMAL.replace("ip: 10.10.0.2/24", "ip: 10.10.0.2/24\n    driver: kernel");
        let t = parse(&mixed).unwrap();
        assert_eq!(
            (t.nodes[0].driver, t.nodes[1].driver),
            (Driver::User, Driver::Kernel)
        );
        assert_eq!(t.kernel, Kernel::TrixieBackports);
        // The user-space driver alone keeps bookworm.
        assert_eq!(parse(MINIMAL).unwrap().kernel, Kernel::Bookworm);
    }

    #[test]
    fn the_kernel_driver_refuses_kernels_without_rust() {
        let src = format!("{MINIMAL}vni: {{driver: kernel}}\nguest: {{kernel: trixie}}\n");
        let problems = parse(&src).unwrap_err();
        assert_eq!(problems[0].field, "vni.driver");
        assert!(
            problems[0].message.contains("trixie-backports"),
            "{}",
            problems[0].message
        );
        let per_node = MINIMAL.replace("ip: 10.10.0.2/24", "ip: 10.10.0.2/24\n    driver: kernel")
            + "guest: {kernel: bookworm}\n";
        let problems = parse(&per_node).unwrap_err();
        assert_eq!(problems[0].field, "nodes[1].driver");
        assert!(parse(&format!("{MINIMAL}vni: {{driver: both}}\n")).is_err());
        // A kernel of one's own may have Rust: its tree says, before
        // booting (own_kernel::check), not validation.
        let own = format!(
            "{MINIMAL}vni: {{driver: kernel}}\nguest: {{kernel: {}/Cargo.toml}}\n",
            env!("CARGO_MANIFEST_DIR")
        );
        assert!(parse(&own).is_ok());
    }

    #[test]
    fn every_setting_is_read() {
        let src = "name: full
defaults: {vcpus: 2, memory: 1G}
shared_memory: 128M
accel: tcg
vni: {buffers: 1, slot_size: 4096, mtu: 9000, notification: polling, busy_poll: 250us}
timeouts: {boot: 3m, command: 500ms}
nodes:
  - {name: a, ip: 192.168.7.1/24, mac: '02:00:00:00:00:0a', host_cpus: '0-1', memory: 768M}
  - {name: b, ip: 192.168.7.2/24, vcpus: 1, host_cpus: [2, 3]}
";
        let t = parse(src).unwrap();
        assert_eq!(t.nodes[0].mac.to_string(), "02:00:00:00:00:0a");
        assert_eq!((t.nodes[0].vcpus, t.nodes[0].memory), (2, 768 << 20));
        assert_eq!((t.nodes[1].vcpus, t.nodes[1].memory), (1, 1 << 30));
        assert_eq!(
            (t.nodes[0].host_cpus.clone(), t.nodes[1].host_cpus.clone()),
            (vec![0, 1], vec![2, 3])
        );
        assert_eq!(t.shared_memory, 128 << 20);
        assert_eq!(t.vni.geometry.config, BufferConfig::PerPair);
        assert_eq!(t.vni.geometry.slot_size, 4096);
        assert_eq!(
            (t.vni.mtu, t.vni.notification, t.accel),
            (9000, Notification::Polling, Accel::Tcg)
        );
        assert_eq!(t.vni.busy_poll, Some(Duration::from_micros(250)));
        assert_eq!(t.vni.lease, None, "by accelerator");
        assert_eq!(t.vni.geometry_for("kvm").lease_ms, 1000);
        assert_eq!(t.vni.geometry_for("tcg").lease_ms, 3000);
        assert_eq!(
            t.vni.busy_poll_for(Driver::Kernel),
            Duration::from_micros(250)
        );
        assert_eq!(
            (t.boot_timeout, t.command_timeout),
            (Duration::from_secs(180), Duration::from_millis(500))
        );
    }

    /// Each bad file: the problem's line and a piece of its message.
    #[test]
    fn bad_files_are_refused_with_line_field_and_reason() {
        let cases: &[(&str, usize, &str, &str)] = &[
            ("name: x\nnodes:\n  - name: a\n    ipp: 10.0.0.1/24\n", 4, "nodes[0]", "unknown field `ipp`"),
            ("name: x\nnodes:\n  - name: a\n    ip: 10.0.0.1/24\n  - name: a\n    ip: 10.0.0.2/24\n", 5, "nodes[1].name", "also the name of nodes[0]"),
            ("name: x\nnodes:\n  - name: a\n    ip: 10.0.0.1/24\n  - name: b\n    ip: 10.0.0.1/24\n", 6, "nodes[1].ip", "also the address"),
            ("name: x\nnodes:\n  - name: a\n    ip: 10.0.0.1/33\n  - name: b\n    ip: 10.0.0.2/24\n", 4, "nodes[0].ip", "not an IPv4 address with prefix"),
            ("name: x\nnodes:\n  - name: a\n    ip: 10.0.0.1/24\n  - name: b\n    ip: 10.0.1.2/24\n", 6, "nodes[1].ip", "not in 10.0.0.0/24"),
            ("name: x\nnodes:\n  - name: a\n    ip: 10.0.0.0/24\n  - name: b\n    ip: 10.0.0.2/24\n", 4, "nodes[0].ip", "network or broadcast"),
            ("name: x\nnodes:\n  - {name: a, ip: 10.0.0.1/24, mac: '02:00:00:00:00:01'}\n  - {name: b, ip: 10.0.0.2/24, mac: '02:00:00:00:00:01'}\n", 4, "nodes[1].mac", "also the MAC address"),
            ("name: x\nnodes:\n  - {name: a, ip: 10.0.0.1/24, mac: '01:00:5e:00:00:01'}\n  - {name: b, ip: 10.0.0.2/24}\n", 3, "nodes[0].mac", "group or zero"),
            ("name: x\nnodes:\n  - {name: a, ip: 10.0.0.1/24, mac: 'zz'}\n  - {name: b, ip: 10.0.0.2/24}\n", 3, "nodes[0].mac", "six hex octets"),
            ("name: Bad_Name\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n  - {name: b, ip: 10.0.0.2/24}\n", 1, "name", "lowercase letters"),
            ("name: x\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n", 2, "nodes", "2 to 64"),
            ("name: x\nshared_memory: 3M\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n  - {name: b, ip: 10.0.0.2/24}\n", 2, "shared_memory", "power of two"),
            ("name: x\nshared_memory: 1M\nvni: {buffers: 1}\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n  - {name: b, ip: 10.0.0.2/24}\n  - {name: c, ip: 10.0.0.3/24}\n  - {name: d, ip: 10.0.0.4/24}\n", 2, "shared_memory", "cannot hold 4 nodes"),
            ("name: x\nvni:\n  buffers: 3\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n  - {name: b, ip: 10.0.0.2/24}\n", 3, "vni.buffers", "use 1"),
            ("name: x\nvni:\n  mtu: 70000\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n  - {name: b, ip: 10.0.0.2/24}\n", 3, "vni.mtu", "68 to 65535"),
            ("name: x\nvni:\n  slot_size: 100\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n  - {name: b, ip: 10.0.0.2/24}\n", 3, "vni.slot_size", "multiple of 64"),
            ("name: x\nvni:\n  slot_count: 99999999\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n  - {name: b, ip: 10.0.0.2/24}\n", 3, "vni.slot_count", "at most"),
            ("name: x\nnodes:\n  - {name: a, ip: 10.0.0.1/24, memory: 64M}\n  - {name: b, ip: 10.0.0.2/24}\n", 3, "nodes[0].memory", "at least 128M"),
            ("name: x\nnodes:\n  - {name: a, ip: 10.0.0.1/24, memory: 5X}\n  - {name: b, ip: 10.0.0.2/24}\n", 3, "nodes[0].memory", "unknown unit"),
            ("name: x\nnodes:\n  - {name: a, ip: 10.0.0.1/24, vcpus: 0}\n  - {name: b, ip: 10.0.0.2/24}\n", 3, "nodes[0].vcpus", "outside 1 to 64"),
            ("name: x\nnodes:\n  - {name: a, ip: 10.0.0.1/24, host_cpus: '0-1'}\n  - {name: b, ip: 10.0.0.2/24, host_cpus: [1]}\n", 4, "nodes[1].host_cpus", "its own cores"),
            ("name: x\nnodes:\n  - {name: a, ip: 10.0.0.1/24, host_cpus: '3-1'}\n  - {name: b, ip: 10.0.0.2/24}\n", 3, "nodes[0].host_cpus", "CPU list"),
            ("name: x\naccel: hvf\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n  - {name: b, ip: 10.0.0.2/24}\n", 2, "accel", "unknown variant `hvf`"),
            ("name: x\nguest: {kernel: /no/such/bzImage}\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n  - {name: b, ip: 10.0.0.2/24}\n", 2, "guest.kernel", "does not exist"),
            ("name: x\nvni: {mtu: 65535}\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n  - {name: b, ip: 10.0.0.2/24}\n", 2, "vni.mtu", "at most 65521"),
            ("name: x\nvni: {busy_poll: 1s}\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n  - {name: b, ip: 10.0.0.2/24}\n", 2, "vni.busy_poll", "longer than 100ms"),
            ("name: x\nvni: {lease: 5ms}\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n  - {name: b, ip: 10.0.0.2/24}\n", 2, "vni.lease", "outside 10ms to 600s"),
            ("name: x\nvni: {lease: soon}\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n  - {name: b, ip: 10.0.0.2/24}\n", 2, "vni.lease", "not a duration"),
            ("name: x\ntimeouts: {boot: 0s}\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n  - {name: b, ip: 10.0.0.2/24}\n", 2, "timeouts.boot", "outside 1ms to 1h"),
            ("name: x\nnodes: [\n", 3, "", "did not find expected"),
        ];
        for &(src, line, field, needle) in cases {
            let problems = parse(src).expect_err(src);
            let hit = problems.iter().find(|p| p.message.contains(needle));
            let Some(p) = hit else {
                panic!("{src}\nno problem mentions {needle:?}: {problems:#?}")
            };
            assert_eq!(p.pos.map(|p| p.line), Some(line), "{src}\n{p:?}");
            assert_eq!(p.field, field, "{src}\n{p:?}");
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let src = "name: x\nnodes:\n  - {name: a, ip: 10.0.0.1/24, vcpus: 0}\n  - {name: a, ip: 10.0.0.1/24}\n";
        let problems = parse(src).unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        let rendered = problems[0].render(Path::new("lab.yaml"));
        assert!(rendered.starts_with("lab.yaml:3:"), "{rendered}");
    }

    #[test]
    fn cpu_lists_parse() {
        assert_eq!(parse_cpus("0-2,5"), Ok(vec![0, 1, 2, 5]));
        assert!(parse_cpus("x").is_err());
    }
}
