//! Helpers shared by the integration tests of `rr-import` (include with `mod common;`): the two
//! that the importer tests use from `rr-model/tests/common/mod.rs`, and llama.cpp's q/k row
//! permutation. Not every test binary uses every helper.
#![allow(dead_code)]

#[allow(unused_imports)] // not every test binary needs each
pub use rr_util::test_data::{shared_data as shared_data_dir, workspace_root};

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
