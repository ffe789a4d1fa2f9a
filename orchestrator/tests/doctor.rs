//! `vni-lab doctor` on this host: ready where `tests/run` installed the
//! host packages; on a host without QEMU (the fast tier installs nothing)
//! it must say not ready, name what is missing and fail.

use std::process::Command;

/// Whether `tool` is on PATH, looked up without doctor's own code.
fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

#[test]
fn doctor_reports_a_ready_host_and_why_it_chose_its_accelerator() {
    let out = Command::new(env!("CARGO_BIN_EXE_vni-lab"))
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    if !on_path("qemu-system-x86_64") {
        assert!(
            !out.status.success(),
            "no QEMU, yet doctor succeeded: {report}"
        );
        assert_eq!(report["ready"], false, "{report}");
        assert_eq!(report["tools"]["qemu-system-x86_64"], false, "{report}");
        assert!(report["host"]["qemu"].is_null(), "{report}");
        let text = Command::new(env!("CARGO_BIN_EXE_vni-lab"))
            .arg("doctor")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("MISSING QEMU"), "{text}");
        assert!(text.contains("vni-lab doctor --install"), "{text}");
        return;
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
