//! Multiple-choice tasks (formats: see the parent module's docs).

use std::path::Path;
use std::sync::OnceLock;

use anyhow::Result;
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
        Task::Hellaswag => {
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
