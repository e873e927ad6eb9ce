//! `rr bench recurrence`: what one training step, one no-grad forward and cached generation
//! cost at each recurrence, on random weights of a real model's shape.
//!
//! The training step is the trainer's own (`rr_train::trainer::micro_batch`, global-norm
//! clipping, the optimizer), so the numbers are those of `rr train`. Every timing is the median
//! of `repeats` runs after `warmup` runs; CUDA work is synchronised before the clock stops.
//!
//! Model FLOPs are counted by `rr_eval::compute::ModelFlops`, the workspace's one FLOP counter:
//! every matmul of the pass (attention projections, MLP, adapter, head, and causal attention
//! scores and values at `2·T·n_heads·head_dim` per token and layer, forward); a backward pass
//! costs twice the forward of the parts it runs through (prelude, the `k` iterations with
//! gradient, coda, head). MFU is model FLOP/s over the matmul peak measured in the same run, in
//! the same dtype.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use rr_eval::compute::{BlockDims, ModelFlops};
use rr_eval::plot::{line_plot, Series};
use rr_model::config::LlamaConfig;
use rr_model::recurrent::{RecurrentConfig, RecurrentModel};
use rr_model::{decode, AnyModel, DecodeOptions, TestTime, TokenStep};
use rr_recipe::AdamWConfig;
use rr_train::optim::{clip_grad_norm_lazy, AdamW, Optimizer};
use rr_train::trainer::{micro_batch, optimizer_params};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

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

    /// The matmul dimensions of one block.
    pub fn block(&self) -> BlockDims {
        BlockDims {
            hidden: self.hidden,
            intermediate: self.intermediate,
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
        }
    }

    /// The model-FLOP count of this shape (`rr_eval::compute`, the workspace's one counter).
    pub fn flops(&self) -> ModelFlops {
        ModelFlops {
            block: self.block(),
            vocab: self.vocab,
            prelude: self.prelude,
            core: self.core,
            coda: self.coda,
        }
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

    /// Tokens one run of a point processes: `batch × seq`, or the new tokens of generation.
    pub fn point_tokens(&self, kind: PointKind) -> usize {
        match kind {
            PointKind::Train | PointKind::Forward => self.batch * self.seq,
            PointKind::Generate => self.gen_tokens,
        }
    }

    /// Model FLOPs of one run of a point. Generation counts as the forward passes of the new
    /// tokens over the mean context (the prompt and half of the new tokens).
    pub fn point_flops(&self, point: Point) -> f64 {
        let flops = self.shape.flops();
        let tokens = self.point_tokens(point.kind);
        match point.kind {
            PointKind::Train => flops.training_flops(tokens, self.seq, point.r, point.k),
            PointKind::Forward => flops.forward_flops(tokens, self.seq, point.r),
            PointKind::Generate => {
                let context = self.gen_prompt + self.gen_tokens / 2;
                flops.forward_flops(tokens, context, point.r)
            }
        }
    }

    fn validate(&self) -> Result<()> {
        ensure!(
            self.batch >= 1 && self.seq >= 2,
            "batch and seq must be positive"
        );
        ensure!(
            self.gen_prompt >= 1 && self.gen_tokens >= 1,
            "generation needs a prompt and new tokens"
        );
        for &Point { kind, r, k } in &self.points {
            ensure!(r >= 1, "recurrence must be at least 1");
            ensure!(
                kind != PointKind::Train || (k >= 1 && k <= r),
                "training point needs 1 <= k <= r, got ({r}, {k})"
            );
        }
        Ok(())
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

impl Row {
    /// The point this row measured.
    pub fn point(&self) -> Point {
        Point {
            kind: self.kind,
            r: self.r,
            k: self.k,
        }
    }
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
    /// What the CPU offers the kernels (ISA, native bf16), `rr_model::device::cpu_capability`.
    #[serde(default)]
    pub cpu: String,
    pub rows: Vec<Row>,
}

/// The kernel ATen's `scaled_dot_product_attention` dispatches to for queries [B, heads, T,
/// head_dim] and grouped keys/values, causal, in `kind` on `device`.
pub fn sdpa_backend(shape: &Shape, b: usize, t: usize, device: Device, kind: Kind) -> String {
    let zeros = |heads: usize| {
        let dims = [b, heads, t, shape.head_dim].map(|d| d as i64);
        Tensor::zeros(dims, (kind, device))
    };
    let (q, kv) = (zeros(shape.heads), zeros(shape.kv_heads));
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
    spec.validate()?;
    if let Some(threads) = spec.threads {
        tch::set_num_threads(threads as i32);
    }
    if device.is_cuda() {
        rr_torch_ext::set_tf32(true)?;
    }
    tch::manual_seed(0);
    let matmul_peak_flops = matmul_peak(device, compute_kind)?;
    let mut bench = Bench::new(spec, device, compute_kind)?;
    let mut rows = Vec::new();
    for &point in &spec.points {
        let (seconds, peak) = bench.time(point)?;
        let row = rr_row(spec, point, seconds, peak, matmul_peak_flops);
        progress(&row);
        rows.push(row);
    }
    Ok(BenchResult {
        spec: spec.clone(),
        matmul_peak_flops,
        libtorch_threads: tch::get_num_threads() as i64,
        sdpa_backend: sdpa_backend(&spec.shape, spec.batch, spec.seq, device, compute_kind),
        cpu: rr_model::device::cpu_capability(),
        rows,
    })
}

/// rr's row of a point timed at `seconds` per run.
fn rr_row(
    spec: &BenchSpec,
    point: Point,
    seconds: f64,
    peak_bytes: Option<i64>,
    matmul_peak_flops: f64,
) -> Row {
    let flops_per_s = spec.point_flops(point) / seconds;
    Row {
        implementation: "rr".into(),
        kind: point.kind,
        r: point.r,
        k: point.k,
        ms: Some(seconds * 1e3),
        tokens_per_s: Some(spec.point_tokens(point.kind) as f64 / seconds),
        peak_bytes,
        flops_per_s: Some(flops_per_s),
        mfu: Some(flops_per_s / matmul_peak_flops),
        error: None,
    }
}

/// What the timed runs work on: the fp32 model that trains (computing in the compute dtype,
/// weights cast at use) and its optimizer, a compute-dtype copy for inference (when it is not
/// fp32) and one random batch.
struct Bench<'a> {
    spec: &'a BenchSpec,
    device: Device,
    master: AnyModel,
    compute: Option<AnyModel>,
    optimizer: AdamW,
    params: Vec<Tensor>,
    ids: Tensor,
    labels: Tensor,
}

impl<'a> Bench<'a> {
    fn new(spec: &'a BenchSpec, device: Device, compute_kind: Kind) -> Result<Self> {
        let max_positions = spec.seq.max(spec.gen_prompt + spec.gen_tokens);
        let model =
            |kind| AnyModel::Recurrent(random_model(&spec.shape, max_positions, device, kind));
        let mut master = model(Kind::Float);
        master.set_compute_kind(compute_kind);
        let compute = (compute_kind != Kind::Float).then(|| model(compute_kind));
        let config = AdamWConfig {
            lr: 1e-4,
            weight_decay: 0.1,
            ..AdamWConfig::default()
        };
        let optimizer = AdamW::from_var_store(master.vs(), config)?;
        let params = optimizer_params(&master);
        let (b, t, vocab) = (spec.batch as i64, spec.seq as i64, spec.shape.vocab as i64);
        let ids = Tensor::randint(vocab, [b, t], (Kind::Int64, device));
        let labels = Tensor::randint(vocab, [b * t], (Kind::Int64, device));
        Ok(Self {
            spec,
            device,
            master,
            compute,
            optimizer,
            params,
            ids,
            labels,
        })
    }

    /// The model that runs inference: the compute copy when there is one.
    fn inference_model(&self) -> &AnyModel {
        self.compute.as_ref().unwrap_or(&self.master)
    }

    /// Median seconds per run of `point` and the peak memory of the timed runs.
    fn time(&mut self, point: Point) -> Result<(f64, Option<i64>)> {
        match point.kind {
            PointKind::Train => self.time_train(point.r, point.k),
            PointKind::Forward => self.time_forward(point.r),
            PointKind::Generate => self.time_generate(point.r),
        }
    }

    /// The trainer's step: forward with `r - k` iterations without and `k` with gradient in
    /// the compute dtype, backward, clipping, AdamW.
    fn time_train(&mut self, r: usize, k: usize) -> Result<(f64, Option<i64>)> {
        let (spec, device) = (self.spec, self.device);
        let mut seed = 0u64;
        timed(device, spec.warmup, spec.repeats, || {
            seed += 1;
            let pass = (r - k, k);
            let _loss = micro_batch(&self.master, &self.ids, &self.labels, pass, seed, 1)?;
            let _norm = clip_grad_norm_lazy(&self.params, 1.0);
            self.optimizer.step(1.0);
            self.optimizer.zero_grad();
            Ok(())
        })
    }

    /// A no-grad forward of the batch to the logits.
    fn time_forward(&self, r: usize) -> Result<(f64, Option<i64>)> {
        let model = self.inference_model();
        let tt = TestTime {
            recurrence: r,
            seed: 1,
        };
        timed(self.device, self.spec.warmup, self.spec.repeats, || {
            let _logits = tch::no_grad(|| model.logits(&self.ids, None, tt))?;
            Ok(())
        })
    }

    /// Cached greedy generation of `gen_tokens` tokens after a prompt of `gen_prompt` (batch 1;
    /// half the warm-up and repeats of the other points).
    fn time_generate(&self, r: usize) -> Result<(f64, Option<i64>)> {
        let spec = self.spec;
        let model = self.inference_model();
        let first_row = self.ids.get(0).narrow(0, 0, spec.gen_prompt as i64);
        let prompt =
            Vec::<i64>::try_from(first_row.to_device(Device::Cpu)).context("prompt ids")?;
        let mut opts = DecodeOptions {
            max_new_tokens: spec.gen_tokens,
            test_time: TestTime {
                recurrence: r,
                seed: 1,
            },
            ..DecodeOptions::default()
        };
        // What `rr generate` runs by default: CUDA-graph replay of each token on CUDA.
        opts.token_step = TokenStep::fastest(model, &opts);
        let (warmup, repeats) = (spec.warmup.div_ceil(2), spec.repeats.div_ceil(2));
        timed(self.device, warmup, repeats, || {
            let out = decode(model, None, std::slice::from_ref(&prompt), &opts, |_, _| {})?;
            ensure!(
                out.rows[0].ids.len() == spec.gen_tokens,
                "generation stopped early"
            );
            Ok(())
        })
    }
}

/// Reference rows (from `bench/recurrent_ref.py`) with FLOP/s and MFU filled in by the same
/// FLOP count as rr's rows.
fn complete_reference(result: &BenchResult, reference: &[Row]) -> Vec<Row> {
    reference
        .iter()
        .cloned()
        .map(|mut row| {
            if let Some(ms) = row.ms {
                let fps = result.spec.point_flops(row.point()) / (ms / 1e3);
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
    let impls = implementations(reference);
    let mut out = describe_run(result);
    out.push_str(&table_head(&impls));
    for row in &result.rows {
        out.push_str(&table_line(row, reference, &impls));
    }
    out
}

/// The reference implementations present, sorted, each once.
fn implementations(reference: &[Row]) -> Vec<String> {
    let mut v: Vec<String> = reference.iter().map(|r| r.implementation.clone()).collect();
    v.sort();
    v.dedup();
    v
}

/// The paragraph above the table: shape, device, sizes, repeats, matmul peak, threads, kernel.
fn describe_run(result: &BenchResult) -> String {
    let spec = &result.spec;
    let s = &spec.shape;
    format!(
        "Shape `{}` (h {}, {} heads / {} kv, intermediate {}, vocab {}, layers ({}, {}, {})), \
         {} {}, batch {}, seq {}; generation: batch 1, prompt {}, {} new tokens. \
         Median of {} after {} warm-up. Matmul peak measured: {:.1} GFLOP/s; libtorch threads: {}; \
         attention kernel: {}. CPU: {}.\n\n",
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
        result.cpu,
    )
}

/// The table's header and separator lines: rr's columns, then three per reference.
fn table_head(impls: &[String]) -> String {
    let mut out = String::from("| what | r | k | rr ms | rr tok/s | rr peak MiB | rr MFU |");
    for i in impls {
        out.push_str(&format!(" {i} tok/s | {i} peak MiB | rr / {i} |"));
    }
    out.push_str("\n|---|---|---|---|---|---|---|");
    out.push_str(&"---|---|---|".repeat(impls.len()));
    out.push('\n');
    out
}

/// One table line: rr's numbers for `row`, then each reference's at the same point.
fn table_line(row: &Row, reference: &[Row], impls: &[String]) -> String {
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
    let mut out = format!(
        "| {kind} | {} | {k} | {} | {} | {} | {} |",
        row.r,
        num(row.ms, 1),
        num(row.tokens_per_s, 1),
        mib(row.peak_bytes),
        row.mfu
            .map_or("–".into(), |m| format!("{:.1} %", m * 100.0)),
    );
    for i in impls {
        let other = reference
            .iter()
            .find(|o| &o.implementation == i && o.point() == row.point());
        out.push_str(&reference_cells(row, other));
    }
    out.push('\n');
    out
}

/// A reference's three cells at rr's point: tokens/s, peak MiB and rr's speed-up over it
/// (its error, or dashes when it has no such point).
fn reference_cells(row: &Row, other: Option<&Row>) -> String {
    match other {
        Some(o) if o.error.is_none() => {
            let ratio = match (row.tokens_per_s, o.tokens_per_s) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
                _ => "–".into(),
            };
            format!(
                " {} | {} | {ratio} |",
                num(o.tokens_per_s, 1),
                mib(o.peak_bytes)
            )
        }
        Some(o) => format!(" {} | – | – |", o.error.clone().unwrap_or_default()),
        None => " – | – | – |".into(),
    }
}

/// `rr bench report`: reads an `rr bench recurrence` result and, optionally, the PyTorch
/// reference's rows, and writes the report into `out` (see [`write_report`]); returns the
/// markdown table.
pub fn report_from_files(rr: &Path, reference: Option<&Path>, out: &Path) -> Result<String> {
    let read = |p: &Path| -> Result<serde_json::Value> {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", p.display()))
    };
    let result: BenchResult = serde_json::from_value(read(rr)?)
        .with_context(|| format!("{}: not an rr bench result", rr.display()))?;
    let reference: Vec<Row> = match reference {
        Some(p) => serde_json::from_value(read(p)?["rows"].clone())
            .with_context(|| format!("{}: not a reference result", p.display()))?,
        None => Vec::new(),
    };
    write_report(out, &result, &reference)?;
    Ok(markdown(&result, &complete_reference(&result, &reference)))
}

/// Writes `results.json` (spec, rr rows, reference rows), `results.md`, and the plots
/// `tokens_per_s.svg` and `memory.svg` (against recurrence) into `dir`.
pub fn write_report(dir: &Path, result: &BenchResult, reference: &[Row]) -> Result<()> {
    let reference = complete_reference(result, reference);
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let json = serde_json::json!({
        "spec": result.spec,
        "cpu": result.cpu,
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
    write_plots(dir, result, &reference)
}

/// `tokens_per_s.svg` (log10) and `memory.svg` against recurrence: one line per
/// implementation and kind of point (and backprop depth for training).
fn write_plots(dir: &Path, result: &BenchResult, reference: &[Row]) -> Result<()> {
    let all: Vec<&Row> = result.rows.iter().chain(reference.iter()).collect();
    let title = format!(
        "{} on {} ({})",
        result.spec.shape.name, result.spec.device, result.spec.dtype
    );
    line_plot(
        &dir.join("tokens_per_s.svg"),
        &format!("tokens/s, {title}"),
        "recurrence r",
        "tokens/s (log10)",
        &series(&all, |r| r.tokens_per_s.map(f64::log10)),
        true,
    )?;
    line_plot(
        &dir.join("memory.svg"),
        &format!("peak memory, {title}"),
        "recurrence r",
        "peak MiB",
        &series(&all, |r| r.peak_bytes.map(|b| b as f64 / (1024.0 * 1024.0))),
        true,
    )
}

/// One series of `value` against r per (implementation, kind, k) of `rows`, empty ones left out.
fn series(rows: &[&Row], value: impl Fn(&Row) -> Option<f64>) -> Vec<Series> {
    let mut keys: Vec<(String, PointKind, usize)> = rows
        .iter()
        .map(|r| (r.implementation.clone(), r.kind, r.k))
        .collect();
    keys.sort_by(|a, b| (&a.0, a.1 as u8, a.2).cmp(&(&b.0, b.1 as u8, b.2)));
    keys.dedup();
    keys.iter()
        .map(|(imp, kind, k)| {
            let label = match kind {
                PointKind::Train => format!("{imp} train k={k}"),
                PointKind::Forward => format!("{imp} forward"),
                PointKind::Generate => format!("{imp} generate"),
            };
            Series {
                name: label,
                points: rows
                    .iter()
                    .filter(|r| &r.implementation == imp && r.kind == *kind && r.k == *k)
                    .filter_map(|r| Some((r.r as f64, value(r)?)))
                    .collect(),
            }
        })
        .filter(|s| !s.points.is_empty())
        .collect()
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
        assert_eq!(s.block().matmul_params() as f64, attn + mlp);
        let t = 128;
        let block = 2.0 * (attn + mlp) + 2.0 * 128.0 * 256.0;
        let outer = 2.0 * block + 2.0 * 256.0 * 8192.0;
        let iteration = 2.0 * block + 4.0 * 256.0 * 256.0;
        let flops = s.flops();
        assert_eq!(
            flops.forward_flops(10, t, 3),
            10.0 * (outer + 3.0 * iteration)
        );
        // Training at (r, k) = (4, 2): forward at 4 plus a backward (2×) through outer and 2.
        assert_eq!(
            flops.training_flops(10, t, 4, 2),
            10.0 * (3.0 * outer + 4.0 * iteration + 4.0 * iteration)
        );
    }

    #[test]
    fn point_flops_count_batch_tokens_and_generation_over_its_mean_context() {
        let spec = BenchSpec {
            device: "cpu".into(),
            dtype: "float32".into(),
            shape: Shape::preset("tiny", None).unwrap(),
            batch: 2,
            seq: 128,
            gen_prompt: 16,
            gen_tokens: 8,
            warmup: 0,
            repeats: 1,
            threads: None,
            points: Vec::new(),
        };
        let flops = spec.shape.flops();
        let point = |kind, r, k| Point { kind, r, k };
        assert_eq!(
            spec.point_flops(point(PointKind::Train, 4, 2)),
            flops.training_flops(256, 128, 4, 2)
        );
        assert_eq!(
            spec.point_flops(point(PointKind::Forward, 3, 0)),
            flops.forward_flops(256, 128, 3)
        );
        assert_eq!(
            spec.point_flops(point(PointKind::Generate, 3, 0)),
            flops.forward_flops(8, 20, 3)
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
