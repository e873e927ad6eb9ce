//! The fast paths give the plain path's training losses: the fused AdamW kernel to fp32
//! rounding, bf16 compute over fp32 master weights to bf16 rounding (the GPU bundle runs the
//! same check on CUDA).

use rr_train::bench::check_fast_paths;

#[test]
fn fast_paths_match_the_plain_path_on_cpu() {
    let checks = check_fast_paths(tch::Device::Cpu, 4).unwrap();
    assert_eq!(checks.len(), 2);
    for c in &checks {
        assert!(
            c.passed(),
            "{}: {:?} vs {:?} (rel {:e} > {:e})",
            c.name,
            c.fast,
            c.plain,
            c.max_rel_diff,
            c.tolerance
        );
        // The loss moves over the steps, so equal losses are not an artefact of no update.
        assert!((c.plain[0] - c.plain[3]).abs() > 1e-4, "{:?}", c.plain);
    }
    // bf16 really is a different computation (not silently fp32).
    assert!(checks[1].max_rel_diff > 0.0);
}
