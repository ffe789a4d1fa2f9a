//! The kernel module's Rust under the kernel's own lints: `make CLIPPY=1`
//! in the build root of the kernel the kernel-driver labs boot, with the
//! kernel's clippy settings and the clippy of the toolchain that built
//! the kernel. No warning may remain.

#[path = "../kit/mod.rs"]
mod kit;

#[test]
fn the_kernel_module_passes_the_kernels_clippy() {
    let (_, _, tree) = kit::rust_kernel();
    let checkout = vni_lab::guest_bin::module_source().expect("the module's source");
    let warnings = vni_lab::kmod::clippy(tree, &checkout).unwrap_or_else(|e| panic!("{e:#?}"));
    assert!(
        warnings.is_empty(),
        "{} clippy warnings in the kernel module:\n{}",
        warnings.len(),
        warnings.join("\n")
    );
}
