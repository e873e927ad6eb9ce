//! Layer selection by block influence (ShortGPT, Men et al., arXiv 2403.03853):
//! `BI_i = 1 − mean_t cos(h_in_i(t), h_out_i(t))`, the hidden state entering and leaving decoder
//! layer i, averaged over the calibration tokens. A layer that barely turns the residual stream
//! (cos ≈ 1) has BI ≈ 0 and is the first to drop; BI lies in [0, 2].
//!
//! The calibration text is encoded whole without special tokens, its first `max_tokens` tokens
//! are cut into windows of [`window_len`] tokens (a partial last window is dropped), and each
//! window is run on its own, preceded by the tokenizer's BOS when its post-processor adds one.
//! The BOS position is excluded from the mean: it is the same token at the same position in every
//! window (an attention sink in large models) and says nothing about the text.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rr_model::llama::Prologue;
use rr_model::recurrent::is_recurrent_dir;
use rr_model::{LlamaModel, Tokenizer};
use tch::{Device, Kind, Tensor};

/// Text tokens per calibration window (fewer when the model's context is shorter).
pub const WINDOW_TOKENS: usize = 256;
/// The largest calibration file read: far more text than any calibration needs.
pub const CALIBRATION_TEXT_LIMIT: u64 = 8 << 20;
/// Windows run together in one forward pass.
const WINDOWS_PER_BATCH: usize = 8;

/// Text tokens per window for a model with context `max_positions`: [`WINDOW_TOKENS`], less
/// one place for the BOS when the context is shorter.
pub fn window_len(max_positions: usize) -> usize {
    WINDOW_TOKENS.min(max_positions.saturating_sub(1)).max(1)
}

/// Calibration token windows, each `[bos?] + window` long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calibration {
    pub windows: Vec<Vec<i64>>,
    /// The BOS each window starts with (excluded from the mean), if the tokenizer adds one.
    pub bos: Option<i64>,
}

impl Calibration {
    /// Windows of `window` text tokens from the first `max_tokens` tokens of `text`; `what`
    /// names the text in errors.
    pub fn from_text(
        tokenizer: &Tokenizer,
        text: &str,
        max_tokens: usize,
        window: usize,
        what: &str,
    ) -> Result<Self> {
        if max_tokens < window {
            bail!("--calibration-tokens {max_tokens} is less than one window ({window} tokens)");
        }
        if text.trim().is_empty() {
            bail!("{what}: the calibration text is empty");
        }
        let mut ids = tokenizer.encode(text, false)?;
        if ids.len() < window {
            bail!(
                "{what}: {} tokens, fewer than one calibration window ({window} tokens)",
                ids.len()
            );
        }
        ids.truncate(max_tokens);
        let bos = tokenizer.adds_bos();
        let windows = ids
            .chunks_exact(window)
            .map(|w| bos.into_iter().chain(w.iter().copied()).collect())
            .collect();
        Ok(Self { windows, bos })
    }

    /// Text tokens the mean runs over (BOS excluded).
    pub fn tokens(&self) -> usize {
        let skip = usize::from(self.bos.is_some());
        self.windows.iter().map(|w| w.len() - skip).sum()
    }
}

/// Block influence of every layer of a static model, measured on calibration windows.
#[derive(Debug, Clone, PartialEq)]
pub struct Influence {
    /// `per_layer[i]` = BI of source layer i.
    pub per_layer: Vec<f64>,
    pub windows: usize,
    pub tokens: usize,
}

impl Influence {
    /// Runs the static model in `source_dir` (fp32, on `device`) on the calibration text file.
    pub fn measure(
        source_dir: &Path,
        calibration: &Path,
        max_tokens: usize,
        device: Device,
    ) -> Result<Self> {
        if is_recurrent_dir(source_dir) {
            bail!(
                "{}: already a recurrent (huginn_raven) model; --select influence needs the \
                 static model it was made from",
                source_dir.display()
            );
        }
        let text = rr_util::fs::read_text_limited(calibration, CALIBRATION_TEXT_LIMIT)?;
        let tokenizer = Tokenizer::from_path(source_dir)?;
        let config = rr_model::LlamaConfig::from_path(source_dir)?;
        let window = window_len(config.max_position_embeddings);
        let what = calibration.display().to_string();
        let cal = Calibration::from_text(&tokenizer, &text, max_tokens, window, &what)?;
        if let Some(bad) = cal
            .windows
            .iter()
            .flatten()
            .find(|&&id| usize::try_from(id).map_or(true, |id| id >= config.vocab_size))
        {
            bail!(
                "{what}: token id {bad} is outside the model's vocabulary ({})",
                config.vocab_size
            );
        }
        let model = LlamaModel::load(source_dir, device, Kind::Float)?;
        Self::of_model(&model, &cal).with_context(|| format!("calibrating on {what}"))
    }

    /// BI of every layer of `model` over `cal`.
    pub fn of_model(model: &LlamaModel, cal: &Calibration) -> Result<Self> {
        let layers = model.layers.len();
        let skip = i64::from(cal.bos.is_some());
        let mut cos_sums = vec![0f64; layers];
        for batch in cal.windows.chunks(WINDOWS_PER_BATCH) {
            let flat: Vec<i64> = batch.iter().flatten().copied().collect();
            let ids = Tensor::from_slice(&flat).view([batch.len() as i64, -1]);
            tch::no_grad(|| {
                for (i, (h_in, h_out)) in layer_io(model, &ids).into_iter().enumerate() {
                    let t = h_in.size()[1];
                    let cos = token_cosines(
                        &h_in.narrow(1, skip, t - skip),
                        &h_out.narrow(1, skip, t - skip),
                    );
                    cos_sums[i] += cos.sum(Kind::Double).double_value(&[]);
                }
            });
        }
        let tokens = cal.tokens();
        let per_layer: Vec<f64> = cos_sums.iter().map(|s| 1.0 - s / tokens as f64).collect();
        if let Some(i) = per_layer.iter().position(|bi| !bi.is_finite()) {
            bail!("layer {i}: the hidden states are not finite");
        }
        Ok(Self {
            per_layer,
            windows: cal.windows.len(),
            tokens,
        })
    }

    /// Layer indices from the most to the least influential (ties: lower index first).
    pub fn ranking(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.per_layer.len()).collect();
        order.sort_by(|&a, &b| {
            self.per_layer[b]
                .total_cmp(&self.per_layer[a])
                .then(a.cmp(&b))
        });
        order
    }

    /// The ranking as a table: rank, layer, BI.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "block influence BI = 1 - mean cos(h_in, h_out) over {} tokens in {} windows",
            self.tokens, self.windows
        );
        let _ = writeln!(t, "{:>5}  {:>5}  {:>10}", "rank", "layer", "BI");
        for (rank, layer) in self.ranking().into_iter().enumerate() {
            let bi = self.per_layer[layer];
            let _ = writeln!(t, "{:>5}  {layer:>5}  {bi:>10.6}", rank + 1);
        }
        t
    }
}

/// The hidden state entering and leaving each decoder layer for ids [B, T] (no padding, fresh
/// sequences), in the model's dtype.
fn layer_io(model: &LlamaModel, ids: &Tensor) -> Vec<(Tensor, Tensor)> {
    let ids = ids.to_device(model.device());
    let p = Prologue::new(&model.rope, model.dtype(), &ids, None, None);
    let mut x = Tensor::embedding(&model.embed_tokens, &ids, -1, false, false);
    let mut io = Vec::with_capacity(model.layers.len());
    for layer in &model.layers {
        let out = layer.forward(&x, &p.cos_sin, &p.mask, None);
        io.push((x, out.shallow_clone()));
        x = out;
    }
    io
}

/// cos(a_t, b_t) per token of [B, T, h] states, in f64, clamped to [−1, 1] (rounding can put
/// the cosine of a vector with itself a hair above 1).
fn token_cosines(a: &Tensor, b: &Tensor) -> Tensor {
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    let dot = (&a * &b).sum_dim_intlist(-1, false, Kind::Double);
    let norms = a.norm_scalaropt_dim(2, [-1], false) * b.norm_scalaropt_dim(2, [-1], false);
    (dot / norms.clamp_min(1e-30)).clamp(-1.0, 1.0)
}
