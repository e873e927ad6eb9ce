//! The data loader: memory-mapped rows to a host micro-batch (must never be the bottleneck).
//! Packs a small synthetic-problem set with the stories260K tokenizer from the shared data.

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use rr_data::{
    pack, synth_math, write_synth_math, InputFormat, Loader, PackOptions, PackedSet, Split,
};

fn bench(c: &mut Criterion) {
    let shared = std::env::var_os("RR_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    let tokenizer = shared.join("models/stories260K/tokenizer.json");
    if !tokenizer.exists() {
        eprintln!("skipping: no tokenizer at {}", tokenizer.display());
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let problems = dir.path().join("synth.jsonl");
    write_synth_math(&problems, &synth_math(2000, 4, 1)).expect("synth");
    let packed = dir.path().join("packed");
    pack(&PackOptions::new(
        tokenizer,
        vec![problems],
        InputFormat::Gsm8k,
        256,
        &packed,
    ))
    .expect("pack");
    let set = Arc::new(PackedSet::open(&packed).expect("open"));
    let mut loader = Loader::new(set, Split::Train, 8, 0).expect("loader");
    c.bench_function("loader next_batch 8x256", |b| {
        b.iter(|| std::hint::black_box(loader.next_batch()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
