//! `rr eval`: every task at every test recurrence, results shaped like lm-evaluation-harness
//! output, a markdown table and a plot of each task's headline metric against recurrence.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rr_data::{PackedSet, Split};
use rr_model::{AnyModel, TestTime, Tokenizer};

use crate::plot::{line_plot, Series};
use crate::results::{
    add_synth, score_gsm8k, score_math, score_multiple_choice, EvalResults, NSamples,
    RecurrenceReport,
};
use crate::runner::{greedy_until_batch, loglikelihoods};
use crate::tasks::{load, Requests, Task};

/// Held-out data whose loss is measured at each recurrence.
pub enum Heldout {
    /// One tokenised text, scored with sliding windows over the model's context.
    Text(Vec<i64>),
    /// Packed rows of T+1 tokens (input = row[..T], labels = row[1..]).
    Rows(Vec<Vec<i64>>),
}

impl Heldout {
    /// The first `max_rows` rows of the held-out split of the packed set in `dir`, which must
    /// have been packed with `tokenizer` (the same `tokenizer.json`, byte for byte).
    pub fn packed(dir: &Path, tokenizer: &Tokenizer, max_rows: usize) -> Result<Self> {
        let set = PackedSet::open(dir)?;
        set.check_tokenizer(tokenizer)?;
        Ok(Heldout::Rows(heldout_rows(&set, max_rows)?))
    }
}

/// The first `max_rows` rows (`seq_len + 1` ids each) of the held-out split of `set`; an error
/// when that leaves none. `rr eval --heldout` and the trainer's held-out loss both read these.
pub fn heldout_rows(set: &PackedSet, max_rows: usize) -> Result<Vec<Vec<i64>>> {
    let rows = set.rows(Split::Heldout).min(max_rows);
    if rows == 0 {
        bail!("{}: the held-out split has no rows", set.dir().display());
    }
    Ok((0..rows).map(|i| set.row(Split::Heldout, i)).collect())
}

pub struct EvalOptions {
    /// Also report held-out loss and perplexity (task `heldout`).
    pub heldout: Option<Heldout>,
    pub tasks: Vec<Task>,
    /// Test recurrences (ignored for ordinary models, which are evaluated once as r = 1).
    pub recurrences: Vec<usize>,
    pub limit: Option<usize>,
    pub seed: u64,
    pub batch_size: usize,
    pub max_new_tokens: usize,
    pub data_dir: PathBuf,
}

/// Parses `1,2,4` into recurrences, refusing zero and negative values.
pub fn parse_recurrences(text: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let r: i64 = part
            .parse()
            .with_context(|| format!("recurrence `{part}` is not a number"))?;
        if r < 1 {
            bail!("recurrence {r} is invalid: test recurrences must be at least 1");
        }
        out.push(r as usize);
    }
    if out.is_empty() {
        bail!("no recurrences given");
    }
    Ok(out)
}

/// Runs every task at every recurrence. `progress` is called with a line per finished task.
pub fn evaluate(
    model: &AnyModel,
    tokenizer: &Tokenizer,
    opts: &EvalOptions,
    mut progress: impl FnMut(&str),
) -> Result<RecurrenceReport> {
    // Load (and validate) every task before any compute.
    let data: Vec<_> = opts
        .tasks
        .iter()
        .map(|&t| load(t, &opts.data_dir, opts.limit))
        .collect::<Result<_>>()?;
    let recurrences = match model {
        AnyModel::Recurrent(_) => opts.recurrences.clone(),
        AnyModel::Static(_) => vec![1],
    };
    let eos: Vec<i64> = {
        let mut ids = model.eos_token_ids();
        ids.extend(tokenizer.eos_id());
        ids
    };
    let max_len = model.max_context();
    let mut report = RecurrenceReport::default();
    for &r in &recurrences {
        let tt = TestTime {
            recurrence: r,
            seed: opts.seed,
        };
        let mut results = EvalResults::default();
        if let Some(heldout) = &opts.heldout {
            let (nll, tokens) = match heldout {
                Heldout::Text(ids) => {
                    let s = crate::nll::score_text(model, ids, max_len, tt)?;
                    (s.total_nll, s.tokens)
                }
                Heldout::Rows(rows) => crate::nll::rows_nll(model, rows, opts.batch_size, tt)?,
            };
            let mean = nll / tokens as f64;
            let mut m = crate::results::Metrics::new();
            m.insert("loss,none".into(), serde_json::json!(mean));
            m.insert("perplexity,none".into(), serde_json::json!(mean.exp()));
            results.add(
                "heldout",
                m,
                NSamples {
                    original: tokens,
                    effective: tokens,
                },
            );
            progress(&format!("r={r} heldout: loss {mean:.4}"));
        }
        for task in &data {
            let n = NSamples {
                original: task.n_original,
                effective: task.requests.len(),
            };
            match &task.requests {
                Requests::LogLikelihood(items) => {
                    let pairs: Vec<(String, String)> = items
                        .iter()
                        .flat_map(|i| {
                            i.pairs()
                                .into_iter()
                                .map(|(c, k)| (c.to_string(), k.to_string()))
                        })
                        .collect();
                    let lls =
                        loglikelihoods(model, tokenizer, &pairs, opts.batch_size, max_len, tt)
                            .with_context(|| format!("{}", task.file.display()))?;
                    let mut per_item = Vec::with_capacity(items.len());
                    let mut next = lls.iter();
                    for item in items {
                        per_item.push(
                            (0..item.n_choices())
                                .map(|_| next.next().map(|l| l.sum).unwrap_or(f64::NAN))
                                .collect::<Vec<_>>(),
                        );
                    }
                    results.add(
                        task.task.name(),
                        score_multiple_choice(items, &per_item)?,
                        n,
                    );
                }
                Requests::Generate(reqs) => {
                    let prompts: Vec<(String, Vec<String>)> = reqs
                        .iter()
                        .map(|r| (r.prompt.clone(), r.stop.clone()))
                        .collect();
                    let generations = greedy_until_batch(
                        model,
                        tokenizer,
                        &prompts,
                        &eos,
                        opts.max_new_tokens,
                        opts.batch_size,
                        tt,
                    )?;
                    match task.task {
                        Task::Math500 => {
                            results.add(task.task.name(), score_math(reqs, &generations)?, n)
                        }
                        Task::Synth => {
                            add_synth(&mut results, reqs, &generations, task.n_original)?
                        }
                        _ => results.add(task.task.name(), score_gsm8k(reqs, &generations)?, n),
                    }
                }
            }
            let metric = task.task.headline_metric();
            let value = results
                .results
                .get(task.task.name())
                .and_then(|m| {
                    m.iter()
                        .find(|(k, _)| k.starts_with(metric))
                        .map(|(_, v)| v.clone())
                })
                .unwrap_or_default();
            progress(&format!("r={r} {}: {metric} {value}", task.task.name()));
        }
        results.config =
            serde_json::json!({"recurrence": r, "seed": opts.seed, "limit": opts.limit});
        report.recurrences.insert(r as u32, results);
    }
    report.config = serde_json::json!({
        "tasks": opts.tasks.iter().map(|t| t.name()).collect::<Vec<_>>(),
        "recurrences": recurrences,
        "seed": opts.seed,
        "limit": opts.limit,
        "batch_size": opts.batch_size,
    });
    Ok(report)
}

/// Writes `results.json`, `results.md` and one SVG per task (headline metric vs recurrence,
/// with the baseline's value as a flat line when given) next to `out`.
pub fn write_outputs(
    report: &RecurrenceReport,
    baseline: Option<&RecurrenceReport>,
    tasks: &[Task],
    out: &Path,
) -> Result<()> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("{}: cannot create", parent.display()))?;
    }
    report.write(out)?;
    let md = out.with_extension("md");
    std::fs::write(&md, report.to_markdown())
        .with_context(|| format!("{}: cannot write", md.display()))?;
    if report.recurrences.len() < 2 {
        return Ok(());
    }
    for task in tasks {
        let metric = task.headline_metric();
        let value = |res: &EvalResults| -> Option<f64> {
            res.results
                .get(task.name())?
                .iter()
                .find(|(k, _)| k.starts_with(metric) && !k.contains("stderr"))?
                .1
                .as_f64()
        };
        let points: Vec<(f64, f64)> = report
            .recurrences
            .iter()
            .filter_map(|(r, res)| Some((*r as f64, value(res)?)))
            .collect();
        let mut series = vec![Series {
            name: "recurrent".into(),
            points: points.clone(),
        }];
        if let Some(b) = baseline
            .and_then(|b| b.recurrences.values().next())
            .and_then(value)
        {
            series.push(Series {
                name: "static baseline".into(),
                points: points.iter().map(|p| (p.0, b)).collect(),
            });
        }
        let path = out.with_file_name(format!(
            "{}_{}.svg",
            out.file_stem().unwrap_or_default().to_string_lossy(),
            task.name()
        ));
        line_plot(
            &path,
            &format!("{}: {metric}", task.name()),
            "test recurrence r",
            metric,
            &series,
            true,
        )?;
    }
    Ok(())
}
