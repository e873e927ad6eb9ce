//! The Llama-family decoder, top to bottom: RMSNorm, RoPE, attention, MLP, blocks, model.
//!
//! Variable names mirror the Hugging Face checkpoint (`model.layers.3.self_attn.q_proj.weight`),
//! so loading is a name-for-name copy. The pieces (`RmsNorm`, `Rope`, `Attention`, `Mlp`,
//! `Block`) are public because the recurrent model is built from the same blocks.

use std::path::Path;

use anyhow::{Context, Result};
use tch::nn::{self, Init};
use tch::{Device, Kind, Tensor};

use crate::config::{LlamaConfig, ModelType, RopeScaling};
use crate::weights::FromCheckpoint;

/// Weight `w` in the dtype of the activations `x` it meets: a no-op when they agree, a cast
/// at this use otherwise. Casting at every use (as autocast does for a linear layer) keeps the
/// parameter itself a full-precision leaf, so the gradients of all its uses, each computed in
/// the compute dtype, are summed in the parameter's own dtype. A weight used k times (the core
/// of a recurrent model) thus accumulates its gradient in fp32 over bf16 compute.
pub fn at_use(w: &Tensor, x: &Tensor) -> Tensor {
    if w.kind() == x.kind() {
        w.shallow_clone()
    } else {
        w.to_kind(x.kind())
    }
}

/// `x · wᵀ` with `w` cast to `x`'s dtype at this use ([`at_use`]).
pub fn linear(x: &Tensor, w: &Tensor) -> Tensor {
    x.linear::<&Tensor>(&at_use(w, x), None)
}

/// RMSNorm computed in fp32: `(x.float() * rsqrt(mean(x²) + eps)).to(dtype) * weight`.
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(p: nn::Path, size: i64, eps: f64) -> Self {
        Self {
            weight: p.var("weight", &[size], Init::Const(1.0)),
            eps,
        }
    }

    /// `x / sqrt(mean(x²) + eps) · weight`, statistics in fp32. ATen's fused kernel (one pass
    /// forward and backward where a fused kernel exists, and always when weight and input
    /// share a dtype, as here); in fp32 it equals HF's `LlamaRMSNorm` exactly (parity tests).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.weight.size()[0];
        x.rms_norm([h], Some(&at_use(&self.weight, x)), self.eps)
    }
}

/// Rotary position embedding in the rotate-half convention, with Llama-3 frequency scaling
/// when the config asks for it. Angles are computed in fp32 from positions on every call, so
/// there is no table to outgrow.
#[derive(Debug)]
pub struct Rope {
    inv_freq: Tensor,
}

impl Rope {
    pub fn new(cfg: &LlamaConfig, device: Device) -> Self {
        let inv_freq = rope_inv_freq(cfg.head_dim(), cfg.rope_theta, cfg.rope_scaling.as_ref());
        Self {
            inv_freq: Tensor::from_slice(&inv_freq).to_device(device),
        }
    }

    /// `cos` and `sin` of shape [B, 1, T, head_dim] for positions [B, T], in `dtype`.
    pub fn cos_sin(&self, positions: &Tensor, dtype: Kind) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        (emb.cos().to_kind(dtype), emb.sin().to_kind(dtype))
    }

    /// Applies the rotation to `x` of shape [B, H, T, D].
    pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
        let half = x.size()[3] / 2;
        let x1 = x.narrow(3, 0, half);
        let x2 = x.narrow(3, half, half);
        let rotated = Tensor::cat(&[&x2.neg(), &x1], 3);
        x * cos + rotated * sin
    }
}

/// Inverse frequencies `1 / θ^(2i/d)`, rescaled by Llama-3's piecewise rule when configured
/// (long wavelengths divided by `factor`, short ones kept, a smooth blend between).
pub fn rope_inv_freq(head_dim: usize, theta: f64, scaling: Option<&RopeScaling>) -> Vec<f32> {
    // fp32 arithmetic, as transformers computes it, so angles agree to the last bits.
    let base = theta as f32;
    let inv: Vec<f32> = (0..head_dim / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let Some(s) = scaling.filter(|s| s.rope_type == "llama3") else {
        return inv;
    };
    let factor = s.factor.unwrap_or(1.0) as f32;
    let low = s.low_freq_factor.unwrap_or(1.0) as f32;
    let high = s.high_freq_factor.unwrap_or(4.0) as f32;
    let old_ctx = s.original_max_position_embeddings.unwrap_or(8192) as f32;
    let low_freq_wavelen = old_ctx / low;
    let high_freq_wavelen = old_ctx / high;
    inv.into_iter()
        .map(|f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen < high_freq_wavelen {
                f
            } else if wavelen > low_freq_wavelen {
                f / factor
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                (1.0 - smooth) * f / factor + smooth * f
            }
        })
        .collect()
}

/// How queries may attend to keys in one forward call.
pub enum AttnMask {
    /// Plain causal attention over a fresh sequence (lets SDPA pick its fused kernels).
    Causal,
    /// Every key is visible (one new token on top of a cache with no padding).
    None,
    /// Explicit boolean mask [B, 1, T, S]: true = may attend.
    Explicit(Tensor),
}

/// Keys and values of one attention layer, [B, n_kv, S, D] each, grown in place in spare
/// room; or, for the fixed-shape decode step, preallocated to a capacity and written in place.
#[derive(Debug, Default)]
pub struct LayerKv {
    pub kv: Option<(Tensor, Tensor)>,
    /// Preallocated keys/values only: a [1] int64 tensor on their device holding the column
    /// that `append` writes the new token into (the caller masks the columns not yet written).
    pub write_at: Option<Tensor>,
    /// Storage whose first positions `kv` is, with room for [`KV_ROOM_STEP`] more at most.
    /// Appending one token then writes one column instead of copying the whole cache (a copy
    /// per generated token per layer made decoding quadratic in its length). Copies of `kv`
    /// made elsewhere never carry it, so they move to storage of their own before they write.
    pub(crate) room: Option<(Tensor, Tensor)>,
}

/// Positions a layer's key/value storage grows by: a reallocation every this many generated
/// tokens, and at most this many unused positions per layer.
const KV_ROOM_STEP: i64 = 256;

/// Whether `view` is the first positions (dimension 2) of `room`, so that writing after them
/// changes nothing `view` shows.
fn is_prefix_of(view: &Tensor, room: &Tensor) -> bool {
    let (vs, rs) = (view.size(), room.size());
    view.data_ptr() == room.data_ptr()
        && view.stride() == room.stride()
        && vs.len() == 4
        && rs.len() == 4
        && (vs[0], vs[1], vs[3]) == (rs[0], rs[1], rs[3])
        && vs[2] <= rs[2]
}

impl LayerKv {
    /// Appends new keys/values and returns the full ones to attend over.
    pub fn append(&mut self, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
        if let Some(column) = &self.write_at {
            let (keys, values) = self.kv.as_mut().expect("preallocated keys/values");
            let _ = keys.index_copy_(2, column, &k);
            let _ = values.index_copy_(2, column, &v);
            return (keys.shallow_clone(), values.shallow_clone());
        }
        let (k, v) = match self.kv.take() {
            None => {
                self.room = None;
                (k, v)
            }
            // Autograd needs every cached position to stay the value it saw.
            Some((pk, pv)) if pk.requires_grad() || k.requires_grad() || v.requires_grad() => {
                self.room = None;
                (Tensor::cat(&[&pk, &k], 2), Tensor::cat(&[&pv, &v], 2))
            }
            Some((pk, pv)) => {
                let (len, t) = (pk.size()[2], k.size()[2]);
                let fits = |(rk, rv): &(Tensor, Tensor)| {
                    is_prefix_of(&pk, rk) && is_prefix_of(&pv, rv) && rk.size()[2] >= len + t
                };
                if !self.room.as_ref().is_some_and(fits) {
                    let capacity = (len + t + KV_ROOM_STEP - 1) / KV_ROOM_STEP * KV_ROOM_STEP;
                    let grow = |p: &Tensor| {
                        let mut size = p.size();
                        size[2] = capacity;
                        let room = p.new_empty(size.as_slice(), (p.kind(), p.device()));
                        room.narrow(2, 0, len).copy_(p);
                        room
                    };
                    self.room = Some((grow(&pk), grow(&pv)));
                }
                let (rk, rv) = self.room.as_ref().expect("room was just made");
                rk.narrow(2, len, t).copy_(&k);
                rv.narrow(2, len, t).copy_(&v);
                (rk.narrow(2, 0, len + t), rv.narrow(2, 0, len + t))
            }
        };
        self.kv = Some((k.shallow_clone(), v.shallow_clone()));
        (k, v)
    }
}

/// How a checkpoint names and shapes the block weights. The computation is the same; only
/// the variable names (which mirror the file) and the q/k/v and gate/up fusion differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Hugging Face: `self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`, named norms.
    Hf,
    /// Raven (Huginn): `attn.Wqkv` (rows q; k; v), `attn.proj`, `mlp.fc` (rows gate; up),
    /// `mlp.proj`, `norm_1`, `norm_2`.
    Raven,
}

/// The q, k and v projections: three matrices, or one with the rows stacked.
#[derive(Debug)]
pub enum QkvProj {
    Separate {
        q_proj: Tensor,
        k_proj: Tensor,
        v_proj: Tensor,
    },
    Fused {
        wqkv: Tensor,
    },
}

/// Causal self-attention with grouped-query heads.
#[derive(Debug)]
pub struct Attention {
    pub qkv: QkvProj,
    /// `o_proj` (HF) or `proj` (Raven).
    pub out_proj: Tensor,
    /// OLMo-2 only: RMSNorm over the full q and k projections, before RoPE.
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    pub num_heads: i64,
    pub num_kv_heads: i64,
    pub head_dim: i64,
}

impl Attention {
    pub fn new(p: nn::Path, cfg: &LlamaConfig, layout: Layout) -> Self {
        let h = cfg.hidden_size as i64;
        let d = cfg.head_dim() as i64;
        let nq = cfg.num_attention_heads as i64;
        let nkv = cfg.num_kv_heads() as i64;
        let weight = |name: &str, out: i64, inp: i64| {
            (&p / name).var("weight", &[out, inp], Init::Const(0.0))
        };
        let (q_norm, k_norm) = match cfg.model_type {
            ModelType::Llama => (None, None),
            ModelType::Olmo2 => (
                Some(RmsNorm::new(&p / "q_norm", nq * d, cfg.rms_norm_eps)),
                Some(RmsNorm::new(&p / "k_norm", nkv * d, cfg.rms_norm_eps)),
            ),
        };
        let (qkv, out_proj) = match layout {
            Layout::Hf => (
                QkvProj::Separate {
                    q_proj: weight("q_proj", nq * d, h),
                    k_proj: weight("k_proj", nkv * d, h),
                    v_proj: weight("v_proj", nkv * d, h),
                },
                weight("o_proj", h, nq * d),
            ),
            Layout::Raven => (
                QkvProj::Fused {
                    wqkv: weight("Wqkv", (nq + 2 * nkv) * d, h),
                },
                weight("proj", h, nq * d),
            ),
        };
        Self {
            qkv,
            out_proj,
            q_norm,
            k_norm,
            num_heads: nq,
            num_kv_heads: nkv,
            head_dim: d,
        }
    }

    fn project_qkv(&self, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        match &self.qkv {
            QkvProj::Separate {
                q_proj,
                k_proj,
                v_proj,
            } => (linear(x, q_proj), linear(x, k_proj), linear(x, v_proj)),
            QkvProj::Fused { wqkv } => {
                let q = self.num_heads * self.head_dim;
                let kv = self.num_kv_heads * self.head_dim;
                let parts = linear(x, wqkv).split_with_sizes([q, kv, kv], -1);
                let mut it = parts.into_iter();
                let (q, k, v) = (it.next(), it.next(), it.next());
                (q.expect("q"), k.expect("k"), v.expect("v"))
            }
        }
    }

    pub fn forward(
        &self,
        x: &Tensor,
        cos_sin: &(Tensor, Tensor),
        mask: &AttnMask,
        cache: Option<&mut LayerKv>,
    ) -> Tensor {
        let (b, t, _) = x.size3().expect("attention input must be [B, T, H]");
        let (mut q, mut k, v) = self.project_qkv(x);
        if let (Some(qn), Some(kn)) = (&self.q_norm, &self.k_norm) {
            q = qn.forward(&q);
            k = kn.forward(&k);
        }
        let heads = |t_: Tensor, n: i64| t_.view([b, t, n, self.head_dim]).transpose(1, 2);
        let q = Rope::apply(&heads(q, self.num_heads), &cos_sin.0, &cos_sin.1);
        let k = Rope::apply(&heads(k, self.num_kv_heads), &cos_sin.0, &cos_sin.1);
        let v = heads(v, self.num_kv_heads);
        let (k, v) = match cache {
            Some(c) => c.append(k, v),
            None => (k, v),
        };
        let gqa = self.num_heads != self.num_kv_heads;
        let y = match mask {
            AttnMask::Causal => Tensor::scaled_dot_product_attention::<Tensor>(
                &q, &k, &v, None, 0.0, true, None, gqa,
            ),
            AttnMask::None => Tensor::scaled_dot_product_attention::<Tensor>(
                &q, &k, &v, None, 0.0, false, None, gqa,
            ),
            AttnMask::Explicit(m) => {
                Tensor::scaled_dot_product_attention(&q, &k, &v, Some(m), 0.0, false, None, gqa)
            }
        };
        let y = y
            .transpose(1, 2)
            .contiguous()
            .view([b, t, self.num_heads * self.head_dim]);
        linear(&y, &self.out_proj)
    }
}

/// The gate and up projections: two matrices, or one with the rows stacked.
#[derive(Debug)]
pub enum GateUpProj {
    Separate { gate_proj: Tensor, up_proj: Tensor },
    Fused { fc: Tensor },
}

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
#[derive(Debug)]
pub struct Mlp {
    pub gate_up: GateUpProj,
    /// `down_proj` (HF) or `proj` (Raven).
    pub down_proj: Tensor,
}

impl Mlp {
    pub fn new(p: nn::Path, cfg: &LlamaConfig, layout: Layout) -> Self {
        let h = cfg.hidden_size as i64;
        let i = cfg.intermediate_size as i64;
        let weight = |name: &str, out: i64, inp: i64| {
            (&p / name).var("weight", &[out, inp], Init::Const(0.0))
        };
        match layout {
            Layout::Hf => Self {
                gate_up: GateUpProj::Separate {
                    gate_proj: weight("gate_proj", i, h),
                    up_proj: weight("up_proj", i, h),
                },
                down_proj: weight("down_proj", h, i),
            },
            Layout::Raven => Self {
                gate_up: GateUpProj::Fused {
                    fc: weight("fc", 2 * i, h),
                },
                down_proj: weight("proj", h, i),
            },
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let hidden = match &self.gate_up {
            GateUpProj::Separate { gate_proj, up_proj } => {
                linear(x, gate_proj).silu() * linear(x, up_proj)
            }
            GateUpProj::Fused { fc } => {
                let both = linear(x, fc).chunk(2, -1);
                both[0].silu() * &both[1]
            }
        };
        linear(&hidden, &self.down_proj)
    }
}

/// One decoder layer, in its source model's form.
///
/// Llama (pre-norm): `h = x + attn(norm_1(x)); out = h + mlp(norm_2(h))`.
/// OLMo-2 (post-norm): `h = x + norm_1(attn(x)); out = h + norm_2(mlp(h))`.
#[derive(Debug)]
pub struct Block {
    pub model_type: ModelType,
    pub attn: Attention,
    pub mlp: Mlp,
    pub norm_1: RmsNorm,
    pub norm_2: RmsNorm,
}

impl Block {
    pub fn new(p: nn::Path, cfg: &LlamaConfig, layout: Layout) -> Self {
        let h = cfg.hidden_size as i64;
        let eps = cfg.rms_norm_eps;
        let (attn_name, mlp_name, norm_1, norm_2) = match (layout, cfg.model_type) {
            (Layout::Hf, ModelType::Llama) => (
                "self_attn",
                "mlp",
                "input_layernorm",
                "post_attention_layernorm",
            ),
            (Layout::Hf, ModelType::Olmo2) => (
                "self_attn",
                "mlp",
                "post_attention_layernorm",
                "post_feedforward_layernorm",
            ),
            (Layout::Raven, _) => ("attn", "mlp", "norm_1", "norm_2"),
        };
        Self {
            model_type: cfg.model_type,
            attn: Attention::new(&p / attn_name, cfg, layout),
            mlp: Mlp::new(&p / mlp_name, cfg, layout),
            norm_1: RmsNorm::new(&p / norm_1, h, eps),
            norm_2: RmsNorm::new(&p / norm_2, h, eps),
        }
    }

    pub fn forward(
        &self,
        x: &Tensor,
        cos_sin: &(Tensor, Tensor),
        mask: &AttnMask,
        cache: Option<&mut LayerKv>,
    ) -> Tensor {
        match self.model_type {
            ModelType::Llama => {
                let h = x + self
                    .attn
                    .forward(&self.norm_1.forward(x), cos_sin, mask, cache);
                let mlp = self.mlp.forward(&self.norm_2.forward(&h));
                h + mlp
            }
            ModelType::Olmo2 => {
                let h = x + self
                    .norm_1
                    .forward(&self.attn.forward(x, cos_sin, mask, cache));
                let mlp = self.mlp.forward(&h);
                h + self.norm_2.forward(&mlp)
            }
        }
    }
}

/// Per-layer keys and values plus the key padding mask, for incremental decoding.
#[derive(Debug, Default)]
pub struct KvCache {
    pub layers: Vec<LayerKv>,
    /// [B, S] bool over all cached positions; None while nothing is padded.
    pub key_mask: Option<Tensor>,
    /// Number of cached positions S.
    pub len: i64,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| LayerKv::default()).collect(),
            key_mask: None,
            len: 0,
        }
    }
}

/// The key padding mask after appending `t` new positions to `past` cached ones: None while
/// nothing is padded, else [B, past + t] bool (missing parts count as real tokens).
fn extend_key_mask(
    cached: Option<&Tensor>,
    new: Option<&Tensor>,
    b: i64,
    past: i64,
    t: i64,
    device: Device,
) -> Option<Tensor> {
    if cached.is_none() && new.is_none() {
        return None;
    }
    let old = cached
        .map(|m| m.shallow_clone())
        .unwrap_or_else(|| Tensor::ones([b, past], (Kind::Bool, device)));
    let new = new
        .map(|m| m.to_kind(Kind::Bool).to_device(device))
        .unwrap_or_else(|| Tensor::ones([b, t], (Kind::Bool, device)));
    Some(Tensor::cat(&[&old, &new], 1))
}

/// Positions and attention mask for `t` new tokens on top of `past` cached ones.
///
/// With padding, positions count only real tokens (`cumsum(mask) - 1`), so a left-padded row
/// gets the same positions as it would alone; padded keys are never attended to. A query
/// whose every key is masked (a pad token with only pads before it) may see itself, which
/// keeps SDPA free of NaNs without affecting real tokens.
fn positions_and_mask(
    b: i64,
    t: i64,
    past: i64,
    key_mask: Option<&Tensor>,
    device: Device,
) -> (Tensor, AttnMask) {
    let Some(key_mask) = key_mask else {
        let positions = Tensor::arange_start(past, past + t, (Kind::Int64, device))
            .unsqueeze(0)
            .expand([b, t], true);
        let mask = if past == 0 {
            AttnMask::Causal
        } else if t == 1 {
            AttnMask::None
        } else {
            explicit_causal(b, t, past, None, device)
        };
        return (positions, mask);
    };
    let positions = (key_mask.to_kind(Kind::Int64).cumsum(1, Kind::Int64) - 1)
        .clamp_min(0)
        .narrow(1, past, t);
    (
        positions,
        explicit_causal(b, t, past, Some(key_mask), device),
    )
}

fn explicit_causal(
    b: i64,
    t: i64,
    past: i64,
    key_mask: Option<&Tensor>,
    device: Device,
) -> AttnMask {
    let s = past + t;
    let q_pos = Tensor::arange_start(past, s, (Kind::Int64, device)).view([t, 1]);
    let k_pos = Tensor::arange(s, (Kind::Int64, device)).view([1, s]);
    let causal = k_pos.le_tensor(&q_pos);
    let mut allowed = causal.view([1, 1, t, s]).expand([b, 1, t, s], true);
    if let Some(km) = key_mask {
        let diagonal = k_pos.eq_tensor(&q_pos).view([1, 1, t, s]);
        allowed = allowed
            .logical_and(&km.to_kind(Kind::Bool).view([b, 1, 1, s]))
            .logical_or(&diagonal);
    }
    AttnMask::Explicit(allowed)
}

/// What every forward call derives from its ids, padding and cache before the first layer:
/// token positions, the attention mask, the RoPE angles, and the key mask the cache keeps.
pub struct Prologue {
    /// [B, T]: positions of the new tokens, counting only real (unpadded) tokens.
    pub positions: Tensor,
    pub mask: AttnMask,
    pub cos_sin: (Tensor, Tensor),
    /// [B, past + T] bool over cached and new positions; None while nothing is padded.
    pub key_mask: Option<Tensor>,
    /// Cached positions before this call, and new ones in it.
    pub past: i64,
    pub t: i64,
}

impl Prologue {
    /// For `input_ids` [B, T] (padding marked 0 in `attention_mask`) appended after a cache
    /// holding `cached` = (length, key mask), or a fresh sequence when None.
    pub fn new(
        rope: &Rope,
        dtype: Kind,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cached: Option<(i64, Option<&Tensor>)>,
    ) -> Self {
        let (b, t) = input_ids.size2().expect("input_ids must be [B, T]");
        let device = rope.inv_freq.device();
        let (past, cached_mask) = cached.unwrap_or((0, None));
        let key_mask = extend_key_mask(cached_mask, attention_mask, b, past, t, device);
        let (positions, mask) = positions_and_mask(b, t, past, key_mask.as_ref(), device);
        let cos_sin = rope.cos_sin(&positions, dtype);
        Self {
            positions,
            mask,
            cos_sin,
            key_mask,
            past,
            t,
        }
    }
}

impl FromCheckpoint for LlamaModel {
    type Config = LlamaConfig;
    fn read_config(dir: &Path) -> Result<LlamaConfig> {
        LlamaConfig::from_path(dir)
    }
    fn parameter_elements(config: &LlamaConfig) -> u128 {
        config.parameter_elements()
    }
    fn build(vs: nn::VarStore, config: LlamaConfig) -> Self {
        Self::new(vs, config)
    }
    fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }
    fn ignorable(&self, name: &str) -> bool {
        name.ends_with("rotary_emb.inv_freq")
            || (self.config.tie_word_embeddings && name == "lm_head.weight")
    }
    fn describe(&self) -> String {
        format!(
            "{} layers, model_type {:?}",
            self.config.num_hidden_layers, self.config.model_type
        )
    }
}

/// A Llama-family causal language model with its parameters.
pub struct LlamaModel {
    pub config: LlamaConfig,
    pub vs: nn::VarStore,
    pub embed_tokens: Tensor,
    pub layers: Vec<Block>,
    pub norm: RmsNorm,
    /// A copy of `embed_tokens` (same tensor) when the config ties them.
    pub lm_head: Tensor,
    pub rope: Rope,
    /// Dtype of the activations; `None`: the weights' dtype ([`LlamaModel::set_compute_kind`]).
    compute: Option<Kind>,
}

impl LlamaModel {
    /// Builds the model with placeholder weights in `vs` (dtype and device of `vs`).
    pub fn new(vs: nn::VarStore, config: LlamaConfig) -> Self {
        let root = vs.root();
        let model = &root / "model";
        let h = config.hidden_size as i64;
        let v = config.vocab_size as i64;
        let embed_tokens = (&model / "embed_tokens").var("weight", &[v, h], Init::Const(0.0));
        let layers = (0..config.num_hidden_layers)
            .map(|i| Block::new(&model / "layers" / i, &config, Layout::Hf))
            .collect();
        let norm = RmsNorm::new(&model / "norm", h, config.rms_norm_eps);
        let lm_head = if config.tie_word_embeddings {
            embed_tokens.shallow_clone()
        } else {
            (&root / "lm_head").var("weight", &[v, h], Init::Const(0.0))
        };
        let rope = Rope::new(&config, vs.device());
        Self {
            config,
            vs,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
            compute: None,
        }
    }

    /// Loads a Hugging Face model directory (`config.json` + safetensors) onto `device`,
    /// with parameters in `dtype` whatever the file's dtype.
    pub fn load(dir: &Path, device: Device, dtype: Kind) -> Result<Self> {
        <Self as FromCheckpoint>::load(dir, device, dtype)
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Dtype of the parameters.
    pub fn dtype(&self) -> Kind {
        self.embed_tokens.kind()
    }

    /// Gives a tied model its own head, initialised as a copy of the embedding (the authors
    /// untie Llama-3.2 this way before training its static baseline). A no-op when untied.
    pub fn untie_head(&mut self) {
        if !self.config.tie_word_embeddings {
            return;
        }
        let root = self.vs.root();
        self.lm_head = tch::no_grad(|| (&root / "lm_head").var_copy("weight", &self.embed_tokens));
        self.config.tie_word_embeddings = false;
    }

    /// Dtype the forward computes in: the parameters' unless set otherwise.
    pub fn compute_kind(&self) -> Kind {
        self.compute.unwrap_or_else(|| self.dtype())
    }

    /// Computes in `kind` over parameters kept in their own dtype (mixed precision): the
    /// embedded input is cast to `kind` and every weight is cast to it at its use ([`at_use`]).
    pub fn set_compute_kind(&mut self, kind: Kind) {
        self.compute = Some(kind);
    }

    /// Every parameter by its checkpoint name, sorted (a tied head is not listed).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        crate::weights::sorted_variables(&self.vs)
    }

    /// Writes `config.json` and `model.safetensors` (Hugging Face layout) into the existing
    /// directory `dir`.
    pub fn save_weights_and_config(&self, dir: &Path) -> Result<()> {
        let mut config = self.config.clone();
        config.torch_dtype = Some(crate::weights::dtype_name(self.dtype()).to_string());
        let mut value = serde_json::to_value(&config)?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert(
                "architectures".into(),
                serde_json::json!(["LlamaForCausalLM"]),
            );
            obj.retain(|_, v| !v.is_null());
        }
        let path = dir.join("config.json");
        let mut text = serde_json::to_string_pretty(&value)?;
        text.push('\n');
        std::fs::write(&path, text).with_context(|| format!("{}: cannot write", path.display()))?;
        crate::weights::write_safetensors(&self.named_tensors(), &dir.join("model.safetensors"))
    }

    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Logits [B, T, V] for token ids [B, T]; `attention_mask` [B, T] marks real tokens with 1
    /// (padding with 0), so each row of a padded batch gets what it gets alone.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Tensor {
        self.head(&self.hidden(input_ids, attention_mask, None))
    }

    /// Logits from final-normed hidden states.
    pub fn head(&self, hidden: &Tensor) -> Tensor {
        linear(hidden, &self.lm_head)
    }

    /// The final-normed hidden states [B, T, h] that the head multiplies, for ids appended
    /// after what `cache` holds (or a fresh sequence).
    pub fn hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor {
        let p = Prologue::new(
            &self.rope,
            self.compute_kind(),
            input_ids,
            attention_mask,
            cache.as_ref().map(|c| (c.len, c.key_mask.as_ref())),
        );
        let mut x = Tensor::embedding(
            &self.embed_tokens,
            &input_ids.to_device(self.device()),
            -1,
            false,
            false,
        )
        .to_kind(self.compute_kind());
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(&x, &p.cos_sin, &p.mask, layer_cache);
        }
        if let Some(c) = cache {
            c.len = p.past + p.t;
            c.key_mask = p.key_mask;
        }
        self.norm.forward(&x)
    }

    /// Number of parameters per part: (embeddings, blocks, final norm, head). A tied head
    /// counts zero.
    pub fn parameter_counts(&self) -> (usize, usize, usize, usize) {
        let h = self.config.hidden_size;
        let emb = self.config.vocab_size * h;
        let blocks = self.config.num_hidden_layers * self.config.params_per_layer();
        let head = if self.config.tie_word_embeddings {
            0
        } else {
            emb
        };
        (emb, blocks, h, head)
    }
}
