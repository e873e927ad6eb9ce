//! One Muon Newton–Schulz orthogonalisation (5 quintic steps) of a SmolLM2 MLP weight
//! (1536 × 576) in bf16 and in fp32 on the CPU: where the CPU has no native bf16 (AVX2 only),
//! bf16 is several times slower, which is why Muon iterates in fp32 there
//! (`rr_model::device::bf16_is_fast`). The group name records which kind this CPU is.

use criterion::{criterion_group, criterion_main, Criterion};
use rr_train::optim::newton_schulz;
use tch::{Device, Kind, Tensor};

const COEFFICIENTS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);

fn bench(c: &mut Criterion) {
    tch::manual_seed(0);
    let g = Tensor::randn([1536, 576], (Kind::Float, Device::Cpu));
    let name = format!(
        "newton-schulz 1536x576, 5 steps; cpu: {}",
        rr_model::device::cpu_capability()
    );
    let mut group = c.benchmark_group(name);
    group.sample_size(10);
    for (label, kind) in [("bf16", Kind::BFloat16), ("fp32", Kind::Float)] {
        group.bench_function(label, |b| {
            b.iter(|| newton_schulz(&g, 5, COEFFICIENTS, kind))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
