//! Compiles `csrc/ext.cpp` against the headers of the libtorch that torch-sys found (the
//! venv's wheel ships them under `torch/include`), then applies the shared link flags.

#[path = "../../build/link_torch.rs"]
mod link_torch;

use std::path::PathBuf;

fn main() {
    link_torch::main();
    println!("cargo:rerun-if-changed=csrc/ext.cpp");
    let lib = PathBuf::from(
        std::env::var_os("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys did not report DEP_TCH_LIBTORCH_LIB (is libtorch set up?)"),
    );
    // `<torch>/lib` → `<torch>/include`.
    let include = lib
        .parent()
        .expect("libtorch lib dir has a parent")
        .join("include");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .include(&include)
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .opt_level(2)
        .file("csrc/ext.cpp")
        .compile("rr_torch_ext");
}
