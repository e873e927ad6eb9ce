//! Error paths of `pack` and `PackedSet::open`: each a one-line error naming the file, with
//! nothing written (no output, no temporary directory, no parent directories created).

#[path = "data_support.rs"]
mod support;

use std::path::PathBuf;

use rr_data::{pack, InputFormat, PackOptions, PackedSet, Split};
use rr_model::Tokenizer;
use support::*;

struct Case {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    tok: PathBuf,
}

fn case() -> Case {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let tok = word_tokenizer(&root.join("tok"), 100);
    Case {
        _tmp: tmp,
        root,
        tok,
    }
}

impl Case {
    fn input(&self, name: &str, text: &str) -> PathBuf {
        let p = self.root.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Packs into `<root>/deep/er/out` (parents absent) and expects an error; checks nothing is
    /// left behind.
    fn fails(&self, inputs: Vec<PathBuf>, format: InputFormat, seq_len: usize) -> String {
        let before = entries(&self.root);
        let out = self.root.join("deep/er/out");
        let err = pack(&PackOptions::new(&self.tok, inputs, format, seq_len, &out)).unwrap_err();
        assert_eq!(entries(&self.root), before, "pack left something behind");
        assert!(!out.exists());
        format!("{err:#}")
    }
}

fn one_line(msg: &str, needles: &[&str]) {
    assert!(!msg.contains('\n'), "error spans several lines: {msg}");
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} does not mention {n:?}");
    }
}

fn docs_jsonl(n: usize) -> String {
    (0..n)
        .map(|i| format!("{{\"text\": \"w{i} w{}\"}}\n", i + 1))
        .collect()
}

#[test]
fn malformed_jsonl_line_names_file_and_line() {
    let c = case();
    let path = c.input(
        "bad.jsonl",
        &format!(
            "{}\n{{\"text\": \"w1 w2\"\n{}",
            docs_jsonl(2),
            docs_jsonl(40)
        ),
    );
    let msg = c.fails(vec![path.clone()], InputFormat::Jsonl, 4);
    one_line(&msg, &[&format!("{}:4:", path.display()), "malformed JSON"]);
    // A record without the field, and a non-object line.
    let path = c.input(
        "nofield.jsonl",
        &format!("{}{{\"txt\": \"w1\"}}\n", docs_jsonl(3)),
    );
    one_line(
        &c.fails(vec![path.clone()], InputFormat::Jsonl, 4),
        &[&format!("{}:4:", path.display()), "\"text\""],
    );
    let path = c.input("array.jsonl", "[1, 2]\n");
    one_line(
        &c.fails(vec![path.clone()], InputFormat::Jsonl, 4),
        &[&format!("{}:1:", path.display()), "object"],
    );
    let path = c.input("gsm.jsonl", "{\"question\": \"w1\", \"answer\": 5}\n");
    one_line(
        &c.fails(vec![path.clone()], InputFormat::Gsm8k, 4),
        &[&format!("{}:1:", path.display()), "\"answer\""],
    );
    let path = c.input("math.jsonl", "{\"problem\": \"w1\"}\n");
    one_line(
        &c.fails(vec![path.clone()], InputFormat::Math, 4),
        &[&format!("{}:1:", path.display()), "\"solution\""],
    );
    // Invalid UTF-8 in a text file.
    let path = c.root.join("latin1.txt");
    std::fs::write(&path, b"w1 w2\n\nw3 \xe9\n").unwrap();
    one_line(
        &c.fails(vec![path.clone()], InputFormat::Text, 2),
        &[&format!("{}:3:", path.display()), "UTF-8"],
    );
}

#[test]
fn empty_and_missing_inputs() {
    let c = case();
    let good = c.input("good.txt", &"w1 w2 w3 w4 w5\n\n".repeat(20));
    let empty = c.input("empty.txt", "");
    one_line(
        &c.fails(vec![empty.clone()], InputFormat::Text, 4),
        &[&empty.display().to_string(), "no documents"],
    );
    // Only blank lines, and a second input that is empty after a good one.
    let blank = c.input("blank.txt", "\n \n\t\n\n");
    one_line(
        &c.fails(vec![good.clone(), blank.clone()], InputFormat::Text, 4),
        &[&blank.display().to_string(), "no documents"],
    );
    let blank_jsonl = c.input("blank.jsonl", "\n{\"text\": \"\"}\n\n");
    one_line(
        &c.fails(vec![blank_jsonl.clone()], InputFormat::Jsonl, 4),
        &[&blank_jsonl.display().to_string(), "no documents"],
    );
    let missing = c.root.join("nope.txt");
    one_line(
        &c.fails(vec![good.clone(), missing.clone()], InputFormat::Text, 4),
        &[&missing.display().to_string(), "not found"],
    );
    // Too little text for one row.
    let short = c.input("short.txt", "w1\n");
    one_line(
        &c.fails(vec![short.clone()], InputFormat::Text, 64),
        &[&short.display().to_string(), "one training row"],
    );
    // A missing tokenizer.
    let before = entries(&c.root);
    let out = c.root.join("out");
    let err = pack(&PackOptions::new(
        c.root.join("no-tokenizer"),
        vec![good],
        InputFormat::Text,
        4,
        &out,
    ))
    .unwrap_err();
    one_line(&format!("{err:#}"), &["no-tokenizer"]);
    assert_eq!(entries(&c.root), before);
}

#[test]
fn existing_output_is_refused_and_untouched() {
    let c = case();
    let good = c.input("good.txt", &"w1 w2 w3 w4 w5\n\n".repeat(20));
    let out = c.root.join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "x").unwrap();
    let before = entries(&c.root);
    let err = pack(&PackOptions::new(
        &c.tok,
        vec![good.clone()],
        InputFormat::Text,
        4,
        &out,
    ))
    .unwrap_err();
    one_line(
        &format!("{err:#}"),
        &[&out.display().to_string(), "already exists"],
    );
    assert_eq!(entries(&c.root), before);
    assert_eq!(entries(&out), vec!["keep.txt"]);
    // An existing file too.
    let file = c.input("file-out", "x");
    let err = pack(&PackOptions::new(
        &c.tok,
        vec![good],
        InputFormat::Text,
        4,
        &file,
    ))
    .unwrap_err();
    one_line(
        &format!("{err:#}"),
        &[&file.display().to_string(), "already exists"],
    );
}

fn packed_ok(c: &Case, name: &str) -> PathBuf {
    let good = c.input(&format!("{name}.txt"), &"w1 w2 w3 w4 w5\n\n".repeat(50));
    let out = c.root.join(name);
    let mut opts = PackOptions::new(&c.tok, vec![good], InputFormat::Text, 4, &out);
    opts.heldout_fraction = 0.2;
    pack(&opts).unwrap();
    // Success leaves only the output beside the inputs (no temporary directory).
    assert!(
        entries(&c.root).iter().all(|e| !e.starts_with('.')),
        "{:?}",
        entries(&c.root)
    );
    out
}

#[test]
fn truncated_or_missing_shards_are_named() {
    let c = case();
    let out = packed_ok(&c, "p");
    PackedSet::open(&out).unwrap();
    let shard = out.join("train-00000.bin");
    let len = std::fs::metadata(&shard).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap();
    f.set_len(len - 1).unwrap();
    let err = PackedSet::open(&out).unwrap_err();
    one_line(
        &format!("{err:#}"),
        &[&shard.display().to_string(), "truncated"],
    );
    f.set_len(len + 2).unwrap();
    let err = PackedSet::open(&out).unwrap_err();
    one_line(&format!("{err:#}"), &[&shard.display().to_string(), "size"]);
    f.set_len(len).unwrap();
    PackedSet::open(&out).unwrap();
    // A missing held-out shard.
    let held = out.join("heldout-00000.bin");
    std::fs::remove_file(&held).unwrap();
    let err = PackedSet::open(&out).unwrap_err();
    one_line(
        &format!("{err:#}"),
        &[&held.display().to_string(), "missing"],
    );
    // Not a packed set at all, and a bad manifest version.
    let err = PackedSet::open(&c.root).unwrap_err();
    one_line(&format!("{err:#}"), &["manifest.json"]);
    let manifest = out.join("manifest.json");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("\"version\": 1", "\"version\": 99");
    std::fs::write(&manifest, text).unwrap();
    let err = PackedSet::open(&out).unwrap_err();
    one_line(&format!("{err:#}"), &["version 99"]);
}

#[test]
fn corrupted_shard_fails_checksum() {
    let c = case();
    let out = packed_ok(&c, "p");
    let shard = out.join("train-00000.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&shard, bytes).unwrap();
    let set = PackedSet::open(&out).unwrap();
    let err = set.verify_checksums().unwrap_err();
    one_line(
        &format!("{err:#}"),
        &[&shard.display().to_string(), "checksum"],
    );
}

#[test]
fn tokenizer_mismatch_is_reported() {
    let c = case();
    let out = packed_ok(&c, "p");
    let set = PackedSet::open(&out).unwrap();
    set.check_tokenizer(&Tokenizer::from_path(&c.tok).unwrap())
        .unwrap();
    let other = word_tokenizer(&c.root.join("other"), 120);
    let err = set
        .check_tokenizer(&Tokenizer::from_path(&other).unwrap())
        .unwrap_err();
    one_line(
        &format!("{err:#}"),
        &[
            "packed with a different tokenizer",
            &out.display().to_string(),
            &other.display().to_string(),
        ],
    );
    if let Some(llama2) = shared("tokenizers/llama2/tokenizer.json") {
        let err = set
            .check_tokenizer(&Tokenizer::from_path(&llama2).unwrap())
            .unwrap_err();
        one_line(
            &format!("{err:#}"),
            &["packed with a different tokenizer", "vocab 32000"],
        );
    }
    assert!(set.rows(Split::Train) > 0);
}

#[test]
fn rows_beyond_the_split_panic() {
    let c = case();
    let out = packed_ok(&c, "p");
    let set = PackedSet::open(&out).unwrap();
    let n = set.rows(Split::Train);
    let r = std::panic::catch_unwind(|| set.row(Split::Train, n));
    assert!(r.is_err());
}
