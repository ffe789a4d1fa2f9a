//! `vni-lab kconfig`: the fragment it prints merges with the kernel's own
//! `scripts/kconfig/merge_config.sh` (from the kernel tree the
//! kernel-driver labs build) into a config that then has every option a
//! lab needs, and Debian's Rust kernel, which the labs boot, has them all.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{text, Run};
use vni_lab::kconfig::{missing, requirements};
use vni_lab::topology::{Driver, Network};

/// The cached kernel tree's source, if one was built on this machine.
fn kernel_source() -> Option<PathBuf> {
    let trees = vni_lab::image::cache_dir().join("kernel-trees");
    std::fs::read_dir(trees)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("root/usr/src/linux"))
        .find(|p| p.join("scripts/kconfig/merge_config.sh").exists())
}

#[test]
fn the_fragment_merges_into_a_config_that_has_what_a_lab_needs() {
    let run = Run::new("kconfig");
    let out = run.run(&["kconfig", "--driver", "user,kernel"]);
    assert_eq!(out.status.code(), Some(0));
    let fragment = text(&out.stdout);
    let needs = requirements(&[Driver::User, Driver::Kernel], Network::Vni);
    for r in &needs {
        assert!(
            fragment.contains(&format!("{}=y\n", r.option)),
            "{fragment}"
        );
    }
    let Some(source) = kernel_source() else {
        eprintln!("SKIPPED: no cached kernel tree with merge_config.sh");
        return;
    };
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
