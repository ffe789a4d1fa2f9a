//! `vni-lab bench`: latency, throughput and loss of the VNI in each of its
//! settings, and of virtio-net on the same guests, in one run.
//!
//! A bench is a list of cases (node count, MTU, and what carries the
//! frames: the VNI with a buffer configuration and a notification mode, or
//! virtio-net). Each case boots its own lab, from a lab file derived from
//! the one given (its guests, accelerator, timeouts and shared memory stay
//! the same), measures it with the machinery of `vni-lab test`
//! ([`crate::suite::Context`]), and takes it down. This module plans the
//! cases, derives their lab files, and turns the outcomes into a report
//! and plots; the binary runs them.

pub mod plot;
pub mod report;

use std::time::Duration;

use serde::Serialize;
use vni_frames::Rtts;

use crate::suite::Occupancy;
use crate::topology::{check_name, Driver, Notification};

/// What carries a case's frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "network", rename_all = "kebab-case")]
pub enum Carrier {
    /// The VNI.
    Vni {
        /// Which driver: the kernel module or the user-space one.
        driver: Driver,
        /// Buffer configuration, 1 or 2.
        buffers: u32,
        /// Interrupt or polling.
        notification: Notification,
    },
    /// virtio-net on QEMU's networking (`network: virtio-net`): the
    /// baseline.
    VirtioNet,
    /// virtio-net on bridged TAPs with offloads (`network:
    /// virtio-net-tap`): the strongest baseline without KVM.
    VirtioNetTap,
}

impl Carrier {
    /// The baselines, in the order they run and are reported.
    pub const BASELINES: [Carrier; 2] = [Carrier::VirtioNet, Carrier::VirtioNetTap];

    /// Whether this is one of the baselines.
    pub fn is_baseline(self) -> bool {
        Self::BASELINES.contains(&self)
    }
}

/// One case of the bench.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CaseSpec {
    /// Nodes in the lab.
    pub nodes: usize,
    /// MTU of every node's interface.
    pub mtu: u32,
    /// What carries the frames.
    #[serde(flatten)]
    pub carrier: Carrier,
}

impl CaseSpec {
    /// A short name, also the lab's name suffix: `n2-mtu1500-c2-interrupt`
    /// (the user-space driver), `n2-mtu1500-k-c2-interrupt` (the kernel driver; short, as lab names stop at 32 characters),
    /// `n2-mtu1500-virtio-net`, `n2-mtu1500-virtio-tap`.
    pub fn id(&self) -> String {
        let what = match self.carrier {
            Carrier::Vni {
                driver: Driver::User,
                buffers,
                notification,
            } => format!("c{buffers}-{}", notification.name()),
            Carrier::Vni {
                driver: Driver::Kernel,
                buffers,
                notification,
            } => format!("k-c{buffers}-{}", notification.name()),
            Carrier::VirtioNet => "virtio-net".to_owned(),
            Carrier::VirtioNetTap => "virtio-tap".to_owned(),
        };
        format!("n{}-mtu{}-{what}", self.nodes, self.mtu)
    }

    /// What carries the frames, for people: `VNI config 2, interrupt`
    /// (the user-space driver), `VNI kernel, config 2, interrupt`.
    pub fn carrier_label(&self) -> String {
        match self.carrier {
            Carrier::Vni {
                driver: Driver::User,
                buffers,
                notification,
            } => format!("VNI config {buffers}, {}", notification.name()),
            Carrier::Vni {
                driver: Driver::Kernel,
                buffers,
                notification,
            } => format!("VNI kernel, config {buffers}, {}", notification.name()),
            Carrier::VirtioNet => "virtio-net".to_owned(),
            Carrier::VirtioNetTap => "virtio-net, TAP + bridge".to_owned(),
        }
    }

    /// Whether this is a baseline.
    pub fn is_baseline(&self) -> bool {
        self.carrier.is_baseline()
    }
}

/// Which cases to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matrix {
    /// Node counts; the first is the one every MTU is measured at.
    pub nodes: Vec<usize>,
    /// MTUs; the first is the one the other node counts use.
    pub mtus: Vec<u32>,
    /// Buffer configurations.
    pub buffers: Vec<u32>,
    /// Notification modes.
    pub notifications: Vec<Notification>,
    /// The VNI's drivers.
    pub drivers: Vec<Driver>,
    /// Every MTU at every node count (otherwise only at the first).
    pub full: bool,
    /// Measure virtio-net too, for each node count and MTU.
    pub baseline: bool,
}

impl Matrix {
    /// The default sweep: 2, 4 and 8 nodes; MTU 1500, 9000 and 65521 (the
    /// largest a TAP takes, so the largest both networks can be compared
    /// at);
    /// configurations 2 and 1; interrupts and polling; the baseline.
    pub fn sweep() -> Self {
        Matrix {
            nodes: vec![2, 4, 8],
            mtus: vec![1500, 9000, crate::topology::MAX_VNI_MTU],
            buffers: vec![2, 1],
            notifications: vec![Notification::Interrupt, Notification::Polling],
            drivers: vec![Driver::User],
            full: false,
            baseline: true,
        }
    }

    /// The smoke run: two nodes, MTU 1500, configuration 2, interrupts,
    /// and the baseline.
    pub fn quick() -> Self {
        Matrix {
            nodes: vec![2],
            mtus: vec![1500],
            buffers: vec![2],
            notifications: vec![Notification::Interrupt],
            drivers: vec![Driver::User],
            full: false,
            baseline: true,
        }
    }

    /// The guest kernel every case boots when the base lab names none:
    /// with the kernel driver among the cases, Debian's Rust-enabled
    /// kernel for all of them (the user-space driver and virtio-net then
    /// run on the same kernel, so the comparison is fair).
    pub fn common_kernel(&self) -> Option<&'static str> {
        self.drivers
            .contains(&Driver::Kernel)
            .then_some("trixie-backports")
    }

    /// The cases, in the order they run: for each node count and MTU, the
    /// VNI's settings, then the baseline.
    pub fn cases(&self) -> Vec<CaseSpec> {
        let mut cases = Vec::new();
        for (i, &nodes) in self.nodes.iter().enumerate() {
            let mtus = if self.full || i == 0 {
                &self.mtus[..]
            } else {
                &self.mtus[..self.mtus.len().min(1)]
            };
            for &mtu in mtus {
                for &driver in &self.drivers {
                    for &buffers in &self.buffers {
                        for &notification in &self.notifications {
                            cases.push(CaseSpec {
                                nodes,
                                mtu,
                                carrier: Carrier::Vni {
                                    driver,
                                    buffers,
                                    notification,
                                },
                            });
                        }
                    }
                }
                if self.baseline {
                    cases.extend(Carrier::BASELINES.iter().map(|&carrier| CaseSpec {
                        nodes,
                        mtu,
                        carrier,
                    }));
                }
            }
        }
        cases
    }
}

/// How hard each case is measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Params {
    /// Raw-frame echo round trips (node 0 to node 1).
    pub echo_count: u32,
    /// Pings (node 0 to node 1).
    pub ping_count: u32,
    /// Time between pings.
    #[serde(serialize_with = "seconds")]
    pub ping_interval: Duration,
    /// Length of each TCP run.
    #[serde(serialize_with = "seconds")]
    pub tcp_time: Duration,
    /// Length of each UDP run of the sweep.
    #[serde(serialize_with = "seconds")]
    pub udp_time: Duration,
    /// Offered UDP loads, bit/s, in order; the sweep stops after the first
    /// that loses at least `saturation_loss` percent.
    pub udp_rates: Vec<u64>,
    /// Loss (percent) taken as saturation.
    pub saturation_loss: f64,
    /// Bare doorbell round trips (the VNI, after its drivers stop).
    pub doorbells: u32,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl Params {
    /// The full sweep's measurements.
    pub fn full() -> Self {
        Params {
            echo_count: 200,
            ping_count: 100,
            ping_interval: Duration::from_millis(10),
            tcp_time: Duration::from_secs(5),
            udp_time: Duration::from_secs(2),
            udp_rates: [25, 50, 100, 200, 400, 800, 1600]
                .iter()
                .map(|m| m * 1_000_000)
                .collect(),
            saturation_loss: 30.0,
            doorbells: 200,
        }
    }

    /// The smoke run's: a few seconds of each.
    pub fn quick() -> Self {
        Params {
            echo_count: 20,
            ping_count: 10,
            ping_interval: Duration::from_millis(10),
            tcp_time: Duration::from_secs(1),
            udp_time: Duration::from_secs(1),
            udp_rates: vec![10_000_000, 40_000_000],
            saturation_loss: 30.0,
            doorbells: 20,
        }
    }
}

/// One point of the UDP sweep.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct UdpPoint {
    /// Offered load, Mbit/s.
    pub offered_mbit: f64,
    /// Received, Mbit/s.
    pub received_mbit: f64,
    /// Datagrams lost, percent.
    pub lost_percent: f64,
}

/// iperf3 TCP on every pair of a ring at once.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AllPairs {
    /// Pairs that ran (node i to node i+1, the last to the first).
    pub pairs: usize,
    /// Their throughputs added, Mbit/s.
    pub sum_mbit: f64,
    /// The slowest pair's.
    pub min_mbit: f64,
    /// The fastest pair's.
    pub max_mbit: f64,
    /// Pairs whose iperf3 failed, with why.
    pub failed: Vec<String>,
}

/// UDP on every pair of the ring at once.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UdpAll {
    /// Pairs.
    pub pairs: usize,
    /// Load each pair was offered, Mbit/s.
    pub offered_mbit_each: f64,
    /// Received, all pairs added, Mbit/s.
    pub sum_received_mbit: f64,
    /// Datagrams lost, mean over the pairs that ran, percent.
    pub mean_lost_percent: f64,
    /// Pairs whose iperf3 failed, with why.
    pub failed: Vec<String>,
}

/// The load each pair gets in the all-pairs UDP run: the highest of the
/// sweep that lost less than `saturation_loss`, else the lowest offered.
pub fn udp_all_rate(sweep: &[UdpPoint], saturation_loss: f64) -> Option<f64> {
    sweep
        .iter()
        .filter(|p| p.lost_percent < saturation_loss)
        .map(|p| p.offered_mbit)
        .max_by(f64::total_cmp)
        .or_else(|| sweep.first().map(|p| p.offered_mbit))
}

/// Sums an all-pairs UDP run: (received Mbit/s, lost %) per pair.
pub fn udp_all(offered_mbit_each: f64, results: &[Result<(f64, f64), String>]) -> UdpAll {
    let ok: Vec<(f64, f64)> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    UdpAll {
        pairs: results.len(),
        offered_mbit_each,
        sum_received_mbit: ok.iter().map(|r| r.0).sum(),
        mean_lost_percent: if ok.is_empty() {
            0.0
        } else {
            ok.iter().map(|r| r.1).sum::<f64>() / ok.len() as f64
        },
        failed: results
            .iter()
            .filter_map(|r| r.as_ref().err().cloned())
            .collect(),
    }
}

/// Frames dropped during the all-pairs run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Drops {
    /// By the interfaces (`vni0` tx_dropped, all nodes): for the VNI, the
    /// TAP's queue overflowing while the driver had no free buffer.
    pub interface_tx: u64,
    /// By the interfaces when receiving.
    pub interface_rx: u64,
    /// By the drivers sending (region counters; the VNI only).
    pub driver_tx: Option<u64>,
    /// By the drivers receiving.
    pub driver_rx: Option<u64>,
}

/// What one case measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CaseOutcome {
    /// Its short name.
    pub id: String,
    /// What it is.
    #[serde(flatten)]
    pub spec: CaseSpec,
    /// Why it could not be measured (boot failure, a node down, ...).
    pub error: Option<String>,
    /// Measurements that failed while the others went on.
    pub problems: Vec<String>,
    /// Seconds until the lab was up.
    pub boot_seconds: f64,
    /// Seconds for the whole case.
    pub seconds: f64,
    /// Raw-frame echo round trips, node 0 to node 1.
    pub echo: Option<Rtts>,
    /// Ping round trips, node 0 to node 1.
    pub ping: Option<Rtts>,
    /// iperf3 TCP, node 0 to node 1 alone, Mbit/s.
    pub tcp_pair_mbit: Option<f64>,
    /// Its retransmits.
    pub tcp_pair_retransmits: Option<f64>,
    /// iperf3 TCP on all pairs of a ring at once.
    pub tcp_all: Option<AllPairs>,
    /// Buffer use during the all-pairs run (the VNI only).
    pub occupancy: Option<Occupancy>,
    /// Frames dropped during the all-pairs run.
    pub drops: Option<Drops>,
    /// The UDP sweep, node 0 to node 1.
    pub udp: Vec<UdpPoint>,
    /// iperf3 UDP on all pairs of the ring at once, each offered the
    /// highest load the sweep's pair carried with less than the saturation
    /// loss.
    pub udp_all: Option<UdpAll>,
    /// Every slot came back and no protocol error was counted (the VNI).
    pub region_ok: Option<bool>,
    /// Each driver's profile (`vni.profile`), node by node.
    pub profiles: Vec<Option<serde_json::Value>>,
    /// Bare doorbell round trips node0 -> node1 -> node0, drivers stopped
    /// (the VNI only).
    pub doorbell: Option<BellRtts>,
}

/// Doorbell round trips, microseconds (`vni-driver bells`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct BellRtts {
    /// Round trips measured.
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// Mean.
    pub mean_us: f64,
    /// Smallest.
    pub min_us: f64,
    /// Largest.
    pub max_us: f64,
}

impl CaseOutcome {
    /// An outcome with nothing measured yet.
    pub fn new(spec: CaseSpec) -> Self {
        CaseOutcome {
            id: spec.id(),
            spec,
            error: None,
            problems: Vec::new(),
            boot_seconds: 0.0,
            seconds: 0.0,
            echo: None,
            ping: None,
            tcp_pair_mbit: None,
            tcp_pair_retransmits: None,
            tcp_all: None,
            occupancy: None,
            drops: None,
            udp: Vec::new(),
            udp_all: None,
            region_ok: None,
            profiles: Vec::new(),
            doorbell: None,
        }
    }

    /// The most UDP the receiver took in, Mbit/s: the saturation point.
    pub fn udp_saturation_mbit(&self) -> Option<f64> {
        self.udp
            .iter()
            .map(|p| p.received_mbit)
            .max_by(f64::total_cmp)
    }
}

/// Summarises per-pair TCP throughputs (Mbit/s) of an all-pairs run.
pub fn all_pairs(results: &[Result<f64, String>]) -> AllPairs {
    let ok: Vec<f64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().copied())
        .collect();
    AllPairs {
        pairs: results.len(),
        sum_mbit: ok.iter().sum(),
        min_mbit: ok.iter().copied().min_by(f64::total_cmp).unwrap_or(0.0),
        max_mbit: ok.iter().copied().max_by(f64::total_cmp).unwrap_or(0.0),
        failed: results
            .iter()
            .filter_map(|r| r.as_ref().err().cloned())
            .collect(),
    }
}

/// The pairs of a ring over `n` nodes: 0 to 1, 1 to 2, ..., the last to 0
/// (for two nodes: both directions).
pub fn ring(n: usize) -> Vec<(usize, usize)> {
    (0..n).map(|i| (i, (i + 1) % n)).collect()
}

/// Why a base lab file cannot be turned into bench labs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeriveError {
    /// The file is not a YAML mapping.
    #[error("the lab file is not a YAML mapping")]
    NotAMapping,
    /// No usable first node address.
    #[error("nodes[0].ip: the first node needs an address like 10.10.0.1/24 to derive the bench's addresses from")]
    NoAddress,
    /// The subnet is too small for the nodes.
    #[error("nodes[0].ip: {subnet} has no room for {nodes} nodes")]
    SubnetTooSmall {
        /// The subnet.
        subnet: String,
        /// Nodes wanted.
        nodes: usize,
    },
    /// The derived name is invalid.
    #[error("lab name {0:?}: {1}")]
    Name(String, String),
}

/// The lab file of `case`, named `name`, derived from `base` (the YAML of
/// the file given to `bench`): its guest, accelerator, timeouts, shared
/// memory, defaults and VNI slot settings stay; the nodes (`node0`...,
/// addresses counted up from the first node's), the MTU, the buffer
/// configuration, the notification and the network are the case's; the
/// drivers profile their loop.
/// `kernel`: the guest kernel to boot when the base lab names none
/// ([`Matrix::common_kernel`]).
pub fn derive_lab(
    base: &str,
    case: &CaseSpec,
    name: &str,
    kernel: Option<&str>,
) -> Result<String, DeriveError> {
    use serde_yaml::{Mapping, Value};
    check_name(name).map_err(|e| DeriveError::Name(name.to_owned(), e))?;
    let base: Value = serde_yaml::from_str(base).map_err(|_| DeriveError::NotAMapping)?;
    let Value::Mapping(mut map) = base else {
        return Err(DeriveError::NotAMapping);
    };
    let first_ip = map
        .get("nodes")
        .and_then(Value::as_sequence)
        .and_then(|nodes| nodes.first())
        .and_then(|n| n.get("ip"))
        .and_then(Value::as_str)
        .and_then(|ip| ip.parse::<ipnet::Ipv4Net>().ok())
        .ok_or(DeriveError::NoAddress)?;
    let hosts: Vec<std::net::Ipv4Addr> = first_ip
        .hosts()
        .skip_while(|h| *h != first_ip.addr())
        .take(case.nodes)
        .collect();
    if hosts.len() < case.nodes {
        return Err(DeriveError::SubnetTooSmall {
            subnet: first_ip.trunc().to_string(),
            nodes: case.nodes,
        });
    }
    let nodes: Vec<Value> = hosts
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let mut node = Mapping::new();
            node.insert("name".into(), format!("node{i}").into());
            node.insert(
                "ip".into(),
                format!("{ip}/{}", first_ip.prefix_len()).into(),
            );
            Value::Mapping(node)
        })
        .collect();
    map.insert("name".into(), name.into());
    map.insert("nodes".into(), Value::Sequence(nodes));
    map.remove("tests");
    let mut vni = match map.remove("vni") {
        Some(Value::Mapping(v)) => v,
        _ => Mapping::new(),
    };
    vni.insert("mtu".into(), u64::from(case.mtu).into());
    vni.insert("profile".into(), true.into());
    match case.carrier {
        Carrier::Vni {
            driver,
            buffers,
            notification,
        } => {
            vni.insert("driver".into(), driver.name().into());
            vni.insert("buffers".into(), u64::from(buffers).into());
            vni.insert("notification".into(), notification.name().into());
            // A slot count sized for one configuration does not fit the
            // other; let each take what the region holds.
            vni.remove("slot_count");
            map.insert("network".into(), "vni".into());
        }
        Carrier::VirtioNet => {
            map.insert("network".into(), "virtio-net".into());
        }
        Carrier::VirtioNetTap => {
            map.insert("network".into(), "virtio-net-tap".into());
        }
    }
    map.insert("vni".into(), Value::Mapping(vni));
    if let Some(kernel) = kernel {
        let mut guest = match map.remove("guest") {
            Some(Value::Mapping(g)) => g,
            _ => Mapping::new(),
        };
        if !guest.contains_key("kernel") {
            guest.insert("kernel".into(), kernel.into());
        }
        map.insert("guest".into(), Value::Mapping(guest));
    }
    let text = serde_yaml::to_string(&Value::Mapping(map)).expect("a YAML mapping serialises");
    Ok(format!(
        "# Derived by vni-lab bench for case {}.\n{text}",
        case.id()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{Network, Topology};
    use std::path::Path;

    #[test]
    fn the_sweep_varies_the_mtu_at_the_first_node_count_only() {
        let cases = Matrix::sweep().cases();
        let at = |n: usize| cases.iter().filter(|c| c.nodes == n).count();
        // 2 buffers x 2 notifications + the two baselines, per MTU.
        assert_eq!((at(2), at(4), at(8)), (18, 6, 6));
        assert_eq!(cases[0].id(), "n2-mtu1500-c2-interrupt");
        assert_eq!(cases[4].id(), "n2-mtu1500-virtio-net");
        assert_eq!(cases[5].id(), "n2-mtu1500-virtio-tap");
        assert!(cases.iter().filter(|c| c.nodes > 2).all(|c| c.mtu == 1500));
        let full = Matrix {
            full: true,
            ..Matrix::sweep()
        };
        assert_eq!(full.cases().len(), 54);
        let quick = Matrix::quick().cases();
        assert_eq!(
            quick.iter().map(CaseSpec::id).collect::<Vec<_>>(),
            [
                "n2-mtu1500-c2-interrupt",
                "n2-mtu1500-virtio-net",
                "n2-mtu1500-virtio-tap"
            ]
        );
    }

    #[test]
    fn derived_labs_are_valid_and_keep_the_guests() {
        let base = "name: two-node
defaults: {memory: 768M}
guest: {append: loglevel=7}
vni: {slot_size: 4096, slot_count: 1000}
tests: {checks: [unicast]}
nodes:
  - {name: a, ip: 10.20.0.5/24}
  - {name: b, ip: 10.20.0.6/24}
";
        let case = CaseSpec {
            nodes: 8,
            mtu: 65_521,
            carrier: Carrier::Vni {
                driver: Driver::User,
                buffers: 1,
                notification: Notification::Polling,
            },
        };
        let text = derive_lab(base, &case, "bench-x", None).unwrap();
        let t = Topology::parse(&text, Path::new("x.yaml")).unwrap();
        assert_eq!(t.name, "bench-x");
        assert_eq!(t.nodes.len(), 8);
        assert_eq!(t.nodes[7].ip.to_string(), "10.20.0.12/24");
        assert_eq!(t.nodes[0].memory, 768 << 20);
        assert_eq!(t.append, "loglevel=7");
        assert_eq!(
            (t.vni.mtu, t.vni.notification, t.vni.geometry.slot_size),
            (65_521, Notification::Polling, 4096)
        );
        assert_eq!(t.vni.geometry.config.number(), 1);
        assert!(t.vni.profile);
        assert_eq!(t.network, Network::Vni);

        let base_case = CaseSpec {
            carrier: Carrier::VirtioNet,
            ..case
        };
        let text = derive_lab(base, &base_case, "bench-y", None).unwrap();
        let t = Topology::parse(&text, Path::new("y.yaml")).unwrap();
        assert_eq!(t.network, Network::VirtioNet);
        let tap_case = CaseSpec {
            carrier: Carrier::VirtioNetTap,
            ..case
        };
        let text = derive_lab(base, &tap_case, "bench-z", None).unwrap();
        let t = Topology::parse(&text, Path::new("z.yaml")).unwrap();
        assert_eq!((t.network, t.vni.mtu), (Network::VirtioNetTap, 65_521));

        // With the kernel driver in the bench, every case boots Debian's
        // Rust-enabled kernel, the baseline too.
        let kernel_case = CaseSpec {
            carrier: Carrier::Vni {
                driver: Driver::Kernel,
                buffers: 2,
                notification: Notification::Interrupt,
            },
            ..case
        };
        assert_eq!(kernel_case.id(), "n8-mtu65521-k-c2-interrupt");
        // The longest ids still make lab names (at most 32 characters).
        let polling = CaseSpec {
            carrier: Carrier::Vni {
                driver: Driver::Kernel,
                buffers: 2,
                notification: Notification::Polling,
            },
            ..kernel_case
        };
        assert!(check_name(&format!("bench-{}", polling.id())).is_ok());
        assert!(check_name(&format!("bench-{}", kernel_case.id())).is_ok());
        for spec in [kernel_case, base_case] {
            let text = derive_lab(base, &spec, "bench-k", Some("trixie-backports")).unwrap();
            let t = Topology::parse(&text, Path::new("k.yaml")).unwrap();
            assert_eq!(t.kernel, crate::topology::Kernel::TrixieBackports, "{text}");
        }
        let text = derive_lab(base, &kernel_case, "bench-k", None).unwrap();
        let t = Topology::parse(&text, Path::new("k.yaml")).unwrap();
        assert!(t.nodes.iter().all(|n| n.driver == Driver::Kernel));

        let small = base.replace("/24", "/29");
        assert_eq!(
            derive_lab(&small, &case, "bench-z", None),
            Err(DeriveError::SubnetTooSmall {
                subnet: "10.20.0.0/29".into(),
                nodes: 8
            })
        );
        assert!(matches!(
            derive_lab(base, &case, "Bad Name", None),
            Err(DeriveError::Name(..))
        ));
    }

    #[test]
    fn all_pairs_adds_what_ran() {
        let a = all_pairs(&[Ok(100.0), Err("iperf3: refused".into()), Ok(50.0)]);
        assert_eq!(
            (a.pairs, a.sum_mbit, a.min_mbit, a.max_mbit),
            (3, 150.0, 50.0, 100.0)
        );
        assert_eq!(a.failed, ["iperf3: refused"]);
        assert_eq!(ring(2), [(0, 1), (1, 0)]);
        let point = |offered_mbit, lost_percent| UdpPoint {
            offered_mbit,
            received_mbit: offered_mbit,
            lost_percent,
        };
        let sweep = [point(25.0, 0.0), point(50.0, 10.0), point(100.0, 45.0)];
        assert_eq!(udp_all_rate(&sweep, 30.0), Some(50.0));
        assert_eq!(udp_all_rate(&sweep[2..], 30.0), Some(100.0));
        assert_eq!(udp_all_rate(&[], 30.0), None);
        let u = udp_all(50.0, &[Ok((40.0, 20.0)), Ok((50.0, 0.0)), Err("x".into())]);
        assert_eq!(
            (u.pairs, u.sum_received_mbit, u.mean_lost_percent),
            (3, 90.0, 10.0)
        );
        assert_eq!(ring(3), [(0, 1), (1, 2), (2, 0)]);
    }
}
