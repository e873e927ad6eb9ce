//! The per-micro-batch recurrence draw (runs once per micro-batch; must stay negligible).

use criterion::{criterion_group, criterion_main, Criterion};
use rr_curriculum::{MeanSchedule, RecurrenceSampler};

fn bench(c: &mut Criterion) {
    let sampler = RecurrenceSampler::default();
    let mut counter = 0u64;
    c.bench_function("sampler draw, mean 32", |b| {
        b.iter(|| {
            counter += 1;
            std::hint::black_box(sampler.draw(32, 74, counter))
        })
    });
    let schedule = MeanSchedule::one_minus_sqrt(32, 0.75);
    c.bench_function("1-sqrt schedule mean_at", |b| {
        b.iter(|| std::hint::black_box(schedule.mean_at(std::hint::black_box(12_345), 50_000)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
