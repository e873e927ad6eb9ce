//! Activation checkpointing per core iteration (`training.activation_checkpointing`) against
//! the stored path (autograd keeping every with-gradient iteration's activations): the same
//! loss and the same gradient for every parameter, and a peak memory that no longer grows
//! with the number k of with-gradient iterations, while the stored path's does.

mod support;

use rr_model::config::LlamaConfig;
use rr_model::recurrent::{InitialState, RecurrentConfig, RecurrentModel};
use rr_model::AnyModel;
use rr_train::trainer::checkpointing::checkpointed_backward;
use rr_train::trainer::{micro_batch, optimizer_params};
use tch::{nn, Device, Kind, Tensor};

/// The shapes of a (1, 2, 1) recurrent model: hidden, MLP, heads, key/value heads, vocabulary.
struct Shape {
    hidden: i64,
    intermediate: i64,
    heads: i64,
    kv_heads: i64,
    vocab: i64,
}

const SMALL: Shape = Shape {
    hidden: 128,
    intermediate: 352,
    heads: 4,
    kv_heads: 2,
    vocab: 512,
};

/// Core layers of the model (the prelude and the coda have one each).
const CORE_LAYERS: i64 = 2;

/// A (1, 2, 1) recurrent model of `shape`, random weights (normal, std 0.02; norms at one)
/// drawn from `seed`, fp32 parameters.
fn model(shape: &Shape, seq: i64, seed: i64) -> RecurrentModel {
    let source: LlamaConfig = serde_json::from_value(serde_json::json!({
        "model_type": "llama",
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": 4,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "vocab_size": shape.vocab,
        "max_position_embeddings": seq,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10_000.0,
    }))
    .unwrap();
    let mut config = RecurrentConfig::from_source(&source, 1, CORE_LAYERS as usize, 1, 4);
    config.init_values.std = (2.0f64 / (5.0 * shape.hidden as f64)).sqrt();
    let model = RecurrentModel::new(nn::VarStore::new(Device::Cpu), config);
    tch::manual_seed(seed);
    tch::no_grad(|| {
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

/// Token ids [B, T] and next-token labels [B·T] drawn from `seed`.
fn batch(vocab: i64, b: i64, t: i64, seed: i64) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    let ids = Tensor::randint(vocab, [b, t], (Kind::Int64, Device::Cpu));
    let labels = ids.roll([-1], [1]).view([-1]);
    (ids, labels)
}

/// The micro-batch's state seed, as `micro_batch` keys it.
fn init(seed: u64) -> InitialState {
    InitialState::RandomPerRow { seed, first_row: 0 }
}

/// Two accumulated micro-batches through the stored or the checkpointed path, from zeroed
/// gradients: the losses and every parameter's gradient by name.
fn accumulate(
    model: AnyModel,
    checkpointed: bool,
    depth: (usize, usize),
) -> (AnyModel, Vec<f64>, Vec<(String, Tensor)>) {
    for p in optimizer_params(&model) {
        let mut g = p.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
    let mut losses = Vec::new();
    for micro in 0..2u64 {
        let (ids, labels) = batch(SMALL.vocab, 2, 32, 10 + micro as i64);
        let loss = match (&model, checkpointed) {
            (AnyModel::Recurrent(m), true) => {
                checkpointed_backward(m, &ids, &labels, depth, &init(micro), 2).unwrap()
            }
            _ => micro_batch(&model, &ids, &labels, depth, micro, 2).unwrap(),
        };
        losses.push(loss.double_value(&[]));
    }
    let mut grads: Vec<(String, Tensor)> = model
        .vs()
        .variables()
        .into_iter()
        .map(|(name, p)| (name, p.grad().copy()))
        .collect();
    grads.sort_by(|a, b| a.0.cmp(&b.0));
    (model, losses, grads)
}

/// Every parameter's gradient along the checkpointed path equals the stored path's, and so
/// does the loss, for n = 0 and n > 0, k = 1 and k = 4, over two accumulated micro-batches,
/// computing in fp32 and in bf16 over fp32 parameters.
///
/// The forward values are the same ops on the same inputs, so the losses are equal bit for
/// bit, and so is every segment's backward. What differs is only where the contributions to a
/// gradient meet: autograd sums the k iterations' contributions to a core weight (and to the
/// prelude output e) inside one backward, the checkpointed path adds them to `.grad` one
/// segment at a time, after the previous micro-batch's. Two orders of a sum of m = 2k terms
/// differ by at most 2(m − 1)·u·M = (2k − 1)·ε·M relative to the partial sums' size M (Higham
/// §4.2), taken here as the parameter's largest |gradient|: for k = 4 that is 8.3e-7 of it,
/// within the 1e-6. A dropped segment, a wrong sign or a missing iteration moves a
/// gradient by O(M).
#[test]
fn checkpointed_gradients_equal_the_stored_ones() {
    let mut worst: f64 = 0.0;
    for depth in [(0, 1), (2, 1), (0, 4), (3, 4)] {
        let mut fp32_losses = Vec::new();
        // fp32, and bf16 compute over the fp32 parameters (mixed precision: the gradients
        // still meet in the fp32 `.grad` of each parameter, and e's in bf16 in both paths).
        for kind in [Kind::Float, Kind::BFloat16] {
            let mut fresh = AnyModel::Recurrent(model(&SMALL, 32, 1));
            fresh.set_compute_kind(kind);
            let (model, stored_losses, stored) = accumulate(fresh, false, depth);
            let (_, ckpt_losses, ckpt) = accumulate(model, true, depth);
            assert_eq!(stored_losses, ckpt_losses, "{depth:?} {kind:?}: losses");
            match kind {
                Kind::Float => fp32_losses = stored_losses,
                _ => assert_ne!(fp32_losses, stored_losses, "bf16 computed in fp32"),
            }
            let relative = (2 * depth.1 - 1) as f64 * support::FP32_EPS;
            for ((name, want), (name_c, got)) in stored.iter().zip(&ckpt) {
                assert_eq!(name, name_c);
                let what = format!("{depth:?} {kind:?} {name}");
                assert!(want.defined() && got.defined(), "{what}: no gradient");
                assert_eq!(got.kind(), Kind::Float, "{what}: gradient dtype");
                let magnitude = support::max_abs(want);
                assert!(magnitude > 0.0, "{what}: zero gradient");
                let d = support::assert_within(&what, got, want, relative * magnitude);
                worst = worst.max(d / magnitude);
            }
        }
    }
    eprintln!("largest max|Δ| / max|g| over all parameters and depths: {worst:.3e}");
}

/// The memory test's model: big enough that one with-gradient iteration's activations
/// (tens of MB) dwarf everything that does not grow with k.
const WIDE: Shape = Shape {
    hidden: 128,
    intermediate: 768,
    heads: 4,
    kv_heads: 2,
    vocab: 512,
};
const MEMORY_BATCH: (i64, i64) = (8, 128);
const CHILD: &str = "RR_CHECKPOINTING_MEMORY_CHILD";

/// Resident memory now and at its peak (`VmRSS`, `VmHWM`), in bytes.
#[cfg(target_os = "linux")]
fn resident_bytes() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// In a child process (`CHILD` = "stored K" or "checkpointed K"): one micro-batch of
/// [`WIDE`] at depth (0, K), printing how far the peak resident memory rose above the memory
/// resident before it. Does nothing in an ordinary test run.
#[cfg(target_os = "linux")]
#[test]
fn memory_child() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let (path, k) = spec.split_once(' ').unwrap();
    let k: usize = k.parse().unwrap();
    let (b, t) = MEMORY_BATCH;
    let model = AnyModel::Recurrent(model(&WIDE, t, 1));
    let (ids, labels) = batch(WIDE.vocab, b, t, 3);
    let (before, _) = resident_bytes();
    let loss = match (&model, path) {
        (AnyModel::Recurrent(m), "checkpointed") => {
            checkpointed_backward(m, &ids, &labels, (0, k), &init(0), 1).unwrap()
        }
        _ => micro_batch(&model, &ids, &labels, (0, k), 0, 1).unwrap(),
    };
    let (_, peak) = resident_bytes();
    assert!(loss.double_value(&[]).is_finite());
    println!("PEAK_GROWTH_BYTES={}", peak.saturating_sub(before));
}

/// Peak memory growth of one micro-batch along `path` at k with-gradient iterations, measured
/// in a child process of this test binary. glibc's malloc is told to map every block of 64 kB
/// or more on its own (`MALLOC_MMAP_THRESHOLD_`), so freed tensors leave the resident set
/// and the resident memory follows the live tensors.
#[cfg(target_os = "linux")]
fn peak_growth(path: &str, k: usize) -> f64 {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["memory_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, format!("{path} {k}"))
        .env("MALLOC_MMAP_THRESHOLD_", "65536")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{path} k={k}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.split("PEAK_GROWTH_BYTES=").nth(1))
        .unwrap_or_else(|| panic!("{path} k={k}: no measurement in {stdout}"));
    line.trim().parse().unwrap()
}

/// With checkpointing, the peak memory at k = 8 is that at k = 1 plus 7 saved states; the
/// stored path's grows by at least 7 iterations' activations.
///
/// From the shapes ([`WIDE`], B·T = 2048 tokens, 2 core layers): one state is
/// S = 2048·256·4 B = 2.1 MB. What autograd must keep of one iteration is at least, per token
/// and core layer, the MLP's gate, up and activated gate (3·704 values, inputs of the
/// backward of the activation, the product and the down projection) and attention's query,
/// key, value and output (4·256, at least 2·256 of them as the key/value heads are 2 of 4,
/// counted as 4·256 − 2·128): L ≥ 2048·2·(3·704 + 4·256 − 256)·4 B = 47 MB. So the stored path
/// grows by at least 7·L = 330 MB from k = 1 to k = 8, and the checkpointed one by about
/// 7·S = 15 MB; the assertions leave the allocator L/2 of slack on each side.
#[cfg(target_os = "linux")]
#[test]
fn checkpointed_peak_memory_does_not_grow_with_k() {
    let (b, t) = MEMORY_BATCH;
    let tokens = (b * t) as f64;
    let state = tokens * WIDE.hidden as f64 * 4.0;
    let per_token_layer = 3 * WIDE.intermediate + 4 * WIDE.hidden - WIDE.hidden;
    let iteration = tokens * (CORE_LAYERS * per_token_layer) as f64 * 4.0;
    let mb = |x: f64| x / 1e6;
    let stored = [peak_growth("stored", 1), peak_growth("stored", 8)];
    let ckpt = [
        peak_growth("checkpointed", 1),
        peak_growth("checkpointed", 8),
    ];
    eprintln!(
        "peak growth (MB): stored k=1 {:.1}, k=8 {:.1}; checkpointed k=1 {:.1}, k=8 {:.1}; \
         one state {:.1}, one iteration's activations ≥ {:.1}",
        mb(stored[0]),
        mb(stored[1]),
        mb(ckpt[0]),
        mb(ckpt[1]),
        mb(state),
        mb(iteration)
    );
    assert!(
        stored[1] - stored[0] >= 7.0 * iteration - iteration / 2.0,
        "the stored path did not keep 7 more iterations' activations"
    );
    assert!(
        ckpt[1] - ckpt[0] <= 7.0 * state + iteration / 2.0,
        "checkpointed: k = 8 used {:.1} MB more than k = 1",
        mb(ckpt[1] - ckpt[0])
    );
}
