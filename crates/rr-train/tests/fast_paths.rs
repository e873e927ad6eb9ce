//! The trainer's fast paths give the plain path's training losses on a tiny recurrent model
//! with random weights: the memory-lean loss with the fused AdamW kernel to fp32 rounding, the
//! same with bf16 compute over fp32 master weights to bf16 rounding. On CPU, and on CUDA too
//! when a GPU is available.

mod support;

use rr_model::config::LlamaConfig;
use rr_model::recurrent::{InitialState, RecurrentConfig, RecurrentModel};
use rr_model::{AnyModel, Depth};
use rr_recipe::AdamWConfig;
use rr_train::optim::{clip_grad_norm_lazy, AdamW, Optimizer};
use rr_train::trainer::{micro_batch, optimizer_params};
use tch::{nn, Device, Kind, Tensor};

const VOCAB: i64 = 8192;
const BATCH: i64 = 2;
const SEQ: i64 = 64;
const STEPS: usize = 4;

/// How the losses are trained.
#[derive(Clone, Copy)]
enum Path {
    /// fp32, the full logits and PyTorch's cross-entropy, AdamW as separate ops.
    Plain,
    /// The trainer's step (memory-lean loss, fused AdamW) with compute in `Kind`.
    Trainer(Kind),
}

/// A (1, 2, 1) recurrent model of hidden size 256 in `kind`, random weights (normal, std 0.02;
/// norms at one) drawn in name order from the global seed.
fn tiny_model(device: Device, kind: Kind) -> AnyModel {
    let source: LlamaConfig = serde_json::from_value(serde_json::json!({
        "model_type": "llama",
        "hidden_size": 256,
        "intermediate_size": 704,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": VOCAB,
        "max_position_embeddings": SEQ,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10_000.0,
    }))
    .unwrap();
    let mut config = RecurrentConfig::from_source(&source, 1, 2, 1, 4);
    config.init_values.std = (2.0f64 / (5.0 * 256.0)).sqrt();
    let mut vs = nn::VarStore::new(device);
    vs.set_kind(kind);
    let model = RecurrentModel::new(vs, config);
    tch::no_grad(|| {
        for (name, mut t) in model.named_tensors() {
            if name.contains("norm") || name.contains("ln_f") {
                let _ = t.fill_(1.0);
            } else {
                let _ = t.normal_(0.0, 0.02);
            }
        }
    });
    AnyModel::Recurrent(model)
}

/// The loss of one step along the plain path: 2 iterations without and 2 with gradient.
fn plain_loss(model: &AnyModel, ids: &Tensor, labels: &Tensor, step: usize) -> Tensor {
    let AnyModel::Recurrent(m) = model else {
        unreachable!("the tiny model is recurrent")
    };
    let depth = Depth::Fixed {
        no_grad: 2,
        with_grad: 2,
    };
    let init = InitialState::RandomPerRow {
        seed: step as u64,
        first_row: 0,
    };
    let hidden = m.forward(ids, None, depth, &init, None).unwrap().hidden;
    let loss = m
        .logits(&hidden)
        .view([-1, VOCAB])
        .cross_entropy_loss::<Tensor>(labels, None, tch::Reduction::Mean, -100, 0.0);
    loss.backward();
    loss
}

/// Losses of `STEPS` training steps on `device` along `path`, from the same weights and data
/// whatever the path.
fn losses(device: Device, path: Path) -> Vec<f64> {
    tch::manual_seed(0);
    let mut master = tiny_model(device, Kind::Float);
    if let Path::Trainer(kind) = path {
        master.set_compute_kind(kind);
    }
    let ids = Tensor::randint(VOCAB, [BATCH, SEQ], (Kind::Int64, device));
    let labels = ids.roll([-1], [1]).view([-1]);
    let config = AdamWConfig {
        lr: 1e-3,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::from_var_store(master.vs(), config).unwrap();
    let params = optimizer_params(&master);
    (0..STEPS)
        .map(|step| {
            let loss = match path {
                Path::Plain => plain_loss(&master, &ids, &labels, step),
                Path::Trainer(_) => {
                    micro_batch(&master, &ids, &labels, (2, 2), step as u64, 1).unwrap()
                }
            };
            clip_grad_norm_lazy(&params, 1.0);
            match path {
                Path::Plain => opt.step_plain(1e-3),
                Path::Trainer(_) => opt.step_fused(1e-3).unwrap(),
            }
            opt.zero_grad();
            f64::try_from(&loss).unwrap()
        })
        .collect()
}

/// Accumulation depth of one loss in fp32: the forward of [`tiny_model`] at 2 + 2 iterations
/// (1 + 4·2 + 1 = 10 layers of hidden 256, 4 query heads of 64, MLP 704, over 64 positions; 4
/// adapters over 2·256; final norm and head over 256), then the log-sum-exp over the vocabulary
/// and the mean over the batch's tokens. Layer terms as in rr-model's tests (`LayerShape::depth`):
/// norm, q/k/v, q·k, softmax, p·v, output projection, norm, gate/up, down.
fn loss_depth() -> usize {
    let (h, heads, head_dim, inter, t) = (256, 4, 64, 704, SEQ as usize);
    let layer = h + h + head_dim + 2 * t + heads * head_dim + h + h + inter;
    let layers = 1 + 4 * 2 + 1;
    layers * layer + 4 * 2 * h + 2 * h + VOCAB as usize + (BATCH * SEQ) as usize
}

/// bf16 results rounded on the way to one loss: per layer 2 norms, q/k/v, scores, softmax,
/// p·v, output projection, 2 residual additions, gate, up, activation × up, down (14); the
/// 4 adapters, the final norm and the head. bf16 matmuls accumulate in fp32, so each is one
/// rounding of its result, not one per term.
fn bf16_roundings() -> usize {
    10 * 14 + 4 + 2
}

/// |fast − plain| allowed for one step's loss, `plain` being the fp32 loss.
///
/// * fp32: the reordering bound K·ε·M over the loss's depth, M = max(loss, 1) bounding every
///   partial sum on the way (the logits of this model are ≪ 1, the log-sum-exp is ≈ the loss).
/// * bf16: each of the N roundings of a result is a relative error of at most u = 2⁻⁸,
///   uniform, so of standard deviation u/√3; independent, they add up to √N·u/√3 relative on
///   the logits (the worst case N·u ≈ 0.6 says nothing). The logits' magnitude is at most 1
///   (normalised hidden states, head weights of std 0.02), and the loss moves by at most twice
///   the largest logit change: 6σ of that.
fn loss_bound(kind: Kind, plain: f64) -> f64 {
    match kind {
        Kind::Float => support::reorder_bound(loss_depth(), plain.abs().max(1.0)),
        _ => {
            let sigma = (bf16_roundings() as f64 / 3.0).sqrt() * support::BF16_UNIT_ROUNDOFF;
            6.0 * 2.0 * sigma
        }
    }
}

fn fast_paths_match_the_plain_path(device: Device) {
    let plain = losses(device, Path::Plain);
    eprintln!("{device:?} plain losses {plain:?}");
    let paths = [
        ("memory-lean loss + fused AdamW", Kind::Float),
        (
            "bf16 compute + memory-lean loss + fused AdamW",
            Kind::BFloat16,
        ),
    ];
    for (name, kind) in paths {
        let fast = losses(device, Path::Trainer(kind));
        // The loss moves over the steps by more than the bound, so equal losses are not an
        // artefact of no update (a path that dropped its updates would fail).
        let moved = (plain[0] - plain[STEPS - 1]).abs();
        let bound_0 = loss_bound(kind, plain[0]);
        assert!(
            moved > bound_0,
            "{name}: the loss moved {moved:.3e}, within the bound {bound_0:.3e}"
        );
        for (step, (&p, &f)) in plain.iter().zip(&fast).enumerate() {
            let bound = loss_bound(kind, p);
            let d = (f - p).abs();
            eprintln!(
                "{device:?} {name}: step {step}: |fast - plain| = {d:.3e}, bound {bound:.3e}"
            );
            assert!(
                d <= bound,
                "{name}: step {step}: {f} vs {p}: |Δ| {d:.3e} > bound {bound:.3e}"
            );
        }
        if kind == Kind::BFloat16 {
            // bf16 really is a different computation (not silently fp32).
            assert!(plain != fast, "{name}: bf16 gave the fp32 losses");
        }
    }
}

#[test]
fn fast_paths_match_the_plain_path_on_cpu() {
    fast_paths_match_the_plain_path(Device::Cpu);
}

#[test]
fn fast_paths_match_the_plain_path_on_cuda() {
    if !tch::Cuda::is_available() {
        eprintln!("skipping: no CUDA device");
        return;
    }
    fast_paths_match_the_plain_path(Device::Cuda(0));
}
