//! What `vni-lab test` runs: the `tests:` section of a lab file, as
//! written ([`RawTests`]) and validated ([`Tests`]).
//!
//! ```yaml
//! tests:
//!   checks: [unicast, broadcast, echo, iperf-tcp]   # default: all
//!   pairs: star            # all (default) or star (first node and each other)
//!   max_rtt_p99: 20ms
//!   min_tcp_rate: 100M     # bit/s
//! ```

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::units::DurationSpec;

/// One kind of check. Every lab run starts with `preflight` (each node's
/// driver, interface, MTU and region state), which cannot be left out.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize, JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Check {
    /// Raw test frames to each peer arrive, intact and in order.
    Unicast,
    /// A broadcast reaches every other node and not its sender.
    Broadcast,
    /// A multicast reaches every other node and not its sender.
    Multicast,
    /// Every frame size from 60 bytes to the MTU arrives intact; one byte
    /// more is refused by the sender.
    Sizes,
    /// A burst of frames back to back: loss counted against a threshold.
    Burst,
    /// Echo round trips of small frames: p50, p99, max.
    Echo,
    /// An unmodified TCP program (nc) carries a string intact.
    TcpString,
    /// iperf3 TCP.
    IperfTcp,
    /// iperf3 UDP at a set rate: loss and jitter.
    IperfUdp,
    /// After the traffic: every slot back in the pool, no protocol errors.
    Region,
}

impl Check {
    /// Every check, in the order a run takes them.
    pub const ALL: [Check; 10] = [
        Check::Unicast,
        Check::Broadcast,
        Check::Multicast,
        Check::Sizes,
        Check::Burst,
        Check::Echo,
        Check::TcpString,
        Check::IperfTcp,
        Check::IperfUdp,
        Check::Region,
    ];

    /// The name used in lab files, results and JUnit.
    pub fn name(self) -> &'static str {
        match self {
            Check::Unicast => "unicast",
            Check::Broadcast => "broadcast",
            Check::Multicast => "multicast",
            Check::Sizes => "sizes",
            Check::Burst => "burst",
            Check::Echo => "echo",
            Check::TcpString => "tcp-string",
            Check::IperfTcp => "iperf-tcp",
            Check::IperfUdp => "iperf-udp",
            Check::Region => "region",
        }
    }

    /// The check called `name`, or the names there are.
    pub fn from_name(name: &str) -> Result<Check, String> {
        Check::ALL
            .into_iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = Check::ALL.iter().map(|c| c.name()).collect();
                format!("no check {name:?}; the checks: {}", names.join(", "))
            })
    }

    /// What it is run on: each ordered pair of nodes, each node as the
    /// sender, or the lab once.
    pub fn scope(self) -> Scope {
        match self {
            Check::Broadcast | Check::Multicast => Scope::Sender,
            Check::Region => Scope::Lab,
            _ => Scope::Pair,
        }
    }
}

/// What one run of a check covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// One node sends to another.
    Pair,
    /// One node sends to all.
    Sender,
    /// The whole lab.
    Lab,
}

/// Which ordered node pairs pair checks run on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Pairs {
    /// Every node to every other (n × (n − 1) pairs).
    #[default]
    All,
    /// The first node to each other and back (2 × (n − 1) pairs).
    Star,
}

/// A bit rate: bits per second, or a number with K, M or G (decimal:
/// `100M` is 100 Mbit/s).
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RateSpec {
    /// Bits per second.
    Bits(#[schemars(range(min = 1, max = 1_000_000_000_000u64))] u64),
    /// With a unit, e.g. `100M`, `1G`.
    Text(
        #[schemars(regex(pattern = r"^\s*[0-9]+(\.[0-9]+)?\s*[KkMG]?\s*(bit/s|bps)?\s*$"))] String,
    ),
}

/// A percentage: a number, or a number followed by `%`.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum PercentSpec {
    /// Percent.
    Number(#[schemars(range(min = 0, max = 100))] f64),
    /// E.g. `0.5%`.
    Text(#[schemars(regex(pattern = r"^\s*(100(\.0+)?|[0-9]{1,2}(\.[0-9]+)?)\s*%?\s*$"))] String),
}

/// The `tests:` section as written.
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTests {
    /// Checks to run (default: all): unicast, broadcast, multicast, sizes,
    /// burst, echo, tcp-string, iperf-tcp, iperf-udp, region.
    pub checks: Option<Vec<Check>>,
    /// Checks to leave out.
    pub skip: Option<Vec<Check>>,
    /// Node pairs for pair checks: `all` (default) or `star`.
    pub pairs: Option<Pairs>,
    /// Frames per unicast, broadcast and multicast check, 1 to 100000.
    /// Default 100.
    #[schemars(range(min = 1, max = 100_000))]
    pub frames: Option<u32>,
    /// Frames in the burst check, 1 to 1000000. Default 1000.
    #[schemars(range(min = 1, max = 1_000_000))]
    pub burst: Option<u32>,
    /// Largest share of the burst that may be lost. Default 0%.
    pub max_burst_loss: Option<PercentSpec>,
    /// Echo round trips per pair, 1 to 100000. Default 200.
    #[schemars(range(min = 1, max = 100_000))]
    pub echo_count: Option<u32>,
    /// Largest median echo round trip allowed. Default: not checked.
    pub max_rtt_p50: Option<DurationSpec>,
    /// Largest 99th-percentile echo round trip allowed. Default: not
    /// checked.
    pub max_rtt_p99: Option<DurationSpec>,
    /// Length of each iperf3 run. Default 3s.
    pub iperf_time: Option<DurationSpec>,
    /// Least iperf3 TCP throughput. Default: anything above zero.
    pub min_tcp_rate: Option<RateSpec>,
    /// Rate iperf3 offers in UDP checks. Default 20M (a check, not a benchmark:
    /// well below what TCG guests carry, so that loss means a fault).
    pub udp_rate: Option<RateSpec>,
    /// Largest UDP loss allowed at that rate. Default 5%.
    pub max_udp_loss: Option<PercentSpec>,
    /// Multiplies every test timeout, 0.1 to 100. Default: 1 with KVM,
    /// 4 with TCG.
    #[schemars(range(min = 0.1, max = 100))]
    pub timeout_scale: Option<f64>,
}

/// The validated `tests:` section.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tests {
    /// Checks to run, in run order.
    pub checks: Vec<Check>,
    /// Node pairs for pair checks.
    pub pairs: Pairs,
    /// Frames per unicast, broadcast and multicast check.
    pub frames: u32,
    /// Frames in the burst check.
    pub burst: u32,
    /// Percent of the burst that may be lost.
    pub max_burst_loss: f64,
    /// Echo round trips per pair.
    pub echo_count: u32,
    /// Median round trip allowed.
    pub max_rtt_p50: Option<Duration>,
    /// 99th-percentile round trip allowed.
    pub max_rtt_p99: Option<Duration>,
    /// Length of each iperf3 run.
    pub iperf_time: Duration,
    /// Least TCP throughput, bit/s.
    pub min_tcp_rate: Option<u64>,
    /// Offered UDP rate, bit/s.
    pub udp_rate: u64,
    /// Percent of UDP datagrams that may be lost.
    pub max_udp_loss: f64,
    /// Timeout multiplier; `None`: by accelerator.
    pub timeout_scale: Option<f64>,
}

impl Default for Tests {
    fn default() -> Self {
        Tests {
            checks: Check::ALL.to_vec(),
            pairs: Pairs::All,
            frames: 100,
            burst: 1000,
            max_burst_loss: 0.0,
            echo_count: 200,
            max_rtt_p50: None,
            max_rtt_p99: None,
            iperf_time: Duration::from_secs(3),
            min_tcp_rate: None,
            udp_rate: 20_000_000,
            max_udp_loss: 5.0,
            timeout_scale: None,
        }
    }
}

/// Parses `100M`, `1G`, `2.5G`, `800K`, `1000000` into bits per second.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let bad = || format!("{text:?} is not a rate like 100M or 1G (bits per second)");
    let body = text
        .strip_suffix("bit/s")
        .or_else(|| text.strip_suffix("bps"))
        .unwrap_or(text)
        .trim();
    let split = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, unit) = body.split_at(split);
    let number: f64 = number.parse().map_err(|_| bad())?;
    let factor = match unit.trim() {
        "" => 1.0,
        "K" | "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        _ => return Err(bad()),
    };
    let bits = number * factor;
    if !(1.0..=1e12).contains(&bits) {
        return Err(format!("{text:?}: a rate from 1 bit/s to 1000G"));
    }
    Ok(bits as u64)
}

fn percent(spec: &PercentSpec) -> Result<f64, String> {
    let value = match spec {
        PercentSpec::Number(n) => *n,
        PercentSpec::Text(t) => t
            .trim()
            .trim_end_matches('%')
            .trim()
            .parse()
            .map_err(|_| format!("{t:?} is not a percentage like 5%"))?,
    };
    if !(0.0..=100.0).contains(&value) {
        return Err(format!("{value}: a percentage from 0 to 100"));
    }
    Ok(value)
}

fn rate(spec: &RateSpec) -> Result<u64, String> {
    match spec {
        RateSpec::Bits(0) => Err("0: a rate from 1 bit/s to 1000G".into()),
        RateSpec::Bits(n) => Ok(*n),
        RateSpec::Text(t) => parse_rate(t),
    }
}

impl Tests {
    /// Validates `raw`; each problem goes to `report` with its field under
    /// `tests.`.
    pub fn from_raw(raw: &RawTests, report: &mut dyn FnMut(String, String)) -> Tests {
        let d = Tests::default();
        // Each value, or the default with its problem reported.
        fn pick<T>(
            report: &mut dyn FnMut(String, String),
            name: &str,
            value: Option<Result<T, String>>,
            default: T,
        ) -> T {
            match value {
                None => default,
                Some(Ok(v)) => v,
                Some(Err(message)) => {
                    report(format!("tests.{name}"), message);
                    default
                }
            }
        }
        let count = |value: Option<u32>, most: u32| {
            value.map(|n| {
                if (1..=most).contains(&n) {
                    Ok(n)
                } else {
                    Err(format!("{n}: from 1 to {most}"))
                }
            })
        };
        let positive = |spec: &Option<DurationSpec>| {
            spec.as_ref().map(|s| match s.to_duration() {
                Ok(d) if d.is_zero() => Err("must be longer than 0".to_owned()),
                other => other,
            })
        };

        let mut checks = raw.checks.clone().unwrap_or_else(|| Check::ALL.to_vec());
        checks.sort();
        checks.dedup();
        if let Some(skip) = &raw.skip {
            checks.retain(|c| !skip.contains(c));
        }
        let frames = pick(report, "frames", count(raw.frames, 100_000), d.frames);
        let burst = pick(report, "burst", count(raw.burst, 1_000_000), d.burst);
        let echo_count = pick(
            report,
            "echo_count",
            count(raw.echo_count, 100_000),
            d.echo_count,
        );
        let max_burst_loss = pick(
            report,
            "max_burst_loss",
            raw.max_burst_loss.as_ref().map(percent),
            d.max_burst_loss,
        );
        let max_udp_loss = pick(
            report,
            "max_udp_loss",
            raw.max_udp_loss.as_ref().map(percent),
            d.max_udp_loss,
        );
        let timeout_scale = pick(
            report,
            "timeout_scale",
            raw.timeout_scale.map(|s| {
                if (0.1..=100.0).contains(&s) {
                    Ok(Some(s))
                } else {
                    Err(format!("{s}: from 0.1 to 100"))
                }
            }),
            None,
        );
        let max_rtt_p50 = pick(
            report,
            "max_rtt_p50",
            positive(&raw.max_rtt_p50).map(|r| r.map(Some)),
            None,
        );
        let max_rtt_p99 = pick(
            report,
            "max_rtt_p99",
            positive(&raw.max_rtt_p99).map(|r| r.map(Some)),
            None,
        );
        let iperf_time = pick(
            report,
            "iperf_time",
            positive(&raw.iperf_time),
            d.iperf_time,
        );
        let min_tcp_rate = pick(
            report,
            "min_tcp_rate",
            raw.min_tcp_rate.as_ref().map(|r| rate(r).map(Some)),
            None,
        );
        let udp_rate = pick(
            report,
            "udp_rate",
            raw.udp_rate.as_ref().map(rate),
            d.udp_rate,
        );
        Tests {
            checks,
            pairs: raw.pairs.unwrap_or_default(),
            frames,
            burst,
            max_burst_loss,
            echo_count,
            max_rtt_p50,
            max_rtt_p99,
            iperf_time,
            min_tcp_rate,
            udp_rate,
            max_udp_loss,
            timeout_scale,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_percentages_parse() {
        assert_eq!(parse_rate("100M"), Ok(100_000_000));
        assert_eq!(parse_rate("2.5G"), Ok(2_500_000_000));
        assert_eq!(parse_rate("800 Kbit/s"), Ok(800_000));
        assert_eq!(parse_rate("1000"), Ok(1000));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("100X").is_err());
        assert!(parse_rate("0.1").is_err());
        assert_eq!(percent(&PercentSpec::Text("0.5%".into())), Ok(0.5));
        assert_eq!(percent(&PercentSpec::Number(3.0)), Ok(3.0));
        assert!(percent(&PercentSpec::Number(101.0)).is_err());
    }

    #[test]
    fn checks_are_chosen_ordered_and_checked() {
        let raw = RawTests {
            checks: Some(vec![
                Check::Region,
                Check::Unicast,
                Check::Echo,
                Check::Unicast,
            ]),
            skip: Some(vec![Check::Echo]),
            frames: Some(0),
            max_udp_loss: Some(PercentSpec::Text("lots".into())),
            ..RawTests::default()
        };
        let mut problems = Vec::new();
        let tests = Tests::from_raw(&raw, &mut |f, m| problems.push(format!("{f}: {m}")));
        assert_eq!(tests.checks, vec![Check::Unicast, Check::Region]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("tests.frames: 0: from 1"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("tests.max_udp_loss"),
            "{problems:?}"
        );
        let none = Tests::from_raw(&RawTests::default(), &mut |f, m| panic!("{f}: {m}"));
        assert_eq!(none, Tests::default());
    }
}
