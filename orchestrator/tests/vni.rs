//! The VNI end to end: unmodified programs (ping, nc, iperf3) talk across
//! lab guests through the shared region, under the accelerator the host
//! allows (TCG here), in both buffer configurations and both notification
//! modes, and every slot is back in the pool when traffic stops.

mod common;

use std::time::{Duration, Instant};

use common::{topologies, Run};

/// Pings `ip` from `node`: 5 pings, none lost.
fn ping(run: &Run, node: &str, ip: &str) {
    let out = run.exec_ok(node, &["ping", "-c", "5", "-i", "0.2", "-W", "2", ip]);
    assert!(out.contains(" 0% packet loss"), "{node} -> {ip}: {out}");
}

/// The paper's test 1: an unmodified TCP program (nc) carries a string
/// from `from` to `to` (at `ip`), intact.
fn nc_carries_a_string(run: &Run, from: &str, to: &str, ip: &str) {
    let message = format!("Mint VNI test 1: {from} to {to}, {}", std::process::id());
    run.exec_ok(
        to,
        &[
            "sh",
            "-c",
            "rm -f /tmp/got; timeout 60 nc -l 5000 > /tmp/got 2>&1 &",
        ],
    );
    // The listener may take a moment to start: retry the connection.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let script = format!("printf '%s' '{message}' | nc -N -w 5 {ip} 5000");
        if run.exec(from, &["sh", "-c", &script]).status.code() == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "{from} cannot connect to {to}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = run.exec_ok(to, &["cat", "/tmp/got"]);
        if got == message {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{to} got {got:?}, not {message:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One iperf3 run from `client` to the server on `server` (at `ip`);
/// `extra` adds options (`-R`, `-u -b 50M`). Returns the received
/// throughput in Mbit/s and, for UDP, the loss in percent.
fn iperf(run: &Run, client: &str, server: &str, ip: &str, extra: &[&str]) -> (f64, f64) {
    run.exec_ok(server, &["sh", "-c", "iperf3 -s -1 -D >/dev/null 2>&1"]);
    std::thread::sleep(Duration::from_millis(500));
    let mut args = vec!["iperf3", "-c", ip, "-t", "3", "-J"];
    args.extend_from_slice(extra);
    let out = run.exec_ok(client, &args);
    let json: serde_json::Value = serde_json::from_str(&out).expect("iperf3 -J");
    assert!(json["error"].is_null(), "iperf3: {}", json["error"]);
    let end = &json["end"];
    let (bps, lost) = if extra.contains(&"-u") {
        (
            end["sum"]["bits_per_second"].as_f64().unwrap(),
            end["sum"]["lost_percent"].as_f64().unwrap(),
        )
    } else {
        (
            end["sum_received"]["bits_per_second"].as_f64().unwrap(),
            0.0,
        )
    };
    let mbps = bps / 1e6;
    eprintln!("iperf3 {client} -> {server} {extra:?}: {mbps:.0} Mbit/s, {lost:.2} % lost");
    assert!(
        mbps > 1.0,
        "iperf3 {client} -> {server} {extra:?}: {mbps} Mbit/s"
    );
    (mbps, lost)
}

/// Waits until `inspect` shows every slot back in the pool and no
/// protocol error anywhere.
fn every_slot_comes_home(run: &Run) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = run.inspect();
        let errors: u64 = report["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["counters"]["protocol_errors"].as_u64().unwrap())
            .sum();
        assert_eq!(errors, 0, "protocol errors: {report}");
        if report["pool"]["free"] == report["pool"]["slots"] {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "slots not back in the pool: {}",
            report["pool"]
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts `vni-frames recv` in `node` for run `run`, in the background.
/// With `expect`, it stops once that many frames arrived.
fn listen(run: &Run, node: &str, id: u32, seconds: u32, expect: Option<u32>) {
    let expect = expect.map_or(String::new(), |n| format!("--expect {n}"));
    let script = format!(
        "vni-frames recv --run {id} --seconds {seconds} {expect} > /tmp/frames-{id}.json 2>&1 &"
    );
    run.exec_ok(node, &["sh", "-c", &script]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !run
        .exec_ok(node, &["cat", &format!("/tmp/frames-{id}.json")])
        .contains("listening")
    {
        assert!(
            Instant::now() < deadline,
            "{node}: vni-frames never listened"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The tally `vni-frames recv` printed in `node` once its time is up.
fn tally(run: &Run, node: &str, id: u32) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = run.exec_ok(node, &["cat", &format!("/tmp/frames-{id}.json")]);
        if let Some(line) = out.lines().find(|l| l.starts_with("{\"senders\"")) {
            return serde_json::from_str(line).unwrap();
        }
        assert!(Instant::now() < deadline, "{node}: no tally: {out}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Raw Ethernet frames (pnet in the guests): every size from the minimum
/// to the MTU arrives intact and in order; a broadcast reaches the other
/// node and not its sender; a frame over the MTU is refused when sent.
fn raw_frames(run: &Run) {
    let macs = run.status()[0]["nodes"].clone();
    let mac = |i: usize| macs[i]["mac"].as_str().unwrap().to_owned();
    listen(run, "node1", 11, 60, Some(1455 + 20));
    listen(run, "node0", 11, 20, None);
    // `vni-frames send` of run 11 from node0; its JSON report.
    let send = |to: &str, args: &[&str]| {
        let mut all = vec!["vni-frames", "send", "--run", "11", "--to", to];
        all.extend_from_slice(args);
        run.exec_ok("node0", &all)
    };
    let sent = send(
        &mac(1),
        &["--count", "1455", "--size", "60", "--max-size", "1514"],
    );
    assert!(sent.contains("\"sent\":1455"), "{sent}");
    let broadcast = ["--count", "20", "--size", "100", "--first-seq", "1455"];
    let sent = send("ff:ff:ff:ff:ff:ff", &broadcast);
    assert!(sent.contains("\"sent\":20"), "{sent}");
    let over = send(&mac(1), &["--count", "1", "--size", "1515"]);
    assert!(
        over.contains("\"sent\":0") && over.contains("Message too long"),
        "{over}"
    );
    let at_1 = tally(run, "node1", 11);
    let from_0 = &at_1["senders"][mac(0)];
    assert_eq!(from_0["received"], 1455 + 20, "{at_1}");
    assert_eq!(from_0["damaged"], 0, "{at_1}");
    assert_eq!(from_0["out_of_order"], 0, "{at_1}");
    assert_eq!(from_0["sizes"], serde_json::json!([60, 1514]), "{at_1}");
    // The sender's own socket saw its frames; none came back to it.
    let at_0 = tally(run, "node0", 11);
    assert_eq!(at_0["senders"], serde_json::json!({}), "{at_0}");
}

#[test]
fn two_nodes_carry_ping_a_string_and_iperf3_both_ways() {
    let run = Run::new("vni-two");
    let lab = run.up(&topologies().join("two-node.yaml"));
    let (a, b) = (("node0", "10.10.0.1"), ("node1", "10.10.0.2"));
    ping(&run, a.0, b.1);
    ping(&run, b.0, a.1);
    nc_carries_a_string(&run, a.0, b.0, b.1);
    nc_carries_a_string(&run, b.0, a.0, a.1);
    raw_frames(&run);
    // The paper's test 2: TCP and UDP, both directions.
    iperf(&run, a.0, b.0, b.1, &[]);
    iperf(&run, a.0, b.0, b.1, &["-R"]);
    iperf(&run, a.0, b.0, b.1, &["-u", "-b", "20M"]);
    iperf(&run, a.0, b.0, b.1, &["-u", "-b", "20M", "-R"]);
    every_slot_comes_home(&run);
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
    let deadline = Instant::now() + Duration::from_secs(10);
    while run.exec_ok(a.0, &["cat", "/sys/class/net/vni0/carrier"]) != "0\n" {
        assert!(Instant::now() < deadline, "node0 kept its carrier");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = run.run(&["down"]);
    assert_eq!(out.status.code(), Some(0));
    run.assert_gone("two-node", lab["shm"].as_str());
}

#[test]
fn both_buffer_configurations_and_both_notification_modes_work() {
    for (buffers, notification) in [(1, "interrupt"), (1, "polling"), (2, "polling")] {
        let run = Run::new(&format!("vni-{buffers}-{notification}"));
        let file = run.lab_file(
            "modes",
            &format!(
                "name: modes\nvni: {{buffers: {buffers}, notification: {notification}}}\nnodes:\n  - {{name: a, ip: 10.0.0.1/24}}\n  - {{name: b, ip: 10.0.0.2/24}}\n"
            ),
        );
        let lab = run.up(&file);
        eprintln!("buffer configuration {buffers}, {notification}:");
        ping(&run, "a", "10.0.0.2");
        ping(&run, "b", "10.0.0.1");
        nc_carries_a_string(&run, "a", "b", "10.0.0.2");
        iperf(&run, "a", "b", "10.0.0.2", &[]);
        iperf(&run, "a", "b", "10.0.0.2", &["-R"]);
        every_slot_comes_home(&run);
        let out = run.run(&["down"]);
        assert_eq!(out.status.code(), Some(0));
        run.assert_gone("modes", lab["shm"].as_str());
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
        let text = common::text(&out.stdout);
        eprintln!("node{i}:\n{text}");
        assert_eq!(out.status.code(), Some(0), "node{i}: a ping failed");
        assert_eq!(text.matches(" 0% packet loss").count(), 3, "node{i}");
    }
    every_slot_comes_home(&run);
    let out = run.run(&["down"]);
    assert_eq!(out.status.code(), Some(0));
    run.assert_gone("four-node", lab["shm"].as_str());
}
