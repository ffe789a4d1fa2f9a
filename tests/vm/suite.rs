//! `vni-lab test` on labs that are broken on purpose: a node with another
//! MTU, a node whose driver is not running, a hung guest, a guest that
//! never boots. Each must fail with a readable reason in the table, the
//! JSON and the JUnit XML, never pass and never hang. (The passing run of
//! `vni-lab test topologies/two-node.yaml` is in tests/run.)

#[path = "../kit/mod.rs"]
mod kit;

use kit::{case, details_contain, Run};

const LAB: &str = "name: broken\nnodes:\n  - {name: node0, ip: 10.20.0.1/24}\n  - {name: node1, ip: 10.20.0.2/24}\n";

/// The kernel's own KTAP parser (`tools/testing/kunit/kunit.py parse`,
/// from the tree of the kernel the kernel-driver labs boot) reads `ktap`
/// as this run's results: preflight failed on node1, the unicast cases
/// skipped.
fn kunit_reads(ktap: &std::path::Path) {
    let kunit = kit::rust_kernel().0.join("tools/testing/kunit/kunit.py");
    assert!(kunit.exists(), "{} is in the kernel tree", kunit.display());
    let out = std::process::Command::new("python3")
        .arg(&kunit)
        .args(["parse", ktap.to_str().unwrap()])
        .current_dir(kunit.parent().unwrap())
        .output()
        .expect("python3 runs kunit.py");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "$ kunit.py parse {} -> {:?}\n{said}",
        ktap.display(),
        out.status.code()
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "kunit.py sees a failure: {said}"
    );
    for needle in [
        "[PASSED] node0",
        "[FAILED] node1",
        "[FAILED] preflight",
        "[SKIPPED] node0->node1",
        "Testing complete.",
    ] {
        assert!(said.contains(needle), "kunit.py: no {needle:?} in\n{said}");
    }
    assert!(
        !said.contains("[ERROR]") && !said.contains("could not"),
        "{said}"
    );
}

/// Sends `command` to the node's QMP socket.
fn qmp(run: &Run, lab: &str, node: &str, command: &str) {
    kit::qmp(&run.dir.join(lab).join(format!("{node}.qmp")), command);
}

#[test]
fn broken_setups_and_a_hung_guest_fail_with_their_reason() {
    let run = Run::new("suite-broken");
    let file = run.lab_file("broken", LAB);
    run.up(&file);

    // The lab that is up is used, and stays up.
    let (code, results, _) = run.test(&file, &["--checks", "unicast,region"]);
    assert_eq!(code, Some(0), "{results:#}");
    assert_eq!(results["reused_lab"], true);
    // Preflight x2, unicast x2, region, and each node's kernel case.
    assert_eq!(results["counts"]["passed"], 5 + 2, "{results:#}");
    assert_eq!(run.status()[0]["state"], "up");

    // Mismatched MTUs: node1's vni0 no longer has the lab's MTU.
    run.exec_ok("node1", &["ip", "link", "set", "vni0", "mtu", "1400"]);
    let (code, results, junit) = run.test(&file, &["--checks", "unicast"]);
    assert_eq!(code, Some(1), "{results:#}");
    let mtu = "vni0's MTU is 1400, the lab's is 1500";
    case(&results, "preflight", "node1", "failed", mtu);
    case(&results, "preflight", "node0", "passed", "");
    let why = format!("node1 failed preflight: {mtu}");
    case(&results, "unicast", "node0->node1", "skipped", &why);
    assert!(junit.contains("MTU is 1400, the lab"), "{junit}");
    assert!(junit.contains("<skipped"), "{junit}");
    kunit_reads(&run.dir.join("artifacts").join("results.ktap"));

    // --format ktap: the report on stdout, the same as the file; the
    // table and the summary on stderr.
    let artifacts = run.dir.join("ktap-artifacts");
    let out = run.run(&[
        "test",
        file.to_str().unwrap(),
        "--checks",
        "unicast",
        "--format",
        "ktap",
        "--artifacts",
        artifacts.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = kit::text(&out.stdout);
    let written = std::fs::read_to_string(artifacts.join("results.ktap")).unwrap();
    assert!(stdout.starts_with("KTAP version 1\n"), "{stdout}");
    assert_eq!(stdout, written);
    assert!(
        stdout.contains("not ok") && !stdout.contains("results and logs in"),
        "{stdout}"
    );
    let stderr = kit::text(&out.stderr);
    assert!(stderr.contains("vni-lab test broken: "), "{stderr}");
    assert!(stderr.contains(mtu), "the failed row on stderr: {stderr}");
    run.exec_ok("node1", &["ip", "link", "set", "vni0", "mtu", "1500"]);

    // A hung guest: QEMU stops its vCPUs; its agent cannot answer.
    qmp(&run, "broken", "node1", "stop");
    let started = std::time::Instant::now();
    let (code, results, junit) = run.test(&file, &["--checks", "unicast", "--timeout-scale", "1"]);
    assert_eq!(code, Some(1), "{results:#}");
    assert!(started.elapsed().as_secs() < 120, "it must not hang");
    let hangs = "does not answer its agent; it may hang";
    let preflight = case(&results, "preflight", "node1", "error", hangs);
    details_contain(preflight, "node1's console");
    assert!(junit.contains("<error"), "{junit}");
    // (node0 may fail its own preflight too: once node1 stood still for a
    // lease, node0 declares it dead and loses its carrier.)
    case(
        &results,
        "unicast",
        "node0->node1",
        "skipped",
        "failed preflight",
    );

    // Resumed after its peer declared it dead (the pause outlasted the
    // region's lease), node1's driver attaches again and the lab works.
    qmp(&run, "broken", "node1", "cont");
    kit::wait_for(
        "node1 rejoins",
        kit::timeouts::REJOIN,
        std::time::Duration::from_secs(2),
        || match run.test(&file, &["--checks", "unicast,region"]) {
            (Some(0), _, _) => Ok(()),
            (_, results, _) => Err(format!("{results:#}")),
        },
    );
    let log = run.exec_ok("node1", &["cat", "/run/vni-driver.log"]);
    assert!(
        log.contains("declared dead by its peers") && log.contains("attaching again"),
        "{log}"
    );
    assert!(log.contains("incarnation 2"), "{log}");

    // A kernel warning on node1: its kernel case fails with the console's
    // excerpt, in every format, while the network checks still pass.
    run.exec_ok(
        "node1",
        &[
            "sh",
            "-c",
            "echo '<4>WARNING: CPU: 0 PID: 1 at drivers/net/vni_lab_test.c:1 vni_lab_test+0x0/0x10' > /dev/kmsg",
        ],
    );
    let (code, results, junit) = run.test(&file, &["--checks", "unicast"]);
    assert_eq!(code, Some(1), "{results:#}");
    case(&results, "unicast", "node0->node1", "passed", "");
    case(&results, "kernel", "node0", "passed", "");
    let warned = case(&results, "kernel", "node1", "failed", "WARNING:");
    details_contain(warned, "vni_lab_test.c:1");
    assert!(junit.contains("vni_lab_test.c:1"), "{junit}");
    let ktap = std::fs::read_to_string(run.dir.join("artifacts").join("results.ktap")).unwrap();
    assert!(
        ktap.contains("not ok") && ktap.contains("vni_lab_test.c:1"),
        "{ktap}"
    );

    // A node whose driver is not running; its log comes with the reason.
    run.exec_ok("node1", &["sh", "-c", "kill $(cat /run/vni-driver.pid)"]);
    let (code, results, _) = run.test(&file, &["--checks", "unicast"]);
    assert_eq!(code, Some(1), "{results:#}");
    let not_running = "the VNI driver is not running";
    let preflight = case(&results, "preflight", "node1", "failed", not_running);
    details_contain(preflight, "/run/vni-driver.log");

    let out = run.run(&["down", "broken"]);
    assert!(out.status.success());
    run.assert_gone("broken", None);
}

#[test]
fn a_guest_that_does_not_boot_is_a_boot_error_with_its_console() {
    let run = Run::new("suite-boot");
    // The kernel finds no init and panics.
    let file = run.lab_file(
        "panics",
        "name: panics\nguest: {append: rdinit=/no/such/init}\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n  - {name: b, ip: 10.0.0.2/24}\n",
    );
    let (code, results, junit) = run.test(&file, &[]);
    assert_eq!(code, Some(1), "{results:#}");
    assert_eq!(results["counts"]["errors"], 1, "{results:#}");
    let boot = case(
        &results,
        "boot",
        "lab",
        "error",
        "the guest kernel panicked",
    );
    details_contain(boot, "Kernel panic - not syncing");
    assert!(
        junit.contains(r#"classname="vni-lab.boot""#) && junit.contains("<error"),
        "{junit}"
    );
    // Both consoles are kept in the artifacts folder; the node that
    // panicked first shows it (the other was stopped by the teardown).
    let consoles: Vec<String> = ["a", "b"]
        .iter()
        .map(|n| {
            std::fs::read_to_string(run.dir.join("artifacts").join(format!("{n}.console.log")))
                .unwrap()
        })
        .collect();
    assert!(
        consoles.iter().any(|c| c.contains("Kernel panic")),
        "{consoles:?}"
    );
    run.assert_gone("panics", None);
}
