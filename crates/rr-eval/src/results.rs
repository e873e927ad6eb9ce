//! Evaluation results in lm-evaluation-harness's JSON shape, one object per test recurrence,
//! and a markdown table.
//!
//! ```json
//! {
//!   "recurrences": {
//!     "1": {
//!       "results":   {"arc_easy": {"acc,none": 0.61, "acc_stderr,none": 0.01,
//!                                  "acc_norm,none": 0.58, "acc_norm_stderr,none": 0.01}},
//!       "n-samples": {"arc_easy": {"original": 2376, "effective": 2376}},
//!       "config":    {...}
//!     },
//!     "4": {...}
//!   },
//!   "config": {...}
//! }
//! ```
//!
//! Recurrence keys are decimal strings (JSON object keys), ordered numerically. Metric keys are
//! `"{metric},{filter}"` as in the harness (`none` when there is no filter; GSM8K has
//! `strict-match` and `flexible-extract`), each with its `"{metric}_stderr,{filter}"`; a standard
//! error that is undefined (fewer than two samples) is written as `"N/A"`, as the harness does.
//! The inner object per recurrence is exactly what the harness writes for one run (less the
//! fields we have no use for), so existing tooling can read `recurrences["4"]`.
//!
//! synth is reported as `synth` (all problems) plus one task per difficulty,
//! `synth_steps_{k}`; `math` / `math500` as the task (all problems, the harness's
//! `weight_by_size` group mean) plus one task per subject with the harness's subtask suffixes,
//! `math_algebra`, `math_counting_and_prob`, `math_geometry`, `math_intermediate_algebra`,
//! `math_num_theory`, `math_prealgebra`, `math_precalc`, each with `exact_match,none` and
//! `math_verify,none`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::math_verify::math_verify;
use crate::metrics::{gsm8k_correct, mean, mean_stderr, minerva_exact_match, Gsm8kStrict};
use crate::tasks::{GenRequest, McItem};

/// Metric key → value (a number, or `"N/A"`).
pub type Metrics = BTreeMap<String, Value>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NSamples {
    pub original: usize,
    pub effective: usize,
}

/// One run (one test recurrence), harness-shaped.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EvalResults {
    pub results: BTreeMap<String, Metrics>,
    #[serde(rename = "n-samples")]
    pub n_samples: BTreeMap<String, NSamples>,
    #[serde(default)]
    pub config: Value,
    /// Per-item records (`--log-samples`), written to their own JSON-lines file.
    #[serde(skip)]
    pub samples: Vec<Value>,
}

impl EvalResults {
    pub fn add(&mut self, task: &str, metrics: Metrics, n: NSamples) {
        self.results.insert(task.to_string(), metrics);
        self.n_samples.insert(task.to_string(), n);
    }
}

/// All test recurrences of one model.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RecurrenceReport {
    pub recurrences: BTreeMap<u32, EvalResults>,
    #[serde(default)]
    pub config: Value,
}

impl RecurrenceReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("results serialise")
    }

    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).context("malformed results JSON")
    }

    /// Writes the JSON (with a trailing newline), atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        rr_util::fs::write_atomic(path, (self.to_json() + "\n").as_bytes())
    }

    /// Markdown table: one row per (task, metric) — stderr keys fold into their metric's cell as
    /// `value ± stderr` — and one column per recurrence (`r=1`, `r=4`, …); `–` where missing.
    pub fn to_markdown(&self) -> String {
        let recs: Vec<u32> = self.recurrences.keys().copied().collect();
        let mut rows: BTreeMap<(String, String), ()> = BTreeMap::new();
        for res in self.recurrences.values() {
            for (task, metrics) in &res.results {
                for key in metrics.keys().filter(|k| !is_stderr_key(k)) {
                    rows.insert((task.clone(), key.clone()), ());
                }
            }
        }
        let mut out = String::from("| task | metric |");
        for r in &recs {
            let _ = write!(out, " r={r} |");
        }
        out.push_str("\n|---|---|");
        for _ in &recs {
            out.push_str("---:|");
        }
        out.push('\n');
        for (task, key) in rows.keys() {
            let _ = write!(out, "| {task} | {key} |");
            for r in &recs {
                let metrics = self.recurrences[r].results.get(task);
                let cell = match metrics.and_then(|m| m.get(key)) {
                    None => "–".to_string(),
                    Some(v) => {
                        let mut c = format_value(v);
                        if let Some(se) = metrics.and_then(|m| m.get(&stderr_key(key))) {
                            let _ = write!(c, " ± {}", format_value(se));
                        }
                        c
                    }
                };
                let _ = write!(out, " {cell} |");
            }
            out.push('\n');
        }
        out
    }
}

fn format_value(v: &Value) -> String {
    match v {
        Value::Number(n) => n
            .as_f64()
            .map_or_else(|| n.to_string(), |x| format!("{x:.4}")),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn is_stderr_key(key: &str) -> bool {
    key.split(',')
        .next()
        .is_some_and(|m| m.ends_with("_stderr"))
}

/// `acc,none` → `acc_stderr,none`.
pub fn stderr_key(key: &str) -> String {
    match key.split_once(',') {
        Some((m, f)) => format!("{m}_stderr,{f}"),
        None => format!("{key}_stderr"),
    }
}

fn number(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or_else(|| Value::String("N/A".into()), Value::Number)
}

/// Inserts `"{metric},{filter}"` = mean and its `_stderr` = `mean_stderr` of 0/1 `values`.
pub fn insert_mean(metrics: &mut Metrics, metric: &str, filter: &str, values: &[f64]) {
    metrics.insert(format!("{metric},{filter}"), number(mean(values)));
    metrics.insert(
        format!("{metric}_stderr,{filter}"),
        number(mean_stderr(values)),
    );
}

/// `acc` and `acc_norm` (with stderrs) of multiple-choice items from per-choice summed
/// log-likelihoods (`lls[i][j]`: item `i`, choice `j`).
pub fn score_multiple_choice(items: &[McItem], lls: &[Vec<f64>]) -> Result<Metrics> {
    if items.len() != lls.len() {
        bail!(
            "{} items but {} log-likelihood rows",
            items.len(),
            lls.len()
        );
    }
    let mut acc = Vec::with_capacity(items.len());
    let mut acc_norm = Vec::with_capacity(items.len());
    for (item, ll) in items.iter().zip(lls) {
        if ll.len() != item.n_choices() {
            bail!(
                "{}: {} choices but {} log-likelihoods",
                item.id,
                item.n_choices(),
                ll.len()
            );
        }
        let (a, an) = item.score(ll);
        acc.push(a);
        acc_norm.push(an);
    }
    let mut m = Metrics::new();
    insert_mean(&mut m, "acc", "none", &acc);
    insert_mean(&mut m, "acc_norm", "none", &acc_norm);
    Ok(m)
}

fn check_lengths(reqs: &[GenRequest], generations: &[String]) -> Result<()> {
    if reqs.len() != generations.len() {
        bail!(
            "{} requests but {} generations",
            reqs.len(),
            generations.len()
        );
    }
    Ok(())
}

/// GSM8K `exact_match` under `strict-match` and `flexible-extract` (harness key names).
pub fn score_gsm8k(
    reqs: &[GenRequest],
    generations: &[String],
    strict: Gsm8kStrict,
) -> Result<Metrics> {
    check_lengths(reqs, generations)?;
    let (strict, flexible): (Vec<f64>, Vec<f64>) = reqs
        .iter()
        .zip(generations)
        .map(|(r, g)| {
            let (s, f) = gsm8k_correct(g, &r.reference, strict);
            (f64::from(u8::from(s)), f64::from(u8::from(f)))
        })
        .unzip();
    let mut m = Metrics::new();
    insert_mean(&mut m, "exact_match", "strict-match", &strict);
    insert_mean(&mut m, "exact_match", "flexible-extract", &flexible);
    Ok(m)
}

/// MATH `exact_match,none` (Minerva's normalisation, [`minerva_exact_match`]) and
/// `math_verify,none` ([`math_verify`]) against each request's reference box.
pub fn score_math(reqs: &[GenRequest], generations: &[String]) -> Result<Metrics> {
    check_lengths(reqs, generations)?;
    let (exact, verified): (Vec<f64>, Vec<f64>) = reqs
        .iter()
        .zip(generations)
        .map(|(r, g)| {
            let exact = minerva_exact_match(g, &r.reference);
            let verified = math_verify(g, &r.reference);
            (f64::from(u8::from(exact)), f64::from(u8::from(verified)))
        })
        .unzip();
    let mut m = Metrics::new();
    insert_mean(&mut m, "exact_match", "none", &exact);
    insert_mean(&mut m, "math_verify", "none", &verified);
    Ok(m)
}

/// The harness's `minerva_math` subtask suffix of a MATH subject (`Number Theory` →
/// `num_theory`); other subjects in snake case.
pub fn math_subject_suffix(subject: &str) -> String {
    match subject {
        "Counting & Probability" => "counting_and_prob".into(),
        "Number Theory" => "num_theory".into(),
        "Precalculus" => "precalc".into(),
        other => other
            .to_lowercase()
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| !w.is_empty())
            .collect::<Vec<_>>()
            .join("_"),
    }
}

/// MATH: [`score_math`] overall (`task`, `n_original` problems in the file) and per subject
/// (`{task}_{suffix}`, see [`math_subject_suffix`]); adds them to `out`.
pub fn add_math(
    out: &mut EvalResults,
    task: &str,
    reqs: &[GenRequest],
    generations: &[String],
    n_original: usize,
) -> Result<()> {
    let n = NSamples {
        original: n_original,
        effective: reqs.len(),
    };
    out.add(task, score_math(reqs, generations)?, n);
    add_groups(
        out,
        reqs,
        generations,
        |r| {
            let subject = r.subject.as_deref().unwrap_or("unknown");
            format!("{task}_{}", math_subject_suffix(subject))
        },
        score_math,
    )
}

/// Adds one task per group of requests (named by `group`), scored by `score`.
fn add_groups(
    out: &mut EvalResults,
    reqs: &[GenRequest],
    generations: &[String],
    group: impl Fn(&GenRequest) -> String,
    score: impl Fn(&[GenRequest], &[String]) -> Result<Metrics>,
) -> Result<()> {
    check_lengths(reqs, generations)?;
    let mut groups: BTreeMap<String, (Vec<GenRequest>, Vec<String>)> = BTreeMap::new();
    for (r, g) in reqs.iter().zip(generations) {
        let e = groups.entry(group(r)).or_default();
        e.0.push(r.clone());
        e.1.push(g.clone());
    }
    for (name, (rs, gs)) in groups {
        let n = rs.len();
        out.add(
            &name,
            score(&rs, &gs)?,
            NSamples {
                original: n,
                effective: n,
            },
        );
    }
    Ok(())
}

/// synth: GSM8K scoring (`#### N` strict match) overall (`synth`) and per difficulty
/// (`synth_steps_{k}`); adds them to `out` with `n_original` as the overall original count.
pub fn add_synth(
    out: &mut EvalResults,
    reqs: &[GenRequest],
    generations: &[String],
    n_original: usize,
) -> Result<()> {
    let score = |rs: &[GenRequest], gs: &[String]| score_gsm8k(rs, gs, Gsm8kStrict::Hashes);
    let all = score(reqs, generations)?;
    out.add(
        "synth",
        all,
        NSamples {
            original: n_original,
            effective: reqs.len(),
        },
    );
    add_groups(
        out,
        reqs,
        generations,
        |r| format!("synth_steps_{}", r.difficulty.unwrap_or(0)),
        score,
    )
}
