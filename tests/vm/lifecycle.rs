//! Labs as a user drives them, through the real `vni-lab` binary: real
//! QEMU guests under the accelerator the host allows (TCG here), the real
//! Debian kernel and guest agent. Each test uses its own run directory
//! (`VNI_LAB_RUN_DIR`) and checks that nothing is left afterwards: no
//! process naming the lab directory, no shared-memory file, no directory.
//!
//! `up` builds the guest image first when it is not cached (root, as CI
//! runs; about 45 s). The tests boot guests one test at a time: two cores
//! under TCG are slow enough with one lab.

#[path = "../kit/mod.rs"]
mod kit;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kit::{processes_naming, text, timeouts, topologies, wait_for, Run};

/// `Cpus_allowed_list` of QEMU `pid`'s first vCPU thread ("CPU 0/TCG" or
/// "CPU 0/KVM", named with -name debug-threads=on).
fn vcpu_affinity(pid: u32) -> Option<String> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .filter_map(Result::ok)
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.starts_with("CPU 0/") {
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            return status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_owned());
        }
    }
    None
}

#[test]
fn a_detached_lab_answers_commands_and_down_leaves_nothing() {
    let run = Run::new("detached");
    let file = topologies().join("two-node.yaml");
    let out = run.run(&["up", "--detach", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("Lab two-node is up"));

    let status = run.status();
    let lab = &status[0];
    assert_eq!(lab["state"], "up", "{status}");
    let nodes = lab["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    for node in nodes {
        assert_eq!(node["state"], "ready", "{node}");
        assert_eq!(node["qemu_running"], true, "{node}");
    }
    let release = lab["kernel_release"].as_str().unwrap().to_owned();
    let shm = lab["shm"].as_str().unwrap().to_owned();

    // The lab's files are the user's alone.
    let dir = run.dir.join("two-node");
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for entry in std::fs::read_dir(&dir).unwrap().filter_map(Result::ok) {
        let mode = entry.metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}", entry.path().display());
    }
    let mode = std::fs::metadata(&shm).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{shm} is {mode:o}");

    // The main job's check: the guest answers with the Debian kernel.
    let out = run.run(&["exec", "node1", "--", "uname", "-r"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), format!("{release}\n"));
    // stdout, stderr and the exit status pass through.
    let out = run.run(&[
        "exec",
        "node0",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 7",
    ]);
    assert_eq!(
        (out.status.code(), text(&out.stdout), text(&out.stderr)),
        (Some(7), "out\n".into(), "err\n".into())
    );
    // Standard input passes through when it is not a terminal: a few KiB
    // of every byte value, back byte for byte; and none at all.
    let input: Vec<u8> = (0..6000u32).map(|i| (i * 7 % 256) as u8).collect();
    let mut child = run
        .cmd(&["exec", "node1", "--", "sh", "-c", "cat; echo end >&2"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&input).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(out.stdout, input, "stdin came back changed");
    assert_eq!(text(&out.stderr), "end\n");
    let out = run.run(&["exec", "-i", "node1", "--", "wc", "-c"]);
    assert_eq!(text(&out.stdout).trim(), "0");
    let out = run.run(&["exec", "node0", "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(out.status.code(), Some(128 + 9));
    let out = run.run(&["exec", "node0", "--", "no-such-command"]);
    assert_eq!(out.status.code(), Some(127));
    let out = run.run(&["exec", "node7", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("its nodes: node0, node1"));

    // Each node is itself, sees the ivshmem device and nothing else.
    for node in ["node0", "node1"] {
        let out = run.run(&["exec", node, "--", "hostname"]);
        assert_eq!(text(&out.stdout), format!("{node}\n"));
        let out = run.run(&["exec", node, "--", "lspci", "-n", "-d", "1af4:1110"]);
        assert!(
            text(&out.stdout).contains("1af4:1110"),
            "{node}: no ivshmem device"
        );
        // Its only links: loopback and the VNI (no NIC).
        let out = run.run(&["exec", node, "--", "ip", "-o", "link"]);
        let links: Vec<String> = text(&out.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_owned()))
            .collect();
        assert_eq!(links, ["lo", "vni0"], "{node}");
    }
    // The VNI carries IP between the nodes, both ways, nothing lost.
    for (from, to) in [("node0", "10.10.0.2"), ("node1", "10.10.0.1")] {
        let out = run.run(&["exec", from, "--", "ping", "-c", "5", "-i", "0.2", to]);
        assert_eq!(out.status.code(), Some(0), "{from} -> {to}");
        assert!(
            text(&out.stdout).contains(" 0% packet loss"),
            "{from} -> {to}"
        );
    }

    // Below the driver: stop it, then check that through VFIO each guest
    // maps the lab's region (the same format epoch on both) and has its
    // own ivshmem peer id, and that a doorbell rung by one reaches the
    // other, both ways.
    for node in ["node0", "node1"] {
        let stop = "p=$(cat /run/vni-driver.pid); kill $p; while kill -0 $p 2>/dev/null; do sleep 0.1; done";
        let out = run.run(&["exec", node, "--", "sh", "-c", stop]);
        assert_eq!(out.status.code(), Some(0), "{node}: stopping the driver");
    }
    let probe = |node: &str| -> serde_json::Value {
        let out = run.run(&["exec", node, "--", "vni-driver", "probe"]);
        assert_eq!(out.status.code(), Some(0), "{node}: probe failed");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (p0, p1) = (probe("node0"), probe("node1"));
    assert_eq!(p0["layout"]["config"], 2, "{p0}");
    assert_eq!(p0["layout"]["epoch"], p1["layout"]["epoch"]);
    assert_eq!(p0["region_bytes"], 64 << 20);
    assert_ne!(p0["position"], p1["position"]);
    for (to, from, peer) in [("node0", "node1", &p0), ("node1", "node0", &p1)] {
        let out = run.run(&[
            "exec",
            to,
            "--",
            "sh",
            "-c",
            "vni-driver wait --timeout 60 > /tmp/doorbell 2>&1 &",
        ]);
        assert_eq!(out.status.code(), Some(0));
        let read = || text(&run.run(&["exec", to, "--", "cat", "/tmp/doorbell"]).stdout);
        let said = |what: &'static str| {
            move || {
                let now = read();
                now.contains(what).then_some(()).ok_or(now)
            }
        };
        let poll = Duration::from_millis(200);
        wait_for(
            &format!("{to}'s wait armed"),
            timeouts::DOORBELL,
            poll,
            said("armed"),
        );
        let position = peer["position"].to_string();
        let out = run.run(&["exec", from, "--", "vni-driver", "ring", &position]);
        assert_eq!(out.status.code(), Some(0));
        let what = format!("{to} gets a doorbell from {from}");
        wait_for(&what, timeouts::DOORBELL, poll, said("doorbell 1"));
    }

    let out = run.run(&["console", "node0"]);
    assert!(text(&out.stdout).contains("vni-lab: guest agent on"));
    // `console --follow` shows what the console prints after it started.
    let mut follow = run
        .cmd(&["console", "node0", "--follow"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, seen) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    // The old lines first: once the last one is in, it has started.
    let started = std::time::Instant::now();
    while seen.recv_timeout(Duration::from_millis(500)).is_ok() {}
    let marker = format!("vni-lab follow test {}", std::process::id());
    run.exec_ok(
        "node0",
        &["sh", "-c", &format!("echo '{marker}' > /dev/ttyS0")],
    );
    let found = loop {
        match seen.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.contains(&marker) => break true,
            Ok(_) => {}
            Err(_) => break false,
        }
    };
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        found,
        "console --follow did not show {marker:?} within 20 s (started {:?} ago)",
        started.elapsed()
    );

    // A second lab of the same name is refused while this one runs.
    let out = run.run(&["up", "--detach", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("already up"),
        "{}",
        text(&out.stderr)
    );

    let out = run.run(&["down"]);
    assert_eq!(out.status.code(), Some(0));
    run.assert_gone("two-node", Some(&shm));
}

/// Starts `up` in the foreground and returns it once the lab is up.
fn up_foreground(run: &Run, file: &Path) -> std::process::Child {
    let mut child = run
        .cmd(&["up", file.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = lines
            .next()
            .expect("up printed that the lab is up")
            .unwrap();
        eprintln!("up: {line}");
        if line.contains("is up") {
            break;
        }
    }
    // Keep draining so `up` never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(
            Instant::now() < deadline,
            "up did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctrl_c_tears_a_foreground_lab_down_and_so_does_killing_up() {
    let run = Run::new("ctrl-c");
    let file = topologies().join("two-node.yaml");

    let mut up = up_foreground(&run, &file);
    let shm = run.status()[0]["shm"].as_str().unwrap().to_owned();
    // SAFETY: kill has no memory effects; `up` is our unreaped child.
    unsafe { libc::kill(up.id() as i32, libc::SIGINT) };
    assert_eq!(wait_exit(&mut up, timeouts::UP_EXIT), Some(0));
    run.assert_gone("two-node", Some(&shm));

    // `up` killed outright: its supervisor notices and tears down alone.
    let mut up = up_foreground(&run, &file);
    let shm = run.status()[0]["shm"].as_str().unwrap().to_owned();
    up.kill().unwrap();
    up.wait().unwrap();
    run.assert_gone("two-node", Some(&shm));
}

#[test]
fn a_killed_supervisor_leaves_a_leftover_that_up_and_down_clean() {
    let run = Run::new("killed");
    let file = topologies().join("two-node.yaml");
    let out = run.run(&["up", "--detach", "--quiet", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let lab = run.status()[0].clone();
    let supervisor = lab["supervisor_pid"].as_i64().unwrap() as i32;
    // SAFETY: kill has no memory effects; the pid is the lab's supervisor.
    unsafe { libc::kill(supervisor, libc::SIGKILL) };

    // Its QEMUs die with it (PR_SET_PDEATHSIG); the files stay behind.
    let lab_dir = run.dir.join("two-node");
    wait_for(
        "the QEMUs die with their supervisor",
        timeouts::PROCESSES_GONE,
        Duration::from_millis(100),
        || match processes_naming(&lab_dir) {
            left if left.is_empty() => Ok(()),
            left => Err(format!("{left:?}")),
        },
    );
    assert_eq!(run.status()[0]["state"], "leftover");
    let out = run.run(&["exec", "node0", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("not running"));

    // `up` cleans the leftover and starts afresh.
    let out = run.run(&["up", "--detach", "--quiet", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("left over"),
        "{}",
        text(&out.stderr)
    );
    let shm = run.status()[0]["shm"].as_str().unwrap().to_owned();

    // And `down` cleans one too.
    let supervisor = run.status()[0]["supervisor_pid"].as_i64().unwrap() as i32;
    // SAFETY: as above.
    unsafe { libc::kill(supervisor, libc::SIGKILL) };
    wait_for(
        "the supervisor dies",
        timeouts::PROCESSES_GONE,
        Duration::from_millis(50),
        || match run.status()[0]["state"].as_str() {
            Some("leftover") => Ok(()),
            other => Err(format!("state {other:?}")),
        },
    );
    let out = run.run(&["down"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("left over"));
    run.assert_gone("two-node", Some(&shm));
}

#[test]
fn a_failed_boot_says_why_with_the_console_and_leaves_nothing() {
    let run = Run::new("failed");
    std::fs::create_dir_all(&run.dir).unwrap();
    // The kernel finds no init and panics: QEMU exits (-no-reboot).
    let panics = run.dir.join("panics.yaml");
    std::fs::write(
        &panics,
        "name: panics\nguest: {append: rdinit=/no/such/init}\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n  - {name: b, ip: 10.0.0.2/24}\n",
    )
    .unwrap();
    let out = run.run(&["up", "--detach", panics.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("the guest kernel panicked"), "{err}");
    assert!(err.contains("Kernel panic - not syncing"), "{err}");
    run.assert_gone("panics", None);

    // A guest that is not ready in time.
    let slow = run.dir.join("slow.yaml");
    std::fs::write(
        &slow,
        "name: slow\ntimeouts: {boot: 2s}\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n  - {name: b, ip: 10.0.0.2/24}\n",
    )
    .unwrap();
    let out = run.run(&["up", "--detach", slow.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("did not answer within timeouts.boot"), "{err}");
    assert!(err.contains("console"), "{err}");
    run.assert_gone("slow", None);

    // An invalid file starts nothing.
    let bad = run.dir.join("bad.yaml");
    std::fs::write(&bad, "name: bad\nnodes:\n  - {name: a, ip: 10.0.0.1/24}\n").unwrap();
    let out = run.run(&["up", "--detach", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("nothing was started"));
    assert!(!run.dir.join("bad").exists());
}

#[test]
fn the_four_node_lab_comes_up() {
    let run = Run::new("four");
    let file = topologies().join("four-node.yaml");
    let out = run.run(&["up", "--detach", "--quiet", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let status = run.status();
    assert_eq!(status[0]["nodes"].as_array().unwrap().len(), 4);
    let shm = status[0]["shm"].as_str().unwrap().to_owned();
    for node in ["node0", "node1", "node2", "node3"] {
        let out = run.run(&["exec", node, "--", "hostname"]);
        assert_eq!(text(&out.stdout), format!("{node}\n"));
    }
    let out = run.run(&["down", "four-node"]);
    assert_eq!(out.status.code(), Some(0));
    run.assert_gone("four-node", Some(&shm));
}

#[test]
fn a_trixie_lab_boots_debian_13s_kernel() {
    let run = Run::new("trixie");
    std::fs::create_dir_all(&run.dir).unwrap();
    let file = run.dir.join("trixie.yaml");
    std::fs::write(
        &file,
        "name: trixie\nguest: {kernel: trixie}\nnodes:\n  - {name: a, ip: 10.0.0.1/24, host_cpus: [1]}\n  - {name: b, ip: 10.0.0.2/24, host_cpus: [0]}\n",
    )
    .unwrap();
    let out = run.run(&["up", "--detach", "--quiet", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    let status = run.status();
    let release = status[0]["kernel_release"].as_str().unwrap().to_owned();
    assert!(release.starts_with("6.12."), "{release}");
    let out = run.run(&["exec", "b", "--", "uname", "-r"]);
    assert_eq!(text(&out.stdout), format!("{release}\n"));
    // host_cpus: each node's vCPU thread runs on its own host CPU.
    for (node, cpu) in [(0, "1"), (1, "0")] {
        let pid = status[0]["nodes"][node]["qemu_pid"].as_u64().unwrap();
        assert_eq!(
            vcpu_affinity(pid as u32).as_deref(),
            Some(cpu),
            "node {node}"
        );
    }
    // The VNI (VFIO, TAP, region) works on 6.12 too.
    let out = run.run(&[
        "exec", "a", "--", "ping", "-c", "3", "-i", "0.2", "10.0.0.2",
    ]);
    assert_eq!(out.status.code(), Some(0), "the VNI on the 6.12 kernel");
    let out = run.run(&["down"]);
    assert_eq!(out.status.code(), Some(0));
    run.assert_gone("trixie", status[0]["shm"].as_str());
}

#[test]
fn a_kernel_of_ones_own_boots_with_its_modules() {
    // Kernel CI's case: a bzImage, its modules and a root filesystem from
    // elsewhere, given on the command line. Stand-ins here: trixie's 6.12
    // kernel and the modules of its image, booted on the bookworm image's
    // initramfs.
    let run = Run::new("byo-kernel");
    std::fs::create_dir_all(&run.dir).unwrap();
    let out = run.run(&["image", "build", "--suite", "trixie", "--quiet"]);
    assert_eq!(out.status.code(), Some(0));
    let image = PathBuf::from(text(&out.stdout).split(" (").next().unwrap().trim());
    let out = run.run(&["image", "build", "--quiet"]);
    assert_eq!(out.status.code(), Some(0));
    let rootfs = PathBuf::from(text(&out.stdout).split(" (").next().unwrap().trim());
    let unpack = |into: &Path| {
        std::fs::create_dir_all(into).unwrap();
        let unpacked = Command::new("bash")
            .args([
                "-o",
                "pipefail",
                "-c",
                "gzip -dc \"$1\" | cpio -idm --quiet 'usr/lib/modules/*'",
                "-",
            ])
            .arg(image.join("initrd.gz"))
            .current_dir(into)
            .status()
            .unwrap();
        assert!(unpacked.success());
    };
    let mods = run.dir.join("mods");
    unpack(&mods);
    let lab = topologies().join("two-node.yaml");
    let kernel = image.join("vmlinuz");
    let initrd = rootfs.join("initrd.gz");
    let up = |modules: &Path| {
        run.run(&[
            "up",
            "--detach",
            "--quiet",
            "--name",
            "byo",
            lab.to_str().unwrap(),
            "--kernel",
            kernel.to_str().unwrap(),
            "--modules",
            modules.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
        ])
    };

    // The same modules without tun: refused before anything boots, with
    // the option's name.
    let without = run.dir.join("without-tun");
    unpack(&without);
    let release = std::fs::read_dir(without.join("usr/lib/modules"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let dep = std::fs::read_to_string(release.join("modules.dep")).unwrap();
    let kept: String = dep
        .lines()
        .filter(|l| !l.contains("/tun.ko"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(kept.len(), dep.len(), "the image has tun: {dep}");
    std::fs::write(release.join("modules.dep"), kept).unwrap();
    let out = up(&without);
    let said = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("lacks what this lab needs") && said.contains("CONFIG_TUN"),
        "{said}"
    );
    assert!(
        !said.contains("CONFIG_VFIO_PCI"),
        "only what is missing: {said}"
    );
    assert!(said.contains("nothing was started"), "{said}");
    run.assert_gone("byo", None);

    // Modules of another release than the kernel's: refused too.
    let other = run.dir.join("other/lib/modules/6.0.0-other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("modules.dep"), "").unwrap();
    let out = up(&run.dir.join("other"));
    let said = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains("modules for 6.0.0-other only, but the kernel is 6.12."),
        "{said}"
    );
    run.assert_gone("byo", None);

    // With its modules it boots; the check said what it read.
    let out = up(&mods);
    let said = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(said.contains("modules.builtin and modules.dep"), "{said}");
    let out = run.run(&["exec", "node0", "--", "uname", "-r"]);
    assert!(
        text(&out.stdout).starts_with("6.12."),
        "not the given kernel"
    );
    // The VNI's modules (VFIO, tun) come from the given tree: it works.
    let out = run.run(&[
        "exec",
        "node0",
        "--",
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "10.10.0.2",
    ]);
    assert_eq!(out.status.code(), Some(0), "the VNI with the given modules");
    let shm = run.status()[0]["shm"].as_str().unwrap().to_owned();
    let out = run.run(&["down"]);
    assert_eq!(out.status.code(), Some(0));
    run.assert_gone("byo", Some(&shm));
}

#[test]
fn an_unpacked_debian_kernel_package_boots_with_its_config_checked() {
    // Kernel CI's other case: a distribution's kernel package, unpacked
    // (`dpkg-deb -x`): boot/vmlinuz-R, boot/config-R and the whole
    // lib/modules/R, hundreds of MiB, of which the guests get only what
    // they load.
    let run = Run::new("deb-kernel");
    std::fs::create_dir_all(&run.dir).unwrap();
    let out = run.run(&["image", "build", "--quiet"]);
    assert_eq!(out.status.code(), Some(0));
    let image = PathBuf::from(text(&out.stdout).split(" (").next().unwrap().trim());
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(image.join("manifest.json")).unwrap())
            .unwrap();
    let package = manifest["kernel_package"].as_str().unwrap();
    let release = manifest["kernel_release"].as_str().unwrap();
    let debs = run.dir.join("debs");
    std::fs::create_dir_all(&debs).unwrap();
    let got = Command::new("apt-get")
        .args(["download", "-q", package])
        .current_dir(&debs)
        .status()
        .unwrap();
    assert!(got.success(), "apt-get download {package}");
    let unpacked = run.dir.join("pkg");
    for deb in std::fs::read_dir(&debs).unwrap() {
        let deb = deb.unwrap().path();
        let status = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&unpacked)
            .status()
            .unwrap();
        assert!(status.success(), "dpkg-deb -x {}", deb.display());
    }
    let kernel = unpacked.join(format!("boot/vmlinuz-{release}"));
    let lab = topologies().join("two-node.yaml");
    let up = || {
        run.run(&[
            "up",
            "--detach",
            "--quiet",
            "--name",
            "deb",
            lab.to_str().unwrap(),
            "--kernel",
            kernel.to_str().unwrap(),
            "--modules",
            unpacked.to_str().unwrap(),
        ])
    };
    // A package carries no modules.dep (depmod makes it at install):
    // refused, with the command that makes it.
    let out = up();
    let said = text(&out.stderr);
    let depmod = format!("depmod -b {} {release}", unpacked.display());
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains(&depmod), "{said}");
    run.assert_gone("deb", None);
    let status = Command::new("depmod")
        .args(["-b", unpacked.to_str().unwrap(), release])
        .status()
        .unwrap();
    assert!(status.success());
    let out = up();
    let said = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        said.contains(&format!("kernel {release}: checked against"))
            && said.contains(&format!("boot/config-{release}")),
        "the package's config was read: {said}"
    );
    let out = run.run(&["exec", "node0", "--", "uname", "-r"]);
    assert_eq!(text(&out.stdout).trim(), release);
    let out = run.run(&[
        "exec",
        "node0",
        "--",
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "10.10.0.2",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the VNI with the package's modules"
    );
    // The guests got the modules they load, not the package's whole tree.
    let whole: u64 = Command::new("du")
        .args(["-sb"])
        .arg(unpacked.join("lib/modules"))
        .output()
        .map(|o| {
            text(&o.stdout)
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .unwrap();
    let initrd = std::fs::metadata(run.dir.join("deb/initrd")).unwrap().len();
    let base = std::fs::metadata(image.join("initrd.gz")).unwrap().len();
    eprintln!(
        "modules in the package: {whole} bytes; initrd {initrd} bytes over the image's {base}"
    );
    assert!(
        initrd < base + (64 << 20) && whole > 64 << 20,
        "initrd {initrd} bytes, image {base}, package modules {whole}"
    );
    let shm = run.status()[0]["shm"].as_str().unwrap().to_owned();
    let out = run.run(&["down"]);
    assert_eq!(out.status.code(), Some(0));
    run.assert_gone("deb", Some(&shm));
}

#[test]
fn an_installed_vni_lab_runs_a_lab_from_another_directory() {
    // `vni-lab install` into a root of the test's own; the installed
    // binary, run from elsewhere, takes its guest binaries from there, not
    // from the checkout.
    let run = Run::new("install");
    let root = run.dir.join("root");
    let out = run.run(&["install", "--quiet", "--root", root.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let installed = root.join("bin/vni-lab");
    for file in [
        "bin/vni-lab",
        "share/vni-lab/installed",
        "share/vni-lab/guest/vni-driver",
        "share/vni-lab/guest/vni-frames",
        "share/vni-lab/guest/vni-shell",
        "share/vni-lab/src/guest-driver/kernel/Kbuild",
        "share/vni-lab/src/guest-driver/core/src/lib.rs",
        "share/man/man1/vni-lab.1",
        "share/bash-completion/completions/vni-lab",
        "share/zsh/site-functions/_vni-lab",
        "share/fish/vendor_completions.d/vni-lab.fish",
    ] {
        assert!(root.join(file).is_file(), "{file} not installed");
    }
    // Nothing written outside the root (the run directory holds only it).
    let entries: Vec<_> = std::fs::read_dir(&run.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["root"]);

    let elsewhere = run.dir.join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::copy(
        topologies().join("two-node.yaml"),
        elsewhere.join("lab.yaml"),
    )
    .unwrap();
    let installed_run = |args: &[&str]| {
        let out = Command::new(&installed)
            .args(args)
            .current_dir(&elsewhere)
            .env("VNI_LAB_RUN_DIR", &run.dir)
            .env_remove("CARGO")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        eprintln!(
            "$ {} {} -> {:?}\n{}{}",
            installed.display(),
            args.join(" "),
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    };
    let out = installed_run(&["up", "--detach", "lab.yaml"]);
    let said = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{said}");
    assert!(
        !said.contains("building the guest driver"),
        "the installed binary built from the checkout: {said}"
    );
    let out = installed_run(&[
        "exec",
        "node0",
        "--",
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "10.10.0.2",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the VNI from the installed binaries"
    );
    let shm = run.status()[0]["shm"].as_str().unwrap().to_owned();
    let out = installed_run(&["down"]);
    assert_eq!(out.status.code(), Some(0));
    run.assert_gone("two-node", Some(&shm));
    let out = installed_run(&["--version"]);
    assert!(text(&out.stdout).contains("commit"));
}
