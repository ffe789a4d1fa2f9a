//! The core compiles as the kernel module compiles it: included by path
//! into a `#![no_std]` crate root of another crate, with no features, no
//! crates but `core`, `panic=abort`, and warnings as errors.

use std::path::Path;
use std::process::Command;

#[test]
fn the_core_builds_without_std_included_by_path() {
    let out = std::env::temp_dir().join(format!("vni-core-no-std-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs");
    let root = out.join("module_root.rs");
    // What `guest-driver/kernel`'s crate root does (lib.rs documents it).
    std::fs::write(
        &root,
        format!(
            "#![no_std]\n\
             #[allow(unused_attributes)]\n\
             #[path = {lib:?}]\n\
             pub mod vni_core;\n\
             pub fn max_frame() -> usize {{ vni_core::MAX_FRAME }}\n"
        ),
    )
    .unwrap();
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let output = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "rlib",
            "--crate-name",
            "vni_module",
        ])
        .args([
            "-C",
            "panic=abort",
            "-D",
            "warnings",
            "-D",
            "unsafe_op_in_unsafe_fn",
        ])
        .arg("--out-dir")
        .arg(&out)
        .arg(&root)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    std::fs::remove_dir_all(&out).unwrap();
    assert!(output.status.success(), "rustc failed:\n{stderr}");
}
