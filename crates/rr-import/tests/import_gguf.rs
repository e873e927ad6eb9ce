//! `import_gguf`:
//! - a tiny synthetic Llama GGUF built here (every supported tensor type, q/k permuted the way
//!   llama.cpp's converter does, a SentencePiece vocabulary with hand-computed tokenizations),
//!   which must come back as exactly the Hugging Face tensors it was made from;
//! - bad input (truncated, bad magic, unsupported type, other architecture, ...): one-line errors
//!   naming the file, and nothing left behind;
//! - the real SmolLM2-135M-Instruct Q4_1 GGUF (`RR_SMOLLM2_GGUF`, else
//!   `<workspace>/.cache/gguf/SmolLM2-135M-Instruct.Q4_1.gguf`): config and shapes, token ids
//!   equal to llama.cpp's (fixture made by `scripts/make_smollm2_token_fixture.py` with a real
//!   llama.cpp), and logits of the imported model close to llama.cpp's own.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::llamacpp_permute;
use half::{bf16, f16};
use rr_import::gguf::{import_gguf, GgufFile, Value};
use rr_import::tokenizer_build::{gpt2_tokenizer, Gpt2Vocab, TokenKind};
use rr_import::ImportSummary;
use rr_util::fs::StagingDir;
use safetensors::SafeTensors;
use serde_json::Value as Json;

// ----------------------------------------------------------------------------------------------
// A minimal GGUF writer (v3, little-endian), independent of the reader under test.

#[derive(Clone, Debug)]
enum Kv {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// Element type id, elements.
    Arr(u32, Vec<Kv>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Kv {
    fn type_id(&self) -> u32 {
        match self {
            Kv::U8(_) => 0,
            Kv::I8(_) => 1,
            Kv::U16(_) => 2,
            Kv::I16(_) => 3,
            Kv::U32(_) => 4,
            Kv::I32(_) => 5,
            Kv::F32(_) => 6,
            Kv::Bool(_) => 7,
            Kv::Str(_) => 8,
            Kv::Arr(..) => 9,
            Kv::U64(_) => 10,
            Kv::I64(_) => 11,
            Kv::F64(_) => 12,
        }
    }
    fn write(&self, b: &mut Vec<u8>) {
        match self {
            Kv::U8(v) => b.push(*v),
            Kv::I8(v) => b.push(*v as u8),
            Kv::U16(v) => b.extend(v.to_le_bytes()),
            Kv::I16(v) => b.extend(v.to_le_bytes()),
            Kv::U32(v) => b.extend(v.to_le_bytes()),
            Kv::I32(v) => b.extend(v.to_le_bytes()),
            Kv::F32(v) => b.extend(v.to_le_bytes()),
            Kv::Bool(v) => b.push(u8::from(*v)),
            Kv::Str(s) => write_str(b, s),
            Kv::Arr(t, items) => {
                b.extend(t.to_le_bytes());
                b.extend((items.len() as u64).to_le_bytes());
                for i in items {
                    i.write(b);
                }
            }
            Kv::U64(v) => b.extend(v.to_le_bytes()),
            Kv::I64(v) => b.extend(v.to_le_bytes()),
            Kv::F64(v) => b.extend(v.to_le_bytes()),
        }
    }
}

fn s(v: &str) -> Kv {
    Kv::Str(v.to_string())
}

fn write_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

struct TensorSpec {
    name: String,
    ne: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
}

fn gguf_bytes(kvs: &[(String, Kv)], tensors: &[TensorSpec]) -> Vec<u8> {
    const ALIGN: usize = 32;
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        write_str(&mut b, k);
        b.extend(v.type_id().to_le_bytes());
        v.write(&mut b);
    }
    let mut offset = 0usize;
    let mut offsets = Vec::new();
    for t in tensors {
        write_str(&mut b, &t.name);
        b.extend((t.ne.len() as u32).to_le_bytes());
        for d in &t.ne {
            b.extend(d.to_le_bytes());
        }
        b.extend(t.ty.to_le_bytes());
        b.extend((offset as u64).to_le_bytes());
        offsets.push(offset);
        offset = (offset + t.data.len()).div_ceil(ALIGN) * ALIGN;
    }
    b.resize(b.len().div_ceil(ALIGN) * ALIGN, 0);
    let start = b.len();
    for (t, off) in tensors.iter().zip(offsets) {
        b.resize(start + off, 0);
        b.extend(&t.data);
    }
    b
}

// ----------------------------------------------------------------------------------------------
// Encoding exactly representable values into each ggml type.

#[derive(Clone, Copy, Debug)]
enum Enc {
    F32,
    F16,
    Bf16,
    /// Q8_0 with the same scale d in every block: values are q * d.
    Q8(f32),
    /// Q4_0 with scale d: values are (n - 8) * d.
    Q40(f32),
    /// Q4_1 with scale d and min m: values are n * d + m.
    Q41(f32, f32),
}

impl Enc {
    fn type_id(self) -> u32 {
        match self {
            Enc::F32 => 0,
            Enc::F16 => 1,
            Enc::Bf16 => 30,
            Enc::Q8(_) => 8,
            Enc::Q40(_) => 2,
            Enc::Q41(..) => 3,
        }
    }

    /// A deterministic value `i` of a tensor seeded by `seed`, exactly representable in `self`.
    fn value(self, seed: u64, i: usize) -> f32 {
        let mut z = seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add((i as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9));
        z ^= z >> 31;
        z = z.wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 29;
        let r = (z % 1000) as i32; // 0..1000
        match self {
            Enc::F32 => (r as f32 - 500.0) * 0.001_37,
            Enc::F16 => (r % 256 - 128) as f32 / 1024.0,
            Enc::Bf16 => (r % 256 - 128) as f32 / 64.0,
            Enc::Q8(d) => (r % 255 - 127) as f32 * d,
            Enc::Q40(d) => (r % 16 - 8) as f32 * d,
            Enc::Q41(d, m) => (r % 16) as f32 * d + m,
        }
    }

    fn encode(self, values: &[f32]) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Enc::F32 => values.iter().for_each(|v| out.extend(v.to_le_bytes())),
            Enc::F16 => values
                .iter()
                .for_each(|v| out.extend(f16::from_f32(*v).to_le_bytes())),
            Enc::Bf16 => values
                .iter()
                .for_each(|v| out.extend(bf16::from_f32(*v).to_le_bytes())),
            Enc::Q8(d) => {
                for block in values.chunks(32) {
                    out.extend(f16::from_f32(d).to_le_bytes());
                    out.extend(block.iter().map(|v| (v / d).round() as i8 as u8));
                }
            }
            Enc::Q40(d) => {
                for block in values.chunks(32) {
                    out.extend(f16::from_f32(d).to_le_bytes());
                    let n = |v: f32| ((v / d).round() as i32 + 8) as u8;
                    out.extend((0..16).map(|j| n(block[j]) | (n(block[j + 16]) << 4)));
                }
            }
            Enc::Q41(d, m) => {
                for block in values.chunks(32) {
                    out.extend(f16::from_f32(d).to_le_bytes());
                    out.extend(f16::from_f32(m).to_le_bytes());
                    let n = |v: f32| ((v - m) / d).round() as u8;
                    out.extend((0..16).map(|j| n(block[j]) | (n(block[j + 16]) << 4)));
                }
            }
        }
        out
    }
}

// ----------------------------------------------------------------------------------------------
// The tiny model: hidden 32, 4 heads of 8, 2 kv heads, ffn 64, 2 layers, SentencePiece vocab.

const HIDDEN: usize = 32;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 8;
const FFN: usize = 64;
const LAYERS: usize = 2;

fn tiny_vocab() -> (Vec<String>, Vec<f32>, Vec<i32>) {
    let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0f32; 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    // Single characters score low; merged pieces in merge order.
    let pieces: [(&str, f32); 16] = [
        ("▁", -100.0),
        ("h", -101.0),
        ("e", -102.0),
        ("l", -103.0),
        ("o", -104.0),
        ("w", -105.0),
        ("r", -106.0),
        ("d", -107.0),
        ("he", -1.0),
        ("ll", -2.0),
        ("llo", -3.0),
        ("hello", -4.0),
        ("▁hello", -5.0),
        ("▁w", -6.0),
        ("or", -7.0),
        ("▁wor", -8.0),
    ];
    for (p, sc) in pieces {
        tokens.push(p.to_string());
        types.push(1);
        scores.push(sc);
    }
    for (p, sc) in [("ld", -9.0), ("▁world", -10.0)] {
        tokens.push(p.to_string());
        types.push(1);
        scores.push(sc);
    }
    (tokens, scores, types)
}

/// (gguf name, hf name, hf shape, encoding, heads when llama.cpp permuted the rows)
type Spec = (String, String, Vec<usize>, Enc, Option<usize>);

struct TinyModel {
    bytes: Vec<u8>,
    /// HF name -> (shape, values) the import must reproduce exactly.
    expected: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    vocab: Vec<String>,
}

/// Options for variants of the tiny model.
#[derive(Clone)]
struct TinyOpts {
    architecture: String,
    tied: bool,
    /// Replace the type of blk.0.attn_q with this raw ggml type id.
    q_type_override: Option<u32>,
    extra_tensor: Option<String>,
    /// Append this normal token to the vocabulary.
    extra_token: Option<String>,
}

impl Default for TinyOpts {
    fn default() -> Self {
        Self {
            architecture: "llama".into(),
            tied: true,
            q_type_override: None,
            extra_tensor: None,
            extra_token: None,
        }
    }
}

fn tiny_model(opts: &TinyOpts) -> TinyModel {
    let (mut tokens, mut scores, mut types) = tiny_vocab();
    if let Some(t) = &opts.extra_token {
        tokens.push(t.clone());
        scores.push(-50.0);
        types.push(1);
    }
    let vocab = tokens.len();
    let arch = opts.architecture.clone();
    let key = |k: &str| format!("{arch}.{k}");
    let kvs: Vec<(String, Kv)> = vec![
        ("general.architecture".into(), s(&arch)),
        ("general.name".into(), s("tiny test model")),
        (key("block_count"), Kv::U32(LAYERS as u32)),
        (key("context_length"), Kv::U32(128)),
        (key("embedding_length"), Kv::U32(HIDDEN as u32)),
        (key("feed_forward_length"), Kv::U32(FFN as u32)),
        (key("attention.head_count"), Kv::U32(HEADS as u32)),
        (key("attention.head_count_kv"), Kv::U32(KV_HEADS as u32)),
        (key("attention.layer_norm_rms_epsilon"), Kv::F32(1e-6)),
        (key("rope.freq_base"), Kv::F32(500000.0)),
        (key("rope.dimension_count"), Kv::U32(HEAD_DIM as u32)),
        ("tokenizer.ggml.model".into(), s("llama")),
        (
            "tokenizer.ggml.tokens".into(),
            Kv::Arr(8, tokens.iter().map(|t| s(t)).collect()),
        ),
        (
            "tokenizer.ggml.scores".into(),
            Kv::Arr(6, scores.iter().map(|&v| Kv::F32(v)).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Kv::Arr(5, types.iter().map(|&v| Kv::I32(v)).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Kv::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Kv::U32(2)),
        ("tokenizer.ggml.unknown_token_id".into(), Kv::U32(0)),
        ("tokenizer.ggml.add_bos_token".into(), Kv::Bool(true)),
        ("tokenizer.chat_template".into(), s("{{ messages }}")),
        // One of every other metadata type, to exercise the reader.
        ("test.u8".into(), Kv::U8(200)),
        ("test.i8".into(), Kv::I8(-100)),
        ("test.u16".into(), Kv::U16(60000)),
        ("test.i16".into(), Kv::I16(-30000)),
        ("test.u64".into(), Kv::U64(1 << 40)),
        ("test.i64".into(), Kv::I64(-(1 << 40))),
        ("test.f64".into(), Kv::F64(0.125)),
        (
            "test.nested".into(),
            Kv::Arr(
                9,
                vec![Kv::Arr(4, vec![Kv::U32(1), Kv::U32(2)]), Kv::Arr(4, vec![])],
            ),
        ),
        (
            "test.bools".into(),
            Kv::Arr(7, vec![Kv::Bool(true), Kv::Bool(false)]),
        ),
    ];

    let mut specs: Vec<Spec> = vec![(
        "token_embd.weight".into(),
        "model.embed_tokens.weight".into(),
        vec![vocab, HIDDEN],
        Enc::F16,
        None,
    )];
    let layer_encs = [
        [
            Enc::Q8(0.5),
            Enc::Q40(0.125),
            Enc::Q41(0.25, -1.5),
            Enc::Bf16,
            Enc::F32,
            Enc::Q8(0.0625),
            Enc::Q41(0.5, -4.0),
        ],
        [
            Enc::Q41(0.125, -1.0),
            Enc::Q8(0.25),
            Enc::F16,
            Enc::Q40(0.5),
            Enc::Bf16,
            Enc::F16,
            Enc::Q8(1.0),
        ],
    ];
    for (i, e) in layer_encs.iter().enumerate() {
        let hf = |n: &str| format!("model.layers.{i}.{n}");
        let g = |n: &str| format!("blk.{i}.{n}");
        specs.push((
            g("attn_norm.weight"),
            hf("input_layernorm.weight"),
            vec![HIDDEN],
            Enc::F32,
            None,
        ));
        specs.push((
            g("attn_q.weight"),
            hf("self_attn.q_proj.weight"),
            vec![HEADS * HEAD_DIM, HIDDEN],
            e[0],
            Some(HEADS),
        ));
        specs.push((
            g("attn_k.weight"),
            hf("self_attn.k_proj.weight"),
            vec![KV_HEADS * HEAD_DIM, HIDDEN],
            e[1],
            Some(KV_HEADS),
        ));
        specs.push((
            g("attn_v.weight"),
            hf("self_attn.v_proj.weight"),
            vec![KV_HEADS * HEAD_DIM, HIDDEN],
            e[2],
            None,
        ));
        specs.push((
            g("attn_output.weight"),
            hf("self_attn.o_proj.weight"),
            vec![HIDDEN, HEADS * HEAD_DIM],
            e[3],
            None,
        ));
        specs.push((
            g("ffn_norm.weight"),
            hf("post_attention_layernorm.weight"),
            vec![HIDDEN],
            Enc::F32,
            None,
        ));
        specs.push((
            g("ffn_gate.weight"),
            hf("mlp.gate_proj.weight"),
            vec![FFN, HIDDEN],
            e[4],
            None,
        ));
        specs.push((
            g("ffn_up.weight"),
            hf("mlp.up_proj.weight"),
            vec![FFN, HIDDEN],
            e[5],
            None,
        ));
        specs.push((
            g("ffn_down.weight"),
            hf("mlp.down_proj.weight"),
            vec![HIDDEN, FFN],
            e[6],
            None,
        ));
    }
    specs.push((
        "output_norm.weight".into(),
        "model.norm.weight".into(),
        vec![HIDDEN],
        Enc::F32,
        None,
    ));
    if !opts.tied {
        specs.push((
            "output.weight".into(),
            "lm_head.weight".into(),
            vec![vocab, HIDDEN],
            Enc::Q8(0.03125),
            None,
        ));
    }
    if let Some(extra) = &opts.extra_tensor {
        specs.push((extra.clone(), String::new(), vec![HIDDEN], Enc::F32, None));
    }

    let mut expected = BTreeMap::new();
    let mut tensors = Vec::new();
    for (seed, (gname, hname, shape, enc, permute)) in specs.into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let hf_values: Vec<f32> = (0..n).map(|i| enc.value(seed as u64 + 1, i)).collect();
        let stored = match permute {
            Some(heads) => llamacpp_permute(&hf_values, heads, HEAD_DIM, shape[1]),
            None => hf_values.clone(),
        };
        let mut ty = enc.type_id();
        if gname == "blk.0.attn_q.weight" {
            if let Some(t) = opts.q_type_override {
                ty = t;
            }
        }
        tensors.push(TensorSpec {
            name: gname,
            ne: shape.iter().rev().map(|&d| d as u64).collect(),
            ty,
            data: enc.encode(&stored),
        });
        if !hname.is_empty() {
            expected.insert(hname, (shape, hf_values));
        }
    }
    TinyModel {
        bytes: gguf_bytes(&kvs, &tensors),
        expected,
        vocab: tokens,
    }
}

fn read_f32_tensors(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F32, "{name}");
            let vals = v
                .data()
                .chunks(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (name, (v.shape().to_vec(), vals))
        })
        .collect()
}

fn read_json(path: &Path) -> Json {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

fn write_tiny(dir: &Path, name: &str, opts: &TinyOpts) -> (PathBuf, TinyModel) {
    let m = tiny_model(opts);
    let path = dir.join(name);
    fs::write(&path, &m.bytes).unwrap();
    (path, m)
}

#[test]
fn tiny_gguf_imports_to_the_exact_hf_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    for tied in [true, false] {
        let (path, m) = write_tiny(
            tmp.path(),
            &format!("tiny_{tied}.gguf"),
            &TinyOpts {
                tied,
                ..Default::default()
            },
        );
        let out = tmp.path().join(format!("out_{tied}"));
        let summary = import_gguf(&path, &out).unwrap();

        let got = read_f32_tensors(&out.join("model.safetensors"));
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            m.expected.keys().collect::<Vec<_>>()
        );
        for (name, (shape, vals)) in &m.expected {
            assert_eq!(&got[name].0, shape, "{name} shape");
            assert!(got[name].1 == *vals, "{name} values differ");
        }
        assert_eq!(summary.num_tensors, m.expected.len());
        assert_eq!(
            summary.num_parameters,
            m.expected.values().map(|(_, v)| v.len()).sum::<usize>()
        );
        assert_eq!(summary.architecture, "llama");

        let cfg = read_json(&out.join("config.json"));
        let expect = serde_json::json!({
            "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": HIDDEN,
            "intermediate_size": FFN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
            "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM, "vocab_size": m.vocab.len(),
            "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 500000.0,
            "tie_word_embeddings": tied, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
            "hidden_act": "silu", "attention_bias": false, "mlp_bias": false,
        });
        for (k, v) in expect.as_object().unwrap() {
            assert_eq!(&cfg[k], v, "config {k}");
        }
        let gen = read_json(&out.join("generation_config.json"));
        assert_eq!(
            (gen["bos_token_id"].as_u64(), gen["eos_token_id"].as_u64()),
            (Some(1), Some(2))
        );
        let tcfg = read_json(&out.join("tokenizer_config.json"));
        assert_eq!(tcfg["chat_template"], "{{ messages }}");
        assert_eq!(tcfg["add_bos_token"], true);
    }
}

#[test]
fn tiny_gguf_sentencepiece_tokenizer_hand_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, m) = write_tiny(tmp.path(), "tiny.gguf", &TinyOpts::default());
    let out = tmp.path().join("out");
    let summary = import_gguf(&path, &out).unwrap();
    assert!(
        summary.tokenizer.contains("SentencePiece") && summary.tokenizer.contains("277 tokens"),
        "{}",
        summary.tokenizer
    );
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let id = |t: &str| m.vocab.iter().position(|v| v == t).unwrap() as u32;
    let enc = |text: &str| tok.encode(text, true).unwrap().get_ids().to_vec();
    // "▁hello": ▁ h e l l o -> he (-1) -> ll (-2) -> llo (-3) -> hello (-4) -> ▁hello (-5)
    assert_eq!(enc("hello"), [1, id("▁hello")]);
    assert_eq!(enc("hello world"), [1, id("▁hello"), id("▁world")]);
    // "hex": ▁ he x; x is not a piece -> byte fallback <0x78>
    assert_eq!(enc("hex"), [1, id("▁"), id("he"), id("<0x78>")]);
    // "é" is two bytes C3 A9
    assert_eq!(enc("é"), [1, id("▁"), id("<0xC3>"), id("<0xA9>")]);
    // Control tokens in the text are matched as special tokens.
    assert_eq!(enc("</s>"), [1, 2]);
    assert_eq!(
        tok.decode(&enc("hello world hex é"), true).unwrap(),
        "hello world hex é"
    );
}

#[test]
fn metadata_of_every_type_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = write_tiny(tmp.path(), "tiny.gguf", &TinyOpts::default());
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.alignment, 32);
    assert_eq!(g.get("test.u8"), Some(&Value::U8(200)));
    assert_eq!(g.get("test.i8"), Some(&Value::I8(-100)));
    assert_eq!(g.get("test.u16"), Some(&Value::U16(60000)));
    assert_eq!(g.get("test.i16"), Some(&Value::I16(-30000)));
    assert_eq!(g.get("test.u64"), Some(&Value::U64(1 << 40)));
    assert_eq!(g.get("test.i64"), Some(&Value::I64(-(1 << 40))));
    assert_eq!(g.get("test.f64"), Some(&Value::F64(0.125)));
    assert_eq!(
        g.get("llama.attention.layer_norm_rms_epsilon"),
        Some(&Value::F32(1e-6))
    );
    assert_eq!(
        g.get("tokenizer.ggml.add_bos_token"),
        Some(&Value::Bool(true))
    );
    assert_eq!(
        g.get("general.name"),
        Some(&Value::String("tiny test model".into()))
    );
    assert_eq!(
        g.get("test.nested"),
        Some(&Value::Array(vec![
            Value::Array(vec![Value::U32(1), Value::U32(2)]),
            Value::Array(vec![])
        ]))
    );
    assert_eq!(
        g.get("test.bools"),
        Some(&Value::Array(vec![Value::Bool(true), Value::Bool(false)]))
    );
    assert_eq!(g.tensors.len(), 1 + LAYERS * 9 + 1);
    let q = g
        .tensors
        .iter()
        .find(|t| t.name == "blk.0.attn_q.weight")
        .unwrap();
    assert_eq!(q.ne, [HIDDEN as u64, (HEADS * HEAD_DIM) as u64]);
    assert_eq!(q.hf_shape(), [HEADS * HEAD_DIM, HIDDEN]);
}

// ----------------------------------------------------------------------------------------------
// Bad input

fn err_of(result: anyhow::Result<ImportSummary>) -> String {
    let err = format!("{:#}", result.expect_err("expected an error"));
    assert!(!err.contains('\n'), "errors are one line: {err:?}");
    err
}

fn assert_mentions(err: &str, needles: &[&str]) {
    for n in needles {
        assert!(err.contains(n), "error {err:?} should mention {n:?}");
    }
}

/// Nothing but the listed files is in `dir` (no output, no temporary directories).
fn assert_only(dir: &Path, files: &[&str]) {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = files.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(names, want);
}

#[test]
fn truncated_gguf_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tiny_model(&TinyOpts::default());
    let len = m.bytes.len();
    // Cut inside: the magic, the counts, a metadata key, the token array, the tensor infos, the
    // data of the last tensor.
    for cut in [0, 2, 10, 30, 200, 3000, len / 2, len - 100, len - 1] {
        let path = tmp.path().join("cut.gguf");
        fs::write(&path, &m.bytes[..cut]).unwrap();
        let err = err_of(import_gguf(&path, &tmp.path().join("out")));
        assert_mentions(&err, &["cut.gguf"]);
        assert!(
            err.contains("truncated") || err.contains("too short"),
            "cut at {cut}: {err}"
        );
        assert_only(tmp.path(), &["cut.gguf"]);
    }
}

#[test]
fn absurd_counts_fail_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    // A header claiming 2^60 metadata entries, and one claiming a 2^62-element array.
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend((1u64 << 60).to_le_bytes());
    let path = tmp.path().join("huge.gguf");
    fs::write(&path, &b).unwrap();
    assert_mentions(
        &err_of(import_gguf(&path, &tmp.path().join("o"))),
        &["huge.gguf", "truncated"],
    );

    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    write_str(&mut b, "big.array");
    b.extend(9u32.to_le_bytes());
    b.extend(10u32.to_le_bytes());
    b.extend((1u64 << 62).to_le_bytes());
    fs::write(&path, &b).unwrap();
    assert_mentions(
        &err_of(import_gguf(&path, &tmp.path().join("o"))),
        &["huge.gguf", "big.array", "truncated"],
    );
    // A string longer than the file.
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    b.extend(u64::MAX.to_le_bytes());
    fs::write(&path, &b).unwrap();
    assert_mentions(
        &err_of(import_gguf(&path, &tmp.path().join("o"))),
        &["huge.gguf", "truncated"],
    );
}

/// A tiny deterministic generator for the corruption test.
fn lcg(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

#[test]
fn corrupted_headers_never_panic() {
    // Random byte changes anywhere in the header, metadata and tensor infos must give an error
    // (or, if harmless, a valid import), never a panic or a huge allocation.
    let tmp = tempfile::tempdir().unwrap();
    let m = tiny_model(&TinyOpts::default());
    let header_len = GgufFile::open(&{
        let p = tmp.path().join("ok.gguf");
        fs::write(&p, &m.bytes).unwrap();
        p
    })
    .unwrap()
    .data_offset as usize;
    let mut state = 42u64;
    let path = tmp.path().join("corrupt.gguf");
    let (mut ok, mut err) = (0, 0);
    for round in 0..400 {
        let mut bytes = m.bytes.clone();
        for _ in 0..1 + round % 4 {
            let pos = lcg(&mut state) as usize % header_len;
            bytes[pos] = match lcg(&mut state) % 4 {
                0 => 0xFF,
                1 => 0x00,
                2 => bytes[pos] ^ (1 << (lcg(&mut state) % 8)),
                _ => lcg(&mut state) as u8,
            };
        }
        fs::write(&path, &bytes).unwrap();
        let out = tmp.path().join("out");
        match import_gguf(&path, &out) {
            Ok(_) => {
                ok += 1;
                fs::remove_dir_all(&out).unwrap();
            }
            Err(e) => {
                err += 1;
                let msg = format!("{e:#}");
                assert!(msg.contains("corrupt.gguf"), "{msg}");
                assert!(!out.exists());
            }
        }
    }
    eprintln!("corrupted GGUF headers: {ok} imported anyway, {err} refused");
    assert!(
        err > 200,
        "most corruptions must be detected ({err} of 400)"
    );
    assert_only(tmp.path(), &["ok.gguf", "corrupt.gguf"]);
}

#[test]
fn bad_magic_and_versions_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut m = tiny_model(&TinyOpts::default()).bytes;
    m[..4].copy_from_slice(b"GGUX");
    let path = tmp.path().join("magic.gguf");
    fs::write(&path, &m).unwrap();
    assert_mentions(
        &err_of(import_gguf(&path, &tmp.path().join("o"))),
        &["magic.gguf", "bad magic"],
    );

    m[..4].copy_from_slice(b"GGUF");
    m[4..8].copy_from_slice(&1u32.to_le_bytes());
    fs::write(&path, &m).unwrap();
    assert_mentions(
        &err_of(import_gguf(&path, &tmp.path().join("o"))),
        &["magic.gguf", "version 1"],
    );
    m[4..8].copy_from_slice(&3u32.to_be_bytes());
    fs::write(&path, &m).unwrap();
    assert_mentions(
        &err_of(import_gguf(&path, &tmp.path().join("o"))),
        &["magic.gguf", "big-endian"],
    );
    assert_only(tmp.path(), &["magic.gguf"]);
}

#[test]
fn unsupported_tensor_type_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = write_tiny(
        tmp.path(),
        "q5k.gguf",
        &TinyOpts {
            q_type_override: Some(13),
            ..Default::default()
        },
    );
    let err = err_of(import_gguf(&path, &tmp.path().join("out")));
    assert_mentions(
        &err,
        &[
            "q5k.gguf",
            "tensor blk.0.attn_q.weight has type Q5_K, which is not supported yet (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
        ],
    );
    assert_only(tmp.path(), &["q5k.gguf"]);
}

#[test]
fn other_architectures_and_unknown_tensors_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (path, _) = write_tiny(
        tmp.path(),
        "qwen.gguf",
        &TinyOpts {
            architecture: "qwen2".into(),
            ..Default::default()
        },
    );
    assert_mentions(
        &err_of(import_gguf(&path, &tmp.path().join("out"))),
        &["qwen.gguf", "architecture 'qwen2' is not supported"],
    );
    let (path, _) = write_tiny(
        tmp.path(),
        "extra.gguf",
        &TinyOpts {
            extra_tensor: Some("rope_freqs.weight".into()),
            ..Default::default()
        },
    );
    assert_mentions(
        &err_of(import_gguf(&path, &tmp.path().join("out"))),
        &["extra.gguf", "rope_freqs.weight"],
    );
    let (path, _) = write_tiny(
        tmp.path(),
        "layer.gguf",
        &TinyOpts {
            extra_tensor: Some("blk.7.attn_norm.weight".into()),
            ..Default::default()
        },
    );
    assert_mentions(
        &err_of(import_gguf(&path, &tmp.path().join("out"))),
        &["layer.gguf", "blk.7.attn_norm.weight"],
    );
    assert_only(tmp.path(), &["qwen.gguf", "extra.gguf", "layer.gguf"]);
}

#[test]
fn missing_input_and_existing_output_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.gguf");
    assert_mentions(
        &err_of(import_gguf(&missing, &tmp.path().join("o"))),
        &["missing.gguf", "does not exist"],
    );
    let (path, _) = write_tiny(tmp.path(), "tiny.gguf", &TinyOpts::default());
    let out = tmp.path().join("taken");
    fs::create_dir(&out).unwrap();
    assert_mentions(
        &err_of(import_gguf(&path, &out)),
        &["taken", "already exists"],
    );
    assert_eq!(
        fs::read_dir(&out).unwrap().count(),
        0,
        "existing directory left alone"
    );
    // Not a GGUF at all.
    let text = tmp.path().join("notes.txt");
    fs::write(&text, "hello").unwrap();
    assert_mentions(
        &err_of(import_gguf(&text, &tmp.path().join("o"))),
        &["notes.txt", "bad magic"],
    );
    let empty = tmp.path().join("empty.gguf");
    fs::write(&empty, "").unwrap();
    assert_mentions(
        &err_of(import_gguf(&empty, &tmp.path().join("o"))),
        &["empty.gguf", "too short"],
    );
}

#[test]
fn staging_dir_cleans_up_when_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("new/parent/out");
    {
        let staging = StagingDir::create(&out).unwrap();
        fs::write(staging.path().join("model.safetensors"), b"partial").unwrap();
        assert!(
            staging.path().starts_with(tmp.path().join("new/parent")),
            "temporary dir is a sibling"
        );
        // dropped without commit, as on any error
    }
    assert_only(tmp.path(), &[]);
    let staging = StagingDir::create(&out).unwrap();
    fs::write(staging.path().join("config.json"), b"{}").unwrap();
    staging.commit().unwrap();
    assert!(out.join("config.json").is_file());
    assert_only(&tmp.path().join("new/parent"), &["out"]);
}

// ----------------------------------------------------------------------------------------------
// Byte-level BPE tokenizer built from GGUF-style metadata

/// GPT-2's byte -> printable character map.
fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (u32::from('!')..=u32::from('~'))
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut map = vec!['\0'; 256];
    for (b, c) in bs.iter().zip(cs) {
        map[*b as usize] = char::from_u32(c).unwrap();
    }
    map
}

fn tiny_gpt2(pre: Option<&str>, add_bos: Option<bool>) -> (tokenizers::Tokenizer, Vec<String>) {
    let chars = byte_chars();
    let mut tokens = vec!["<|endoftext|>".to_string(), "<|im_start|>".into()];
    tokens.extend(chars.iter().map(|c| c.to_string()));
    tokens.extend(["Ġt", "he", "Ġthe", "12", "Ġ1"].map(String::from));
    let mut kinds = vec![TokenKind::Control; 2];
    kinds.resize(tokens.len(), TokenKind::Normal);
    let merges = ["Ġ t", "h e", "Ġt he", "1 2", "Ġ 1", "x y"]
        .map(String::from)
        .to_vec();
    let built = gpt2_tokenizer(&Gpt2Vocab {
        tokens: tokens.clone(),
        kinds,
        merges,
        pre: pre.map(String::from),
        bos_id: Some(1),
        eos_id: Some(0),
        add_bos,
        add_eos: None,
    })
    .unwrap();
    assert!(
        built.notes.iter().any(|n| n.contains("1 merges dropped")),
        "x y is outside the vocab: {:?}",
        built.notes
    );
    let tok = serde_json::to_string(&built.json)
        .unwrap()
        .parse::<tokenizers::Tokenizer>()
        .unwrap();
    (tok, tokens)
}

#[test]
fn gpt2_tokenizer_follows_the_pre_tokenizer_type() {
    let (smol, tokens) = tiny_gpt2(Some("smollm"), None);
    let id = |t: &str| tokens.iter().position(|v| v == t).unwrap() as u32;
    let enc = |tok: &tokenizers::Tokenizer, text: &str| {
        tok.encode(text, true).unwrap().get_ids().to_vec()
    };
    // smollm isolates every digit first, so the "12" merge never applies.
    assert_eq!(
        enc(&smol, "the 123"),
        [id("t"), id("he"), id("Ġ"), id("1"), id("2"), id("3")]
    );
    assert_eq!(enc(&smol, " the"), [id("Ġthe")]);
    // gpt-2 keeps " 123" together: "Ġ1" first (rank 4 < ... no: "1 2" is rank 3), so Ġ 1 2 3
    // -> "12" (rank 3) merges before "Ġ 1" (rank 4): Ġ, 12, 3.
    let (gpt2, _) = tiny_gpt2(Some("gpt-2"), None);
    assert_eq!(
        enc(&gpt2, "the 123"),
        [id("t"), id("he"), id("Ġ"), id("12"), id("3")]
    );
    // Control tokens are added tokens; no BOS unless asked (llama.cpp's BPE default), llama-bpe
    // adds it by default.
    assert_eq!(enc(&smol, "<|im_start|>the"), [1, id("t"), id("he")]);
    let (llama3, _) = tiny_gpt2(Some("llama-bpe"), None);
    assert_eq!(enc(&llama3, " the"), [1, id("Ġthe")]);
    let (explicit, _) = tiny_gpt2(Some("smollm"), Some(true));
    assert_eq!(enc(&explicit, " the"), [1, id("Ġthe")]);
    // Bytes round-trip through the byte-level decoder.
    let text = "héllo wörld 🙂\n\tthe 42";
    assert_eq!(smol.decode(&enc(&smol, text), false).unwrap(), text);
    // Unknown pre-tokenizers are refused rather than guessed.
    let err = gpt2_tokenizer(&Gpt2Vocab {
        tokens: tokens.clone(),
        kinds: vec![TokenKind::Normal; tokens.len()],
        merges: vec![],
        pre: Some("mystery".into()),
        bos_id: None,
        eos_id: None,
        add_bos: None,
        add_eos: None,
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("'mystery' is not supported"), "{err}");
}

// ----------------------------------------------------------------------------------------------
// SmolLM2-135M-Instruct (real GGUF)

fn smollm2_gguf() -> Option<PathBuf> {
    let path = match std::env::var_os("RR_SMOLLM2_GGUF") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => common::workspace_root().join(".cache/gguf/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    if path.is_file() {
        return Some(path);
    }
    let msg = format!(
        "SmolLM2 GGUF not found at {} (set RR_SMOLLM2_GGUF or run `cargo xtask fetch-model smollm2`)",
        path.display()
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}; CI=true, so it must be present");
    }
    eprintln!("skipping: {msg}");
    None
}

/// Imports SmolLM2 once per test process into the target's test scratch folder.
fn smollm2_imported() -> Option<&'static (PathBuf, ImportSummary)> {
    static IMPORTED: OnceLock<Option<(PathBuf, ImportSummary)>> = OnceLock::new();
    IMPORTED
        .get_or_init(|| {
            let gguf = smollm2_gguf()?;
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("import_gguf_smollm2");
            if out.exists() {
                fs::remove_dir_all(&out).unwrap();
            }
            let summary = import_gguf(&gguf, &out).unwrap();
            Some((out, summary))
        })
        .as_ref()
}

fn fixture(name: &str) -> Json {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    read_json(&path)
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The fixture must come from the very GGUF under test.
fn check_fixture_source(fix: &Json) {
    let Some(gguf) = smollm2_gguf() else { return };
    let sha = sha256_hex(&fs::read(&gguf).unwrap());
    assert_eq!(
        fix["gguf_sha256"].as_str(),
        Some(sha.as_str()),
        "fixture was made from a different GGUF than {}",
        gguf.display()
    );
}

#[test]
fn smollm2_config_and_shapes() {
    let Some((out, summary)) = smollm2_imported() else {
        return;
    };
    let cfg = read_json(&out.join("config.json"));
    let expect = serde_json::json!({
        "model_type": "llama", "num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536,
        "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
        "rope_theta": 100000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": true,
        "max_position_embeddings": 8192, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
    });
    for (k, v) in expect.as_object().unwrap() {
        assert_eq!(&cfg[k], v, "config {k}");
    }
    eprintln!("{summary:#?}");
    assert_eq!(summary.num_tensors, 272);
    assert_eq!(
        summary.num_parameters, 134_515_008,
        "SmolLM2-135M parameter count"
    );
    assert_eq!(
        summary.tokenizer,
        "gpt2 BPE (pre-tokenizer smollm), 49152 tokens"
    );

    let bytes = fs::read(out.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), 272);
    assert!(st.tensor("lm_head.weight").is_err(), "tied: no lm_head");
    let shape = |n: &str| st.tensor(n).unwrap().shape().to_vec();
    assert_eq!(shape("model.embed_tokens.weight"), [49152, 576]);
    assert_eq!(shape("model.layers.29.self_attn.q_proj.weight"), [576, 576]);
    assert_eq!(shape("model.layers.0.self_attn.k_proj.weight"), [192, 576]);
    assert_eq!(shape("model.layers.0.self_attn.v_proj.weight"), [192, 576]);
    assert_eq!(shape("model.layers.0.self_attn.o_proj.weight"), [576, 576]);
    assert_eq!(shape("model.layers.0.mlp.gate_proj.weight"), [1536, 576]);
    assert_eq!(shape("model.layers.0.mlp.down_proj.weight"), [576, 1536]);
    assert_eq!(shape("model.norm.weight"), [576]);
    for (name, view) in st.tensors() {
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
        let finite = view
            .data()
            .chunks(4)
            .all(|b| f32::from_le_bytes(b.try_into().unwrap()).is_finite());
        assert!(finite, "{name} has non-finite values");
    }

    let tcfg = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(
        tcfg["add_bos_token"], false,
        "SmolLM2's GGUF says add_bos_token = false"
    );
    assert!(tcfg["chat_template"]
        .as_str()
        .unwrap()
        .contains("<|im_start|>"));
    assert_eq!(tcfg["eos_token"], "<|im_end|>");
}

#[test]
fn smollm2_tokenizer_matches_llamacpp() {
    let Some((out, _)) = smollm2_imported() else {
        return;
    };
    let fix = fixture("smollm2_llamacpp_tokens.json");
    check_fixture_source(&fix);
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let ids = |v: &Json| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect()
    };

    let cases = fix["cases"].as_array().unwrap();
    assert!(cases.len() >= 15);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        let got = tok.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(got, want, "token ids for {text:?}");
        if !case["parse_special"].as_bool().unwrap() {
            assert_eq!(tok.decode(&got, false).unwrap(), text, "decode of {text:?}");
        }
    }

    // TinyStories lines (text from the shared data, ids from llama.cpp).
    let stories = fix["tinystories_validation_head"].as_array().unwrap();
    let Some(data) = common::shared_data_dir() else {
        return;
    };
    let text =
        fs::read_to_string(data.join("tinystories/tinystories_validation_head.txt")).unwrap();
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(stories.len() >= 200);
    for s in stories {
        let line = lines[s["line"].as_u64().unwrap() as usize];
        assert_eq!(
            Some(sha256_hex(line.as_bytes()).as_str()),
            s["sha256"].as_str(),
            "shared text changed"
        );
        let got = tok.encode(line, true).unwrap().get_ids().to_vec();
        assert_eq!(got, ids(&s["ids"]), "token ids for line {}", s["line"]);
        assert_eq!(tok.decode(&got, false).unwrap(), line);
    }
}

#[test]
fn smollm2_logits_match_llamacpp() {
    use tch::{Device, Kind, Tensor};
    let Some((out, _)) = smollm2_imported() else {
        return;
    };
    let fix = fixture("smollm2_llamacpp_logits.json");
    check_fixture_source(&fix);
    let ids: Vec<i64> = fix["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let prompt = fix["prompt"].as_str().unwrap();
    let ours: Vec<i64> = tok
        .encode(prompt, true)
        .unwrap()
        .get_ids()
        .iter()
        .map(|&i| i as i64)
        .collect();
    assert_eq!(ours, ids, "prompt ids");

    let model = rr_model::LlamaModel::load(out, Device::Cpu, Kind::Float).unwrap();
    let logits = tch::no_grad(|| model.forward(&Tensor::from_slice(&ids).unsqueeze(0), None));
    let logits = logits.squeeze_dim(0).to_kind(Kind::Float);
    let positions = fix["positions"].as_array().unwrap();
    assert_eq!(positions.len(), ids.len());
    let mut worst = 0f64;
    let (mut sum_diff, mut n_diff) = (0f64, 0usize);
    let mut top1_agree = 0;
    for (p, pos) in positions.iter().enumerate() {
        let row = logits.get(p as i64);
        let top_ids: Vec<i64> = pos["top_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let top_logits: Vec<f64> = pos["top_logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (&id, &want) in top_ids.iter().zip(&top_logits) {
            let got = row.double_value(&[id]);
            worst = worst.max((got - want).abs());
            sum_diff += (got - want).abs();
            n_diff += 1;
        }
        let ours_top = row.argmax(0, false).int64_value(&[]);
        top1_agree += usize::from(ours_top == top_ids[0]);
        // Our argmax must be among llama.cpp's best five (it quantises activations to 8 bits, so
        // near-ties may swap).
        assert!(
            top_ids[..5].contains(&ours_top),
            "position {p}: our argmax {ours_top} not in llama.cpp's top 5 {top_ids:?}"
        );
    }
    let mean = sum_diff / n_diff as f64;
    eprintln!(
        "SmolLM2 vs llama.cpp: |logit diff| on llama.cpp's top-10: max {worst:.3}, mean {mean:.3}; top-1 agreement {top1_agree}/{}",
        ids.len()
    );
    // Same Q4_1 weights; the differences come from llama.cpp quantising activations to 8 bits
    // for its Q4_1 dot products (measured: max 1.26, mean 0.23 on logits of magnitude ~25). Not
    // undoing the q/k permutation already breaks the argmax check above at position 5.
    assert!(worst < 2.0, "max logit difference {worst}");
    assert!(mean < 0.5, "mean logit difference {mean}");
    assert!(
        top1_agree * 10 >= ids.len() * 9,
        "top-1 agreement {top1_agree}/{}",
        ids.len()
    );
}

// ----------------------------------------------------------------------------------------------
// Amplification bounds

/// The byte position of the offset field of tensor `name` (which has `n_dims` dimensions) in the
/// tensor infos of `bytes`.
fn offset_field(bytes: &[u8], name: &str, n_dims: usize) -> usize {
    let mut needle = (name.len() as u64).to_le_bytes().to_vec();
    needle.extend(name.as_bytes());
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .unwrap_or_else(|| panic!("tensor {name} not found"));
    at + needle.len() + 4 + 8 * n_dims + 4
}

#[test]
fn overlapping_tensors_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let m = tiny_model(&TinyOpts::default());
    let q = offset_field(&m.bytes, "blk.0.attn_q.weight", 2);
    let k = offset_field(&m.bytes, "blk.0.attn_k.weight", 2);
    let q_offset = m.bytes[q..q + 8].to_vec();

    // k starting where q starts.
    let mut b = m.bytes.clone();
    b[k..k + 8].copy_from_slice(&q_offset);
    let path = tmp.path().join("overlap.gguf");
    fs::write(&path, &b).unwrap();
    let err = err_of(import_gguf(&path, &tmp.path().join("out")));
    assert_mentions(
        &err,
        &[
            "overlap.gguf",
            "blk.0.attn_q.weight",
            "blk.0.attn_k.weight",
            "overlap",
        ],
    );

    // k starting 32 bytes into q (still aligned).
    let inside = u64::from_le_bytes(q_offset.clone().try_into().unwrap()) + 32;
    b[k..k + 8].copy_from_slice(&inside.to_le_bytes());
    fs::write(&path, &b).unwrap();
    let err = err_of(import_gguf(&path, &tmp.path().join("out")));
    assert_mentions(
        &err,
        &["overlap.gguf", "blk.0.attn_q.weight", "blk.0.attn_k.weight"],
    );

    // Every tensor at offset 0.
    let mut b = m.bytes.clone();
    let gguf = GgufFile::open(&{
        let p = tmp.path().join("ok.gguf");
        fs::write(&p, &m.bytes).unwrap();
        p
    })
    .unwrap();
    for t in &gguf.tensors {
        let at = offset_field(&b, &t.name, t.ne.len());
        b[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
    }
    fs::write(&path, &b).unwrap();
    let err = err_of(import_gguf(&path, &tmp.path().join("out")));
    assert_mentions(&err, &["overlap.gguf", "overlap"]);
    assert_only(tmp.path(), &["overlap.gguf", "ok.gguf"]);
}

/// A GGUF with no tensors and the given raw metadata entries (key, type id, encoded value).
fn raw_metadata_gguf(entries: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend((entries.len() as u64).to_le_bytes());
    for (key, ty, value) in entries {
        write_str(&mut b, key);
        b.extend(ty.to_le_bytes());
        b.extend(value);
    }
    b
}

/// An encoded array header: element type and count.
fn array_header(elem_ty: u32, count: u64) -> Vec<u8> {
    let mut v = elem_ty.to_le_bytes().to_vec();
    v.extend(count.to_le_bytes());
    v
}

#[test]
fn metadata_arrays_and_strings_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("meta.gguf");
    let import = |bytes: &[u8]| {
        fs::write(&path, bytes).unwrap();
        err_of(import_gguf(&path, &tmp.path().join("out")))
    };
    let limit = rr_import::gguf::MAX_METADATA_ELEMENTS;
    assert_eq!(limit, 1 << 24);

    // One u8 array just past the limit, with every byte present: refused for its length.
    let mut value = array_header(0, limit + 1);
    value.resize(value.len() + (limit + 1) as usize, 7);
    let err = import(&raw_metadata_gguf(&[("big.bytes", 9, value)]));
    assert_mentions(
        &err,
        &["meta.gguf", "big.bytes", "16777217 elements", "16777216"],
    );
    assert!(!err.contains("truncated"), "{err}");

    // Two arrays that each fit but together pass the limit: the second is named.
    let half = limit / 2 + 1;
    let mut a = array_header(0, half);
    a.resize(a.len() + half as usize, 0);
    let err = import(&raw_metadata_gguf(&[
        ("first.half", 9, a.clone()),
        ("second.half", 9, a),
    ]));
    assert_mentions(&err, &["meta.gguf", "second.half", "16777216"]);

    // Arrays whose elements cannot fit in the bytes left: strings (8 bytes at least), nested
    // arrays (12 bytes at least), u32 values; refused before anything is allocated.
    for (elem_ty, count) in [(8u32, 100u64), (9, 70), (4, 200), (8, 1 << 40)] {
        let mut v = array_header(elem_ty, count);
        v.resize(v.len() + 780, 0);
        let err = import(&raw_metadata_gguf(&[("short.array", 9, v)]));
        assert_mentions(&err, &["meta.gguf", "short.array", "truncated", "elements"]);
    }
    // A string in an array claiming more bytes than remain.
    let mut v = array_header(8, 1);
    v.extend((1u64 << 50).to_le_bytes());
    v.extend(b"abc");
    let err = import(&raw_metadata_gguf(&[("short.string", 9, v)]));
    assert_mentions(&err, &["meta.gguf", "short.string", "truncated"]);
    assert_only(tmp.path(), &["meta.gguf"]);
}

#[test]
fn overlong_tokens_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let max = rr_import::tokenizer_build::MAX_TOKEN_BYTES;
    assert_eq!(max, 1024);
    // At the bound: imports.
    let (path, m) = write_tiny(
        tmp.path(),
        "edge.gguf",
        &TinyOpts {
            extra_token: Some("a".repeat(max)),
            ..Default::default()
        },
    );
    import_gguf(&path, &tmp.path().join("edge")).unwrap();
    // One byte more (a 2-byte character at the end): refused, naming the token.
    let long = format!("{}é", "a".repeat(max - 1));
    let (path, _) = write_tiny(
        tmp.path(),
        "long.gguf",
        &TinyOpts {
            extra_token: Some(long),
            ..Default::default()
        },
    );
    let err = err_of(import_gguf(&path, &tmp.path().join("out")));
    let id = m.vocab.len() - 1;
    assert_mentions(
        &err,
        &[
            "long.gguf",
            &format!("token {id} is 1025 bytes long"),
            "1024",
        ],
    );
    // A 200 KB token is refused at once, not after a quadratic merge construction.
    let (path, _) = write_tiny(
        tmp.path(),
        "huge.gguf",
        &TinyOpts {
            extra_token: Some("b".repeat(200_000)),
            ..Default::default()
        },
    );
    // The length check names the token's size, so it ran before any merge was built.
    let err = err_of(import_gguf(&path, &tmp.path().join("out")));
    assert_mentions(&err, &["huge.gguf", "200000 bytes long"]);

    // The byte-level BPE builder has the same bound.
    let tokens = vec!["a".to_string(), "c".repeat(max + 1)];
    let err = gpt2_tokenizer(&Gpt2Vocab {
        tokens,
        kinds: vec![TokenKind::Normal; 2],
        merges: vec![],
        pre: None,
        bos_id: None,
        eos_id: None,
        add_bos: None,
        add_eos: None,
    })
    .expect_err("a 1025-byte token must be refused");
    assert!(
        format!("{err:#}").contains("token 1 is 1025 bytes long"),
        "{err:#}"
    );
    assert_only(tmp.path(), &["edge.gguf", "edge", "long.gguf", "huge.gguf"]);
}
