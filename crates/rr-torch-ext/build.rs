//! Compiles `csrc/ext.cpp` and `csrc/dist.cpp` against the headers of the libtorch that
//! torch-sys found (the venv's wheel ships them under `torch/include`), then applies the shared
//! link flags.
//!
//! The c10d process groups in `dist.cpp`: Gloo needs the third-party `gloo/*.h` headers, which the
//! wheel lacks; they come from `/usr/include/gloo` or from Debian's `libgloo-dev` unpacked into
//! `<root>/.deps/gloo` by `cargo xtask setup` (tch-notes §11). NCCL needs the CUDA headers,
//! including the header-only wheels `nvidia-cuda-crt` and `nvidia-cuda-cccl` (tch-notes §6); it
//! is compiled in only when they are present, so CPU-only machines build without them.

#[path = "../../build/link_torch.rs"]
mod link_torch;

use std::path::{Path, PathBuf};

fn main() {
    link_torch::main();
    println!("cargo:rerun-if-changed=csrc/ext.cpp");
    println!("cargo:rerun-if-changed=csrc/dist.cpp");
    let lib = PathBuf::from(
        std::env::var_os("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys did not report DEP_TCH_LIBTORCH_LIB (is libtorch set up?)"),
    );
    // `<torch>/lib` → `<torch>/include`.
    let torch = lib.parent().expect("libtorch lib dir has a parent");
    let include = torch.join("include");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .opt_level(2)
        .file("csrc/ext.cpp")
        .file("csrc/dist.cpp");
    match gloo_include() {
        Some(dir) => {
            build.define("RR_WITH_GLOO", None).define("USE_C10D_GLOO", None);
            if let Some(dir) = dir {
                build.include(dir);
            }
        }
        None => println!(
            "cargo:warning=gloo headers not found: rr will run on one process only (run `cargo xtask setup`)"
        ),
    }
    if let Some(cuda_includes) = nccl_includes(torch) {
        build
            .define("RR_WITH_NCCL", None)
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None);
        for dir in cuda_includes {
            build.include(dir);
        }
    }
    build.compile("rr_torch_ext");
}

/// `Some(None)`: the system has `/usr/include/gloo`; `Some(Some(dir))`: the project-local copy;
/// `None`: neither.
fn gloo_include() -> Option<Option<PathBuf>> {
    if Path::new("/usr/include/gloo/config.h").exists() {
        return Some(None);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let local = root.join(".deps/gloo/usr/include");
    let config = local.join("gloo/config.h");
    // Watched only when present: cargo reruns a build script on every build while a watched
    // path is missing. `cargo xtask setup` touches csrc/dist.cpp once it has fetched them.
    config.exists().then(|| {
        println!("cargo:rerun-if-changed={}", config.display());
        Some(local)
    })
}

/// The wheel's CUDA and NCCL include folders when every header ProcessGroupNCCL needs is there.
fn nccl_includes(torch: &Path) -> Option<Vec<PathBuf>> {
    let nvidia = torch.parent()?.join("nvidia");
    let cuda = nvidia.join("cu13/include");
    let nccl = nvidia.join("nccl/include");
    let needed = [
        cuda.join("cuda_runtime.h"),
        cuda.join("crt/host_config.h"),
        cuda.join("nv/target"),
        nccl.join("nccl.h"),
    ];
    needed
        .iter()
        .all(|p| p.exists())
        .then_some(vec![cuda, nccl])
}
