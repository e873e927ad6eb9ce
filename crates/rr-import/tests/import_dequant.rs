//! Unit tests of the import building blocks: ggml dequantisation on hand-built blocks with
//! hand-computed values, and the rotary q/k row permutation.

mod common;

use common::llamacpp_permute;
use rr_import::gguf::{dequantize, GgmlType};
use rr_import::{interleaved_to_halves, to_rotary_layout, RotaryLayout};

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn f32_is_copied() {
    let vals = [1.5f32, -2.0, 0.0, f32::MIN_POSITIVE, 3.0e38];
    assert_eq!(
        dequantize(GgmlType::F32, &f32_bytes(&vals), 5).unwrap(),
        vals
    );
}

#[test]
fn f16_values() {
    // 0x3C00 = 1.0, 0xC000 = -2.0, 0x3555 = 0.333251953125, 0x7BFF = 65504 (max), 0x0001 = 2^-24
    let bytes = [0x00, 0x3C, 0x00, 0xC0, 0x55, 0x35, 0xFF, 0x7B, 0x01, 0x00];
    let got = dequantize(GgmlType::F16, &bytes, 5).unwrap();
    assert_eq!(got, [1.0, -2.0, 0.333_251_95, 65504.0, 5.960_464_5e-8]);
}

#[test]
fn bf16_values() {
    // bf16 is the top half of an f32: 0x3F80 = 1.0, 0xC0A0 = -5.0, 0x4049 = 3.140625
    let bytes = [0x80, 0x3F, 0xA0, 0xC0, 0x49, 0x40];
    assert_eq!(
        dequantize(GgmlType::BF16, &bytes, 3).unwrap(),
        [1.0, -5.0, 3.140625]
    );
}

#[test]
fn q8_0_block() {
    // d = 0.5 (f16 0x3800), then 32 int8: value = q * d
    let mut block = vec![0x00, 0x38];
    let qs: [i8; 32] = [
        0, 1, -1, 127, -128, 2, -2, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 100,
    ];
    block.extend(qs.iter().map(|&q| q as u8));
    let got = dequantize(GgmlType::Q8_0, &block, 32).unwrap();
    assert_eq!(&got[..8], &[0.0, 0.5, -0.5, 63.5, -64.0, 1.0, -1.0, 5.0]);
    assert_eq!(got[31], 50.0);
    assert!(got[8..31].iter().all(|&v| v == 0.0));
}

#[test]
fn q4_0_block_low_nibbles_first() {
    // d = 2.0 (f16 0x4000); qs[j] low nibble is element j, high nibble element j + 16;
    // value = (nibble - 8) * d
    let mut block = vec![0x00, 0x40];
    let mut qs = [0x88u8; 16]; // nibble 8 -> 0.0
    qs[0] = 0x8F; // e0 = (15-8)*2 = 14, e16 = (8-8)*2 = 0
    qs[1] = 0x10; // e1 = (0-8)*2 = -16, e17 = (1-8)*2 = -14
    qs[15] = 0xF0; // e15 = -16, e31 = 14
    block.extend(qs);
    let got = dequantize(GgmlType::Q4_0, &block, 32).unwrap();
    assert_eq!(got[0], 14.0);
    assert_eq!(got[16], 0.0);
    assert_eq!(got[1], -16.0);
    assert_eq!(got[17], -14.0);
    assert_eq!(got[15], -16.0);
    assert_eq!(got[31], 14.0);
    assert!(got
        .iter()
        .enumerate()
        .all(|(i, &v)| [0, 1, 15, 16, 17, 31].contains(&i) || v == 0.0));
}

#[test]
fn q4_1_block_scale_and_min() {
    // d = 0.25 (f16 0x3400), m = -1.0 (f16 0xBC00); value = nibble * d + m
    let mut block = vec![0x00, 0x34, 0x00, 0xBC];
    let mut qs = [0x44u8; 16]; // nibble 4 -> 0.0
    qs[0] = 0x3A; // e0 = 10*0.25 - 1 = 1.5, e16 = 3*0.25 - 1 = -0.25
    qs[7] = 0xF0; // e7 = -1.0, e23 = 15*0.25 - 1 = 2.75
    block.extend(qs);
    let got = dequantize(GgmlType::Q4_1, &block, 32).unwrap();
    assert_eq!(got[0], 1.5);
    assert_eq!(got[16], -0.25);
    assert_eq!(got[7], -1.0);
    assert_eq!(got[23], 2.75);
    assert_eq!(got[1], 0.0);
}

#[test]
fn two_blocks_are_independent() {
    // Q8_0, block 0 with d = 1, block 1 with d = -0.25 (0xB400)
    let mut data = vec![0x00, 0x3C];
    data.extend([3u8; 32]);
    data.extend([0x00, 0xB4]);
    data.extend([4u8; 32]);
    let got = dequantize(GgmlType::Q8_0, &data, 64).unwrap();
    assert!(got[..32].iter().all(|&v| v == 3.0));
    assert!(got[32..].iter().all(|&v| v == -1.0));
}

#[test]
fn unsupported_type_is_a_clear_error() {
    let err = dequantize(GgmlType(13), &[0u8; 176], 256)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Q5_K") && err.contains("not supported yet"),
        "{err}"
    );
    assert!(err.contains("F32, F16, BF16, Q8_0, Q4_0, Q4_1"), "{err}");
    let err = dequantize(GgmlType(999), &[], 0).unwrap_err().to_string();
    assert!(err.contains("unknown type 999"), "{err}");
}

#[test]
fn wrong_sizes_are_errors_not_panics() {
    // 31 elements is not a whole Q8_0 block; 33 bytes is one byte short of a block.
    assert!(dequantize(GgmlType::Q8_0, &[0u8; 34], 31).is_err());
    assert!(dequantize(GgmlType::Q8_0, &[0u8; 33], 32).is_err());
    assert!(dequantize(GgmlType::F32, &[0u8; 7], 2).is_err());
    assert!(dequantize(GgmlType::Q4_1, &[0u8; 21], 32).is_err());
}

// ------------------------------------------------------------------------------------------
// Rotary permutation

#[test]
fn permutation_hand_checked() {
    // One head of dim 4, one input: HF halves [x0, x1 | y0, y1] are stored interleaved as
    // [x0, y0, x1, y1]; rows 0..4 of the interleaved file are HF rows 0, 2, 1, 3.
    assert_eq!(
        interleaved_to_halves(&[0., 1., 2., 3.], 1, 4, 1).unwrap(),
        [0., 2., 1., 3.]
    );
    // head dim 6: interleaved rows (a0 b0 a1 b1 a2 b2) -> (a0 a1 a2 b0 b1 b2)
    assert_eq!(
        interleaved_to_halves(&[0., 1., 2., 3., 4., 5.], 1, 6, 1).unwrap(),
        [0., 2., 4., 1., 3., 5.]
    );
    // two heads of dim 4, rows of 2 inputs: the permutation stays within each head.
    let w: Vec<f32> = (0..16).map(|v| v as f32).collect();
    let got = interleaved_to_halves(&w, 2, 4, 2).unwrap();
    let rows: Vec<f32> = got.chunks(2).map(|r| r[0] / 2.0).collect();
    assert_eq!(rows, [0., 2., 1., 3., 4., 6., 5., 7.]);
    assert!(
        got.chunks(2).all(|r| r[1] == r[0] + 1.0),
        "whole rows move together"
    );
}

#[test]
fn permutation_inverts_llamacpp_converter() {
    for &(heads, hd, inp) in &[(1usize, 2usize, 1usize), (3, 8, 5), (9, 64, 3), (4, 16, 7)] {
        let w: Vec<f32> = (0..heads * hd * inp)
            .map(|i| (i as f32) * 0.5 - 7.0)
            .collect();
        let gguf = llamacpp_permute(&w, heads, hd, inp);
        assert_eq!(
            to_rotary_layout(&w, heads, hd, inp, RotaryLayout::Interleaved).unwrap(),
            gguf,
            "forward matches llama.cpp"
        );
        assert_eq!(
            interleaved_to_halves(&gguf, heads, hd, inp).unwrap(),
            w,
            "inverse restores HF"
        );
        let back = to_rotary_layout(
            &interleaved_to_halves(&w, heads, hd, inp).unwrap(),
            heads,
            hd,
            inp,
            RotaryLayout::Interleaved,
        );
        assert_eq!(back.unwrap(), w, "other composition is identity too");
        if hd > 2 {
            assert_ne!(gguf, w, "the permutation is not trivial for head_dim {hd}");
        }
    }
}

#[test]
fn permutation_rejects_bad_shapes() {
    assert!(
        interleaved_to_halves(&[0.; 6], 1, 3, 2).is_err(),
        "odd head_dim"
    );
    assert!(
        interleaved_to_halves(&[0.; 7], 1, 4, 2).is_err(),
        "wrong length"
    );
}
