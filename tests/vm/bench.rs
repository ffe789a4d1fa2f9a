//! `vni-lab bench --quick`: the smoke run of the benchmark. Three labs (the
//! VNI in configuration 2 with interrupts, virtio-net on QEMU's networking,
//! and virtio-net on bridged TAPs in a network namespace) boot one after
//! the other, every measurement gives figures, the report compares them,
//! the plots are drawn, and nothing is left behind. Figures are not
//! judged: this machine is shared, the full sweep is a benchmark.

#[path = "../kit/mod.rs"]
mod kit;

use kit::{text, topologies, Run};

fn number(v: &serde_json::Value, path: &[&str]) -> f64 {
    let mut v = v;
    for key in path {
        v = &v[*key];
    }
    v.as_f64()
        .unwrap_or_else(|| panic!("{} is not a number: {v}", path.join(".")))
}

#[test]
fn the_quick_bench_measures_both_networks_and_reports_their_ratio() {
    let run = Run::new("bench-quick");
    let out_dir = run.dir.join("bench");
    let file = topologies().join("two-node.yaml");
    let out = run.run(&[
        "bench",
        file.to_str().unwrap(),
        "--quick",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "every case measured");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("n2-mtu1500-c2-interrupt / virtio-net: TCP one pair "),
        "{stdout}"
    );
    assert!(
        stdout.contains("n2-mtu1500-c2-interrupt / virtio-net, TAP + bridge: TCP one pair "),
        "{stdout}"
    );

    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("results.json")).unwrap())
            .unwrap();
    let cases = results["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let id = case["id"].as_str().unwrap();
        assert!(case["error"].is_null(), "{id}: {}", case["error"]);
        assert_eq!(case["problems"], serde_json::json!([]), "{id}");
        for path in [
            &["echo", "p50_us"][..],
            &["ping", "p50_us"],
            &["tcp_pair_mbit"],
            &["tcp_all", "sum_mbit"],
        ] {
            assert!(number(case, path) > 0.0, "{id}: {path:?}");
        }
        assert_eq!(case["tcp_all"]["pairs"], 2, "{id}: both directions at once");
        let udp = case["udp"].as_array().unwrap();
        assert!(!udp.is_empty(), "{id}: the UDP sweep ran");
        assert!(number(&udp[0], &["received_mbit"]) > 0.0, "{id}");
        assert_eq!(
            case["udp_all"]["pairs"], 2,
            "{id}: UDP on both directions at once"
        );
        assert!(
            number(case, &["udp_all", "sum_received_mbit"]) > 0.0,
            "{id}"
        );
    }
    let vni = &cases[0];
    assert_eq!(vni["network"], "vni");
    assert_eq!(vni["buffers"], 2);
    assert_eq!(vni["region_ok"], true, "every slot back after the bench");
    assert!(number(vni, &["occupancy", "samples"]) > 0.0);
    assert!(number(vni, &["occupancy", "slots"]) > 0.0);
    assert!(number(vni, &["doorbell", "p50_us"]) > 0.0);
    for profile in vni["profiles"].as_array().unwrap() {
        assert!(number(profile, &["rounds"]) > 0.0, "{profile}");
    }
    for (baseline, network) in cases[1..].iter().zip(["virtio-net", "virtio-net-tap"]) {
        assert_eq!(baseline["network"], network);
        assert!(baseline["occupancy"].is_null() && baseline["doorbell"].is_null());
    }

    let report = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    for needle in [
        "## Headline: VNI / virtio-net, 2 nodes, MTU 1500",
        "| VNI config 2, interrupt | virtio-net, TAP + bridge | TCP one pair, Mbit/s |",
        "| TCP one pair, Mbit/s |",
        "| echo RTT p50, ms |",
        "## Buffer configurations under load",
        "## Packet loss against offered load",
        "## Where the VNI driver's time goes",
    ] {
        assert!(
            report.contains(needle),
            "report lacks {needle:?}:\n{report}"
        );
    }
    for plot in ["throughput.svg", "latency.svg", "loss.svg"] {
        let svg = std::fs::read_to_string(out_dir.join(plot)).unwrap();
        assert!(svg.contains("n2-mtu1500-virtio-net"), "{plot}");
        assert!(svg.contains("n2-mtu1500-virtio-tap"), "{plot}");
    }
    for lab in [
        "bench-n2-mtu1500-c2-interrupt",
        "bench-n2-mtu1500-virtio-net",
        "bench-n2-mtu1500-virtio-tap",
    ] {
        assert!(out_dir
            .join("labs")
            .join(format!("{}.yaml", &lab[6..]))
            .exists());
        run.assert_gone(lab, None);
    }
    assert_eq!(run.status(), serde_json::json!([]), "no lab left up");
}

#[test]
fn a_bad_file_or_matrix_is_refused_before_anything_boots() {
    let run = Run::new("bench-bad");
    let file = run.lab_file(
        "bad",
        "name: bad\nnodes:\n  - {name: a, ip: 10.0.0.1/30}\n  - {name: b, ip: 10.0.0.2/30}\n",
    );
    // A /30 holds two nodes, not four.
    let out = run.run(&["bench", file.to_str().unwrap(), "--nodes", "4", "--out"]);
    assert_eq!(out.status.code(), Some(2), "--out needs a value");
    let dir = run.dir.join("out");
    let out = run.run(&[
        "bench",
        file.to_str().unwrap(),
        "--nodes",
        "4",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("nodes[0].ip: 10.0.0.0/30 has no room for 4 nodes"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.exists(), "nothing written");
    let out = run.run(&["bench", file.to_str().unwrap(), "--nodes", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("1 is not in 2..=64"),
        "{}",
        text(&out.stderr)
    );
    // The VNI's TAP stops at MTU 65521: refused before anything boots.
    let two = topologies().join("two-node.yaml");
    let out = run.run(&[
        "bench",
        two.to_str().unwrap(),
        "--mtus",
        "65535",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("at most 65521"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.exists(), "nothing written");
    let invalid = run.lab_file("invalid", "name: invalid\nnodes: []\n");
    let out = run.run(&["bench", invalid.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("nothing was run"));
}
