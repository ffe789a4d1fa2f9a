//! `vni-lab doctor` on this host (tests/run installs QEMU first).

use std::process::Command;

#[test]
fn doctor_reports_a_ready_host_and_why_it_chose_its_accelerator() {
    let out = Command::new(env!("CARGO_BIN_EXE_vni-lab"))
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ready"], true);
    assert!(report["host"]["qemu"]
        .as_str()
        .unwrap()
        .starts_with("QEMU emulator version"));
    let accel = report["accel"]["accel"].as_str().unwrap();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or("");
    let hw_virt = flags.split_whitespace().any(|f| f == "vmx" || f == "svm");
    let kvm_opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    assert_eq!(accel == "kvm", hw_virt && kvm_opens, "{report}");
    assert!(!report["accel"]["reason"].as_str().unwrap().is_empty());

    let text = Command::new(env!("CARGO_BIN_EXE_vni-lab"))
        .arg("doctor")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("accelerator: {accel} (")), "{text}");
}
