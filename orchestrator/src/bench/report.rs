//! The bench's results: the JSON document and the Markdown report made
//! from it (tables, ratios VNI / virtio-net, where the driver's time went).

use std::fmt::Write as _;

use serde::Serialize;

use super::{Carrier, CaseOutcome, CaseSpec, Params};
use crate::topology::Driver;

/// Throughput the VNI should reach, as a multiple of virtio-net's.
pub const TARGET_THROUGHPUT: f64 = 1.5;
/// Round trip the VNI should stay under, as a multiple of virtio-net's.
pub const TARGET_RTT: f64 = 0.7;

/// Everything a bench run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Results {
    /// The lab file the cases were derived from.
    pub base: String,
    /// The command line.
    pub command: String,
    /// Unix time it started.
    pub started_at: u64,
    /// Seconds it took.
    pub seconds: f64,
    /// Accelerator of the guests.
    pub accel: String,
    /// Guest kernel release.
    pub kernel_release: String,
    /// Host CPUs.
    pub host_cpus: usize,
    /// vCPUs and memory (MiB) of each guest.
    pub guest_vcpus: u32,
    /// Guest memory, MiB.
    pub guest_memory_mib: u64,
    /// How each case was measured.
    pub params: Params,
    /// The cases, in the order they ran.
    pub cases: Vec<CaseOutcome>,
}

/// A ratio `a / b`, when both are there and `b` is not zero.
fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.digits$}"))
}

fn times(v: Option<f64>) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{v:.2}×"))
}

fn ms(us: f64) -> f64 {
    us / 1000.0
}

/// The VNI / virtio-net comparison of one VNI case against the baseline
/// with the same nodes and MTU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Ratios {
    /// TCP throughput, one pair alone.
    pub tcp_pair: Option<f64>,
    /// TCP throughput, all pairs at once (sums).
    pub tcp_all: Option<f64>,
    /// Median raw-frame echo round trip.
    pub echo_p50: Option<f64>,
    /// Median ping round trip.
    pub ping_p50: Option<f64>,
}

/// A figure of a case, and whether more of it is better.
struct Figure {
    what: &'static str,
    digits: usize,
    more_is_better: bool,
    /// The target, as a multiple of a baseline's figure, if there is one.
    target: Option<f64>,
    get: fn(&CaseOutcome) -> Option<f64>,
}

/// The figures the headline compares.
const FIGURES: [Figure; 5] = [
    Figure {
        what: "TCP one pair, Mbit/s",
        digits: 0,
        more_is_better: true,
        target: Some(TARGET_THROUGHPUT),
        get: |c| c.tcp_pair_mbit,
    },
    Figure {
        what: "TCP all pairs at once, Mbit/s (sum)",
        digits: 0,
        more_is_better: true,
        target: Some(TARGET_THROUGHPUT),
        get: |c| c.tcp_all.as_ref().map(|a| a.sum_mbit),
    },
    Figure {
        what: "echo RTT p50, ms",
        digits: 3,
        more_is_better: false,
        target: Some(TARGET_RTT),
        get: |c| c.echo.as_ref().map(|e| ms(e.p50_us)),
    },
    Figure {
        what: "ping RTT p50, ms",
        digits: 3,
        more_is_better: false,
        target: Some(TARGET_RTT),
        get: |c| c.ping.as_ref().map(|e| ms(e.p50_us)),
    },
    Figure {
        what: "UDP saturation, Mbit/s",
        digits: 0,
        more_is_better: true,
        target: None,
        get: CaseOutcome::udp_saturation_mbit,
    },
];

impl Figure {
    /// Whether `ratio` (this case / the other) is at least as good as
    /// `target` times the other's.
    fn meets(&self, ratio: f64, target: f64) -> bool {
        if self.more_is_better {
            ratio >= target
        } else {
            ratio <= target
        }
    }

    fn target_text(&self) -> String {
        match self.target {
            Some(t) if self.more_is_better => format!("≥ {t}×"),
            Some(t) => format!("≤ {t}×"),
            None => "–".to_owned(),
        }
    }
}

impl Results {
    /// The baseline `carrier` measured with `spec`'s nodes and MTU.
    pub fn baseline_with(&self, spec: &CaseSpec, carrier: Carrier) -> Option<&CaseOutcome> {
        self.cases.iter().find(|c| {
            c.spec.carrier == carrier
                && c.error.is_none()
                && c.spec.nodes == spec.nodes
                && c.spec.mtu == spec.mtu
        })
    }

    /// `case` compared with `base`.
    pub fn ratios_against(case: &CaseOutcome, base: &CaseOutcome) -> Ratios {
        Ratios {
            tcp_pair: ratio(case.tcp_pair_mbit, base.tcp_pair_mbit),
            tcp_all: ratio(
                case.tcp_all.as_ref().map(|a| a.sum_mbit),
                base.tcp_all.as_ref().map(|a| a.sum_mbit),
            ),
            echo_p50: ratio(
                case.echo.as_ref().map(|r| r.p50_us),
                base.echo.as_ref().map(|r| r.p50_us),
            ),
            ping_p50: ratio(
                case.ping.as_ref().map(|r| r.p50_us),
                base.ping.as_ref().map(|r| r.p50_us),
            ),
        }
    }

    /// The case the headline compares: the first VNI case that ran and
    /// has a baseline.
    pub fn headline(&self) -> Option<&CaseOutcome> {
        self.cases.iter().find(|c| {
            !c.spec.is_baseline()
                && c.error.is_none()
                && Carrier::BASELINES
                    .iter()
                    .any(|&b| self.baseline_with(&c.spec, b).is_some())
        })
    }

    /// Every case that ran with the headline's nodes and MTU: the VNI's
    /// (each driver and setting) and the baselines.
    fn headline_cases(&self) -> Vec<&CaseOutcome> {
        let Some(head) = self.headline() else {
            return Vec::new();
        };
        self.cases
            .iter()
            .filter(|c| {
                c.error.is_none() && c.spec.nodes == head.spec.nodes && c.spec.mtu == head.spec.mtu
            })
            .collect()
    }

    /// The kernel driver's cases at the headline's nodes and MTU, each
    /// with the user-space driver's case of the same setting.
    fn driver_pairs(&self) -> Vec<(&CaseOutcome, &CaseOutcome)> {
        let cases = self.headline_cases();
        cases
            .iter()
            .filter_map(|k| match k.spec.carrier {
                Carrier::Vni {
                    driver: Driver::Kernel,
                    buffers,
                    notification,
                } => cases
                    .iter()
                    .find(|u| {
                        u.spec.carrier
                            == Carrier::Vni {
                                driver: Driver::User,
                                buffers,
                                notification,
                            }
                    })
                    .map(|u| (*k, *u)),
                _ => None,
            })
            .collect()
    }

    /// One line per VNI case at the headline's nodes and MTU and per
    /// baseline, and per kernel/user pair: what `vni-lab bench` prints
    /// when it ends.
    pub fn headline_lines(&self) -> Vec<String> {
        let cases = self.headline_cases();
        let x = |v: Option<f64>| v.map_or("–".to_owned(), |v| format!("{v:.2}×"));
        let mut lines = Vec::new();
        for case in cases.iter().filter(|c| !c.spec.is_baseline()) {
            for base in cases.iter().filter(|c| c.spec.is_baseline()) {
                let r = Self::ratios_against(case, base);
                lines.push(format!(
                    "{} / {}: TCP one pair {}, all pairs {}, echo RTT p50 {}, ping RTT p50 {}",
                    case.id,
                    base.spec.carrier_label(),
                    x(r.tcp_pair),
                    x(r.tcp_all),
                    x(r.echo_p50),
                    x(r.ping_p50)
                ));
            }
        }
        for (k, u) in self.driver_pairs() {
            let r = Self::ratios_against(k, u);
            lines.push(format!(
                "kernel / user-space driver ({} / {}): TCP one pair {}, all pairs {}, echo RTT p50 {}, ping RTT p50 {}, UDP saturation {}",
                k.id,
                u.id,
                x(r.tcp_pair),
                x(r.tcp_all),
                x(r.echo_p50),
                x(r.ping_p50),
                x(ratio(k.udp_saturation_mbit(), u.udp_saturation_mbit()))
            ));
        }
        lines
    }

    /// The report in Markdown.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# vni-lab bench\n");
        let _ = writeln!(
            md,
            "`{}`: {} cases from `{}` in {:.0} min; {} guests ({} vCPU, {} MiB, kernel {}) on {} host CPUs. \
             Echo: {} raw 64-byte frames; ping: {} at {:.0} ms; TCP runs {:.0} s; UDP sweep {:.0} s per load. \
             Every figure below was measured in this run.\n",
            self.command,
            self.cases.len(),
            self.base,
            self.seconds / 60.0,
            self.accel.to_uppercase(),
            self.guest_vcpus,
            self.guest_memory_mib,
            self.kernel_release,
            self.host_cpus,
            self.params.echo_count,
            self.params.ping_count,
            self.params.ping_interval.as_secs_f64() * 1e3,
            self.params.tcp_time.as_secs_f64(),
            self.params.udp_time.as_secs_f64(),
        );
        self.headline_section(&mut md);
        self.cases_section(&mut md);
        self.buffers_section(&mut md);
        self.loss_section(&mut md);
        self.profile_section(&mut md);
        self.errors_section(&mut md);
        let _ = writeln!(
            md,
            "## Plots\n\n![throughput](throughput.svg)\n\n![latency](latency.svg)\n\n![loss](loss.svg)"
        );
        md
    }

    /// The headline: every carrier's figures at the first VNI case's
    /// nodes and MTU, each VNI case against each baseline with the
    /// targets, and the kernel driver against the user-space one.
    fn headline_section(&self, md: &mut String) {
        let cases = self.headline_cases();
        let Some(head) = cases.first() else {
            let _ = writeln!(md, "## Headline: VNI / virtio-net\n");
            let _ = writeln!(
                md,
                "No VNI case ran next to a virtio-net case with the same nodes and MTU: no ratio.\n"
            );
            return;
        };
        let _ = writeln!(
            md,
            "## Headline: VNI / virtio-net, {} nodes, MTU {}\n",
            head.spec.nodes, head.spec.mtu
        );
        let mut head_row = "| |".to_owned();
        let mut rule = "|---|".to_owned();
        for c in &cases {
            let _ = write!(head_row, " {} |", c.spec.carrier_label());
            rule.push_str("---:|");
        }
        let _ = writeln!(md, "{head_row}\n{rule}");
        for f in &FIGURES {
            let mut row = format!("| {} |", f.what);
            for c in &cases {
                let _ = write!(row, " {} |", num((f.get)(c), f.digits));
            }
            let _ = writeln!(md, "{row}");
        }
        md.push('\n');

        let _ = writeln!(
            md,
            "Each VNI case against each baseline (ratio VNI / baseline; target: TCP ≥ {TARGET_THROUGHPUT}×, \
             round trips ≤ {TARGET_RTT}× the baseline's):\n"
        );
        let _ = writeln!(md, "| VNI | baseline | figure | ratio | target | met |");
        let _ = writeln!(md, "|---|---|---|---:|---:|---|");
        for case in cases.iter().filter(|c| !c.spec.is_baseline()) {
            for base in cases.iter().filter(|c| c.spec.is_baseline()) {
                for f in FIGURES.iter().filter(|f| f.target.is_some()) {
                    let r = ratio((f.get)(case), (f.get)(base));
                    let met = match (r, f.target) {
                        (Some(r), Some(t)) if f.meets(r, t) => "yes",
                        (Some(_), Some(_)) => "no",
                        _ => "–",
                    };
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} | {} | {} | {met} |",
                        case.spec.carrier_label(),
                        base.spec.carrier_label(),
                        f.what,
                        times(r),
                        f.target_text()
                    );
                }
            }
        }
        md.push('\n');

        let pairs = self.driver_pairs();
        if pairs.is_empty() {
            return;
        }
        let _ = writeln!(
            md,
            "The kernel driver against the user-space driver (target: never slower):\n"
        );
        let _ = writeln!(
            md,
            "| kernel case | user-space case | figure | kernel / user | kernel not slower |"
        );
        let _ = writeln!(md, "|---|---|---|---:|---|");
        for (k, u) in pairs {
            for f in &FIGURES {
                let r = ratio((f.get)(k), (f.get)(u));
                let met = match r {
                    Some(r) if f.meets(r, 1.0) => "yes",
                    Some(_) => "no",
                    None => "–",
                };
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {met} |",
                    k.id,
                    u.id,
                    f.what,
                    times(r)
                );
            }
        }
        md.push('\n');
    }

    fn cases_section(&self, md: &mut String) {
        let _ = writeln!(md, "## Every case\n");
        let _ = writeln!(
            md,
            "Round trips node0 → node1 (ms), TCP in Mbit/s (one pair alone; all pairs of a ring at once, summed), \
             UDP saturation = most Mbit/s received in the sweep; UDP all = every pair of the ring at once, each offered \
             the highest load its sweep carried with less than the saturation loss (Mbit/s received, summed; mean loss); \
             ratios against virtio-net with the same nodes and MTU (QEMU's networking / TAP + bridge).\n"
        );
        let _ = writeln!(
            md,
            "| case | nodes | MTU | carrier | echo p50 | echo p99 | ping p50 | ping p99 | TCP pair | TCP all | UDP sat. | UDP all (loss) | TCP × | echo RTT × | ping RTT × |"
        );
        let _ = writeln!(
            md,
            "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for c in &self.cases {
            if let Some(e) = &c.error {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | error: {} ||||||||||||",
                    c.id,
                    c.spec.nodes,
                    c.spec.mtu,
                    c.spec.carrier_label(),
                    e.lines().next().unwrap_or_default().replace('|', "/")
                );
                continue;
            }
            let [r, t] = Carrier::BASELINES.map(|b| match self.baseline_with(&c.spec, b) {
                Some(base) if !c.spec.is_baseline() => Self::ratios_against(c, base),
                _ => Ratios::default(),
            });
            let both = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (None, None) => "–".to_owned(),
                _ => format!("{} / {}", times(a), times(b)),
            };
            let rtt = |r: &Option<vni_frames::Rtts>, p99: bool| {
                num(
                    r.as_ref()
                        .map(|r| ms(if p99 { r.p99_us } else { r.p50_us })),
                    3,
                )
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.id,
                c.spec.nodes,
                c.spec.mtu,
                c.spec.carrier_label(),
                rtt(&c.echo, false),
                rtt(&c.echo, true),
                rtt(&c.ping, false),
                rtt(&c.ping, true),
                num(c.tcp_pair_mbit, 0),
                num(c.tcp_all.as_ref().map(|a| a.sum_mbit), 0),
                num(c.udp_saturation_mbit(), 0),
                c.udp_all.as_ref().map_or("–".to_owned(), |u| format!(
                    "{:.0} ({:.1} %)",
                    u.sum_received_mbit, u.mean_lost_percent
                )),
                both(r.tcp_pair, t.tcp_pair),
                both(r.echo_p50, t.echo_p50),
                both(r.ping_p50, t.ping_p50),
            );
        }
        md.push('\n');
    }

    fn buffers_section(&self, md: &mut String) {
        let _ = writeln!(md, "## Buffer configurations under load\n");
        let _ = writeln!(
            md,
            "The paper's trade-off, measured during the all-pairs TCP run: configuration 2 (one pool for all) \
             against configuration 1 (a ring per sender-receiver pair). Slots in use sampled from the host every 20 ms; \
             drops counted over the run (interface: the TAP's queue overflowed while the driver had no buffer; \
             driver: frames the driver gave up).\n"
        );
        let _ = writeln!(
            md,
            "| nodes | MTU | notification | config | TCP all, Mbit/s | slots | max in use | mean in use | interface drops | driver drops |"
        );
        let _ = writeln!(md, "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|");
        for c in &self.cases {
            let super::Carrier::Vni {
                buffers,
                notification,
                ..
            } = c.spec.carrier
            else {
                continue;
            };
            if c.error.is_some() {
                continue;
            }
            let (slots, max, mean) = c.occupancy.map_or(
                ("–".to_owned(), "–".to_owned(), "–".to_owned()),
                |o| {
                    let pct = |v: f64| {
                        if o.slots == 0 {
                            0.0
                        } else {
                            100.0 * v / o.slots as f64
                        }
                    };
                    (
                        o.slots.to_string(),
                        format!("{} ({:.1} %)", o.max_used, pct(o.max_used as f64)),
                        format!("{:.0} ({:.1} %)", o.mean_used, pct(o.mean_used)),
                    )
                },
            );
            let (iface, driver) = c.drops.map_or(("–".to_owned(), "–".to_owned()), |d| {
                (
                    (d.interface_tx + d.interface_rx).to_string(),
                    match (d.driver_tx, d.driver_rx) {
                        (Some(t), Some(r)) => (t + r).to_string(),
                        _ => "–".to_owned(),
                    },
                )
            });
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.spec.nodes,
                c.spec.mtu,
                notification.name(),
                buffers,
                num(c.tcp_all.as_ref().map(|a| a.sum_mbit), 0),
                slots,
                max,
                mean,
                iface,
                driver
            );
        }
        md.push('\n');
    }

    fn loss_section(&self, md: &mut String) {
        let _ = writeln!(md, "## Packet loss against offered load\n");
        let _ = writeln!(
            md,
            "iperf3 UDP node0 → node1 for {:.0} s per load, doubling until {:.0} % or more is lost. \
             Each cell: loss % (Mbit/s received).\n",
            self.params.udp_time.as_secs_f64(),
            self.params.saturation_loss
        );
        let rates: Vec<f64> = self
            .params
            .udp_rates
            .iter()
            .map(|r| *r as f64 / 1e6)
            .collect();
        let mut head = "| case |".to_owned();
        let mut rule = "|---|".to_owned();
        for r in &rates {
            let _ = write!(head, " {r:.0} |");
            rule.push_str("---:|");
        }
        let _ = writeln!(md, "{head}\n{rule}");
        for c in self.cases.iter().filter(|c| c.error.is_none()) {
            let mut row = format!("| {} |", c.id);
            for r in &rates {
                match c.udp.iter().find(|p| (p.offered_mbit - r).abs() < 1e-6) {
                    Some(p) => {
                        let _ = write!(row, " {:.1} ({:.0}) |", p.lost_percent, p.received_mbit);
                    }
                    None => row.push_str(" |"),
                }
            }
            let _ = writeln!(md, "{row}");
        }
        md.push('\n');
    }

    fn profile_section(&self, md: &mut String) {
        let _ = writeln!(md, "## Where the VNI driver's time goes\n");
        let _ = writeln!(
            md,
            "Each driver timed its loop (`vni.profile`) over the whole case. Phases: reading frames from the TAP into \
             slots (the guest kernel copies each frame), publishing them, ringing doorbells, taking frames from the \
             region into the TAP (the guest kernel copies each frame and runs its network stack on it, TCP included), \
             housekeeping, and waiting (asleep, or polling with the CPU yielded). Busy = everything but waiting.\n"
        );
        let _ = writeln!(
            md,
            "| case | node | busy % | TAP → region | publish | doorbells (n) | region → TAP | housekeeping |"
        );
        let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|");
        for c in self
            .cases
            .iter()
            .filter(|c| !c.spec.is_baseline() && c.error.is_none())
        {
            for (i, p) in c.profiles.iter().enumerate().take(2) {
                let Some(p) = p else { continue };
                let f = |k: &str| p[k].as_f64().unwrap_or(0.0);
                let busy =
                    f("tap_read_ms") + f("flush_ms") + f("ring_ms") + f("recv_ms") + f("tick_ms");
                let total = busy + f("wait_ms");
                if total <= 0.0 {
                    continue;
                }
                let share = |k: &str| format!("{:.0} %", 100.0 * f(k) / busy.max(1e-9));
                let _ = writeln!(
                    md,
                    "| {} | node{i} | {:.0} % | {} | {} | {} ({}) | {} | {} |",
                    c.id,
                    100.0 * busy / total,
                    share("tap_read_ms"),
                    share("flush_ms"),
                    share("ring_ms"),
                    p["doorbells"].as_u64().unwrap_or(0),
                    share("recv_ms"),
                    share("tick_ms"),
                );
            }
        }
        md.push('\n');
        let bells: Vec<&CaseOutcome> = self.cases.iter().filter(|c| c.doorbell.is_some()).collect();
        if bells.is_empty() {
            return;
        }
        let _ = writeln!(
            md,
            "A bare doorbell round trip (`vni-driver bells`, drivers stopped: a write to BAR0, QEMU, the peer's \
             MSI-X interrupt, its eventfd, and back) against the echo round trip, which adds both drivers, both \
             TAPs and the echo program:\n"
        );
        let _ = writeln!(
            md,
            "| case | doorbell RTT p50, ms | echo RTT p50, ms | doorbells' share |"
        );
        let _ = writeln!(md, "|---|---:|---:|---:|");
        for c in bells {
            let bell = c.doorbell.map(|b| b.p50_us / 1e3);
            let echo = c.echo.as_ref().map(|e| ms(e.p50_us));
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} |",
                c.id,
                num(bell, 3),
                num(echo, 3),
                ratio(bell, echo).map_or("–".to_owned(), |r| format!("{:.0} %", r * 100.0))
            );
        }
        md.push('\n');
    }

    fn errors_section(&self, md: &mut String) {
        let troubled: Vec<&CaseOutcome> = self
            .cases
            .iter()
            .filter(|c| c.error.is_some() || !c.problems.is_empty() || c.region_ok == Some(false))
            .collect();
        if troubled.is_empty() {
            return;
        }
        let _ = writeln!(md, "## Errors and problems\n");
        for c in troubled {
            if let Some(e) = &c.error {
                let _ = writeln!(md, "- {}: {}", c.id, e.replace('\n', " / "));
            }
            for p in &c.problems {
                let _ = writeln!(md, "- {}: {}", c.id, p.replace('\n', " / "));
            }
            if c.region_ok == Some(false) {
                let _ = writeln!(
                    md,
                    "- {}: the region check failed after the case (slots missing or protocol errors)",
                    c.id
                );
            }
        }
        md.push('\n');
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::bench::{AllPairs, Carrier, UdpPoint};
    use crate::topology::Notification;

    fn rtts(p50_ms: f64) -> vni_frames::Rtts {
        vni_frames::Rtts::from_samples(3, 0, vec![p50_ms * 900.0, p50_ms * 1000.0, p50_ms * 2000.0])
    }

    pub(crate) fn sample() -> Results {
        let vni = CaseSpec {
            nodes: 2,
            mtu: 1500,
            carrier: Carrier::Vni {
                driver: crate::topology::Driver::User,
                buffers: 2,
                notification: Notification::Interrupt,
            },
        };
        let base = CaseSpec {
            carrier: Carrier::VirtioNet,
            ..vni
        };
        let mut a = CaseOutcome::new(vni);
        a.tcp_pair_mbit = Some(900.0);
        a.tcp_all = Some(AllPairs {
            pairs: 2,
            sum_mbit: 1000.0,
            min_mbit: 400.0,
            max_mbit: 600.0,
            failed: vec![],
        });
        a.echo = Some(rtts(0.3));
        a.ping = Some(rtts(1.0));
        a.udp = vec![
            UdpPoint {
                offered_mbit: 10.0,
                received_mbit: 10.0,
                lost_percent: 0.0,
            },
            UdpPoint {
                offered_mbit: 40.0,
                received_mbit: 16.0,
                lost_percent: 60.0,
            },
        ];
        a.udp_all = Some(crate::bench::udp_all(
            10.0,
            &[Ok((9.0, 10.0)), Ok((10.0, 0.0))],
        ));
        a.doorbell = Some(crate::bench::BellRtts {
            count: 3,
            p50_us: 150.0,
            mean_us: 160.0,
            min_us: 100.0,
            max_us: 300.0,
        });
        a.profiles = vec![Some(serde_json::json!({
            "tap_read_ms": 10.0, "flush_ms": 5.0, "ring_ms": 5.0, "recv_ms": 30.0,
            "tick_ms": 0.0, "wait_ms": 50.0, "doorbells": 7
        }))];
        let mut b = CaseOutcome::new(base);
        b.tcp_pair_mbit = Some(600.0);
        b.tcp_all = Some(AllPairs {
            pairs: 2,
            sum_mbit: 1000.0,
            min_mbit: 500.0,
            max_mbit: 500.0,
            failed: vec![],
        });
        b.echo = Some(rtts(0.5));
        b.ping = Some(rtts(1.0));
        let mut c = CaseOutcome::new(CaseSpec { nodes: 8, ..vni });
        c.error = Some("node3 did not come up".into());
        let mut t = CaseOutcome::new(CaseSpec {
            carrier: Carrier::VirtioNetTap,
            ..vni
        });
        t.tcp_pair_mbit = Some(450.0);
        t.echo = Some(rtts(0.6));
        t.ping = Some(rtts(1.25));
        let mut k = CaseOutcome::new(CaseSpec {
            carrier: Carrier::Vni {
                driver: crate::topology::Driver::Kernel,
                buffers: 2,
                notification: Notification::Interrupt,
            },
            ..vni
        });
        k.tcp_pair_mbit = Some(1200.0);
        k.echo = Some(rtts(0.25));
        k.ping = Some(rtts(0.8));
        k.udp = vec![UdpPoint {
            offered_mbit: 10.0,
            received_mbit: 12.0,
            lost_percent: 0.0,
        }];
        Results {
            base: "topologies/two-node.yaml".into(),
            command: "vni-lab bench topologies/two-node.yaml".into(),
            started_at: 0,
            seconds: 600.0,
            accel: "tcg".into(),
            kernel_release: "6.1.0".into(),
            host_cpus: 2,
            guest_vcpus: 1,
            guest_memory_mib: 512,
            params: Params::quick(),
            cases: vec![a, b, c, t, k],
        }
    }

    #[test]
    fn ratios_compare_with_the_same_nodes_and_mtu() {
        let r = sample();
        let base = r
            .baseline_with(&r.cases[0].spec, Carrier::VirtioNet)
            .unwrap();
        let ratios = Results::ratios_against(&r.cases[0], base);
        assert_eq!(ratios.tcp_pair, Some(1.5));
        assert_eq!(ratios.tcp_all, Some(1.0));
        assert!((ratios.echo_p50.unwrap() - 0.6).abs() < 1e-9);
        assert_eq!(ratios.ping_p50, Some(1.0));
        let lines = r.headline_lines();
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert_eq!(
            lines[1],
            "n2-mtu1500-c2-interrupt / virtio-net, TAP + bridge: TCP one pair 2.00×, all pairs –, echo RTT p50 0.50×, ping RTT p50 0.80×"
        );
        assert!(lines[4].starts_with("kernel / user-space driver (n2-mtu1500-k-c2-interrupt / n2-mtu1500-c2-interrupt): TCP one pair 1.33×"), "{}", lines[4]);
        // No 8-node baseline: no ratio, and the error is not a headline.
        assert!(r
            .baseline_with(&r.cases[2].spec, Carrier::VirtioNet)
            .is_none());
        assert_eq!(
            r.headline().map(|c| c.id.as_str()),
            Some("n2-mtu1500-c2-interrupt")
        );
    }

    #[test]
    fn the_report_says_what_was_met() {
        let md = sample().markdown();
        assert!(
            md.contains("## Headline: VNI / virtio-net, 2 nodes, MTU 1500"),
            "{md}"
        );
        assert!(
            md.contains("| TCP one pair, Mbit/s | 900 | 600 | 450 | 1200 |"),
            "{md}"
        );
        for line in [
            "| VNI config 2, interrupt | virtio-net | TCP one pair, Mbit/s | 1.50× | ≥ 1.5× | yes |",
            "| VNI config 2, interrupt | virtio-net | echo RTT p50, ms | 0.60× | ≤ 0.7× | yes |",
            "| VNI config 2, interrupt | virtio-net | ping RTT p50, ms | 1.00× | ≤ 0.7× | no |",
            "| VNI config 2, interrupt | virtio-net, TAP + bridge | TCP one pair, Mbit/s | 2.00× | ≥ 1.5× | yes |",
            "| VNI kernel, config 2, interrupt | virtio-net, TAP + bridge | ping RTT p50, ms | 0.64× | ≤ 0.7× | yes |",
            "| n2-mtu1500-k-c2-interrupt | n2-mtu1500-c2-interrupt | TCP one pair, Mbit/s | 1.33× | yes |",
            "| n2-mtu1500-k-c2-interrupt | n2-mtu1500-c2-interrupt | echo RTT p50, ms | 0.83× | yes |",
            "| n2-mtu1500-k-c2-interrupt | n2-mtu1500-c2-interrupt | UDP saturation, Mbit/s | 0.75× | no |",
        ] {
            assert!(md.contains(line), "{line} in {md}");
        }
        assert!(
            md.contains("| n2-mtu1500-c2-interrupt | 0.0 (10) | 60.0 (16) |"),
            "{md}"
        );
        assert!(md.contains("error: node3 did not come up"), "{md}");
        assert!(
            md.contains("| 1000 | 16 | 19 (5.0 %) | 1.50× / 2.00× |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| n2-mtu1500-c2-interrupt | node0 | 50 % | 20 % | 10 % | 10 % (7) | 60 % | 0 % |"
            ),
            "{md}"
        );
        assert!(
            md.contains("- n8-mtu1500-c2-interrupt: node3 did not come up"),
            "{md}"
        );
    }
}
