//! Helpers shared by the integration tests of `rr-import` (include with `mod common;`): the two
//! that the importer tests use from `rr-model/tests/common/mod.rs`, and llama.cpp's q/k row
//! permutation. Not every test binary uses every helper.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The workspace root (two levels above this crate's manifest).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The shared real-data folder: `$RR_SHARED_DATA`, else `<workspace>/../shared/data`.
///
/// When it is missing: panics under `CI=true` (CI must have it), otherwise prints why and returns
/// `None` so the caller can skip.
pub fn shared_data_dir() -> Option<PathBuf> {
    let (dir, from_env) = match std::env::var_os("RR_SHARED_DATA") {
        Some(d) if !d.is_empty() => (PathBuf::from(d), true),
        _ => (workspace_root().join("../shared/data"), false),
    };
    if dir.is_dir() {
        return Some(dir);
    }
    let how = if from_env {
        "RR_SHARED_DATA"
    } else {
        "default <workspace>/../shared/data (set RR_SHARED_DATA to override)"
    };
    let msg = format!("shared data directory {} not found ({how})", dir.display());
    if std::env::var("CI").map(|v| v == "true").unwrap_or(false) {
        panic!("{msg}; CI=true, so the shared data must be present");
    }
    eprintln!("skipping: {msg}");
    None
}

/// llama.cpp's converter permutation, HF rows -> GGUF rows, written out independently of the
/// importer: `w.reshape(n_head, 2, hd/2, in).swapaxes(1, 2).reshape(out, in)`, i.e.
/// new[h][j][t] = old[h][t][j].
pub fn llamacpp_permute(w: &[f32], n_head: usize, hd: usize, inp: usize) -> Vec<f32> {
    let half = hd / 2;
    let mut out = Vec::with_capacity(w.len());
    for h in 0..n_head {
        for j in 0..half {
            for t in 0..2 {
                let row = h * hd + t * half + j;
                out.extend_from_slice(&w[row * inp..(row + 1) * inp]);
            }
        }
    }
    out
}
