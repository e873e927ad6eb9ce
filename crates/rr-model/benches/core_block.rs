//! One recurrent core step (adapter + core blocks) forward, and forward + backward, at a small
//! shape on the CPU: the hot piece of training and inference.

use criterion::{criterion_group, criterion_main, Criterion};
use rr_model::config::LlamaConfig;
use rr_model::recurrent::{Depth, InitialState, RecurrentConfig, RecurrentModel};
use tch::{nn, Device, Kind, Tensor};

fn model() -> RecurrentModel {
    let source: LlamaConfig = serde_json::from_value(serde_json::json!({
        "model_type": "llama", "hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 512
    }))
    .expect("config");
    let model = RecurrentModel::new(
        nn::VarStore::new(Device::Cpu),
        RecurrentConfig::from_source(&source, 1, 2, 1, 4),
    );
    tch::no_grad(|| {
        for (_, mut t) in model.vs.variables() {
            t.copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.02));
        }
    });
    model
}

fn bench(c: &mut Criterion) {
    tch::manual_seed(0);
    let model = model();
    let ids = Tensor::randint(512, [2, 128], (Kind::Int64, Device::Cpu));
    c.bench_function("recurrent forward r=4, B=2 T=128 h=256 (no grad)", |b| {
        b.iter(|| {
            tch::no_grad(|| {
                let init = InitialState::Random { seed: 1 };
                let out = model.forward(&ids, None, Depth::recurrence(4), &init, None);
                model.logits(&out.expect("forward").hidden)
            })
        })
    });
    c.bench_function("recurrent forward+backward n=2 k=2, B=2 T=128 h=256", |b| {
        b.iter(|| {
            let depth = Depth::Fixed {
                no_grad: 2,
                with_grad: 2,
            };
            let init = InitialState::Random { seed: 1 };
            let out = model
                .forward(&ids, None, depth, &init, None)
                .expect("forward");
            model.logits(&out.hidden).mean(Kind::Float).backward();
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
