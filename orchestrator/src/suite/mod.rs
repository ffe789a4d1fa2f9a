//! `vni-lab test`: the checks a lab's VNI must pass, run against live
//! guests, with results for people (a table) and for CI (JSON, JUnit).
//!
//! A run is a list of cases, each one check on one subject (a node pair, a
//! sending node, or the lab). Every node is checked first (`preflight`);
//! a case whose nodes failed preflight or went down is skipped with the
//! reason, never passed. A case that cannot run (a command does not
//! finish, a guest stops answering) is an error; a case whose figures miss
//! the mark is a failure.

mod checks;
mod guests;
pub mod ktap;
mod measure;
pub mod report;
mod verdicts;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;

pub use checks::Context;
pub use guests::{Guests, Trouble};
pub use measure::{parse_ping, Concurrent, Occupancy};
pub use verdicts::{parse_iperf, Iperf, Verdict};

use crate::lab::LabDir;
use crate::test_spec::{Check, Pairs, Scope};
use crate::topology::Topology;

/// How a case ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It ran and met every condition.
    Passed,
    /// It ran and missed a condition.
    Failed,
    /// It could not run to its end.
    Error,
    /// It was not run, for the reason given.
    Skipped,
}

impl Status {
    /// Four letters for the table.
    pub fn label(self) -> &'static str {
        match self {
            Status::Passed => "PASS",
            Status::Failed => "FAIL",
            Status::Error => "ERR ",
            Status::Skipped => "SKIP",
        }
    }
}

/// What a case is run on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// One node (preflight).
    Node(usize),
    /// From one node to another.
    Pair(usize, usize),
    /// From one node to all others.
    Sender(usize),
    /// The whole lab.
    Lab,
}

/// One case's result.
#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    /// The check: `boot`, `preflight`, or a [`Check`] name.
    pub check: String,
    /// What it ran on: `node0`, `node0->node1`, `node0->all`, `lab`.
    pub subject: String,
    /// How it ended.
    pub status: Status,
    /// One line: figures when it passed, the reason otherwise.
    pub message: String,
    /// More lines: console tails, command output.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    /// Seconds it took.
    pub seconds: f64,
    /// Measured figures (units in their names).
    pub metrics: BTreeMap<String, f64>,
}

impl CaseResult {
    /// A case with no figures, details or time.
    pub fn new(check: &str, subject: &str, status: Status, message: impl Into<String>) -> Self {
        CaseResult {
            check: check.to_owned(),
            subject: subject.to_owned(),
            status,
            message: message.into(),
            details: None,
            seconds: 0.0,
            metrics: BTreeMap::new(),
        }
    }

    /// A case that did not run.
    pub fn skipped(check: &str, subject: &str, why: impl Into<String>) -> Self {
        Self::new(check, subject, Status::Skipped, why)
    }
}

/// Counts by status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Passed.
    pub passed: usize,
    /// Failed.
    pub failed: usize,
    /// Errors.
    pub errors: usize,
    /// Skipped.
    pub skipped: usize,
}

impl Counts {
    /// Counts `cases`.
    pub fn of(cases: &[CaseResult]) -> Self {
        let mut c = Counts::default();
        for case in cases {
            match case.status {
                Status::Passed => c.passed += 1,
                Status::Failed => c.failed += 1,
                Status::Error => c.errors += 1,
                Status::Skipped => c.skipped += 1,
            }
        }
        c
    }

    /// True when nothing failed and nothing broke.
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.errors == 0
    }
}

/// What a run reports as it goes.
pub trait Observer {
    /// A case starts.
    fn started(&mut self, check: &str, subject: &str);
    /// A case ended.
    fn finished(&mut self, result: &CaseResult);
}

/// The timeout multiplier: the lab file's, else 1 with KVM and 4 with TCG.
pub fn timeout_scale(topology: &Topology, accel: &str) -> f64 {
    topology
        .tests
        .timeout_scale
        .unwrap_or(if accel == "kvm" { 1.0 } else { 4.0 })
}

/// The cases of a run, in order.
pub fn plan(topology: &Topology) -> Vec<(String, Subject)> {
    let n = topology.nodes.len();
    let pairs: Vec<(usize, usize)> = match topology.tests.pairs {
        Pairs::All => (0..n)
            .flat_map(|a| (0..n).filter(move |&b| b != a).map(move |b| (a, b)))
            .collect(),
        Pairs::Star => (1..n).flat_map(|b| [(0, b), (b, 0)]).collect(),
    };
    let mut cases: Vec<(String, Subject)> = (0..n)
        .map(|i| ("preflight".to_owned(), Subject::Node(i)))
        .collect();
    for &check in &topology.tests.checks {
        // The virtio-net baselines have no region to check.
        if check == Check::Region && topology.network.is_virtio() {
            continue;
        }
        let name = check.name().to_owned();
        match check.scope() {
            Scope::Pair => cases.extend(
                pairs
                    .iter()
                    .map(|&(a, b)| (name.clone(), Subject::Pair(a, b))),
            ),
            Scope::Sender => cases.extend((0..n).map(|a| (name.clone(), Subject::Sender(a)))),
            Scope::Lab => cases.push((name, Subject::Lab)),
        }
    }
    cases
}

/// The subject's name in results.
pub fn subject_name(topology: &Topology, subject: &Subject) -> String {
    let name = |i: usize| topology.nodes[i].name.as_str();
    match *subject {
        Subject::Node(a) => name(a).to_owned(),
        Subject::Pair(a, b) => format!("{}->{}", name(a), name(b)),
        Subject::Sender(a) => format!("{}->all", name(a)),
        Subject::Lab => "lab".to_owned(),
    }
}

/// Runs every case of `topology`'s test plan against the live lab `lab`.
/// `stop` ends the run early (Ctrl-C): the case under way becomes an
/// error, the rest are left out.
pub async fn run(
    lab: &LabDir,
    topology: &Topology,
    scale: f64,
    observer: &mut dyn Observer,
    stop: &mut (dyn std::future::Future<Output = String> + Unpin),
) -> Vec<CaseResult> {
    let names: Vec<String> = topology.nodes.iter().map(|n| n.name.clone()).collect();
    let guests = Guests::connect(lab, &names, scale).await;
    let mut ctx = checks::Context::new(lab, topology, guests, scale);
    let mut results = Vec::new();
    // Nodes that failed preflight, with the reason.
    let mut unfit: BTreeMap<usize, String> = BTreeMap::new();
    for (check, subject) in plan(topology) {
        let subject_text = subject_name(topology, &subject);
        let involved: Vec<usize> = match subject {
            Subject::Node(a) => vec![a],
            Subject::Pair(a, b) => vec![a, b],
            Subject::Sender(_) | Subject::Lab => (0..names.len()).collect(),
        };
        if check != "preflight" {
            if let Some((&i, why)) = unfit.iter().find(|(i, _)| involved.contains(i)) {
                let result = CaseResult::skipped(
                    &check,
                    &subject_text,
                    format!("{} failed preflight: {why}", names[i]),
                );
                observer.finished(&result);
                results.push(result);
                continue;
            }
        }
        if let Some(why) = involved.iter().find_map(|&i| ctx.guests.down(&names[i])) {
            let result = match subject {
                // A node that cannot even be asked fails its own check.
                Subject::Node(i) => {
                    unfit.insert(i, why.message.clone());
                    let mut result =
                        CaseResult::new(&check, &subject_text, Status::Error, why.message.clone());
                    result.details = why.details.clone();
                    result
                }
                _ => CaseResult::skipped(&check, &subject_text, why.message.clone()),
            };
            observer.finished(&result);
            results.push(result);
            continue;
        }
        observer.started(&check, &subject_text);
        let started = Instant::now();
        let outcome = {
            let case = ctx.run(&check, &subject);
            tokio::select! {
                outcome = case => Some(outcome),
                why = &mut *stop => {
                    let mut result = CaseResult::new(&check, &subject_text, Status::Error, format!("interrupted ({why})"));
                    result.seconds = started.elapsed().as_secs_f64();
                    observer.finished(&result);
                    results.push(result);
                    None
                }
            }
        };
        ctx.guests.kill_leftovers().await;
        let Some(outcome) = outcome else {
            break;
        };
        let (status, message, details, metrics) = match outcome {
            Ok(v) => (
                if v.passed {
                    Status::Passed
                } else {
                    Status::Failed
                },
                v.message,
                v.details,
                v.metrics,
            ),
            Err(t) => (Status::Error, t.message, t.details, BTreeMap::new()),
        };
        if check == "preflight" && status != Status::Passed {
            if let Subject::Node(i) = subject {
                unfit.insert(i, message.clone());
            }
        }
        let result = CaseResult {
            check,
            subject: subject_text,
            status,
            message,
            details,
            seconds: started.elapsed().as_secs_f64(),
            metrics,
        };
        observer.finished(&result);
        results.push(result);
    }
    // Last, whatever happened before: each node's console, for what its
    // kernel printed when something went wrong.
    for node in &topology.nodes {
        let result = kernel_case(lab, &node.name);
        observer.finished(&result);
        results.push(result);
    }
    results
}

/// The `kernel` case of `node`: failed when its console shows a crash
/// fingerprint ([`crate::crash::FINGERPRINTS`]), with the lines around it.
pub fn kernel_case(lab: &LabDir, node: &str) -> CaseResult {
    let path = lab.node(node).console;
    let console = match std::fs::read(&path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => {
            return CaseResult::new(
                "kernel",
                node,
                Status::Error,
                format!("cannot read the console {}: {e}", path.display()),
            )
        }
    };
    match crate::crash::scan(&console) {
        None => CaseResult::new(
            "kernel",
            node,
            Status::Passed,
            format!(
                "no crash fingerprint in {} console lines",
                console.lines().count()
            ),
        ),
        Some(hit) => {
            let mut result = CaseResult::new(
                "kernel",
                node,
                Status::Failed,
                format!("the console shows {:?}: {}", hit.fingerprint, hit.line),
            );
            result.details = Some(format!("--- {node}'s console:\n{}", hit.excerpt));
            result
        }
    }
}

/// A timeout of `base` scaled for the accelerator.
pub(crate) fn scaled(base: Duration, scale: f64) -> Duration {
    base.mul_f64(scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn lab(extra: &str) -> Topology {
        let text = format!(
            "name: t\nnodes:\n  - {{name: a, ip: 10.0.0.1/24}}\n  - {{name: b, ip: 10.0.0.2/24}}\n  - {{name: c, ip: 10.0.0.3/24}}\n{extra}"
        );
        Topology::parse(&text, Path::new("t.yaml")).unwrap()
    }

    #[test]
    fn the_plan_checks_nodes_first_then_each_pair_sender_and_the_lab() {
        let t = lab("tests: {checks: [region, unicast, broadcast]}");
        let cases: Vec<String> = plan(&t)
            .iter()
            .map(|(c, s)| format!("{c} {}", subject_name(&t, s)))
            .collect();
        assert_eq!(
            cases,
            [
                "preflight a",
                "preflight b",
                "preflight c",
                "unicast a->b",
                "unicast a->c",
                "unicast b->a",
                "unicast b->c",
                "unicast c->a",
                "unicast c->b",
                "broadcast a->all",
                "broadcast b->all",
                "broadcast c->all",
                "region lab",
            ]
        );
        let star = lab("tests: {checks: [echo], pairs: star}");
        let cases: Vec<String> = plan(&star)
            .iter()
            .skip(3)
            .map(|(_, s)| subject_name(&star, s))
            .collect();
        assert_eq!(cases, ["a->b", "b->a", "a->c", "c->a"]);
    }

    #[test]
    fn counts_and_scale() {
        let mut cases = vec![CaseResult::skipped("x", "lab", "why")];
        assert!(Counts::of(&cases).ok());
        cases[0].status = Status::Error;
        assert_eq!(Counts::of(&cases).errors, 1);
        assert!(!Counts::of(&cases).ok());
        assert_eq!(timeout_scale(&lab(""), "tcg"), 4.0);
        assert_eq!(timeout_scale(&lab(""), "kvm"), 1.0);
        assert_eq!(
            timeout_scale(&lab("tests: {timeout_scale: 2.5}"), "tcg"),
            2.5
        );
    }
}
