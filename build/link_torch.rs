//! Shared build script for every crate whose binaries or tests link libtorch.
//!
//! Cargo applies `rustc-link-arg` only to the targets of the package whose build script
//! printed it, so each such crate points `build = "../../build/link_torch.rs"` here and
//! depends on `torch-sys` directly (that is what makes `DEP_TCH_LIBTORCH_LIB` visible).
//!
//! Why the flags: the linker drops `libtorch_cuda.so` when no symbol from it is referenced
//! (`--as-needed`), and CUDA then silently disappears at run time. The rpath lets `rr` run
//! against the venv's `torch/lib` without `LD_LIBRARY_PATH`.
use std::path::Path;

pub fn main() {
    println!("cargo:rerun-if-changed=../../build/link_torch.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let lib_dir = std::env::var_os("DEP_TCH_LIBTORCH_LIB");
    if let Some(dir) = &lib_dir {
        println!(
            "cargo:rustc-link-arg=-Wl,-rpath={}",
            Path::new(dir).display()
        );
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
    let has_cuda = lib_dir
        .as_ref()
        .map(|d| Path::new(d).join("libtorch_cuda.so").exists())
        .unwrap_or(false);
    if has_cuda {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
    }
    println!("cargo:rustc-link-arg=-Wl,--as-needed");
}
