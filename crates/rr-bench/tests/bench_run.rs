//! `rr bench recurrence` end to end on a tiny spec: every point is measured, the FLOP rate is
//! the hand formula over the measured time, and the report merges reference rows into ratios.

use rr_bench::{run, write_report, BenchSpec, PointKind, Row, Shape};

#[test]
fn bench_runs_every_point_and_reports_ratios() {
    let mut shape = Shape::preset("tiny", None).unwrap();
    shape.vocab = 512;
    let spec = BenchSpec {
        device: "cpu".into(),
        dtype: "float32".into(),
        shape,
        batch: 2,
        seq: 16,
        gen_prompt: 4,
        gen_tokens: 3,
        warmup: 0,
        repeats: 1,
        threads: None,
        points: BenchSpec::points_for(&[1, 2], &[2]),
    };
    let result = run(&spec, |_| {}).unwrap();
    // (2, 2) training, forward at 1 and 2, generation at 1 and 2.
    assert_eq!(result.rows.len(), 5);
    assert!(result.matmul_peak_flops > 1e6);
    for row in &result.rows {
        let ms = row.ms.unwrap();
        assert!(ms > 0.0 && row.tokens_per_s.unwrap() > 0.0, "{row:?}");
        assert!(row.peak_bytes.unwrap() > 1 << 20, "{row:?}");
        if row.kind == PointKind::Forward {
            let want = spec.shape.flops().forward_flops(32, 16, row.r) / (ms / 1e3);
            assert!((row.flops_per_s.unwrap() / want - 1.0).abs() < 1e-9);
            assert!((row.tokens_per_s.unwrap() - 32.0 / (ms / 1e3)).abs() < 1e-6);
        }
    }
    assert!(result.sdpa_backend == "flash" || result.sdpa_backend == "math");

    // A reference row at half rr's speed shows as 2.00×.
    let rr_train_row = &result.rows[0];
    let reference = vec![Row {
        implementation: "pytorch-eager".into(),
        kind: PointKind::Train,
        r: 2,
        k: 2,
        ms: Some(rr_train_row.ms.unwrap() * 2.0),
        tokens_per_s: Some(rr_train_row.tokens_per_s.unwrap() / 2.0),
        peak_bytes: Some(1 << 30),
        flops_per_s: None,
        mfu: None,
        error: None,
    }];
    let dir = tempfile::tempdir().unwrap();
    write_report(dir.path(), &result, &reference).unwrap();
    let md = std::fs::read_to_string(dir.path().join("results.md")).unwrap();
    let train_line = md
        .lines()
        .find(|l| l.starts_with("| train step | 2 | 2 |"))
        .unwrap();
    assert!(train_line.ends_with("| 1024 | 2.00× |"), "{train_line}");
    for f in ["results.json", "tokens_per_s.svg", "memory.svg"] {
        assert!(dir.path().join(f).metadata().unwrap().len() > 100, "{f}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json")).unwrap())
            .unwrap();
    // The reference row gets its FLOP rate from the same count as rr's.
    let ref_fps = json["reference_rows"][0]["flops_per_s"].as_f64().unwrap();
    let rr_fps = rr_train_row.flops_per_s.unwrap();
    assert!((ref_fps * 2.0 / rr_fps - 1.0).abs() < 1e-9);
}
