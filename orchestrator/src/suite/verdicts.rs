//! The verdicts of the checks: pure functions from what a guest's run
//! gave back (parsed) to passed or failed with the figures, tested below
//! without a guest. The runs that feed them are in `checks.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use vni_frames::{Rtts, Sent, Tally};

use super::guests::Trouble;
use crate::agent::ExecOutput;
use crate::topology::Node;

/// How a case that ran turned out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Verdict {
    /// Every condition met.
    pub passed: bool,
    /// Figures, or what was missed.
    pub message: String,
    /// More lines.
    pub details: Option<String>,
    /// Figures by name.
    pub metrics: BTreeMap<String, f64>,
}

impl Verdict {
    /// Passed when `problems` is empty; the message is `figures` then, the
    /// problems otherwise.
    pub(super) fn of(problems: Vec<String>, figures: String) -> Self {
        Verdict {
            passed: problems.is_empty(),
            message: if problems.is_empty() {
                figures
            } else {
                problems.join("; ")
            },
            ..Verdict::default()
        }
    }

    /// Failed with `message`, the command's output as details.
    pub(super) fn failed(message: String, out: &ExecOutput) -> Self {
        Verdict {
            passed: false,
            message,
            details: Some(output_text(out)),
            ..Verdict::default()
        }
    }

    pub(super) fn metric(mut self, name: &str, value: f64) -> Self {
        self.metrics.insert(name.to_owned(), value);
        self
    }
}

/// The last line of `out`'s stdout as JSON of type `T`.
pub(super) fn last_json<T: DeserializeOwned>(
    node: &str,
    what: &str,
    out: &ExecOutput,
) -> Result<T, Trouble> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty());
    line.and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| Trouble {
            message: format!("{node}: {what} gave no result (exit {:?})", out.code),
            details: Some(output_text(out)),
        })
}

pub(super) fn output_text(out: &ExecOutput) -> String {
    format!(
        "--- stdout:\n{}\n--- stderr:\n{}",
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// What is wrong with `from`'s frames in `tally`, `expected` of them.
pub fn frame_problems(tally: &Tally, from: &str, expected: u64) -> Vec<String> {
    let Some(s) = tally.senders.get(from) else {
        return vec![format!("none of {expected} frames arrived")];
    };
    let mut problems = Vec::new();
    if s.received < expected {
        problems.push(format!(
            "{} of {expected} frames lost",
            expected - s.received
        ));
    }
    if s.received > expected + s.duplicates {
        problems.push(format!("{} frames more than sent", s.received - expected));
    }
    if s.damaged > 0 {
        problems.push(format!("{} frames damaged", s.damaged));
    }
    if s.out_of_order > 0 {
        problems.push(format!("{} frames out of order", s.out_of_order));
    }
    if s.duplicates > 0 {
        problems.push(format!("{} frames duplicated", s.duplicates));
    }
    problems
}

/// The burst verdict: loss within `max_loss` percent, nothing damaged,
/// reordered or duplicated.
pub fn judge_burst(offered: u64, sent: &Sent, tally: &Tally, from: &str, max_loss: f64) -> Verdict {
    let s = tally.senders.get(from).cloned().unwrap_or_default();
    let loss = 100.0 * (offered.saturating_sub(s.received)) as f64 / offered.max(1) as f64;
    let mut problems: Vec<String> = frame_problems(tally, from, offered)
        .into_iter()
        .filter(|p| !p.contains("lost") && !p.contains("none of"))
        .collect();
    if loss > max_loss {
        problems.insert(
            0,
            format!(
                "{:.2} % lost ({} of {offered}; the sender's interface refused {}), more than {max_loss} %",
                loss,
                offered - s.received.min(offered),
                sent.refused.len()
            ),
        );
    }
    Verdict::of(
        problems,
        format!("{}/{offered} arrived, {loss:.2} % lost", s.received),
    )
    .metric("offered", offered as f64)
    .metric("sent", sent.sent as f64)
    .metric("received", s.received as f64)
    .metric("loss_percent", loss)
}

/// The echo verdict: every request answered intact, percentiles within
/// their limits.
pub fn judge_echo(r: &Rtts, max_p50: Option<Duration>, max_p99: Option<Duration>) -> Verdict {
    let mut problems = Vec::new();
    if r.answered < r.sent {
        problems.push(format!(
            "{} of {} requests unanswered",
            r.sent - r.answered,
            r.sent
        ));
    }
    if r.damaged > 0 {
        problems.push(format!("{} answers damaged", r.damaged));
    }
    let ms = |us: f64| us / 1000.0;
    for (name, value, limit) in [("p50", r.p50_us, max_p50), ("p99", r.p99_us, max_p99)] {
        if let Some(limit) = limit {
            if value > limit.as_secs_f64() * 1e6 {
                problems.push(format!(
                    "{name} {:.3} ms over the limit of {:.3} ms",
                    ms(value),
                    limit.as_secs_f64() * 1e3
                ));
            }
        }
    }
    Verdict::of(
        problems,
        format!(
            "p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms ({}/{} answered)",
            ms(r.p50_us),
            ms(r.p99_us),
            ms(r.max_us),
            r.answered,
            r.sent
        ),
    )
    .metric("rtt_p50_ms", ms(r.p50_us))
    .metric("rtt_p99_ms", ms(r.p99_us))
    .metric("rtt_max_ms", ms(r.max_us))
    .metric("rtt_min_ms", ms(r.min_us))
    .metric("rtt_mean_ms", ms(r.mean_us))
    .metric("answered", r.answered as f64)
    .metric("sent", r.sent as f64)
}

/// Figures of one iperf3 run, from its `--json` output.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Iperf {
    /// Throughput at the receiver, bit/s.
    pub bits_per_second: f64,
    /// TCP retransmissions.
    pub retransmits: Option<f64>,
    /// UDP datagrams lost, percent.
    pub lost_percent: Option<f64>,
    /// UDP jitter, ms.
    pub jitter_ms: Option<f64>,
}

/// Reads iperf3's `--json` output; its own error when it reported one.
pub fn parse_iperf(json: &str, udp: bool) -> Result<Iperf, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("iperf3 printed no JSON ({e})"))?;
    if let Some(error) = v["error"].as_str() {
        return Err(format!("iperf3: {error}"));
    }
    let end = &v["end"];
    let number = |x: &serde_json::Value| x.as_f64();
    if udp {
        // The receiver's view: iperf3 3.12 puts it in `sum` (jitter, loss).
        let sum = &end["sum"];
        let bits = number(&end["sum_received"]["bits_per_second"])
            .or_else(|| number(&sum["bits_per_second"]))
            .ok_or("iperf3 JSON has no end.sum.bits_per_second")?;
        Ok(Iperf {
            bits_per_second: bits,
            retransmits: None,
            lost_percent: number(&sum["lost_percent"]),
            jitter_ms: number(&sum["jitter_ms"]),
        })
    } else {
        Ok(Iperf {
            bits_per_second: number(&end["sum_received"]["bits_per_second"])
                .ok_or("iperf3 JSON has no end.sum_received.bits_per_second")?,
            retransmits: number(&end["sum_sent"]["retransmits"]),
            lost_percent: None,
            jitter_ms: None,
        })
    }
}

fn mbit(bits: f64) -> f64 {
    bits / 1e6
}

/// The TCP verdict: data flowed, at least `min` bit/s when given.
pub fn judge_tcp(r: &Iperf, min: Option<u64>) -> Verdict {
    let mut problems = Vec::new();
    if r.bits_per_second <= 0.0 {
        problems.push("no data arrived".to_owned());
    } else if let Some(min) = min {
        if r.bits_per_second < min as f64 {
            problems.push(format!(
                "{:.1} Mbit/s, below the least of {:.1} Mbit/s",
                mbit(r.bits_per_second),
                mbit(min as f64)
            ));
        }
    }
    let mut v = Verdict::of(
        problems,
        format!(
            "{:.1} Mbit/s, {} retransmits",
            mbit(r.bits_per_second),
            r.retransmits.unwrap_or(0.0)
        ),
    )
    .metric("mbit_per_s", mbit(r.bits_per_second));
    if let Some(rt) = r.retransmits {
        v = v.metric("retransmits", rt);
    }
    v
}

/// The UDP verdict: loss within `max_loss` percent.
pub fn judge_udp(r: &Iperf, max_loss: f64) -> Verdict {
    let lost = r.lost_percent.unwrap_or(100.0);
    let mut problems = Vec::new();
    if r.lost_percent.is_none() {
        problems.push("iperf3 reported no loss figure".to_owned());
    } else if lost > max_loss {
        problems.push(format!("{lost:.2} % lost, more than {max_loss} %"));
    }
    Verdict::of(
        problems,
        format!(
            "{:.1} Mbit/s, {lost:.2} % lost, jitter {:.3} ms",
            mbit(r.bits_per_second),
            r.jitter_ms.unwrap_or(0.0)
        ),
    )
    .metric("mbit_per_s", mbit(r.bits_per_second))
    .metric("loss_percent", lost)
    .metric("jitter_ms", r.jitter_ms.unwrap_or(0.0))
}

/// A node's VNI as seen from inside and from the region.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeFacts {
    /// The driver process is alive.
    pub driver_running: bool,
    /// vni0 exists.
    pub interface: bool,
    /// Its MTU.
    pub mtu: Option<u32>,
    /// `up`, `down`, …
    pub operstate: String,
    /// Carrier (another node in RUN).
    pub carrier: bool,
    /// Its MAC.
    pub mac: String,
    /// Its IPv4 addresses with prefix.
    pub addresses: Vec<String>,
    /// The node's state in the region (`None`: not readable).
    pub region_state: Option<String>,
}

/// Parses the output of the preflight's facts script (`checks.rs`).
pub fn parse_facts(out: &str) -> NodeFacts {
    let mut f = NodeFacts::default();
    for line in out.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        match key {
            "driver" => f.driver_running = value == "1",
            "interface" => f.interface = value == "1",
            "mtu" => f.mtu = value.parse().ok(),
            "operstate" => f.operstate = value.to_owned(),
            "carrier" => f.carrier = value == "1",
            "address" => f.mac = value.to_owned(),
            "ip" => f.addresses.push(value.to_owned()),
            _ => {}
        }
    }
    f
}

/// The preflight verdict for `node` in a lab of MTU `mtu`; `vni`: the
/// VNI carries the frames (a driver runs, the region lists the node), not
/// the virtio-net baseline.
pub fn judge_preflight(f: &NodeFacts, node: &Node, mtu: u32, vni: bool) -> Verdict {
    let mut problems = Vec::new();
    if vni && !f.driver_running {
        problems.push("the VNI driver is not running".to_owned());
    }
    if !f.interface {
        problems.push("it has no vni0 interface".to_owned());
    } else {
        if f.mtu != Some(mtu) {
            problems.push(format!(
                "vni0's MTU is {}, the lab's is {mtu} (every node must use the same)",
                f.mtu.map_or("unreadable".into(), |m| m.to_string())
            ));
        }
        if !f.carrier {
            problems.push("vni0 has no carrier (no other node running on the region)".to_owned());
        } else if f.operstate == "down" {
            problems.push("vni0 is down".to_owned());
        }
        if !f.mac.eq_ignore_ascii_case(&node.mac.to_string()) {
            problems.push(format!(
                "vni0's MAC is {}, the lab's is {}",
                f.mac, node.mac
            ));
        }
        if !f.addresses.contains(&node.ip.to_string()) {
            problems.push(format!(
                "vni0 has {}, not {}",
                if f.addresses.is_empty() {
                    "no IPv4 address".to_owned()
                } else {
                    f.addresses.join(", ")
                },
                node.ip
            ));
        }
    }
    if !vni {
        return Verdict::of(
            problems,
            format!("vni0 (virtio-net) up with MTU {mtu}, {}", node.ip),
        );
    }
    match f.region_state.as_deref() {
        Some("Run") => {}
        Some(state) => problems.push(format!("the region shows it in state {state}, not Run")),
        None => problems.push("its entry in the region is unreadable".to_owned()),
    }
    Verdict::of(
        problems,
        format!(
            "driver running, vni0 up with MTU {mtu}, {} in the region: Run",
            node.ip
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Topology;
    use vni_frames::{build, mac_text};

    const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn tally(seqs: impl IntoIterator<Item = u32>) -> Tally {
        let mut t = Tally::default();
        for seq in seqs {
            t.count(&build(B, A, 1, seq, 64), 1, &B);
        }
        t
    }

    #[test]
    fn frame_problems_name_loss_damage_order_and_duplicates() {
        let from = mac_text(&A);
        assert!(frame_problems(&tally(0..10), &from, 10).is_empty());
        assert_eq!(
            frame_problems(&tally(0..8), &from, 10),
            ["2 of 10 frames lost"]
        );
        assert_eq!(
            frame_problems(&tally([0, 2, 1]), &from, 3),
            ["1 frames out of order"]
        );
        assert_eq!(
            frame_problems(&tally([0, 1, 1, 2]), &from, 3),
            ["1 frames duplicated"]
        );
        assert_eq!(
            frame_problems(&Tally::default(), &from, 5),
            ["none of 5 frames arrived"]
        );
        let mut damaged = build(B, A, 1, 0, 64);
        damaged[40] ^= 0xff;
        let mut t = Tally::default();
        t.count(&damaged, 1, &B);
        assert_eq!(frame_problems(&t, &from, 1), ["1 frames damaged"]);
    }

    #[test]
    fn burst_loss_is_measured_against_its_threshold() {
        let from = mac_text(&A);
        let sent = Sent {
            from: from.clone(),
            sent: 100,
            refused: vec![],
        };
        let v = judge_burst(100, &sent, &tally(0..99), &from, 0.0);
        assert!(!v.passed);
        assert!(
            v.message.starts_with("1.00 % lost (1 of 100"),
            "{}",
            v.message
        );
        let v = judge_burst(100, &sent, &tally(0..99), &from, 1.0);
        assert!(v.passed, "{}", v.message);
        assert_eq!(v.metrics["loss_percent"], 1.0);
        let v = judge_burst(100, &sent, &Tally::default(), &from, 100.0);
        assert!(v.passed, "all lost is within 100 %: {}", v.message);
    }

    #[test]
    fn echo_checks_answers_and_limits() {
        let r = Rtts::from_samples(4, 0, vec![1000.0, 2000.0, 3000.0, 9000.0]);
        assert!(judge_echo(&r, None, None).passed);
        let v = judge_echo(
            &r,
            Some(Duration::from_millis(5)),
            Some(Duration::from_millis(5)),
        );
        assert!(!v.passed);
        assert_eq!(v.message, "p99 9.000 ms over the limit of 5.000 ms");
        let lost = Rtts::from_samples(5, 1, vec![1000.0]);
        assert_eq!(
            judge_echo(&lost, None, None).message,
            "4 of 5 requests unanswered; 1 answers damaged"
        );
    }

    #[test]
    fn iperf_json_is_read_for_tcp_and_udp() {
        let tcp = r#"{"end": {"sum_sent": {"bits_per_second": 4.1e8, "retransmits": 3},
                      "sum_received": {"bits_per_second": 4.0e8}}}"#;
        let r = parse_iperf(tcp, false).unwrap();
        assert_eq!((r.bits_per_second, r.retransmits), (4.0e8, Some(3.0)));
        assert!(judge_tcp(&r, Some(300_000_000)).passed);
        let v = judge_tcp(&r, Some(500_000_000));
        assert_eq!(v.message, "400.0 Mbit/s, below the least of 500.0 Mbit/s");
        let udp =
            r#"{"end": {"sum": {"bits_per_second": 5e7, "lost_percent": 7.5, "jitter_ms": 0.2}}}"#;
        let r = parse_iperf(udp, true).unwrap();
        assert_eq!(r.lost_percent, Some(7.5));
        assert!(!judge_udp(&r, 5.0).passed);
        assert!(judge_udp(&r, 10.0).passed);
        assert_eq!(
            parse_iperf(r#"{"error": "unable to connect to server"}"#, false),
            Err("iperf3: unable to connect to server".into())
        );
        assert!(parse_iperf("iperf3: error", false).is_err());
    }

    #[test]
    fn preflight_names_what_is_broken() {
        let topology = Topology::parse(
            "name: t\nnodes:\n  - {name: a, ip: 10.0.0.1/24, mac: '02:00:00:00:00:01'}\n  - {name: b, ip: 10.0.0.2/24}\n",
            std::path::Path::new("t.yaml"),
        )
        .unwrap();
        let node = &topology.nodes[0];
        let good = "driver=1\ninterface=1\nmtu=1500\noperstate=unknown\ncarrier=1\naddress=02:00:00:00:00:01\nip=10.0.0.1/24\n";
        let mut facts = parse_facts(good);
        facts.region_state = Some("Run".into());
        assert!(
            judge_preflight(&facts, node, 1500, true).passed,
            "{:?}",
            judge_preflight(&facts, node, 1500, true)
        );
        let mut bad = parse_facts(
            &good
                .replace("mtu=1500", "mtu=1400")
                .replace("driver=1", "driver=0"),
        );
        bad.region_state = Some("Reset".into());
        let v = judge_preflight(&bad, node, 1500, true);
        assert!(!v.passed);
        assert_eq!(
            v.message,
            "the VNI driver is not running; vni0's MTU is 1400, the lab's is 1500 (every node must use the same); the region shows it in state Reset, not Run"
        );
        let none = parse_facts("driver=0\nmtu=\noperstate=\ncarrier=\naddress=\n");
        let v = judge_preflight(&none, node, 1500, true);
        assert!(
            v.message.contains("it has no vni0 interface"),
            "{}",
            v.message
        );
    }
}
