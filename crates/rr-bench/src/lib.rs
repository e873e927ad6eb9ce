//! `rr bench recurrence`: what one training step, one no-grad forward and cached generation
//! cost at each recurrence, on random weights of a real model's shape.
//!
//! The training step is the trainer's own (`rr_train::trainer::micro_batch`, global-norm
//! clipping, the optimizer), so the numbers are those of `rr train`. Every timing is the median
//! of `repeats` runs after `warmup` runs; CUDA work is synchronised before the clock stops.
//!
//! Model FLOPs count every matmul of the pass (attention projections, MLP, adapter, head, and
//! causal attention scores and values at `2·T·n_heads·head_dim` per token and layer, forward);
//! a backward pass costs twice the forward of the parts it runs through (prelude, the `k`
//! iterations with gradient, coda, head). MFU is model FLOP/s over the matmul peak measured in
//! the same run, in the same dtype.

use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use rr_model::config::LlamaConfig;
use rr_model::recurrent::{RecurrentConfig, RecurrentModel};
use rr_model::{decode, AnyModel, DecodeOptions, TestTime};
use rr_recipe::AdamWConfig;
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use rr_train::optim::{clip_grad_norm_lazy, AdamW, Optimizer};
use rr_train::trainer::{copy_weights, micro_batch, optimizer_params};

/// Dimensions of the benchmarked model (a Llama-family block in the Raven layout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shape {
    pub name: String,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub prelude: usize,
    pub core: usize,
    pub coda: usize,
    pub rope_theta: f64,
    pub eps: f64,
    pub state_std: f64,
}

impl Shape {
    /// A named shape: `tiny`, `smollm2` (SmolLM2-135M), `tinyllama` (TinyLlama-1.1B) or
    /// `llama3.2-1b`; `layers` (prelude, core, coda) overrides the default (4, 8, 4), or
    /// (1, 2, 1) for `tiny`.
    pub fn preset(name: &str, layers: Option<(usize, usize, usize)>) -> Result<Self> {
        // (hidden, intermediate, heads, kv heads, vocab, rope θ)
        let (hidden, intermediate, heads, kv_heads, vocab, rope_theta) = match name {
            "tiny" => (256, 704, 4, 2, 8192, 10_000.0),
            "smollm2" => (576, 1536, 9, 3, 49152, 100_000.0),
            "tinyllama" => (2048, 5632, 32, 4, 32000, 10_000.0),
            "llama3.2-1b" => (2048, 8192, 32, 8, 128_256, 500_000.0),
            other => {
                bail!("unknown shape `{other}` (expected tiny, smollm2, tinyllama or llama3.2-1b)")
            }
        };
        let default_layers = if name == "tiny" { (1, 2, 1) } else { (4, 8, 4) };
        let (prelude, core, coda) = layers.unwrap_or(default_layers);
        ensure!(core >= 1, "the recurrent block needs at least one layer");
        Ok(Self {
            name: name.to_string(),
            hidden,
            intermediate,
            heads,
            kv_heads,
            head_dim: hidden / heads,
            vocab,
            prelude,
            core,
            coda,
            rope_theta,
            eps: 1e-5,
            state_std: (2.0 / (5.0 * hidden as f64)).sqrt(),
        })
    }

    fn recurrent_config(&self, max_positions: usize) -> RecurrentConfig {
        let source: LlamaConfig = serde_json::from_value(serde_json::json!({
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.prelude + self.core + self.coda,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": max_positions,
            "rms_norm_eps": self.eps,
            "rope_theta": self.rope_theta,
        }))
        .expect("a complete Llama config");
        let mut cfg = RecurrentConfig::from_source(&source, self.prelude, self.core, self.coda, 4);
        cfg.init_values.std = self.state_std;
        cfg
    }

    /// Matmul parameters of one block (q, k, v, o, gate, up, down).
    fn block_matmul_params(&self) -> f64 {
        let h = self.hidden as f64;
        let attn = h * (self.heads + 2 * self.kv_heads) as f64 * self.head_dim as f64
            + (self.heads * self.head_dim) as f64 * h;
        attn + 3.0 * h * self.intermediate as f64
    }

    /// Forward FLOPs per token of one block at sequence length `t` (causal attention).
    fn block_flops(&self, t: usize) -> f64 {
        2.0 * self.block_matmul_params() + 2.0 * (t * self.heads * self.head_dim) as f64
    }

    /// Forward FLOPs per token of the pieces: (prelude + coda + head, one core iteration).
    fn pieces_flops(&self, t: usize) -> (f64, f64) {
        let h = self.hidden as f64;
        let outer =
            (self.prelude + self.coda) as f64 * self.block_flops(t) + 2.0 * h * self.vocab as f64;
        let iteration = self.core as f64 * self.block_flops(t) + 2.0 * 2.0 * h * h;
        (outer, iteration)
    }

    /// Model FLOPs of a no-grad forward of `tokens` tokens at recurrence `r`.
    pub fn forward_flops(&self, tokens: usize, t: usize, r: usize) -> f64 {
        let (outer, iteration) = self.pieces_flops(t);
        tokens as f64 * (outer + r as f64 * iteration)
    }

    /// Model FLOPs of a training step: forward at `r`, backward through `k` iterations.
    pub fn train_flops(&self, tokens: usize, t: usize, r: usize, k: usize) -> f64 {
        let (outer, iteration) = self.pieces_flops(t);
        tokens as f64 * (3.0 * outer + r as f64 * iteration + 2.0 * k as f64 * iteration)
    }
}

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PointKind {
    Train,
    Forward,
    Generate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Point {
    pub kind: PointKind,
    /// Total iterations of the core.
    pub r: usize,
    /// Iterations with gradient (training only; the other `r - k` run without).
    pub k: usize,
}

/// One benchmark invocation; written into the result so the PyTorch reference can run the
/// same points.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchSpec {
    /// `cpu` or `cuda` (device 0).
    pub device: String,
    /// `float32` or `bfloat16`: the compute dtype (training keeps fp32 master weights).
    pub dtype: String,
    pub shape: Shape,
    pub batch: usize,
    pub seq: usize,
    pub gen_prompt: usize,
    pub gen_tokens: usize,
    pub warmup: usize,
    pub repeats: usize,
    /// Intra-op threads on CPU (None: libtorch's default).
    pub threads: Option<usize>,
    pub points: Vec<Point>,
}

impl BenchSpec {
    /// Points for every recurrence (forward, generation) and every (r, k) with k ≤ r (training).
    pub fn points_for(recurrences: &[usize], backprop: &[usize]) -> Vec<Point> {
        let mut points = Vec::new();
        for &r in recurrences {
            for &k in backprop {
                if k <= r {
                    points.push(Point {
                        kind: PointKind::Train,
                        r,
                        k,
                    });
                }
            }
        }
        for kind in [PointKind::Forward, PointKind::Generate] {
            points.extend(recurrences.iter().map(|&r| Point { kind, r, k: 0 }));
        }
        points
    }
}

/// One measured point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// `rr`, `pytorch-eager` or `pytorch-compile`.
    #[serde(rename = "impl")]
    pub implementation: String,
    pub kind: PointKind,
    pub r: usize,
    pub k: usize,
    #[serde(default)]
    pub ms: Option<f64>,
    #[serde(default)]
    pub tokens_per_s: Option<f64>,
    /// CUDA allocator peak, or the process's peak RSS on CPU, during the timed runs.
    #[serde(default)]
    pub peak_bytes: Option<i64>,
    #[serde(default)]
    pub flops_per_s: Option<f64>,
    #[serde(default)]
    pub mfu: Option<f64>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    pub spec: BenchSpec,
    /// Measured matmul throughput in the compute dtype (FLOP/s), the MFU denominator.
    pub matmul_peak_flops: f64,
    pub libtorch_threads: i64,
    /// The kernel `scaled_dot_product_attention` picks for the training shape (causal, GQA).
    #[serde(default)]
    pub sdpa_backend: String,
    pub rows: Vec<Row>,
}

/// The kernel ATen's `scaled_dot_product_attention` dispatches to for queries [B, heads, T,
/// head_dim] and grouped keys/values, causal, in `kind` on `device`.
pub fn sdpa_backend(shape: &Shape, b: usize, t: usize, device: Device, kind: Kind) -> String {
    let q = Tensor::zeros(
        [
            b as i64,
            shape.heads as i64,
            t as i64,
            shape.head_dim as i64,
        ],
        (kind, device),
    );
    let kv = Tensor::zeros(
        [
            b as i64,
            shape.kv_heads as i64,
            t as i64,
            shape.head_dim as i64,
        ],
        (kind, device),
    );
    let choice = Tensor::internal_fused_sdp_choice::<Tensor>(
        &q,
        &kv,
        &kv,
        None,
        0.0,
        true,
        None,
        shape.heads != shape.kv_heads,
    );
    match choice {
        0 => "math",
        1 => "flash",
        2 => "memory-efficient",
        3 => "cudnn",
        4 => "overrideable",
        _ => "unknown",
    }
    .to_string()
}

fn synchronize(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Resets the peak-memory counter: the CUDA allocator's, or the process's peak RSS.
fn reset_peak(device: Device) {
    match device {
        Device::Cuda(i) => {
            let _ = rr_torch_ext::cuda_reset_peak(i);
        }
        _ => {
            // Linux: writing 5 to clear_refs resets VmHWM.
            let _ = std::fs::write("/proc/self/clear_refs", "5");
        }
    }
}

fn peak_bytes(device: Device) -> Option<i64> {
    match device {
        Device::Cuda(i) => rr_torch_ext::cuda_memory(i).ok().map(|m| m.peak_allocated),
        _ => {
            let status = std::fs::read_to_string("/proc/self/status").ok()?;
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kb: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        }
    }
}

/// Median seconds of `repeats` runs after `warmup`, and the peak memory of the timed runs.
fn timed(
    device: Device,
    warmup: usize,
    repeats: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, Option<i64>)> {
    for _ in 0..warmup {
        f()?;
    }
    synchronize(device);
    reset_peak(device);
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        f()?;
        synchronize(device);
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], peak_bytes(device)))
}

/// Matmul throughput (FLOP/s) of square matrices in `kind` on `device`.
pub fn matmul_peak(device: Device, kind: Kind) -> Result<f64> {
    let n: i64 = if device.is_cuda() { 8192 } else { 1024 };
    let a = Tensor::randn([n, n], (kind, device));
    let b = Tensor::randn([n, n], (kind, device));
    let (seconds, _) = timed(device, 2, 5, || {
        let _ = a.matmul(&b);
        Ok(())
    })?;
    Ok(2.0 * (n as f64).powi(3) / seconds)
}

/// Builds the model with random weights (normal, std 0.02; norms at one).
fn random_model(shape: &Shape, max_positions: usize, device: Device, kind: Kind) -> RecurrentModel {
    let mut vs = nn::VarStore::new(device);
    vs.set_kind(kind);
    let model = RecurrentModel::new(vs, shape.recurrent_config(max_positions));
    tch::no_grad(|| {
        // In name order: the same seed gives the same weights.
        for (name, mut t) in model.named_tensors() {
            if name.contains("norm") || name.contains("ln_f") {
                let _ = t.fill_(1.0);
            } else {
                let _ = t.normal_(0.0, 0.02);
            }
        }
    });
    model
}

/// Runs every point of `spec` with rr and returns the measured rows.
pub fn run(spec: &BenchSpec, mut progress: impl FnMut(&Row)) -> Result<BenchResult> {
    let device = rr_model::device::parse_device(&spec.device)?;
    let compute_kind = rr_model::device::parse_dtype(&spec.dtype)?;
    ensure!(
        spec.batch >= 1 && spec.seq >= 2,
        "batch and seq must be positive"
    );
    ensure!(
        spec.gen_prompt >= 1 && spec.gen_tokens >= 1,
        "generation needs a prompt and new tokens"
    );
    if let Some(threads) = spec.threads {
        tch::set_num_threads(threads as i32);
    }
    if device.is_cuda() {
        rr_torch_ext::set_tf32(true)?;
    }
    tch::manual_seed(0);
    let matmul_peak_flops = matmul_peak(device, compute_kind)?;
    let max_positions = spec.seq.max(spec.gen_prompt + spec.gen_tokens);

    let master = AnyModel::Recurrent(random_model(
        &spec.shape,
        max_positions,
        device,
        Kind::Float,
    ));
    let compute = (compute_kind != Kind::Float).then(|| {
        AnyModel::Recurrent(random_model(
            &spec.shape,
            max_positions,
            device,
            compute_kind,
        ))
    });
    let mut optimizer = AdamW::from_var_store(
        master.vs(),
        AdamWConfig {
            lr: 1e-4,
            weight_decay: 0.1,
            ..AdamWConfig::default()
        },
    )?;
    let params = optimizer_params(&master);
    let (b, t) = (spec.batch as i64, spec.seq as i64);
    let ids = Tensor::randint(spec.shape.vocab as i64, [b, t], (Kind::Int64, device));
    let labels = Tensor::randint(spec.shape.vocab as i64, [b * t], (Kind::Int64, device));
    let tokens = spec.batch * spec.seq;

    let mut rows = Vec::new();
    for point in &spec.points {
        let Point { kind, r, k } = *point;
        ensure!(r >= 1, "recurrence must be at least 1");
        let (seconds, peak, flops, tokens_done) = match kind {
            PointKind::Train => {
                ensure!(
                    k >= 1 && k <= r,
                    "training point needs 1 <= k <= r, got ({r}, {k})"
                );
                let mut seed = 0u64;
                let (s, p) = timed(device, spec.warmup, spec.repeats, || {
                    if let Some(c) = &compute {
                        copy_weights(&master, c);
                    }
                    seed += 1;
                    let _loss = micro_batch(
                        &master,
                        compute.as_ref(),
                        &ids,
                        &labels,
                        (r - k, k),
                        seed,
                        1,
                    )?;
                    let _norm = clip_grad_norm_lazy(&params, 1.0);
                    optimizer.step(1.0);
                    optimizer.zero_grad();
                    Ok(())
                })?;
                (s, p, spec.shape.train_flops(tokens, spec.seq, r, k), tokens)
            }
            PointKind::Forward => {
                let model = compute.as_ref().unwrap_or(&master);
                let tt = TestTime {
                    recurrence: r,
                    seed: 1,
                };
                let (s, p) = timed(device, spec.warmup, spec.repeats, || {
                    let _logits = tch::no_grad(|| model.logits(&ids, None, tt))?;
                    Ok(())
                })?;
                (s, p, spec.shape.forward_flops(tokens, spec.seq, r), tokens)
            }
            PointKind::Generate => {
                let model = compute.as_ref().unwrap_or(&master);
                let prompt: Vec<i64> = Vec::<i64>::try_from(
                    ids.get(0)
                        .narrow(0, 0, spec.gen_prompt as i64)
                        .to_device(Device::Cpu),
                )
                .context("prompt ids")?;
                let opts = DecodeOptions {
                    max_new_tokens: spec.gen_tokens,
                    test_time: TestTime {
                        recurrence: r,
                        seed: 1,
                    },
                    ..DecodeOptions::default()
                };
                let (s, p) = timed(
                    device,
                    spec.warmup.div_ceil(2),
                    spec.repeats.div_ceil(2),
                    || {
                        let out =
                            decode(model, None, std::slice::from_ref(&prompt), &opts, |_, _| {})?;
                        ensure!(
                            out.rows[0].ids.len() == spec.gen_tokens,
                            "generation stopped early"
                        );
                        Ok(())
                    },
                )?;
                // Counted as the forward passes of the new tokens over a growing context.
                let mid = spec.gen_prompt + spec.gen_tokens / 2;
                (
                    s,
                    p,
                    spec.shape.forward_flops(spec.gen_tokens, mid, r),
                    spec.gen_tokens,
                )
            }
        };
        let flops_per_s = flops / seconds;
        let row = Row {
            implementation: "rr".into(),
            kind,
            r,
            k,
            ms: Some(seconds * 1e3),
            tokens_per_s: Some(tokens_done as f64 / seconds),
            peak_bytes: peak,
            flops_per_s: Some(flops_per_s),
            mfu: Some(flops_per_s / matmul_peak_flops),
            error: None,
        };
        progress(&row);
        rows.push(row);
    }
    Ok(BenchResult {
        spec: spec.clone(),
        matmul_peak_flops,
        libtorch_threads: tch::get_num_threads() as i64,
        sdpa_backend: sdpa_backend(&spec.shape, spec.batch, spec.seq, device, compute_kind),
        rows,
    })
}

/// Reference rows (from `bench/recurrent_ref.py`) with FLOP/s and MFU filled in by the same
/// FLOP count as rr's rows.
fn complete_reference(result: &BenchResult, reference: &[Row]) -> Vec<Row> {
    let spec = &result.spec;
    let tokens = spec.batch * spec.seq;
    reference
        .iter()
        .cloned()
        .map(|mut row| {
            if let Some(ms) = row.ms {
                let flops = match row.kind {
                    PointKind::Train => spec.shape.train_flops(tokens, spec.seq, row.r, row.k),
                    PointKind::Forward => spec.shape.forward_flops(tokens, spec.seq, row.r),
                    PointKind::Generate => spec.shape.forward_flops(
                        spec.gen_tokens,
                        spec.gen_prompt + spec.gen_tokens / 2,
                        row.r,
                    ),
                };
                let fps = flops / (ms / 1e3);
                row.flops_per_s = Some(fps);
                row.mfu = Some(fps / result.matmul_peak_flops);
            }
            row
        })
        .collect()
}

fn mib(bytes: Option<i64>) -> String {
    bytes.map_or("–".into(), |b| {
        format!("{:.0}", b as f64 / (1024.0 * 1024.0))
    })
}

fn num(x: Option<f64>, digits: usize) -> String {
    x.map_or("–".into(), |v| format!("{v:.digits$}"))
}

/// The markdown table: one line per point, rr's numbers and the ratios to each reference.
pub fn markdown(result: &BenchResult, reference: &[Row]) -> String {
    let spec = &result.spec;
    let s = &spec.shape;
    let impls: Vec<String> = {
        let mut v: Vec<String> = reference.iter().map(|r| r.implementation.clone()).collect();
        v.dedup();
        v.sort();
        v.dedup();
        v
    };
    let mut out = format!(
        "Shape `{}` (h {}, {} heads / {} kv, intermediate {}, vocab {}, layers ({}, {}, {})), \
         {} {}, batch {}, seq {}; generation: batch 1, prompt {}, {} new tokens. \
         Median of {} after {} warm-up. Matmul peak measured: {:.1} GFLOP/s; libtorch threads: {}; \
         attention kernel: {}.\n\n",
        s.name,
        s.hidden,
        s.heads,
        s.kv_heads,
        s.intermediate,
        s.vocab,
        s.prelude,
        s.core,
        s.coda,
        spec.device,
        spec.dtype,
        spec.batch,
        spec.seq,
        spec.gen_prompt,
        spec.gen_tokens,
        spec.repeats,
        spec.warmup,
        result.matmul_peak_flops / 1e9,
        result.libtorch_threads,
        result.sdpa_backend,
    );
    out.push_str("| what | r | k | rr ms | rr tok/s | rr peak MiB | rr MFU |");
    for i in &impls {
        out.push_str(&format!(" {i} tok/s | {i} peak MiB | rr / {i} |"));
    }
    out.push('\n');
    out.push_str("|---|---|---|---|---|---|---|");
    for _ in &impls {
        out.push_str("---|---|---|");
    }
    out.push('\n');
    for row in &result.rows {
        let kind = match row.kind {
            PointKind::Train => "train step",
            PointKind::Forward => "no-grad forward",
            PointKind::Generate => "generation (cached)",
        };
        let k = if row.kind == PointKind::Train {
            row.k.to_string()
        } else {
            "–".into()
        };
        out.push_str(&format!(
            "| {kind} | {} | {k} | {} | {} | {} | {} |",
            row.r,
            num(row.ms, 1),
            num(row.tokens_per_s, 1),
            mib(row.peak_bytes),
            row.mfu
                .map_or("–".into(), |m| format!("{:.1} %", m * 100.0)),
        ));
        for i in &impls {
            let other = reference.iter().find(|o| {
                &o.implementation == i && o.kind == row.kind && o.r == row.r && o.k == row.k
            });
            match other {
                Some(o) if o.error.is_none() => {
                    let ratio = match (row.tokens_per_s, o.tokens_per_s) {
                        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
                        _ => "–".into(),
                    };
                    out.push_str(&format!(
                        " {} | {} | {ratio} |",
                        num(o.tokens_per_s, 1),
                        mib(o.peak_bytes)
                    ));
                }
                Some(o) => out.push_str(&format!(
                    " {} | – | – |",
                    o.error.clone().unwrap_or_default()
                )),
                None => out.push_str(" – | – | – |"),
            }
        }
        out.push('\n');
    }
    out
}

/// Writes `results.json` (spec, rr rows, reference rows), `results.md`, and the plots
/// `tokens_per_s.svg` and `memory.svg` (against recurrence) into `dir`.
pub fn write_report(dir: &std::path::Path, result: &BenchResult, reference: &[Row]) -> Result<()> {
    use rr_eval::plot::{line_plot, Series};
    let reference = complete_reference(result, reference);
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let json = serde_json::json!({
        "spec": result.spec,
        "matmul_peak_flops": result.matmul_peak_flops,
        "libtorch_threads": result.libtorch_threads,
        "sdpa_backend": result.sdpa_backend,
        "rows": result.rows,
        "reference_rows": reference,
    });
    rr_util::fs::write_atomic(
        &dir.join("results.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    rr_util::fs::write_atomic(
        &dir.join("results.md"),
        markdown(result, &reference).as_bytes(),
    )?;

    let all: Vec<&Row> = result.rows.iter().chain(reference.iter()).collect();
    let mut keys: Vec<(String, PointKind, usize)> = all
        .iter()
        .map(|r| (r.implementation.clone(), r.kind, r.k))
        .collect();
    keys.sort_by(|a, b| (&a.0, a.1 as u8, a.2).cmp(&(&b.0, b.1 as u8, b.2)));
    keys.dedup();
    let series = |value: &dyn Fn(&Row) -> Option<f64>| -> Vec<Series> {
        keys.iter()
            .map(|(imp, kind, k)| {
                let label = match kind {
                    PointKind::Train => format!("{imp} train k={k}"),
                    PointKind::Forward => format!("{imp} forward"),
                    PointKind::Generate => format!("{imp} generate"),
                };
                Series {
                    name: label,
                    points: all
                        .iter()
                        .filter(|r| &r.implementation == imp && r.kind == *kind && r.k == *k)
                        .filter_map(|r| Some((r.r as f64, value(r)?)))
                        .collect(),
                }
            })
            .filter(|s| !s.points.is_empty())
            .collect()
    };
    let title = format!(
        "{} on {} ({})",
        result.spec.shape.name, result.spec.device, result.spec.dtype
    );
    line_plot(
        &dir.join("tokens_per_s.svg"),
        &format!("tokens/s, {title}"),
        "recurrence r",
        "tokens/s (log10)",
        &series(&|r| r.tokens_per_s.map(f64::log10)),
        true,
    )?;
    line_plot(
        &dir.join("memory.svg"),
        &format!("peak memory, {title}"),
        "recurrence r",
        "peak MiB",
        &series(&|r| r.peak_bytes.map(|b| b as f64 / (1024.0 * 1024.0))),
        true,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flop_counts_by_hand() {
        // tiny: h 256, heads 4 × 64, kv 2, intermediate 704, vocab 8192, layers (1, 2, 1).
        let s = Shape::preset("tiny", None).unwrap();
        let attn = 256.0 * (4.0 + 4.0) * 64.0 + 256.0 * 256.0; // qkv + o
        let mlp = 3.0 * 256.0 * 704.0;
        assert_eq!(s.block_matmul_params(), attn + mlp);
        let t = 128;
        let block = 2.0 * (attn + mlp) + 2.0 * 128.0 * 256.0;
        let outer = 2.0 * block + 2.0 * 256.0 * 8192.0;
        let iteration = 2.0 * block + 4.0 * 256.0 * 256.0;
        assert_eq!(s.forward_flops(10, t, 3), 10.0 * (outer + 3.0 * iteration));
        // Training at (r, k) = (4, 2): forward at 4 plus a backward (2×) through outer and 2.
        assert_eq!(
            s.train_flops(10, t, 4, 2),
            10.0 * (3.0 * outer + 4.0 * iteration + 4.0 * iteration)
        );
    }

    #[test]
    fn points_pair_each_backprop_depth_with_deeper_recurrences() {
        let p = BenchSpec::points_for(&[1, 4, 8], &[4]);
        let train: Vec<(usize, usize)> = p
            .iter()
            .filter(|p| p.kind == PointKind::Train)
            .map(|p| (p.r, p.k))
            .collect();
        assert_eq!(train, vec![(4, 4), (8, 4)]);
        assert_eq!(p.iter().filter(|p| p.kind == PointKind::Forward).count(), 3);
    }

    #[test]
    fn unknown_shape_is_an_error() {
        let err = Shape::preset("gpt5", None).unwrap_err().to_string();
        assert!(err.contains("unknown shape `gpt5`"), "{err}");
    }
}
