//! `data::Loader`, `Mixture`, `Phases`: deterministic order, one visit per row per epoch, exact
//! resumption, mixture weights, phase switches. Packed sets come from a synthetic word-level
//! tokenizer, so these tests need no shared data.

#[path = "data_support.rs"]
mod support;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use rr_data::{
    pack, Batch, InputFormat, Loader, LoaderState, Mixture, MixtureState, PackOptions, PackedSet,
    Phases, PhasesState, Split,
};
use support::*;

/// A packed set of `docs` documents over words `w{lo}..w{hi}`, seq_len 12.
fn packed(
    root: &Path,
    name: &str,
    docs: usize,
    lo: usize,
    hi: usize,
    heldout: f64,
) -> Arc<PackedSet> {
    let tok = root.join("tok");
    if !tok.exists() {
        word_tokenizer(&tok, 200);
    }
    let input = root.join(format!("{name}.txt"));
    write_text(&input, &word_docs(docs, 40, lo, hi, name.len() as u64));
    let mut opts = PackOptions::new(&tok, vec![input], InputFormat::Text, 12, root.join(name));
    opts.heldout_fraction = heldout;
    pack(&opts).unwrap();
    Arc::new(PackedSet::open(root.join(name)).unwrap())
}

fn ids(batches: &[Batch]) -> Vec<usize> {
    batches
        .iter()
        .flat_map(|b| b.row_ids.iter().copied())
        .collect()
}

fn take(loader: &mut Loader, n: usize) -> Vec<Batch> {
    (0..n).map(|_| loader.next_batch()).collect()
}

/// A JSON round trip, as a checkpoint would store the state.
fn via_json<T: serde::Serialize + serde::de::DeserializeOwned>(state: &T) -> T {
    serde_json::from_str(&serde_json::to_string(state).unwrap()).unwrap()
}

#[test]
fn batches_are_shifted_rows_and_every_row_is_visited_once_per_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let set = packed(tmp.path(), "a", 400, 0, 100, 0.1);
    let rows = set.rows(Split::Train);
    assert!(rows > 100, "{rows} rows");
    let b = 7;
    assert_ne!(
        rows % b,
        0,
        "batches must straddle the epoch boundary in this test"
    );
    let mut loader = Loader::new(set.clone(), Split::Train, b, 3).unwrap();
    let batches = take(&mut loader, 3 * rows / b + 2);
    for batch in &batches {
        assert_eq!((batch.rows, batch.seq_len), (b, 12));
        assert_eq!(batch.input.len(), b * 12);
        assert_eq!(batch.labels.len(), b * 12);
        for (r, &id) in batch.row_ids.iter().enumerate() {
            let row = set.row(Split::Train, id);
            assert_eq!(&batch.input[r * 12..(r + 1) * 12], &row[..12]);
            assert_eq!(&batch.labels[r * 12..(r + 1) * 12], &row[1..]);
        }
    }
    let all = ids(&batches);
    for epoch in 0..3 {
        let mut seen: Vec<usize> = all[epoch * rows..(epoch + 1) * rows].to_vec();
        assert_eq!(
            seen.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            Loader::epoch_order(3, epoch as u64, rows),
            "epoch {epoch} follows epoch_order"
        );
        seen.sort_unstable();
        assert_eq!(
            seen,
            (0..rows).collect::<Vec<_>>(),
            "epoch {epoch} visits each row once"
        );
    }
    assert_eq!(loader.epoch(), 3);
    // Shuffled, not sequential.
    assert_ne!(&all[..rows], &(0..rows).collect::<Vec<_>>()[..]);
}

#[test]
fn order_depends_on_seed_and_epoch_only() {
    let tmp = tempfile::tempdir().unwrap();
    let set = packed(tmp.path(), "a", 300, 0, 100, 0.0);
    let rows = set.rows(Split::Train);
    let run = |seed| {
        ids(&take(
            &mut Loader::new(set.clone(), Split::Train, 5, seed).unwrap(),
            40,
        ))
    };
    assert_eq!(run(11), run(11), "same seed, same order");
    assert_ne!(run(11), run(12), "another seed, another order");
    let e0 = Loader::epoch_order(11, 0, rows);
    let e1 = Loader::epoch_order(11, 1, rows);
    assert_ne!(e0, e1, "each epoch has its own permutation");
    let mut s = e1.clone();
    s.sort_unstable();
    assert_eq!(s, (0..rows as u32).collect::<Vec<_>>());
    // Different orders, not just rotations: positions agree rarely.
    let same = e0.iter().zip(&e1).filter(|(a, b)| a == b).count();
    assert!(same < rows / 10, "{same} of {rows} positions agree");
}

#[test]
fn resuming_mid_epoch_continues_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let set = packed(tmp.path(), "a", 300, 0, 100, 0.0);
    let rows = set.rows(Split::Train);
    let b = 6;
    let total = 2 * rows / b + 10;
    let uninterrupted = take(
        &mut Loader::new(set.clone(), Split::Train, b, 9).unwrap(),
        total,
    );
    for cut in [0, 1, rows / b / 2, rows / b, rows / b + 1, total - 1] {
        let mut first = Loader::new(set.clone(), Split::Train, b, 9).unwrap();
        let head = take(&mut first, cut);
        let state: LoaderState = via_json(&first.state());
        let mut resumed = Loader::new(set.clone(), Split::Train, b, 9).unwrap();
        resumed.restore(&state).unwrap();
        assert_eq!(
            (resumed.epoch(), resumed.position()),
            (first.epoch(), first.position())
        );
        let tail = take(&mut resumed, total - cut);
        assert_eq!(
            [head, tail].concat(),
            uninterrupted,
            "resumed after {cut} batches"
        );
    }
}

#[test]
fn loader_states_are_refused_on_other_data_or_seeds() {
    let tmp = tempfile::tempdir().unwrap();
    let a = packed(tmp.path(), "a", 200, 0, 100, 0.2);
    let b = packed(tmp.path(), "bb", 200, 0, 100, 0.0);
    let mut la = Loader::new(a.clone(), Split::Train, 4, 1).unwrap();
    la.next_batch();
    let state = la.state();
    let mut lb = Loader::new(b.clone(), Split::Train, 4, 1).unwrap();
    let before = lb.state();
    let err = lb.restore(&state).unwrap_err();
    assert_one_line(&err, &["other data"]);
    assert_eq!(lb.state(), before, "a refused state changes nothing");
    let mut other_seed = Loader::new(a.clone(), Split::Train, 4, 2).unwrap();
    assert_one_line(&other_seed.restore(&state).unwrap_err(), &["seed"]);
    let mut heldout = Loader::new(a.clone(), Split::Heldout, 4, 1).unwrap();
    assert_one_line(&heldout.restore(&state).unwrap_err(), &["other data"]);
    // An empty split cannot be loaded.
    let err = Loader::new(b.clone(), Split::Heldout, 4, 1).err().unwrap();
    assert_one_line(&err, &["heldout", "no rows"]);
}

fn mixture(a: &Arc<PackedSet>, b: &Arc<PackedSet>, wa: f64, wb: f64, seed: u64) -> Mixture {
    Mixture::new(
        vec![
            (Loader::new(a.clone(), Split::Train, 2, 100).unwrap(), wa),
            (Loader::new(b.clone(), Split::Train, 2, 200).unwrap(), wb),
        ],
        seed,
    )
    .unwrap()
}

/// Which set a batch came from, by its words: set A uses w0..w99 (ids 3..103), B w100..w199.
fn from_a(batch: &Batch) -> bool {
    let words: Vec<i64> = batch.input.iter().copied().filter(|&i| i >= 3).collect();
    let a = words.iter().all(|&i| i < 103);
    let b = words.iter().all(|&i| i >= 103);
    assert!(a ^ b, "batch mixes sets: {words:?}");
    a
}

#[test]
fn mixture_weights_are_respected_and_resumable() {
    let tmp = tempfile::tempdir().unwrap();
    let a = packed(tmp.path(), "a", 200, 0, 100, 0.0);
    let b = packed(tmp.path(), "bb", 200, 100, 200, 0.0);
    let mut mix = mixture(&a, &b, 1.0, 3.0, 5);
    assert_eq!(mix.weights(), &[0.25, 0.75]);
    let draws: Vec<Batch> = (0..4000).map(|_| mix.next_batch()).collect();
    let n_a = draws.iter().filter(|b| b.source == 0).count();
    let frac = n_a as f64 / 4000.0;
    assert!(
        (frac - 0.25).abs() <= 0.03,
        "source 0 drawn {frac:.3} of the time, expected 0.25"
    );
    for d in draws.iter().take(200) {
        assert_eq!(d.source == 0, from_a(d), "source index names the set");
    }
    // Each source advances only when drawn: source 0's rows are its loader's own order.
    let a_rows: Vec<usize> = draws
        .iter()
        .filter(|b| b.source == 0)
        .flat_map(|b| b.row_ids.clone())
        .collect();
    let alone = ids(&take(
        &mut Loader::new(a.clone(), Split::Train, 2, 100).unwrap(),
        n_a,
    ));
    assert_eq!(a_rows, alone);

    // Same seed, same sequence; another seed, another.
    let again: Vec<usize> = {
        let mut m = mixture(&a, &b, 1.0, 3.0, 5);
        (0..300).map(|_| m.next_batch().source).collect()
    };
    assert_eq!(
        again,
        draws[..300].iter().map(|b| b.source).collect::<Vec<_>>()
    );
    let other: Vec<usize> = {
        let mut m = mixture(&a, &b, 1.0, 3.0, 6);
        (0..300).map(|_| m.next_batch().source).collect()
    };
    assert_ne!(again, other);

    // Resume at 1234 draws, via JSON.
    let mut first = mixture(&a, &b, 1.0, 3.0, 5);
    for _ in 0..1234 {
        first.next_batch();
    }
    let state: MixtureState = via_json(&first.state());
    let mut resumed = mixture(&a, &b, 1.0, 3.0, 5);
    resumed.restore(&state).unwrap();
    let tail: Vec<Batch> = (1234..4000).map(|_| resumed.next_batch()).collect();
    assert!(
        tail == draws[1234..],
        "resumed mixture differs from the uninterrupted run"
    );

    // Other weights refuse the state.
    let mut other = mixture(&a, &b, 1.0, 1.0, 5);
    assert_one_line(&other.restore(&state).unwrap_err(), &["weights"]);
    // Zero weight: never drawn.
    let mut only_b = mixture(&a, &b, 0.0, 1.0, 5);
    assert!((0..500).all(|_| only_b.next_batch().source == 1));
    assert!(Mixture::new(
        vec![(Loader::new(a.clone(), Split::Train, 2, 1).unwrap(), -1.0)],
        0
    )
    .is_err());
}

#[test]
fn phases_switch_at_the_step_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let a = packed(tmp.path(), "a", 200, 0, 100, 0.0);
    let b = packed(tmp.path(), "bb", 200, 100, 200, 0.0);
    let make = || {
        Phases::new(vec![
            (
                Some(10),
                Mixture::single(Loader::new(a.clone(), Split::Train, 3, 1).unwrap()),
            ),
            (Some(20), mixture(&a, &b, 1.0, 1.0, 2)),
            (
                None,
                Mixture::single(Loader::new(b.clone(), Split::Train, 3, 1).unwrap()),
            ),
        ])
        .unwrap()
    };
    let mut phases = make();
    assert_eq!(
        (
            phases.phase_of(9),
            phases.phase_of(10),
            phases.phase_of(19),
            phases.phase_of(20)
        ),
        (0, 1, 1, 2)
    );
    // Two micro-batches per step (gradient accumulation).
    let mut run = Vec::new();
    for step in 0..30 {
        for _ in 0..2 {
            run.push((step, phases.next_batch(step)));
        }
    }
    for (step, batch) in &run {
        match step {
            0..=9 => assert!(from_a(batch), "step {step} is in the first phase"),
            20.. => assert!(!from_a(batch), "step {step} is in the last phase"),
            _ => {}
        }
    }
    let middle: HashSet<bool> = run
        .iter()
        .filter(|(s, _)| (10..20).contains(s))
        .map(|(_, b)| from_a(b))
        .collect();
    assert_eq!(middle.len(), 2, "the middle phase mixes both sets");

    // Resume after step 14.
    let mut first = make();
    for step in 0..15 {
        for _ in 0..2 {
            first.next_batch(step);
        }
    }
    let state: PhasesState = via_json(&first.state());
    let mut resumed = make();
    resumed.restore(&state).unwrap();
    let mut tail = Vec::new();
    for step in 15..30 {
        for _ in 0..2 {
            tail.push((step, resumed.next_batch(step)));
        }
    }
    assert!(
        tail == run[30..],
        "resumed phases differ from the uninterrupted run"
    );

    // Bad phase lists.
    assert!(Phases::new(vec![
        (
            None,
            Mixture::single(Loader::new(a.clone(), Split::Train, 3, 1).unwrap())
        ),
        (
            Some(5),
            Mixture::single(Loader::new(b.clone(), Split::Train, 3, 1).unwrap())
        ),
    ])
    .is_err());
    assert!(Phases::new(vec![
        (
            Some(5),
            Mixture::single(Loader::new(a.clone(), Split::Train, 3, 1).unwrap())
        ),
        (
            Some(5),
            Mixture::single(Loader::new(b.clone(), Split::Train, 3, 1).unwrap())
        ),
    ])
    .is_err());
}

#[test]
fn sequential_heldout_batches_cover_the_split_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let set = packed(tmp.path(), "a", 400, 0, 100, 0.2);
    let n = set.rows(Split::Heldout);
    assert!(n > 5);
    let mut seen = Vec::new();
    let mut start = 0;
    while let Some(batch) = Batch::sequential(&set, Split::Heldout, start, 4) {
        assert!(batch.rows <= 4 && batch.rows > 0);
        seen.extend(batch.row_ids.clone());
        start += batch.rows;
    }
    assert_eq!(seen, (0..n).collect::<Vec<_>>());
}
