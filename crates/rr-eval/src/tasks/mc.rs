//! Multiple-choice tasks (formats: see the parent module's docs).
//!
//! # HellaSwag, all 10,042 validation items (`hellaswag`)
//!
//! `mc/hellaswag_val_full.txt.bz2` is llama.cpp's layout (klosax's `extract_hellaswag.cpp`):
//! six lines per item, `{activity_label}: {ctx}`, the gold label, the four endings; each text
//! already cleaned by that script (tags `[header]`, `[step]`, `[substeps]` dropped, ` [title]`
//! → `. `, double spaces halved, one leading space dropped). The harness's query is
//! `preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())`; the file has no
//! `ctx_a`/`ctx_b` split, so it is recovered from how HellaSwag is built, checked on the
//! 1,000 items that `hellaswag_val_subset1000.jsonl` has with all their fields (every one of
//! them equal to the harness's query):
//! * ActivityNet items end in `ctx_b`, a fragment without a final period after a `ctx_a` of
//!   whole sentences; `ctx_b` starts after the last `". "` and gets Python's `capitalize`;
//! * WikiHow items (`ctx_b` empty) end in a period and are used as they are.
//!
//! The endings are `preprocess`ed as the harness does. What the file cannot give back: an
//! ending whose original starts with a tag (`[substeps] …`) keeps a leading space under the
//! harness's `preprocess` (it strips before removing tags), which the script dropped; 134 of
//! the subset's 4,000 endings are such (all WikiHow), so scores on `hellaswag` can differ a
//! little from the harness's there. `hellaswag_1000` has the original fields and is exact.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use regex::Regex;
use serde::Deserialize;

use super::{read_jsonl, McItem, Task};

/// The harness's default `target_delimiter`.
const DELIM: &str = " ";

/// Python's `str.capitalize()`: first character upper-cased, the rest **lower-cased**.
pub fn python_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        None => String::new(),
        Some(first) => first
            .to_uppercase()
            .chain(chars.as_str().to_lowercase().chars())
            .collect(),
    }
}

/// The harness's HellaSwag `preprocess`: strip; ` [title]`→`. `; remove `[…]` (non-greedy,
/// within a line); `"  "`→`" "` (one pass).
pub fn hellaswag_preprocess(text: &str) -> String {
    static BRACKETS: OnceLock<Regex> = OnceLock::new();
    let re = BRACKETS.get_or_init(|| Regex::new(r"\[.*?\]").expect("valid regex"));
    let text = text.trim().replace(" [title]", ". ");
    let text = re.replace_all(&text, "");
    text.replace("  ", " ")
}

#[derive(Deserialize)]
struct QueryRow {
    query: String,
    choices: Vec<String>,
    gold: usize,
}

#[derive(Deserialize)]
struct WinograndeRow {
    context_options: Vec<String>,
    continuation: String,
    gold: usize,
}

#[derive(Deserialize)]
struct HellaswagRow {
    activity_label: String,
    ctx_a: String,
    ctx_b: String,
    endings: Vec<String>,
    label: serde_json::Value,
}

fn hellaswag_label(v: &serde_json::Value) -> Option<usize> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().map(|x| x as usize),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn check_gold(n: usize, gold: usize) -> Result<(), String> {
    if n < 2 {
        return Err(format!("{n} choices (need at least 2)"));
    }
    if gold >= n {
        return Err(format!("gold {gold} out of range for {n} choices"));
    }
    Ok(())
}

fn context(task: Task, query: &str) -> String {
    match task {
        Task::ArcEasy | Task::ArcChallenge => {
            let q = if query.starts_with("Question:") {
                query.to_string()
            } else {
                format!("Question: {query}")
            };
            format!("{q}\nAnswer:")
        }
        Task::Piqa => {
            let q = if query.starts_with("Question:") {
                query.to_string()
            } else {
                format!("Question: {query}")
            };
            if q.ends_with('\n') {
                format!("{q}Answer:")
            } else {
                format!("{q}\nAnswer:")
            }
        }
        _ => query.to_string(),
    }
}

pub(super) fn mc_items(task: Task, file: &Path) -> Result<Vec<McItem>> {
    let id = |i: usize| format!("{}/{i}", task.name());
    match task {
        Task::ArcEasy | Task::ArcChallenge | Task::OpenBookQa | Task::Piqa => {
            let rows = read_jsonl::<QueryRow>(file, |r| check_gold(r.choices.len(), r.gold))?;
            Ok(rows
                .into_iter()
                .enumerate()
                .map(|(i, (_, r))| McItem {
                    id: id(i),
                    contexts: vec![context(task, &r.query)],
                    continuations: r.choices.iter().map(|c| format!("{DELIM}{c}")).collect(),
                    gold: r.gold,
                })
                .collect())
        }
        Task::Winogrande => {
            let rows =
                read_jsonl::<WinograndeRow>(file, |r| check_gold(r.context_options.len(), r.gold))?;
            Ok(rows
                .into_iter()
                .enumerate()
                .map(|(i, (_, r))| McItem {
                    id: id(i),
                    contexts: r.context_options,
                    continuations: vec![format!("{DELIM}{}", r.continuation.trim())],
                    gold: r.gold,
                })
                .collect())
        }
        Task::Hellaswag => hellaswag_full_items(file),
        Task::Hellaswag1000 => {
            let rows = read_jsonl::<HellaswagRow>(file, |r| {
                let gold = hellaswag_label(&r.label).ok_or("label is not an integer")?;
                check_gold(r.endings.len(), gold)
            })?;
            Ok(rows
                .into_iter()
                .enumerate()
                .map(|(i, (_, r))| {
                    let ctx = format!("{} {}", r.ctx_a, python_capitalize(&r.ctx_b));
                    let query = hellaswag_preprocess(&format!("{}: {ctx}", r.activity_label));
                    McItem {
                        id: id(i),
                        contexts: vec![query],
                        continuations: r
                            .endings
                            .iter()
                            .map(|e| format!("{DELIM}{}", hellaswag_preprocess(e)))
                            .collect(),
                        gold: hellaswag_label(&r.label).expect("checked"),
                    }
                })
                .collect())
        }
        _ => unreachable!("{task} is not a multiple-choice task"),
    }
}

/// The largest decompressed HellaSwag file accepted (the real one is about 7 MB).
const HELLASWAG_TEXT_LIMIT: u64 = 64 << 20;

/// Reads a bzip2 file as UTF-8 text of at most `limit` bytes.
fn read_bz2_text(file: &Path, limit: u64) -> Result<String> {
    use std::io::Read;
    let raw = std::fs::File::open(file)
        .with_context(|| format!("cannot read task file {}", file.display()))?;
    let mut text = String::new();
    bzip2::read::BzDecoder::new(raw)
        .take(limit + 1)
        .read_to_string(&mut text)
        .map_err(|e| anyhow!("{}: not bzip2-compressed UTF-8 text ({e})", file.display()))?;
    if text.len() as u64 > limit {
        bail!(
            "{}: more than {limit} bytes once decompressed",
            file.display()
        );
    }
    Ok(text)
}

/// The harness's query from a `{activity_label}: {ctx}` line of the llama.cpp file (see the
/// module docs): `ctx_b` (after the last `". "`, unless the line ends in a period) gets
/// Python's `capitalize`, then the whole line the harness's `preprocess`.
pub fn hellaswag_query_from_line(line: &str) -> String {
    if line.ends_with('.') {
        return hellaswag_preprocess(line);
    }
    let start = line
        .rfind(". ")
        .map(|i| i + 2)
        .or_else(|| line.find(": ").map(|i| i + 2))
        .unwrap_or(0);
    let rebuilt = format!("{}{}", &line[..start], python_capitalize(&line[start..]));
    hellaswag_preprocess(&rebuilt)
}

/// All items of the llama.cpp HellaSwag file: six lines each (query, label, four endings).
fn hellaswag_full_items(file: &Path) -> Result<Vec<McItem>> {
    let text = read_bz2_text(file, HELLASWAG_TEXT_LIMIT)?;
    let lines: Vec<&str> = text.lines().collect();
    if !lines.len().is_multiple_of(6) {
        bail!(
            "{}: {} lines, not six per item (query, label, four endings)",
            file.display(),
            lines.len()
        );
    }
    lines
        .chunks(6)
        .enumerate()
        .map(|(i, item)| {
            let lineno = 6 * i + 2;
            let gold: usize = item[1].trim().parse().map_err(|_| {
                anyhow!(
                    "{}:{lineno}: malformed row: label {:?} is not an integer",
                    file.display(),
                    item[1]
                )
            })?;
            check_gold(4, gold)
                .map_err(|e| anyhow!("{}:{lineno}: malformed row: {e}", file.display()))?;
            Ok(McItem {
                id: format!("{}/{i}", Task::Hellaswag.name()),
                contexts: vec![hellaswag_query_from_line(item[0])],
                continuations: item[2..]
                    .iter()
                    .map(|e| format!("{DELIM}{}", hellaswag_preprocess(e)))
                    .collect(),
                gold,
            })
        })
        .collect()
}
