//! The VNI end to end: unmodified programs (ping, nc, iperf3) and raw
//! frames cross lab guests through the shared region, under the
//! accelerator the host allows (TCG here), in both buffer configurations
//! and both notification modes, and every slot is back in the pool when
//! traffic stops. Frames, nc and iperf3 run through `vni-lab test`; the
//! full two-node run of it is in tests/run.

#[path = "../kit/mod.rs"]
mod kit;

use std::time::Duration;

use kit::{case, topologies, Run};

/// Pings `ip` from `node`: 5 pings, none lost.
fn ping(run: &Run, node: &str, ip: &str) {
    let out = run.exec_ok(node, &["ping", "-c", "5", "-i", "0.2", "-W", "2", ip]);
    assert!(out.contains(" 0% packet loss"), "{node} -> {ip}: {out}");
}

#[test]
fn two_nodes_carry_ping_and_frames_and_lose_carrier_without_a_peer() {
    let run = Run::new("vni-two");
    let file = topologies().join("two-node.yaml");
    let lab = run.up(&file);
    let (a, b) = (("node0", "10.10.0.1"), ("node1", "10.10.0.2"));
    ping(&run, a.0, b.1);
    ping(&run, b.0, a.1);
    // Raw frames on the lab that is up; it stays up.
    let (code, results, _) = run.test(&file, &["--checks", "unicast,burst,region"]);
    assert_eq!(code, Some(0), "{results:#}");
    assert_eq!(run.status()[0]["state"], "up");
    // The region's counters saw the traffic, as did the kernel's.
    for node in run.inspect()["nodes"].as_array().unwrap().iter().take(2) {
        assert!(
            node["counters"]["rx_frames"].as_u64().unwrap() > 1000,
            "{node}"
        );
        assert!(
            node["counters"]["tx_frames"].as_u64().unwrap() > 1000,
            "{node}"
        );
    }
    let stats = run.exec_ok(a.0, &["cat", "/sys/class/net/vni0/statistics/rx_packets"]);
    assert!(stats.trim().parse::<u64>().unwrap() > 1000, "{stats}");

    // The carrier is up only while another node runs: stop node1's
    // driver and node0's vni0 loses it.
    assert_eq!(
        run.exec_ok(a.0, &["cat", "/sys/class/net/vni0/carrier"]),
        "1\n"
    );
    run.exec_ok(b.0, &["sh", "-c", "kill $(cat /run/vni-driver.pid)"]);
    kit::wait_for(
        "node0 loses its carrier",
        kit::timeouts::CARRIER,
        Duration::from_millis(200),
        || match run.exec_ok(a.0, &["cat", "/sys/class/net/vni0/carrier"]) {
            c if c == "0\n" => Ok(()),
            c => Err(c),
        },
    );
    let out = run.run(&["down"]);
    assert_eq!(out.status.code(), Some(0));
    run.assert_gone("two-node", lab["shm"].as_str());
}

#[test]
fn both_buffer_configurations_and_both_notification_modes_work() {
    // Configuration 2 with interrupts is what tests/run's full
    // `vni-lab test` covers.
    for (buffers, notification) in [(1, "interrupt"), (1, "polling"), (2, "polling")] {
        let run = Run::new(&format!("vni-{buffers}-{notification}"));
        let file = run.lab_file(
            "modes",
            &format!(
                "name: modes\nvni: {{buffers: {buffers}, notification: {notification}}}\nnodes:\n  - {{name: a, ip: 10.0.0.1/24}}\n  - {{name: b, ip: 10.0.0.2/24}}\n"
            ),
        );
        eprintln!("buffer configuration {buffers}, {notification}:");
        // `vni-lab test` boots the lab, runs the checks, takes it down.
        let (code, results, _) = run.test(
            &file,
            &[
                "--checks",
                "unicast,echo,tcp-string,iperf-tcp,iperf-udp,region",
            ],
        );
        assert_eq!(code, Some(0), "{results:#}");
        assert_eq!(results["reused_lab"], false);
        assert_eq!(
            results["counts"]["passed"],
            1 + 2 + 5 * 2 + 1 + 2,
            "{results:#}"
        );
        run.assert_gone("modes", None);
    }
}

#[test]
fn four_nodes_talk_all_pairs_at_once() {
    let run = Run::new("vni-four");
    let lab = run.up(&topologies().join("four-node.yaml"));
    let ips = ["10.10.0.1", "10.10.0.2", "10.10.0.3", "10.10.0.4"];
    // Every node pings every other, all twelve pairs at the same time.
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let others: Vec<&str> = ips
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, ip)| *ip)
                .collect();
            let script = format!(
                "ok=0; pids=; for ip in {}; do ping -q -c 10 -i 0.2 -W 2 $ip > /tmp/ping-$ip 2>&1 & pids=\"$pids $!\"; done; \
                 for p in $pids; do wait $p || ok=1; done; cat /tmp/ping-*; exit $ok",
                others.join(" ")
            );
            let mut cmd = run.cmd(&[
                "exec",
                "--timeout",
                "120s",
                &format!("node{i}"),
                "--",
                "sh",
                "-c",
                &script,
            ]);
            std::thread::spawn(move || cmd.output().unwrap())
        })
        .collect();
    for (i, handle) in handles.into_iter().enumerate() {
        let out = handle.join().unwrap();
        let text = kit::text(&out.stdout);
        eprintln!("node{i}:\n{text}");
        assert_eq!(out.status.code(), Some(0), "node{i}: a ping failed");
        assert_eq!(text.matches(" 0% packet loss").count(), 3, "node{i}");
    }
    // Broadcasts and multicasts from each node reach the three others.
    let file = topologies().join("four-node.yaml");
    let (code, results, _) = run.test(&file, &["--checks", "broadcast,multicast,region"]);
    assert_eq!(code, Some(0), "{results:#}");
    assert_eq!(results["counts"]["passed"], 4 + 8 + 1 + 4, "{results:#}");
    case(
        &results,
        "broadcast",
        "node3->all",
        "passed",
        "reached all 3 other nodes",
    );
    let out = run.run(&["down"]);
    assert_eq!(out.status.code(), Some(0));
    run.assert_gone("four-node", lab["shm"].as_str());
}

#[test]
fn the_virtio_net_baseline_passes_the_same_checks() {
    // `network: virtio-net`: a virtio-net NIC per node on QEMU's own
    // networking (a stream between two nodes), named vni0 like the VNI,
    // so the same checks run on it; there is no region to check.
    let run = Run::new("vni-virtio");
    let file = run.lab_file(
        "baseline",
        "name: baseline\nnetwork: virtio-net\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n  - {name: b, ip: 10.0.0.2/24}\n",
    );
    let (code, results, _) = run.test(&file, &["--checks", "unicast,echo,iperf-tcp,region"]);
    assert_eq!(code, Some(0), "{results:#}");
    assert_eq!(
        results["counts"]["passed"],
        1 + 2 + 3 * 2 + 2,
        "{results:#}"
    );
    case(
        &results,
        "preflight",
        "a",
        "passed",
        "vni0 (virtio-net) up with MTU 1500",
    );
    let cases = results["cases"].as_array().unwrap();
    assert!(cases.iter().all(|c| c["check"] != "region"), "{results:#}");
    run.assert_gone("baseline", None);
}

#[test]
fn a_mixed_lab_of_a_kernel_and_a_user_space_node_interoperates() {
    // One region format: the kernel module on one node, the user-space
    // driver on the other, frames both ways.
    let run = Run::new("vni-mixed");
    let file = run.lab_file(
        "mixed",
        "name: mixed\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n  - {name: b, ip: 10.0.0.2/24, driver: kernel}\n",
    );
    run.up(&file);
    let (code, results, _) = run.test(
        &file,
        &[
            "--checks",
            "unicast,echo,tcp-string,iperf-tcp,iperf-udp,region",
        ],
    );
    assert_eq!(code, Some(0), "{results:#}");
    // Preflight x2, five checks both ways, region, each node's kernel
    // (no boot case: the lab was up).
    assert_eq!(
        results["counts"]["passed"],
        2 + 5 * 2 + 1 + 2,
        "{results:#}"
    );
    case(&results, "kernel", "b", "passed", "no crash fingerprint");
    // The user-space driver sends batches of 64 frames, which flush by
    // themselves; their wake-ups were once lost, and the kernel node sat
    // on queued frames until its housekeeping noticed (rx_stalls).
    let stats = run.exec_ok("b", &["ethtool", "-S", "vni0"]);
    let stalls = stats
        .lines()
        .find_map(|l| l.trim().strip_prefix("rx_stalls: "))
        .unwrap_or_else(|| panic!("no rx_stalls in {stats}"));
    assert_eq!(stalls, "0", "wake-ups lost: {stats}");
    // Kernel-driver labs carry perf, built from the kernel's own tree: a
    // profile of the kernel node under ping shows the module's code.
    run.exec_ok(
        "b",
        &[
            "perf",
            "record",
            "-q",
            "-a",
            "-e",
            "cpu-clock",
            "-o",
            "/tmp/perf.data",
            "--",
            "ping",
            "-q",
            "-c",
            "50",
            "-i",
            "0.01",
            "10.0.0.1",
        ],
    );
    let profile = run.exec_ok(
        "b",
        &[
            "perf",
            "report",
            "-i",
            "/tmp/perf.data",
            "--stdio",
            "--sort",
            "dso",
        ],
    );
    assert!(profile.contains("[vni]"), "no samples in vni.ko: {profile}");
    assert!(run.run(&["down", "mixed"]).status.success());
    run.assert_gone("mixed", None);
}

#[test]
fn four_kernel_nodes_pass_every_pair() {
    let run = Run::new("vni-four-kernel");
    let nodes: String = (1..=4)
        .map(|i| format!("  - {{name: node{}, ip: 10.10.0.{i}/24}}\n", i - 1))
        .collect();
    let file = run.lab_file(
        "four-kernel",
        &format!("name: four-kernel\nvni: {{driver: kernel}}\nnodes:\n{nodes}"),
    );
    let (code, results, _) = run.test(
        &file,
        &["--checks", "unicast,broadcast,echo,tcp-string,region"],
    );
    assert_eq!(code, Some(0), "{results:#}");
    // Boot, preflight x4, unicast, echo and tcp-string on 12 pairs,
    // broadcast from 4 senders, region, 4 kernel cases.
    assert_eq!(
        results["counts"]["passed"],
        1 + 4 + 12 * 3 + 4 + 1 + 4,
        "{results:#}"
    );
    run.assert_gone("four-kernel", None);
}
