//! `vni-lab kconfig`: the fragment it prints merges with the kernel's own
//! `scripts/kconfig/merge_config.sh` (from the kernel tree the
//! kernel-driver labs build) into a config that then has every option a
//! lab needs, and Debian's Rust kernel, which the labs boot, has them all;
//! a kernel-driver lab on a kernel of one's own is refused before booting
//! without a built tree with Rust and the rustc that built it.

#[path = "../../tests/kit/mod.rs"]
mod kit;

use std::process::Command;

use kit::{text, Run};
use vni_lab::kconfig::{missing, requirements};
use vni_lab::topology::{Driver, Network};

/// The fragment `vni-lab kconfig` prints, and what a lab needs.
fn fragment() -> (String, Vec<vni_lab::kconfig::Requirement>) {
    let run = Run::new("kconfig");
    let out = run.run(&["kconfig", "--driver", "user,kernel"]);
    assert_eq!(out.status.code(), Some(0));
    let fragment = text(&out.stdout);
    let needs = requirements(&[Driver::User, Driver::Kernel], Network::Vni);
    (fragment, needs)
}

#[test]
fn the_fragment_names_every_option_a_lab_needs() {
    let (fragment, needs) = fragment();
    for r in &needs {
        assert!(
            fragment.contains(&format!("{}=y\n", r.option)),
            "{fragment}"
        );
    }
}

#[test]
#[cfg_attr(
    not(feature = "vm-tests"),
    ignore = "needs the Rust kernel's tree, which the full suite (tests/run) builds"
)]
fn the_fragment_merges_into_a_config_that_has_what_a_lab_needs() {
    let (fragment, needs) = fragment();
    let source = &kit::rust_kernel().0;
    let dir = std::env::temp_dir().join(format!("vni-kconfig-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // A base that lacks some of it, TUN said to be off.
    std::fs::write(
        dir.join("base.config"),
        "CONFIG_64BIT=y\n# CONFIG_TUN is not set\n",
    )
    .unwrap();
    std::fs::write(dir.join("vni.config"), &fragment).unwrap();
    let base_missing = missing("CONFIG_64BIT=y\n# CONFIG_TUN is not set\n", &needs);
    assert!(base_missing.iter().any(|r| r.option == "CONFIG_TUN"));
    let merged = Command::new("bash")
        .arg(source.join("scripts/kconfig/merge_config.sh"))
        .args(["-m", "-O"])
        .arg(&dir)
        .arg(dir.join("base.config"))
        .arg(dir.join("vni.config"))
        .current_dir(&dir)
        .output()
        .expect("merge_config.sh runs");
    assert!(
        merged.status.success(),
        "merge_config.sh: {}{}",
        text(&merged.stdout),
        text(&merged.stderr)
    );
    let config = std::fs::read_to_string(dir.join(".config")).unwrap();
    let gone: Vec<_> = missing(&config, &needs).iter().map(|r| r.option).collect();
    assert!(
        gone.is_empty(),
        "still missing after the merge: {gone:?}\n{config}"
    );
    assert!(
        config.contains("CONFIG_64BIT=y"),
        "the base's own options stay"
    );
    // The kernel the labs boot has everything either driver needs.
    let debian = std::fs::read_to_string(source.join(".config")).unwrap();
    let gone: Vec<_> = missing(&debian, &needs).iter().map(|r| r.option).collect();
    assert!(gone.is_empty(), "Debian's 7.3 kernel lacks {gone:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[cfg_attr(
    not(feature = "vm-tests"),
    ignore = "needs the Rust kernel's tree, which the full suite (tests/run) builds"
)]
fn a_kernel_tree_whose_config_lacks_an_option_is_refused_before_booting() {
    let (source, kernel, _) = kit::rust_kernel();
    let run = Run::new("kconfig-tree");
    // A built tree as kernel CI has one: its .config (Debian's, TUN
    // turned off) and its bzImage.
    let tree = run.dir.join("linux");
    std::fs::create_dir_all(tree.join("arch/x86/boot")).unwrap();
    std::fs::copy(source.join("Makefile"), tree.join("Makefile")).unwrap();
    std::fs::copy(kernel, tree.join("arch/x86/boot/bzImage")).unwrap();
    let config = std::fs::read_to_string(source.join(".config")).unwrap();
    assert!(config.contains("CONFIG_TUN=m\n") || config.contains("CONFIG_TUN=y\n"));
    let config = config
        .replace("CONFIG_TUN=m\n", "# CONFIG_TUN is not set\n")
        .replace("CONFIG_TUN=y\n", "# CONFIG_TUN is not set\n");
    std::fs::write(tree.join(".config"), config).unwrap();
    let lab = kit::topologies().join("two-node.yaml");
    let artifacts = run.dir.join("results");
    let started = std::time::Instant::now();
    let out = run.run(&[
        "test",
        lab.to_str().unwrap(),
        "--kernel-tree",
        tree.to_str().unwrap(),
        "--artifacts",
        artifacts.to_str().unwrap(),
    ]);
    let said = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(started.elapsed().as_secs() < 60, "refused, not booted");
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(artifacts.join("results.json")).unwrap())
            .unwrap();
    let boot = kit::case(&results, "boot", "lab", "error", "CONFIG_TUN");
    assert!(
        boot["message"].as_str().unwrap().contains(".config"),
        "says where it looked: {boot}"
    );
    assert!(
        !said.contains("CONFIG_VFIO_PCI"),
        "only what is missing: {said}"
    );
    run.assert_gone("two-node", None);
    // Without a tree: refused with the reason.
    let out = run.run(&[
        "test",
        lab.to_str().unwrap(),
        "--kernel-tree",
        run.dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no arch/x86/boot/bzImage"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_kernel_driver_lab_on_a_kernel_of_ones_own_needs_its_tree_rust_and_rustc() {
    let run = Run::new("kconfig-rust-tree");
    // A built tree as far as vni-lab looks before booting: everything the
    // kernel driver needs in its .config, its symbols, release and Rust
    // crates, but built by a rustc that is not the one here.
    let tree = run.dir.join("linux");
    for dir in ["arch/x86/boot", "include/config", "rust"] {
        std::fs::create_dir_all(tree.join(dir)).unwrap();
    }
    let release = "7.3.0-vni-fake";
    std::fs::write(
        tree.join("arch/x86/boot/bzImage"),
        vni_lab::own_kernel::release_only_image(release),
    )
    .unwrap();
    std::fs::write(tree.join("Makefile"), "").unwrap();
    std::fs::write(tree.join("Module.symvers"), "").unwrap();
    std::fs::write(tree.join("include/config/kernel.release"), release).unwrap();
    std::fs::write(tree.join("rust/libkernel.rmeta"), "").unwrap();
    let needs = requirements(&[Driver::Kernel], Network::Vni);
    let mut config: String = needs.iter().map(|r| format!("{}=y\n", r.option)).collect();
    config.push_str("CONFIG_RUSTC_VERSION_TEXT=\"rustc 0.0.1 (vni-lab test)\"\n");
    std::fs::write(tree.join(".config"), &config).unwrap();
    let lab = kit::topologies().join("two-node-kernel.yaml");
    let refused = |args: &[&str], says: &[&str]| {
        let artifacts = run.dir.join("results");
        let mut all = vec![
            "test",
            lab.to_str().unwrap(),
            "--artifacts",
            artifacts.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        let started = std::time::Instant::now();
        let out = run.run(&all);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        assert!(started.elapsed().as_secs() < 60, "refused, not booted");
        let results: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(artifacts.join("results.json")).unwrap())
                .unwrap();
        for text in says {
            kit::case(&results, "boot", "lab", "error", text);
        }
        run.assert_gone("two-node-kernel", None);
    };
    let tree_arg = tree.to_str().unwrap();
    refused(
        &["--kernel-tree", tree_arg],
        &[
            "the kernel was built with `rustc 0.0.1 (vni-lab test)`",
            "a Rust module must be built by the rustc that built the kernel",
        ],
    );
    // Not built: its Rust crates missing.
    std::fs::remove_file(tree.join("rust/libkernel.rmeta")).unwrap();
    refused(
        &["--kernel-tree", tree_arg],
        &["rust/libkernel.rmeta is missing: build the kernel first"],
    );
    // Without Rust.
    std::fs::write(tree.join(".config"), config.replace("CONFIG_RUST=y\n", "")).unwrap();
    refused(
        &["--kernel-tree", tree_arg],
        &["lacks what this lab needs", "CONFIG_RUST"],
    );
    // A loose kernel image, no tree to build the module against.
    let loose = run.dir.join("bzImage");
    std::fs::copy(tree.join("arch/x86/boot/bzImage"), &loose).unwrap();
    refused(
        &["--kernel", loose.to_str().unwrap()],
        &[
            "none was found for 7.3.0-vni-fake",
            "give --kernel-tree DIR",
        ],
    );
}
