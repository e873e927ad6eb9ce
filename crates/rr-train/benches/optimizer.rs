//! AdamW over the parameters of a SmolLM2-sized (4, 8, 4) recurrent model (~95M fp32 values
//! in 150 tensors): the fused multi-tensor kernel that `step` runs against the plain
//! per-parameter ops it replaced.

use criterion::{criterion_group, criterion_main, Criterion};
use rr_recipe::AdamWConfig;
use rr_train::optim::AdamW;
use tch::{Device, Kind, Tensor};

fn params() -> Vec<(String, Tensor)> {
    let (h, i, v) = (576i64, 1536i64, 49152i64);
    let mut out = vec![
        ("wte".to_string(), vec![v, h]),
        ("lm_head".to_string(), vec![v, h]),
        ("adapter".to_string(), vec![h, 2 * h]),
    ];
    for layer in 0..16 {
        out.push((format!("{layer}.Wqkv"), vec![h + 2 * 192, h]));
        out.push((format!("{layer}.proj"), vec![h, h]));
        out.push((format!("{layer}.fc"), vec![2 * i, h]));
        out.push((format!("{layer}.mlp_proj"), vec![h, i]));
        out.push((format!("{layer}.norm_1"), vec![h]));
        out.push((format!("{layer}.norm_2"), vec![h]));
    }
    out.into_iter()
        .map(|(name, shape)| {
            let p =
                Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu)).set_requires_grad(true);
            (&p * 1.0).sum(Kind::Float).backward(); // a defined gradient of ones
            (name, p)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("adamw step, SmolLM2 (4,8,4) parameters");
    group.sample_size(10);
    let mut fused = AdamW::new(params(), AdamWConfig::default()).expect("adamw");
    group.bench_function("fused kernel", |b| {
        b.iter(|| fused.step_fused(1e-4).expect("step"))
    });
    let mut plain = AdamW::new(params(), AdamWConfig::default()).expect("adamw");
    group.bench_function("plain ops", |b| b.iter(|| plain.step_plain(1e-4)));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
