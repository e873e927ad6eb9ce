//! Peak memory of a training step does not grow with the number of no-grad iterations: only
//! the last k iterations keep activations for backward. Measured as the process's resident
//! high-water mark (Linux `VmHWM`), alone in this test binary so nothing else moves it.

mod common;

use rr_model::config::{LlamaConfig, ModelType};
use rr_model::recurrent::{InitialState, RecurrentConfig, RecurrentModel};
use tch::{nn, Device, Kind, Tensor};

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn step(model: &RecurrentModel, ids: &Tensor, n: usize, k: usize) {
    let logits =
        common::recurrent_forward(model, ids, n, k, &InitialState::Random { seed: 1 }).logits;
    logits.mean(Kind::Float).backward();
}

#[test]
fn peak_memory_is_flat_in_the_number_of_no_grad_iterations() {
    let Some(_) = peak_rss_mib() else {
        eprintln!("skipping: no /proc/self/status on this system");
        return;
    };
    let source: LlamaConfig = serde_json::from_value(serde_json::json!({
        "model_type": "llama", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 64, "max_position_embeddings": 512
    }))
    .unwrap();
    assert_eq!(source.model_type, ModelType::Llama);
    let cfg = RecurrentConfig::from_source(&source, 1, 2, 1, 4);
    let model = RecurrentModel::new(nn::VarStore::new(Device::Cpu), cfg);
    let ids = Tensor::zeros([4, 256], (Kind::Int64, Device::Cpu));
    // One iteration's saved activations are tens of MiB at this size.
    step(&model, &ids, 0, 1);
    let base = peak_rss_mib().unwrap();
    step(&model, &ids, 0, 2);
    let with_grad_2 = peak_rss_mib().unwrap();
    step(&model, &ids, 48, 2);
    let no_grad_48 = peak_rss_mib().unwrap();
    step(&model, &ids, 0, 8);
    let with_grad_8 = peak_rss_mib().unwrap();
    eprintln!(
        "peak RSS: k=1 {base:.0} MiB; k=2 {with_grad_2:.0} MiB; n=48,k=2 {no_grad_48:.0} MiB; k=8 {with_grad_8:.0} MiB"
    );
    let per_grad_iteration = (with_grad_8 - with_grad_2) / 6.0;
    // Keeping graphs for 48 iterations would add ~48 × per_grad_iteration; allow a tenth of one.
    assert!(
        per_grad_iteration > 5.0,
        "the measurement cannot see an iteration's activations ({per_grad_iteration:.1} MiB)"
    );
    assert!(
        no_grad_48 - with_grad_2 < 0.5 * per_grad_iteration,
        "48 no-grad iterations raised the peak by {:.0} MiB (one grad iteration: {per_grad_iteration:.0} MiB)",
        no_grad_48 - with_grad_2
    );
}
