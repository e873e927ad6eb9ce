//! Evaluation tasks: data files → model requests, in lm-evaluation-harness formats.
//!
//! Two kinds of request come out of [`load`]:
//! * [`GenRequest`] (greedy generation until a stop string or EOS; the runner handles EOS):
//!   `gsm8k`, `gsm8k_rr`, `math`, `math500`, `synth`;
//! * [`McItem`] (sum of log-likelihoods of each choice's continuation given its context):
//!   `arc_easy`, `arc_challenge`, `openbookqa`, `piqa`, `winogrande`, `hellaswag`,
//!   `hellaswag_1000`. All 0-shot.
//!
//! Files, relative to the data directory (`../shared/data` in a checkout, see its README):
//!
//! | task | file | reference implementation of the format |
//! |---|---|---|
//! | `gsm8k` | `gsm8k/test.jsonl` | the authors' `gsm8k_cot_sean` (method.md §6): harness `gsm8k-cot` first exemplar, `Q: …\nA: Let's think step by step.`, 1-shot |
//! | `gsm8k_rr` | `gsm8k/test.jsonl` | rr's earlier prompt (`Q: …\n\nA: …`, GSM8K train row 1 as the shot, `#### N` strict match) |
//! | `math` | `math/MATH_test.jsonl` (5,000, 7 subjects) | harness `minerva_math`, first exemplar only (1-shot); per-subject scores `math_{subject}` |
//! | `math500` | `math/MATH500_test.jsonl` | the same prompt and scorers on the 500-problem subset |
//! | `arc_easy`, `arc_challenge` | `mc/arc_*.jsonl` | harness `arc_easy`: `Question: {q}\nAnswer:` + ` {choice}` |
//! | `openbookqa` | `mc/openbook_qa.jsonl` | harness `openbookqa`: `{question_stem}` + ` {choice}` |
//! | `piqa` | `mc/piqa.jsonl` | harness `piqa`: `Question: {goal}\nAnswer:` + ` {sol}` |
//! | `winogrande` | `mc/winogrande.jsonl` | harness `winogrande` (partial scoring) |
//! | `hellaswag` | `mc/hellaswag_val_full.txt.bz2` (10,042) | harness `hellaswag` `process_docs` (see `mc.rs` for what the file's layout loses) |
//! | `hellaswag_1000` | `mc/hellaswag_val_subset1000.jsonl` | harness `hellaswag` `process_docs`, exactly |
//! | `synth` | `synth.jsonl` (or pass the file itself as `data_dir`) | `gsm8k_rr` format, scored per `steps` |
//!
//! llm-foundry files vs the harness (checked on every row of the shipped files):
//! * ARC `query` is `"Question: {q}"` (every row starts with `Question: `, none contains
//!   `Answer:`), so context = `query + "\nAnswer:"` equals the harness's `Question: {q}\nAnswer:`.
//!   Rows whose query lacks the `Question: ` prefix get it added.
//! * PIQA `query` is `"Question: {goal}\n"` (every row ends in `\n`), so context =
//!   `query + "Answer:"` (a `\n` is inserted if a row lacks it).
//! * OpenBookQA `query` is the bare question stem: context = `query`.
//! * Winogrande `context_options[i]` is `sentence[:blank] + option_i` and `continuation` is
//!   `sentence[blank+1:].strip()`, the harness's `doc_to_choice` / `doc_to_target`; the harness
//!   then prepends its target delimiter, so the scored continuation is `" " + continuation`
//!   (also when it starts with punctuation, e.g. `" ."` — that is what the harness scores).
//! * Every other continuation is `" " + choice` (the harness's default `target_delimiter`).
//!
//! `acc_norm` divides by the choice's length in characters without the delimiter (the
//! harness's `len(choice)` over `doc_to_choice`; for winogrande the choices are the contexts).
//!
//! Malformed rows fail with a one-line error `file:line: reason`; blank lines are skipped.
//! `limit` keeps the first `limit` rows (after validating the whole file).

mod generative;
mod mc;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;

pub use generative::{
    gsm8k_cot_prompt, gsm8k_rr_prompt, math_prompt, strip_calculator_annotations,
    GSM8K_COT_EXEMPLAR_QUESTION, GSM8K_COT_EXEMPLAR_TARGET, GSM8K_COT_STOP, GSM8K_EXEMPLAR_ANSWER,
    GSM8K_EXEMPLAR_QUESTION, GSM8K_STOP, MATH_EXEMPLAR_PROBLEM, MATH_EXEMPLAR_SOLUTION, MATH_STOP,
};
pub use mc::{hellaswag_preprocess, hellaswag_query_from_line, python_capitalize};

/// A known evaluation task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Task {
    /// The authors' `gsm8k_cot_sean`.
    Gsm8k,
    /// rr's earlier GSM8K prompt (`#### N` answers).
    Gsm8kRr,
    /// `minerva_math`: all 5,000 MATH test problems.
    Math,
    Math500,
    ArcEasy,
    ArcChallenge,
    OpenBookQa,
    Piqa,
    Winogrande,
    /// All 10,042 validation items.
    Hellaswag,
    /// The 1,000-item validation subset.
    Hellaswag1000,
    Synth,
}

impl Task {
    pub const ALL: [Task; 12] = [
        Task::Gsm8k,
        Task::Gsm8kRr,
        Task::Math,
        Task::Math500,
        Task::ArcEasy,
        Task::ArcChallenge,
        Task::OpenBookQa,
        Task::Piqa,
        Task::Winogrande,
        Task::Hellaswag,
        Task::Hellaswag1000,
        Task::Synth,
    ];

    /// The task's name (as used on the command line and in results).
    pub fn name(self) -> &'static str {
        match self {
            Task::Gsm8k => "gsm8k",
            Task::Gsm8kRr => "gsm8k_rr",
            Task::Math => "math",
            Task::Math500 => "math500",
            Task::ArcEasy => "arc_easy",
            Task::ArcChallenge => "arc_challenge",
            Task::OpenBookQa => "openbookqa",
            Task::Piqa => "piqa",
            Task::Winogrande => "winogrande",
            Task::Hellaswag => "hellaswag",
            Task::Hellaswag1000 => "hellaswag_1000",
            Task::Synth => "synth",
        }
    }

    /// All known names, comma-separated.
    pub fn known_names() -> String {
        Task::ALL.map(Task::name).join(", ")
    }

    /// Parses a task name; unknown names are refused with the list of known ones.
    pub fn parse(name: &str) -> Result<Task> {
        Task::ALL
            .into_iter()
            .find(|t| t.name() == name)
            .ok_or_else(|| {
                anyhow!(
                    "unknown task `{name}`; known tasks: {}",
                    Task::known_names()
                )
            })
    }

    /// Generative (true) or log-likelihood multiple choice (false).
    pub fn is_generative(self) -> bool {
        matches!(
            self,
            Task::Gsm8k | Task::Gsm8kRr | Task::Math | Task::Math500 | Task::Synth
        )
    }

    /// The metric the paper reports: `acc_norm` for ARC, HellaSwag, PIQA, OpenBookQA; `acc` for
    /// Winogrande; `exact_match,flexible-extract` for GSM8K and synth; `math_verify` for MATH.
    pub fn headline_metric(self) -> &'static str {
        match self {
            Task::ArcEasy
            | Task::ArcChallenge
            | Task::OpenBookQa
            | Task::Piqa
            | Task::Hellaswag
            | Task::Hellaswag1000 => "acc_norm,none",
            Task::Winogrande => "acc,none",
            Task::Gsm8k | Task::Gsm8kRr | Task::Synth => "exact_match,flexible-extract",
            Task::Math | Task::Math500 => "math_verify,none",
        }
    }

    /// The data file of this task under `data_dir`. For `synth`, a `data_dir` that is a file is
    /// the file itself.
    pub fn path(self, data_dir: &Path) -> PathBuf {
        let rel = match self {
            Task::Gsm8k | Task::Gsm8kRr => "gsm8k/test.jsonl",
            Task::Math => "math/MATH_test.jsonl",
            Task::Math500 => "math/MATH500_test.jsonl",
            Task::ArcEasy => "mc/arc_easy.jsonl",
            Task::ArcChallenge => "mc/arc_challenge.jsonl",
            Task::OpenBookQa => "mc/openbook_qa.jsonl",
            Task::Piqa => "mc/piqa.jsonl",
            Task::Winogrande => "mc/winogrande.jsonl",
            Task::Hellaswag => "mc/hellaswag_val_full.txt.bz2",
            Task::Hellaswag1000 => "mc/hellaswag_val_subset1000.jsonl",
            Task::Synth => {
                if data_dir.is_file() {
                    return data_dir.to_path_buf();
                }
                "synth.jsonl"
            }
        };
        data_dir.join(rel)
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Task {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Task> {
        Task::parse(s)
    }
}

/// One greedy-generation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenRequest {
    pub id: String,
    /// The full prompt, few-shot exemplar included.
    pub prompt: String,
    /// GSM8K / synth: the text after `####`; MATH: the content of the solution's last box.
    pub reference: String,
    /// Generation stops at the first of these (the stop string itself is cut off); EOS too.
    pub stop: Vec<String>,
    /// synth: the problem's `steps`.
    pub difficulty: Option<usize>,
    /// MATH: the problem's subject (`Algebra`, `Number Theory`, …).
    pub subject: Option<String>,
}

/// One multiple-choice item scored by log-likelihood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McItem {
    pub id: String,
    /// One per choice (winogrande), else a single shared context.
    pub contexts: Vec<String>,
    /// One per choice, or a single shared one (winogrande). Includes the leading delimiter space.
    pub continuations: Vec<String>,
    pub gold: usize,
}

impl McItem {
    pub fn n_choices(&self) -> usize {
        self.contexts.len().max(self.continuations.len())
    }

    /// `(context, continuation)` to score for each choice.
    pub fn pairs(&self) -> Vec<(&str, &str)> {
        (0..self.n_choices())
            .map(|i| {
                let ctx = &self.contexts[i.min(self.contexts.len() - 1)];
                let cont = &self.continuations[i.min(self.continuations.len() - 1)];
                (ctx.as_str(), cont.as_str())
            })
            .collect()
    }

    /// `acc_norm` lengths: the choice text without the target delimiter, in characters (the
    /// harness's `len(choice)` over `doc_to_choice`, method.md §6), so a HellaSwag choice that
    /// `preprocess` left with a leading space counts it; for winogrande the choices are the
    /// contexts.
    pub fn norm_lengths(&self) -> Vec<usize> {
        if self.contexts.len() > 1 {
            self.contexts.iter().map(|c| c.chars().count()).collect()
        } else {
            self.continuations
                .iter()
                .map(|c| c.strip_prefix(' ').unwrap_or(c).chars().count())
                .collect()
        }
    }

    /// `(acc, acc_norm)` of this item as 0/1 from the summed log-likelihood of each choice.
    pub fn score(&self, lls: &[f64]) -> (f64, f64) {
        assert_eq!(lls.len(), self.n_choices(), "one log-likelihood per choice");
        let scores: Vec<(f64, usize)> = lls.iter().copied().zip(self.norm_lengths()).collect();
        crate::metrics::mc_correct(&scores, self.gold)
    }
}

/// The requests of one task.
#[derive(Debug, Clone, PartialEq)]
pub enum Requests {
    Generate(Vec<GenRequest>),
    LogLikelihood(Vec<McItem>),
}

impl Requests {
    pub fn len(&self) -> usize {
        match self {
            Requests::Generate(v) => v.len(),
            Requests::LogLikelihood(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A loaded task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskData {
    pub task: Task,
    pub file: PathBuf,
    /// Rows in the file (`n-samples.original`).
    pub n_original: usize,
    /// After `limit` (`n-samples.effective` = `requests.len()`).
    pub requests: Requests,
}

impl TaskData {
    pub fn generate(&self) -> Option<&[GenRequest]> {
        match &self.requests {
            Requests::Generate(v) => Some(v),
            _ => None,
        }
    }
    pub fn multiple_choice(&self) -> Option<&[McItem]> {
        match &self.requests {
            Requests::LogLikelihood(v) => Some(v),
            _ => None,
        }
    }
}

/// Loads `task` from its file under `data_dir` (see [`Task::path`]).
pub fn load(task: Task, data_dir: &Path, limit: Option<usize>) -> Result<TaskData> {
    load_file(task, &task.path(data_dir), limit)
}

/// Loads `task` from an explicit file.
pub fn load_file(task: Task, file: &Path, limit: Option<usize>) -> Result<TaskData> {
    let (n_original, mut requests) = match task {
        Task::Gsm8k | Task::Gsm8kRr | Task::Synth => {
            let reqs = generative::gsm8k_requests(task, file)?;
            (reqs.len(), Requests::Generate(reqs))
        }
        Task::Math | Task::Math500 => {
            let reqs = generative::math_requests(task, file)?;
            (reqs.len(), Requests::Generate(reqs))
        }
        _ => {
            let items = mc::mc_items(task, file)?;
            (items.len(), Requests::LogLikelihood(items))
        }
    };
    if let Some(n) = limit {
        match &mut requests {
            Requests::Generate(v) => v.truncate(n),
            Requests::LogLikelihood(v) => v.truncate(n),
        }
    }
    Ok(TaskData {
        task,
        file: file.to_path_buf(),
        n_original,
        requests,
    })
}

/// Reads a JSONL file into `(line number, row)`; blank lines are skipped; a malformed row fails
/// with `file:line: reason`; `check` validates a parsed row the same way.
pub(crate) fn read_jsonl<T: DeserializeOwned>(
    file: &Path,
    check: impl Fn(&T) -> Result<(), String>,
) -> Result<Vec<(usize, T)>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read task file {}", file.display()))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let lineno = i + 1;
        let row: T = serde_json::from_str(line)
            .map_err(|e| anyhow!("{}:{lineno}: malformed row: {e}", file.display()))?;
        if let Err(e) = check(&row) {
            bail!("{}:{lineno}: malformed row: {e}", file.display());
        }
        rows.push((lineno, row));
    }
    Ok(rows)
}
