//! Fresh weights for a recurrent model of a retrofit's shape: the "from scratch" control that
//! the paper compares retrofitting against (its Fig. 2).
//!
//! The init is Huginn's "takase" (small init, Nguyen & Salazar, with Takase et al.'s scaled
//! output projections), as the `_init_weights` of the published Raven modeling file
//! (`seal-rg/recurrent-pretraining`, `recpre/raven_modeling_minimal.py`) applies it, which the
//! retrofitting authors' from-scratch runs load (`raven_modeling_minimal_with_init.py`). With
//! `h` the hidden size and `L_eff = p + c + b·mean_recurrence` (Huginn's
//! `effective_expected_depth`):
//!
//! - `std = √(2 / (5h))`, `out_proj = std / √(2·L_eff)`;
//! - embedding, LM head, adapter, `attn.Wqkv`: std;
//! - `attn.proj`, `mlp.proj`: out_proj;
//! - `mlp.fc`: gate rows std, up rows out_proj (that file's `init_glu(std, out_proj)`; Huginn's
//!   training code, `recpre/init.py`, draws both halves with std instead);
//! - every norm weight (block norms, OLMo-2 q/k norms, final norm): ones;
//! - every draw N(0, σ²) truncated at ±3σ (`trunc_normal_(a=-3σ, b=3σ)`).
//!
//! No embedding scale: the retrofit architecture has none (the authors hard-code
//! `emb_scale = 1` for their Llama from-scratch runs). The config is the retrofit's, including
//! Huginn's `init_values` (the initial-state σ0 of method.md §2), so the two models differ in
//! their weights only.

use rr_model::recurrent::{truncated_normal, RecurrentConfig};
use rr_model::ModelType;
use tch::{Device, Kind, Tensor};

/// Keys the per-tensor streams apart from the project's other seeded draws.
const TAG: u64 = 0x7a6b_a5e1_1717_0001;
/// Rows drawn at once.
const ROWS_PER_DRAW: i64 = 4096;

/// The two standard deviations of the init for `cfg`: (std, out_proj).
pub fn takase_stds(cfg: &RecurrentConfig) -> (f64, f64) {
    let std = (2.0 / (5.0 * cfg.n_embd as f64)).sqrt();
    let effective_depth = cfg.n_layers_in_prelude
        + cfg.n_layers_in_coda
        + cfg.n_layers_in_recurrent_block * cfg.mean_recurrence;
    (std, std / (2.0 * effective_depth as f64).sqrt())
}

/// How one tensor starts.
#[derive(Debug, Clone, PartialEq)]
enum Fill {
    Ones,
    /// Blocks of rows, top to bottom: (rows, σ), each N(0, σ²) truncated at ±3σ.
    Normal(Vec<(i64, f64)>),
}

/// Every tensor of the recurrent checkpoint for `cfg`, named and shaped as surgery writes it,
/// with how it starts.
fn layout(cfg: &RecurrentConfig) -> Vec<(String, Vec<i64>, Fill)> {
    let block = cfg.block_config();
    let (std, out_proj) = takase_stds(cfg);
    let h = cfg.n_embd as i64;
    let v = cfg.padded_vocab_size() as i64;
    let i = block.intermediate_size as i64;
    let q = (block.num_attention_heads * block.head_dim()) as i64;
    let kv = (block.num_kv_heads() * block.head_dim()) as i64;
    let normal = |rows: i64, sigma: f64| Fill::Normal(vec![(rows, sigma)]);
    let mut out = vec![
        ("transformer.wte.weight".into(), vec![v, h], normal(v, std)),
        ("lm_head.weight".into(), vec![v, h], normal(v, std)),
        ("transformer.ln_f.weight".into(), vec![h], Fill::Ones),
        (
            "transformer.adapter.weight".into(),
            vec![h, 2 * h],
            normal(h, std),
        ),
    ];
    for (stack, n) in [
        ("prelude", cfg.n_layers_in_prelude),
        ("core_block", cfg.n_layers_in_recurrent_block),
        ("coda", cfg.n_layers_in_coda),
    ] {
        for j in 0..n {
            let name = |part: &str| format!("transformer.{stack}.{j}.{part}");
            out.push((name("norm_1.weight"), vec![h], Fill::Ones));
            out.push((name("norm_2.weight"), vec![h], Fill::Ones));
            out.push((
                name("attn.Wqkv.weight"),
                vec![q + 2 * kv, h],
                normal(q + 2 * kv, std),
            ));
            out.push((name("attn.proj.weight"), vec![h, q], normal(h, out_proj)));
            let glu = Fill::Normal(vec![(i, std), (i, out_proj)]);
            out.push((name("mlp.fc.weight"), vec![2 * i, h], glu));
            out.push((name("mlp.proj.weight"), vec![h, i], normal(h, out_proj)));
            if block.model_type == ModelType::Olmo2 {
                out.push((name("attn.q_norm.weight"), vec![q], Fill::Ones));
                out.push((name("attn.k_norm.weight"), vec![kv], Fill::Ones));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// One tensor in fp32. Each tensor has its own stream keyed by (seed, name), so a tensor's
/// values do not depend on which other tensors the model has.
fn draw(name: &str, shape: &[i64], fill: &Fill, seed: u64) -> Tensor {
    let opts = (Kind::Float, Device::Cpu);
    let Fill::Normal(blocks) = fill else {
        return Tensor::ones(shape, opts);
    };
    let words: Vec<u64> = [seed, TAG]
        .into_iter()
        .chain(name.bytes().map(u64::from))
        .collect();
    let key = rr_util::seed::hash(&words);
    let (rows, cols) = (shape[0], shape[1]);
    // The project's seeded truncated normal, N(0, 1) cut at ±3, with the weight's row index as
    // the "position": a value depends on (key, row, column) alone, so drawing in chunks of rows
    // (bounding the hash's temporaries for large embeddings) changes nothing.
    let chunks: Vec<Tensor> = (0..rows)
        .step_by(ROWS_PER_DRAW as usize)
        .map(|start| {
            let n = ROWS_PER_DRAW.min(rows - start);
            let row_ids = Tensor::arange_start(start, start + n, (Kind::Int64, Device::Cpu));
            let row_ids = row_ids.view([1, n]);
            truncated_normal(key, &row_ids.zeros_like(), &row_ids, cols, 1.0).view([n, cols])
        })
        .collect();
    let unit = Tensor::cat(&chunks, 0);
    let sigmas: Vec<f32> = blocks
        .iter()
        .flat_map(|&(n, sigma)| std::iter::repeat_n(sigma as f32, n as usize))
        .collect();
    unit * Tensor::from_slice(&sigmas).view([rows, 1])
}

/// All tensors of a freshly initialised recurrent checkpoint for `cfg`, sorted by name, in
/// `dtype`; a function of (`cfg`, `seed`) alone.
pub fn random_tensors(cfg: &RecurrentConfig, seed: u64, dtype: Kind) -> Vec<(String, Tensor)> {
    layout(cfg)
        .into_iter()
        .map(|(name, shape, fill)| {
            let t = draw(&name, &shape, &fill, seed).to_kind(dtype);
            (name, t)
        })
        .collect()
}
