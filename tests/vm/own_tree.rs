//! The kernel driver on a kernel of one's own, as kernel CI runs it: the
//! one-line job `vni-lab test LAB --kernel-tree . --ktap … --junit …` in
//! a built kernel tree with Rust support, which vni-lab checks, boots, and
//! builds `vni.ko` against; then the same from loose files (`--kernel`,
//! `--modules`), the tree found by the modules' `build` link.
//!
//! The tree is a small one (`tests/kernels/rust-tree`: `make tinyconfig`,
//! `tests/kernels/rust.config` and `vni-lab kconfig --driver kernel`),
//! built on this host with its rustc from the Debian 7.3 source the
//! kernel-driver labs' build root holds: about 13 minutes on two cores,
//! once, then cached under `~/.cache/vni-lab/test-kernels/` until the
//! recipe, the source or the toolchain changes.

#[path = "../kit/mod.rs"]
mod kit;

use std::path::{Path, PathBuf};
use std::process::Command;

use kit::{text, Run};

/// bindgen-cli's version: the kernel's Rust bindings need 0.71.1 or later
/// (Debian 12 has 0.60), so the suite installs its own, once.
const BINDGEN: &str = "0.73.2";

/// Runs `command`, panicking with its output unless it succeeds.
fn must(what: &str, command: &mut Command) -> String {
    eprintln!("own-tree: {what}");
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// The cache key of `parts` (each followed by a NUL), as vni-lab's own.
fn key(parts: &[&[u8]]) -> String {
    vni_lab::image::fnv1a(parts.iter().flat_map(|p| p.iter().copied().chain([0])))
}

/// bindgen, installed under the cache when missing.
fn bindgen(cache: &Path) -> PathBuf {
    let root = cache.join("tools");
    let bin = root.join("bin/bindgen");
    let version = Command::new(&bin).arg("--version").output();
    if !matches!(&version, Ok(out) if text(&out.stdout).trim() == format!("bindgen {BINDGEN}")) {
        must(
            &format!("cargo install bindgen-cli {BINDGEN} (about 2-3 min, once)"),
            Command::new("cargo")
                .args(["install", "--locked", "--quiet", "--force", "--root"])
                .arg(&root)
                .args(["--version", BINDGEN, "bindgen-cli"]),
        );
    }
    bin
}

/// The small Rust-enabled kernel tree (`make O=` output), built once.
fn rust_tree(run: &Run) -> PathBuf {
    let cache = vni_lab::image::cache_dir();
    let mut step = |s: &str| eprintln!("own-tree: {s}");
    // The Debian 7.3 source, from the kernel-driver labs' build root.
    let image = vni_lab::image::ensure("trixie-backports", &cache, false, &mut step)
        .expect("the trixie-backports image");
    let debian = vni_lab::kmod::ensure_tree(&image.manifest, &cache, &mut step)
        .expect("the kernel-driver labs' build root");
    let source = debian.root.join("usr/src/linux");
    let bindgen = bindgen(&cache);
    let kernels = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/kernels");
    let script = kernels.join("rust-tree");
    let fragment = kernels.join("rust.config");
    let out = run.run(&["kconfig", "--driver", "kernel"]);
    assert_eq!(out.status.code(), Some(0));
    let lab_fragment = out.stdout;
    let rustc = must("rustc --version", Command::new("rustc").arg("--version"));
    let key = key(&[
        &std::fs::read(&script).unwrap(),
        &std::fs::read(&fragment).unwrap(),
        &lab_fragment,
        debian.key.as_bytes(),
        rustc.as_bytes(),
        BINDGEN.as_bytes(),
    ]);
    let kernels_cache = cache.join("test-kernels");
    let dir = kernels_cache.join(format!("rust-{key}"));
    let tree = dir.join("out");
    if dir.join("built").is_file() {
        return tree;
    }
    // Built where it stays: an O= tree names its source and itself by
    // absolute path. Trees of other keys go (about 1 GB each).
    let _ = std::fs::remove_dir_all(&kernels_cache);
    std::fs::create_dir_all(&dir).unwrap();
    // The source, hard-linked (nothing is written to it: the build is out
    // of tree) and cleaned of the build root's modules_prepare.
    let src = dir.join("src");
    must(
        "linking the kernel source",
        Command::new("cp").arg("-al").arg(&source).arg(&src),
    );
    must(
        "make mrproper",
        Command::new("make")
            .args(["-s", "-C"])
            .arg(&src)
            .arg("mrproper"),
    );
    let lab_config = dir.join("lab.config");
    std::fs::write(&lab_config, &lab_fragment).unwrap();
    let started = std::time::Instant::now();
    must(
        "building a small kernel with Rust support (about 13 min on two cores, once)",
        Command::new("bash")
            .arg(&script)
            .arg(&src)
            .arg(&tree)
            .arg(&fragment)
            .arg(&lab_config)
            .env("BINDGEN", &bindgen),
    );
    eprintln!(
        "own-tree: kernel built in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    std::fs::write(dir.join("built"), "").unwrap();
    tree
}

#[test]
fn the_kernel_driver_runs_on_a_kernel_tree_of_ones_own() {
    let run = Run::new("own-tree");
    let tree = rust_tree(&run);
    let release = std::fs::read_to_string(tree.join("include/config/kernel.release")).unwrap();
    let release = release.trim();
    let config = std::fs::read_to_string(tree.join(".config")).unwrap();
    assert!(config.contains("CONFIG_RUST=y\n"));

    // The job as docs/src/kernel-ci.md#the-kernel-driver-on-a-kernel-of-ones-own
    // gives it, run in the tree.
    let lab = kit::topologies().join("two-node-kernel.yaml");
    let results = run.dir.join("results");
    std::fs::create_dir_all(&results).unwrap();
    let (ktap, junit, json, artifacts) = (
        results.join("results.ktap"),
        results.join("results.xml"),
        results.join("results.json"),
        results.join("artifacts"),
    );
    let args = [
        "test",
        lab.to_str().unwrap(),
        "--kernel-tree",
        ".",
        "--ktap",
        ktap.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
        "--artifacts",
        artifacts.to_str().unwrap(),
    ];
    let out = run.cmd(&args).current_dir(&tree).output().unwrap();
    let said = text(&out.stderr);
    eprintln!("{}{said}", text(&out.stdout));
    assert_eq!(out.status.code(), Some(0), "every case passed: {said}");
    assert!(
        said.contains(&format!(
            "kernel {release}: checked against {}/.config",
            tree.display()
        )),
        "the tree's own .config checked: {said}"
    );

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(
        report["kernel_release"], release,
        "the tree's kernel booted"
    );
    assert_eq!(report["counts"]["failed"], 0, "{report:#}");
    assert_eq!(report["counts"]["errors"], 0, "{report:#}");
    assert_eq!(report["counts"]["skipped"], 0, "{report:#}");
    for check in ["unicast", "iperf-tcp", "region"] {
        assert!(
            report["cases"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["check"] == check && c["status"] == "passed"),
            "{check} passed: {report:#}"
        );
    }
    // The module the nodes ran is the one built against this tree.
    let log = std::fs::read_to_string(artifacts.join("node0.driver.log")).unwrap();
    assert!(log.contains("vni: node 0 up"), "{log}");
    let built = std::fs::read_dir(vni_lab::image::cache_dir().join("kernel-modules"))
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{release}-"))
        })
        .expect("a module cached for the tree's release")
        .path()
        .join("vni.ko");
    let info = must(
        "modinfo",
        Command::new("modinfo").args(["-F", "vermagic"]).arg(&built),
    );
    assert!(info.starts_with(&format!("{release} ")), "{info}");

    let ktap = std::fs::read_to_string(&ktap).unwrap();
    assert!(ktap.starts_with("KTAP version 1\n"), "{ktap}");
    assert!(!ktap.contains("not ok"), "{ktap}");
    let junit = std::fs::read_to_string(&junit).unwrap();
    assert!(junit.contains("failures=\"0\""), "{junit}");
    run.assert_gone("two-node-kernel", None);

    // From loose files, as a job that keeps only the build's products:
    // the image copied out of the tree, and the modules as `make
    // modules_install` leaves them, whose `build` link names the tree.
    let loose = run.dir.join("loose");
    std::fs::create_dir_all(&loose).unwrap();
    let image = loose.join("bzImage");
    std::fs::copy(tree.join("arch/x86/boot/bzImage"), &image).unwrap();
    must(
        "make modules_install",
        Command::new("make")
            .args(["-s", "-C"])
            .arg(&tree)
            .arg(format!("INSTALL_MOD_PATH={}", loose.display()))
            .arg("modules_install"),
    );
    let (code, report, _) = run.test(
        &lab,
        &[
            "--kernel",
            image.to_str().unwrap(),
            "--modules",
            loose.to_str().unwrap(),
            "--checks",
            "unicast,tcp-string,region",
        ],
    );
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["kernel_release"], release, "{report:#}");
    kit::case(&report, "tcp-string", "node0->node1", "passed", "intact");
    run.assert_gone("two-node-kernel", None);
}
