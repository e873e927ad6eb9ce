//! `rr eval`: every task at every test recurrence, results shaped like lm-evaluation-harness
//! output, a markdown table and a plot of each task's headline metric against recurrence.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rr_data::{PackedSet, Split};
use rr_model::recurrent::{InitialState, StateChoice};
use rr_model::{AnyModel, TestTime, Tokenizer};

use crate::metrics::{mc_predict, Gsm8kStrict};
use crate::plot::{line_plot, Series};
use crate::results::{
    add_math, add_synth, score_gsm8k, score_multiple_choice, EvalResults, NSamples,
    RecurrenceReport,
};
use crate::runner::{greedy_until_batch, loglikelihoods};
use crate::tasks::{load, GenRequest, McItem, Requests, Task, TaskData};

/// Held-out data whose loss is measured at each recurrence.
#[derive(Clone)]
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

#[derive(Clone)]
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
    /// Keep every item's raw output (log-likelihoods, generated text) for
    /// `<out>.samples.jsonl`, as the harness's `--log_samples`.
    pub log_samples: bool,
    /// Where a recurrent model's latent state starts (`--initial-state`); a static model
    /// (the baseline) has none and ignores it.
    pub initial_state: StateChoice,
}

/// Refuses test recurrences that are zero or beyond what one forward call runs, an empty
/// list, and more than 64 of them.
pub fn check_recurrences(recurrences: &[usize]) -> Result<()> {
    let max = rr_model::recurrent::MAX_RECURRENCE;
    if recurrences.is_empty() {
        bail!("no test recurrences given");
    }
    if recurrences.len() > 64 {
        bail!("more than 64 test recurrences");
    }
    for &r in recurrences {
        if r == 0 {
            bail!("test recurrence 0 is invalid: test recurrences must be at least 1");
        }
        if r > max {
            bail!("test recurrence {r} is beyond the supported {max}");
        }
    }
    Ok(())
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
    let mut eos = model.eos_token_ids();
    eos.extend(tokenizer.eos_id());
    let init = match model {
        AnyModel::Recurrent(_) => model.initial_state(&opts.initial_state, opts.seed)?,
        AnyModel::Static(_) => InitialState::Random { seed: opts.seed },
    };
    let mut report = RecurrenceReport::default();
    for &r in &recurrences {
        let run = AtRecurrence {
            model,
            tokenizer,
            opts,
            eos: &eos,
            max_len: model.max_context(),
            tt: TestTime {
                recurrence: r,
                seed: opts.seed,
            },
            init: &init,
        };
        let mut results = EvalResults::default();
        if let Some(heldout) = &opts.heldout {
            let mean = run.heldout(heldout, &mut results)?;
            progress(&format!("r={r} heldout: loss {mean:.4}"));
        }
        for task in &data {
            run.task(task, &mut results)?;
            let metric = task.task.headline_metric();
            let value = headline_value(&results, task.task);
            progress(&format!("r={r} {}: {metric} {value}", task.task.name()));
        }
        results.config = serde_json::json!({"recurrence": r, "seed": opts.seed,
            "limit": opts.limit, "initial_state": opts.initial_state.to_string()});
        report.recurrences.insert(r as u32, results);
    }
    report.config = serde_json::json!({
        "tasks": opts.tasks.iter().map(|t| t.name()).collect::<Vec<_>>(),
        "recurrences": recurrences,
        "seed": opts.seed,
        "initial_state": opts.initial_state.to_string(),
        "limit": opts.limit,
        "batch_size": opts.batch_size,
        "num_fewshot": {"gsm8k": 1, "gsm8k_rr": 1, "synth": 1, "math": 1, "math500": 1,
                        "multiple_choice": 0},
        "add_bos_token": true,
        "bos_token_id": tokenizer.bos_id(),
        "dtype": rr_model::recurrent::dtype_name(model.dtype()),
        "max_new_tokens": opts.max_new_tokens,
    });
    Ok(report)
}

/// The first metric of `task` in `results` whose name starts with its headline metric (null
/// when there is none).
fn headline_value(results: &EvalResults, task: Task) -> serde_json::Value {
    let metric = task.headline_metric();
    results
        .results
        .get(task.name())
        .and_then(|m| {
            m.iter()
                .find(|(k, _)| k.starts_with(metric))
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_default()
}

/// One record per multiple-choice item: its log-likelihoods and both predictions.
fn mc_samples<'a>(
    task: &'a str,
    items: &'a [McItem],
    lls: &'a [Vec<f64>],
) -> impl Iterator<Item = serde_json::Value> + 'a {
    items
        .iter()
        .zip(lls)
        .enumerate()
        .map(move |(doc_id, (item, ll))| {
            let scores: Vec<(f64, usize)> = ll.iter().copied().zip(item.norm_lengths()).collect();
            let p = mc_predict(&scores);
            serde_json::json!({"task": task, "doc_id": doc_id, "id": item.id, "loglikelihoods": ll,
                           "gold": item.gold, "pred": p.pred, "pred_norm": p.pred_norm})
        })
}

/// One record per generation request: the generated text and the reference.
fn generation_samples<'a>(
    task: &'a str,
    reqs: &'a [GenRequest],
    generations: &'a [String],
) -> impl Iterator<Item = serde_json::Value> + 'a {
    reqs.iter()
        .zip(generations)
        .enumerate()
        .map(move |(doc_id, (req, text))| {
            serde_json::json!({"task": task, "doc_id": doc_id, "id": req.id, "response": text,
                           "reference": req.reference})
        })
}

/// Everything the held-out data and the tasks run with at one test recurrence.
struct AtRecurrence<'a> {
    model: &'a AnyModel,
    tokenizer: &'a Tokenizer,
    opts: &'a EvalOptions,
    /// Generation stops at any of these.
    eos: &'a [i64],
    max_len: usize,
    tt: TestTime,
    /// Where the latent state starts (resolved once from `opts.initial_state`).
    init: &'a InitialState,
}

impl AtRecurrence<'_> {
    /// Adds task `heldout` (mean loss and perplexity per token) and returns the mean loss.
    fn heldout(&self, heldout: &Heldout, results: &mut EvalResults) -> Result<f64> {
        let (nll, tokens) = match heldout {
            Heldout::Text(ids) => {
                let s = crate::nll::score_text_from(
                    self.model,
                    ids,
                    self.max_len,
                    self.tt.depth(),
                    self.init,
                )?;
                (s.total_nll, s.tokens)
            }
            Heldout::Rows(rows) => {
                crate::nll::rows_nll(self.model, rows, self.opts.batch_size, self.tt, self.init)?
            }
        };
        let mean = nll / tokens as f64;
        let mut m = crate::results::Metrics::new();
        m.insert("loss,none".into(), serde_json::json!(mean));
        m.insert("perplexity,none".into(), serde_json::json!(mean.exp()));
        let n = NSamples {
            original: tokens,
            effective: tokens,
        };
        results.add("heldout", m, n);
        Ok(mean)
    }

    /// Runs one task and adds its metrics.
    fn task(&self, task: &TaskData, results: &mut EvalResults) -> Result<()> {
        let n = NSamples {
            original: task.n_original,
            effective: task.requests.len(),
        };
        let name = task.task.name();
        match &task.requests {
            Requests::LogLikelihood(items) => {
                let lls = self
                    .choice_loglikelihoods(items)
                    .with_context(|| format!("{}", task.file.display()))?;
                results.add(name, score_multiple_choice(items, &lls)?, n);
                if self.opts.log_samples {
                    results.samples.extend(mc_samples(name, items, &lls));
                }
            }
            Requests::Generate(reqs) => {
                let generations = self.generate(reqs)?;
                if self.opts.log_samples {
                    results
                        .samples
                        .extend(generation_samples(name, reqs, &generations));
                }
                match task.task {
                    Task::Math | Task::Math500 => {
                        add_math(results, name, reqs, &generations, task.n_original)?
                    }
                    Task::Synth => add_synth(results, reqs, &generations, task.n_original)?,
                    Task::Gsm8k => results.add(
                        name,
                        score_gsm8k(reqs, &generations, Gsm8kStrict::AnswerIs)?,
                        n,
                    ),
                    _ => results.add(
                        name,
                        score_gsm8k(reqs, &generations, Gsm8kStrict::Hashes)?,
                        n,
                    ),
                }
            }
        }
        Ok(())
    }

    /// The summed log-likelihood of every choice of every item (NaN for any the runner did
    /// not return).
    fn choice_loglikelihoods(&self, items: &[McItem]) -> Result<Vec<Vec<f64>>> {
        let pairs: Vec<(String, String)> = items
            .iter()
            .flat_map(|i| {
                i.pairs()
                    .into_iter()
                    .map(|(c, k)| (c.to_string(), k.to_string()))
            })
            .collect();
        let (model, tokenizer, batch) = (self.model, self.tokenizer, self.opts.batch_size);
        let lls = loglikelihoods(
            model,
            tokenizer,
            &pairs,
            batch,
            self.max_len,
            self.tt,
            self.init,
        )?;
        let mut next = lls.iter();
        Ok(items
            .iter()
            .map(|item| {
                (0..item.n_choices())
                    .map(|_| next.next().map(|l| l.sum).unwrap_or(f64::NAN))
                    .collect()
            })
            .collect())
    }

    /// Greedy generations for `reqs`, each up to its stop strings or EOS.
    fn generate(&self, reqs: &[GenRequest]) -> Result<Vec<String>> {
        let prompts: Vec<(String, Vec<String>)> = reqs
            .iter()
            .map(|r| (r.prompt.clone(), r.stop.clone()))
            .collect();
        let base = rr_model::DecodeOptions {
            max_new_tokens: self.opts.max_new_tokens,
            eos_ids: self.eos.to_vec(),
            test_time: self.tt,
            initial_state: Some(self.init.clone()),
            ..Default::default()
        };
        greedy_until_batch(
            self.model,
            self.tokenizer,
            &prompts,
            &base,
            self.opts.batch_size,
        )
    }
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
    write_samples(report, out)?;
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

/// `<out>.samples.jsonl`: every item's record at every test recurrence (nothing when no
/// samples were kept), written to a temporary name and renamed.
fn write_samples(report: &RecurrenceReport, out: &Path) -> Result<()> {
    let mut lines = String::new();
    for (r, results) in &report.recurrences {
        for sample in &results.samples {
            let mut sample = sample.clone();
            sample["recurrence"] = serde_json::json!(r);
            lines.push_str(&sample.to_string());
            lines.push('\n');
        }
    }
    if lines.is_empty() {
        return Ok(());
    }
    rr_util::fs::write_atomic(&out.with_extension("samples.jsonl"), lines.as_bytes())
}
