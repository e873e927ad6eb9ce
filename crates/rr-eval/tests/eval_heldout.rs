//! `rr eval --heldout PACKED_DIR`: the held-out rows of a packed set, read through rr-eval.

use std::path::PathBuf;

use rr_data::{pack, synth_math, write_synth_math, InputFormat, PackOptions, PackedSet, Split};
use rr_eval::evaluate::{heldout_rows, Heldout};
use rr_model::Tokenizer;
fn stories_hf() -> Option<PathBuf> {
    rr_util::test_data::shared("models/stories260K/hf")
}

#[test]
fn packed_heldout_rows_are_the_first_rows_of_the_split() {
    let Some(hf) = stories_hf() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let problems = tmp.path().join("synth.jsonl");
    write_synth_math(&problems, &synth_math(200, 3, 5)).unwrap();
    let packed = tmp.path().join("packed");
    let mut opts = PackOptions::new(&hf, vec![problems], InputFormat::Gsm8k, 16, &packed);
    opts.heldout_fraction = 0.2;
    pack(&opts).unwrap();
    let set = PackedSet::open(&packed).unwrap();
    let available = set.rows(Split::Heldout);
    assert!(available >= 3, "{available}");

    let tokenizer = Tokenizer::from_path(&hf).unwrap();
    let Heldout::Rows(rows) = Heldout::packed(&packed, &tokenizer, 3).unwrap() else {
        panic!("a packed set gives rows");
    };
    let want: Vec<Vec<i64>> = (0..3).map(|i| set.row(Split::Heldout, i)).collect();
    assert_eq!(rows, want);
    assert_eq!(heldout_rows(&set, usize::MAX).unwrap().len(), available);

    let err = heldout_rows(&set, 0).unwrap_err().to_string();
    assert!(err.contains("the held-out split has no rows"), "{err}");
}

#[test]
fn packed_heldout_refuses_another_tokenizer() {
    let Some(hf) = stories_hf() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let problems = tmp.path().join("synth.jsonl");
    write_synth_math(&problems, &synth_math(50, 2, 1)).unwrap();
    let packed = tmp.path().join("packed");
    pack(&PackOptions::new(
        &hf,
        vec![problems],
        InputFormat::Gsm8k,
        16,
        &packed,
    ))
    .unwrap();
    // The same vocabulary in a re-serialised tokenizer.json is a different file.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("tokenizer.json")).unwrap()).unwrap();
    std::fs::write(other.join("tokenizer.json"), json.to_string()).unwrap();
    let tokenizer = Tokenizer::from_path(&other).unwrap();
    let err = match Heldout::packed(&packed, &tokenizer, 4) {
        Ok(_) => panic!("another tokenizer must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("packed with a different tokenizer"), "{err}");
}
