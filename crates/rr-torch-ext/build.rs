//! Compiles `csrc/ext.cpp`, `csrc/dist.cpp` and `csrc/cuda_graph.cpp` against the headers of the libtorch that
//! torch-sys found (the venv's wheel ships them under `torch/include`), then applies the shared
//! link flags.
//!
//! The c10d process groups in `dist.cpp`: Gloo needs the third-party `gloo/*.h` headers, which the
//! wheel lacks; they come from `/usr/include/gloo` or from Debian's `libgloo-dev` unpacked into
//! `<root>/.deps/gloo` by `cargo xtask setup` (tch-notes §11). NCCL (and the CUDA-graph
//! bindings) need the CUDA headers: the wheel's `nvidia/cu13/include` and `nvidia/nccl/include`,
//! completed by the header-only wheels `nvidia-cuda-crt` and `nvidia-cuda-cccl` that `cargo xtask
//! setup` unpacks into `<root>/.deps/cuda/include` (tch-notes §6). They are compiled in only
//! when all of these are present; without them rr builds and runs on CPU.

#[path = "../../build/link_torch.rs"]
mod link_torch;

use std::path::{Path, PathBuf};

fn main() {
    link_torch::main();
    println!("cargo:rerun-if-changed=csrc/ext.cpp");
    println!("cargo:rerun-if-changed=csrc/dist.cpp");
    println!("cargo:rerun-if-changed=csrc/cuda_graph.cpp");
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
        // c10/cuda/CUDAEvent.h aligns by std::hardware_destructive_interference_size.
        .flag_if_supported("-Wno-interference-size")
        .opt_level(2)
        .file("csrc/ext.cpp")
        .file("csrc/dist.cpp")
        .file("csrc/cuda_graph.cpp");
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
    // RR_WITH_CUDA: the CUDA-graph bindings; RR_WITH_NCCL: ProcessGroupNCCL. Both need the
    // same headers and libtorch_cuda, so they come together.
    if let Some(dirs) = cuda_includes(torch) {
        build
            .define("RR_WITH_CUDA", None)
            .define("RR_WITH_NCCL", None)
            .define("USE_C10D_NCCL", None)
            .define("USE_CUDA", None);
        for dir in dirs {
            build.include(dir);
        }
        // The CUDA stream functions (getStreamFromPool, setCurrentCUDAStream) live in
        // libc10_cuda; ProcessGroupNCCL and CUDAGraph in libtorch_cuda (link_torch.rs).
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
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

/// The wheel's CUDA and NCCL include folders plus the project-local headers the wheel lacks
/// (`crt/host_config.h`, `nv/target`: `<root>/.deps/cuda/include`, fetched by `cargo xtask
/// setup`), when every header ProcessGroupNCCL and CUDAGraph need is there.
fn cuda_includes(torch: &Path) -> Option<Vec<PathBuf>> {
    let nvidia = torch.parent()?.join("nvidia");
    let cuda = nvidia.join("cu13/include");
    let nccl = nvidia.join("nccl/include");
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.deps/cuda/include");
    let needed = [
        cuda.join("cuda_runtime.h"),
        nccl.join("nccl.h"),
        local.join("crt/host_config.h"),
        local.join("nv/target"),
    ];
    let missing: Vec<_> = needed.iter().filter(|p| !p.exists()).collect();
    if !missing.is_empty() {
        // Only worth a warning where the wheel has CUDA at all.
        if cuda.exists() {
            println!(
                "cargo:warning=CUDA headers missing ({}): rr builds without NCCL and CUDA graphs (run `cargo xtask setup`)",
                missing[0].display()
            );
        }
        return None;
    }
    println!(
        "cargo:rerun-if-changed={}",
        local.join("crt/host_config.h").display()
    );
    Some(vec![cuda, nccl, local])
}
