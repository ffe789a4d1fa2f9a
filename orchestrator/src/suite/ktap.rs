//! A run's results as kernel test tooling reads them: KTAP version 1
//! (the kernel's `Documentation/dev-tools/ktap.rst`). One test per check,
//! in run order, with a subtest per subject (`node0`, `node0->node1`, …);
//! `ok`, `not ok` (a failure or an error), `# SKIP` with the reason; the
//! message, the details and the figures as `#` diagnostic lines before
//! each result, as the kernel's own tests print them.

use std::fmt::Write as _;

use super::report::Report;
use super::{CaseResult, Status};

/// The report in KTAP.
pub fn ktap(report: &Report) -> String {
    let mut out = String::from("KTAP version 1\n");
    let _ = writeln!(
        out,
        "# vni-lab test {}: {} guests, kernel {}, lab file {}",
        one_line(&report.lab),
        report.accel.to_uppercase(),
        one_line(&report.kernel_release),
        one_line(&report.topology.display().to_string())
    );
    let checks = groups(&report.cases);
    let _ = writeln!(out, "1..{}", checks.len());
    for (number, (check, cases)) in checks.iter().enumerate() {
        let _ = writeln!(out, "    KTAP version 1");
        let _ = writeln!(out, "    # Subtest: {}", name(check));
        let _ = writeln!(out, "    1..{}", cases.len());
        for (i, case) in cases.iter().enumerate() {
            diagnostics(&mut out, "    ", case);
            let _ = writeln!(out, "    {}", result(i + 1, &case.subject, case));
        }
        let _ = writeln!(out, "{}", parent_result(number + 1, check, cases));
    }
    out
}

/// The cases grouped by check, checks in the order they first ran.
fn groups(cases: &[CaseResult]) -> Vec<(&str, Vec<&CaseResult>)> {
    let mut groups: Vec<(&str, Vec<&CaseResult>)> = Vec::new();
    for case in cases {
        match groups.iter_mut().find(|(check, _)| *check == case.check) {
            Some((_, members)) => members.push(case),
            None => groups.push((&case.check, vec![case])),
        }
    }
    groups
}

/// A test name: KTAP reads up to a `#` (a directive) and to the line's
/// end.
fn name(text: &str) -> String {
    one_line(text).replace('#', "_")
}

fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

/// The `ok`/`not ok` line of one case.
fn result(number: usize, subject: &str, case: &CaseResult) -> String {
    match case.status {
        Status::Passed => format!("ok {number} {}", name(subject)),
        Status::Failed | Status::Error => format!("not ok {number} {}", name(subject)),
        Status::Skipped => format!(
            "ok {number} {} # SKIP {}",
            name(subject),
            one_line(&case.message)
        ),
    }
}

/// A check's own line: not ok when a case failed or erred, skipped when
/// all were skipped, ok otherwise.
fn parent_result(number: usize, check: &str, cases: &[&CaseResult]) -> String {
    let failed = cases
        .iter()
        .any(|c| matches!(c.status, Status::Failed | Status::Error));
    let skipped = cases.iter().all(|c| c.status == Status::Skipped);
    match (failed, skipped) {
        (true, _) => format!("not ok {number} {}", name(check)),
        (false, true) => format!("ok {number} {} # SKIP every case skipped", name(check)),
        _ => format!("ok {number} {}", name(check)),
    }
}

/// `# ` lines before a result: the message (unless it is a skip's
/// reason, which the result line carries), an error's kind, the
/// details, then the figures.
fn diagnostics(out: &mut String, indent: &str, case: &CaseResult) {
    if case.status != Status::Skipped {
        let _ = writeln!(out, "{indent}# {}", one_line(&case.message));
    }
    if case.status == Status::Error {
        let _ = writeln!(out, "{indent}# error: the case could not run to its end");
    }
    if case.status != Status::Passed {
        for line in case.details.iter().flat_map(|d| d.lines()) {
            let _ = writeln!(out, "{indent}# {line}");
        }
    }
    for (metric, value) in &case.metrics {
        let _ = writeln!(out, "{indent}# {metric}: {value}");
    }
    let _ = writeln!(out, "{indent}# seconds: {:.1}", case.seconds);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::report::tests::report_of;
    use std::collections::BTreeMap;

    fn sample() -> Report {
        let case = |check: &str, subject: &str, status, message: &str| CaseResult {
            check: check.into(),
            subject: subject.into(),
            status,
            message: message.into(),
            details: None,
            seconds: 0.5,
            metrics: BTreeMap::new(),
        };
        let mut echo = case("echo", "node0->node1", Status::Passed, "p50 1.5 ms");
        echo.metrics.insert("rtt_p50_ms".into(), 1.5);
        let mut kernel = case(
            "kernel",
            "node1",
            Status::Failed,
            "WARNING: at drivers/x.c:1 # and a hash",
        );
        kernel.details = Some("WARNING: CPU: 0 PID: 1\nCall Trace:\n <TASK>".into());
        let cases = vec![
            case("preflight", "node0", Status::Passed, "driver running"),
            case("preflight", "node1", Status::Passed, "driver running"),
            echo,
            case(
                "unicast",
                "node0->node1",
                Status::Error,
                "node1: QEMU exited",
            ),
            case(
                "sizes",
                "node0->node1",
                Status::Skipped,
                "node1 failed preflight",
            ),
            kernel,
        ];
        report_of(cases)
    }

    #[test]
    fn one_test_per_check_and_a_subtest_per_subject() {
        let text = ktap(&sample());
        let expected_start = "KTAP version 1\n\
            # vni-lab test two-node: TCG guests, kernel 6.1.0, lab file topologies/two-node.yaml\n\
            1..5\n    KTAP version 1\n    # Subtest: preflight\n    1..2\n";
        assert!(text.starts_with(expected_start), "{text}");
        for line in [
            "    ok 1 node0\n",
            "    ok 2 node1\nok 1 preflight\n",
            "    # rtt_p50_ms: 1.5\n    # seconds: 0.5\n    ok 1 node0->node1\nok 2 echo\n",
            "    # error: the case could not run to its end\n",
            "    not ok 1 node0->node1\nnot ok 3 unicast\n",
            "    ok 1 node0->node1 # SKIP node1 failed preflight\nok 4 sizes # SKIP every case skipped\n",
            "    # Call Trace:\n",
            "    not ok 1 node1\nnot ok 5 kernel\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        // A `#` in a name would start a directive.
        let odd = report_of(vec![CaseResult::new("a#b", "x", Status::Passed, "")]);
        assert!(ktap(&odd).contains("ok 1 a_b\n"));
    }
}
