//! A run's results as CI reads them: one JSON document, and JUnit XML
//! with one testcase per check and subject.

use std::path::PathBuf;
use std::time::Duration;

use quick_junit::{NonSuccessKind, Property, TestCase, TestCaseStatus, TestSuite};
use serde::Serialize;

use super::{CaseResult, Counts, Status};

/// Everything a run found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The lab.
    pub lab: String,
    /// The lab file.
    pub topology: PathBuf,
    /// `kvm` or `tcg`.
    pub accel: String,
    /// The guests' kernel.
    pub kernel_release: String,
    /// The run used a lab that was already up (and left it up).
    pub reused_lab: bool,
    /// The timeout multiplier used.
    pub timeout_scale: f64,
    /// Start, seconds since the Unix epoch.
    pub started_at: u64,
    /// Seconds the run took, boot and teardown included.
    pub seconds: f64,
    /// Counts by status.
    pub counts: Counts,
    /// Where consoles and driver logs were put.
    pub artifacts: PathBuf,
    /// Every case, in run order.
    pub cases: Vec<CaseResult>,
}

impl Report {
    /// The JUnit XML of the report: one suite for the lab, one testcase
    /// per case (classname `vni-lab.CHECK`, name the subject).
    pub fn junit(&self) -> String {
        let mut suite = TestSuite::new(format!("vni-lab {}", self.lab));
        suite.set_time(Duration::from_secs_f64(self.seconds));
        suite.add_properties([
            Property::new("accel", self.accel.as_str()),
            Property::new("kernel_release", self.kernel_release.as_str()),
            Property::new("topology", self.topology.display().to_string()),
            Property::new("timeout_scale", self.timeout_scale.to_string()),
        ]);
        for case in &self.cases {
            let mut status = match case.status {
                Status::Passed => TestCaseStatus::success(),
                Status::Failed => TestCaseStatus::non_success(NonSuccessKind::Failure),
                Status::Error => TestCaseStatus::non_success(NonSuccessKind::Error),
                Status::Skipped => TestCaseStatus::skipped(),
            };
            if case.status != Status::Passed {
                status.set_message(case.message.as_str());
                if let Some(details) = &case.details {
                    status.set_description(details.as_str());
                }
            }
            let mut test = TestCase::new(case.subject.as_str(), status);
            test.set_classname(format!("vni-lab.{}", case.check));
            test.set_time(Duration::from_secs_f64(case.seconds.max(0.0)));
            test.add_properties(
                case.metrics
                    .iter()
                    .map(|(k, v)| Property::new(k.as_str(), v.to_string())),
            );
            if case.status == Status::Passed {
                test.set_system_out(case.message.as_str());
            }
            suite.add_test_case(test);
        }
        let mut report = quick_junit::Report::new("vni-lab test");
        report.set_time(Duration::from_secs_f64(self.seconds));
        report.add_test_suite(suite);
        report
            .to_string()
            .unwrap_or_else(|e| format!("<!-- cannot write JUnit XML: {e} -->\n"))
    }
}

/// One table row for `case`.
pub fn row(case: &CaseResult) -> String {
    format!(
        "{}  {:<11} {:<20} {:>6.1}s  {}",
        case.status.label(),
        case.check,
        case.subject,
        case.seconds,
        case.message
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A two-node TCG run's report with `cases`.
    pub(crate) fn report_of(cases: Vec<CaseResult>) -> Report {
        Report {
            lab: "two-node".into(),
            topology: "topologies/two-node.yaml".into(),
            accel: "tcg".into(),
            kernel_release: "6.1.0".into(),
            reused_lab: false,
            timeout_scale: 4.0,
            started_at: 0,
            seconds: 12.0,
            counts: Counts::of(&cases),
            artifacts: "out".into(),
            cases,
        }
    }

    #[test]
    fn junit_has_a_testcase_per_case_with_its_status() {
        let mut metrics = BTreeMap::new();
        metrics.insert("rtt_p50_ms".to_owned(), 1.5);
        let case = |check: &str, status, message: &str| CaseResult {
            check: check.into(),
            subject: "node0->node1".into(),
            status,
            message: message.into(),
            details: Some("--- console".into()),
            seconds: 0.5,
            metrics: metrics.clone(),
        };
        let cases = vec![
            case("echo", Status::Passed, "p50 1.5 ms"),
            case("unicast", Status::Failed, "3 of 100 frames lost"),
            case(
                "iperf-tcp",
                Status::Error,
                "node1: the guest kernel panicked",
            ),
            case("sizes", Status::Skipped, "node1 failed preflight"),
        ];
        let report = report_of(cases);
        let xml = report.junit();
        assert!(xml.contains(r#"tests="4""#), "{xml}");
        assert!(xml.contains(r#"failures="1""#), "{xml}");
        assert!(xml.contains(r#"errors="1""#), "{xml}");
        assert!(xml.contains(r#"skipped="1""#), "{xml}");
        assert!(xml.contains(r#"classname="vni-lab.echo""#), "{xml}");
        assert!(
            xml.contains(r#"<failure message="3 of 100 frames lost""#),
            "{xml}"
        );
        assert!(xml.contains("node1: the guest kernel panicked"), "{xml}");
        assert!(xml.contains(r#"name="rtt_p50_ms" value="1.5""#), "{xml}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["counts"]["failed"], 1);
        assert_eq!(json["cases"][1]["status"], "failed");
    }
}
