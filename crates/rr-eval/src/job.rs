//! `rr eval` as one job: load the model, evaluate every task (and the held-out loss) at every
//! test recurrence, evaluate the static baseline on the same tasks when given as a model
//! directory (or read its earlier results), and write the results, tables and plots.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rr_model::recurrent::is_recurrent_dir;
use rr_model::{AnyModel, Tokenizer};
use tch::{Device, Kind};

use crate::evaluate::{check_recurrences, evaluate, write_outputs, EvalOptions, Heldout};
use crate::results::RecurrenceReport;
use crate::tasks::Task;

/// The largest text file a held-out text may be (256 MiB).
pub const TEXT_LIMIT: u64 = 256 << 20;

pub struct EvalJob {
    pub model: PathBuf,
    /// A single `--recurrence`: only checked against the model (a static model takes none);
    /// evaluation runs at every one of `options.recurrences`.
    pub recurrence: Option<usize>,
    pub device: Device,
    pub dtype: Kind,
    /// Tasks, test recurrences and the rest; its `heldout` is filled from `heldout` below.
    pub options: EvalOptions,
    /// A text file or a packed directory whose held-out loss is reported too.
    pub heldout: Option<PathBuf>,
    /// With a packed `heldout`: rows to use.
    pub heldout_rows: usize,
    /// A static model directory to evaluate alongside, or the results.json of an earlier
    /// evaluation of it.
    pub baseline: Option<PathBuf>,
    pub out: PathBuf,
}

impl EvalJob {
    /// Runs the job; `progress` gets a line per finished task. Everything that can be wrong
    /// with the inputs is refused before any compute.
    pub fn run(&self, mut progress: impl FnMut(&str)) -> Result<RecurrenceReport> {
        if self.options.tasks.is_empty() && self.heldout.is_none() {
            bail!("--tasks is empty (and no --heldout)");
        }
        check_recurrences(&self.options.recurrences).context("--recurrences")?;
        let mut inputs = vec![self.model.as_path()];
        inputs.extend(self.heldout.as_deref());
        rr_util::fs::ensure_output_apart(&self.out, &inputs)?;
        if self.options.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        let (baseline_dir, mut baseline) = self.baseline()?;
        let model = AnyModel::load(&self.model, self.device, self.dtype)?;
        model
            .recurrence(self.recurrence)
            .with_context(|| self.model.display().to_string())?;
        // Refuses a state a static model cannot take, or a file that does not fit, up front.
        model.initial_state(&self.options.initial_state, self.options.seed)?;
        let tokenizer = Tokenizer::from_path(&self.model)?;
        let opts = self.options(&tokenizer)?;
        let report = evaluate(&model, &tokenizer, &opts, &mut progress)?;
        if let Some(dir) = &baseline_dir {
            drop(model);
            let static_model = AnyModel::load(dir, self.device, self.dtype)?;
            let static_tokenizer = Tokenizer::from_path(dir)?;
            let static_report = evaluate(&static_model, &static_tokenizer, &opts, |line| {
                progress(&format!("baseline {line}"))
            })?;
            let name = format!(
                "{}.baseline.json",
                self.out.file_stem().unwrap_or_default().to_string_lossy()
            );
            write_outputs(
                &static_report,
                None,
                &self.options.tasks,
                &self.out.with_file_name(name),
            )?;
            baseline = Some(static_report);
        }
        write_outputs(&report, baseline.as_ref(), &self.options.tasks, &self.out)?;
        Ok(report)
    }

    /// The baseline: a model directory (evaluated after the main model) or a results file,
    /// read now so that a bad one fails before any compute.
    fn baseline(&self) -> Result<(Option<PathBuf>, Option<RecurrenceReport>)> {
        let Some(path) = &self.baseline else {
            return Ok((None, None));
        };
        if path.join("config.json").exists() {
            if is_recurrent_dir(path) {
                bail!(
                    "{}: --baseline must be a static (non-recurrent) model or a results.json",
                    path.display()
                );
            }
            return Ok((Some(path.clone()), None));
        }
        Ok((None, Some(read_report(path)?)))
    }

    fn options(&self, tokenizer: &Tokenizer) -> Result<EvalOptions> {
        let heldout = match &self.heldout {
            None => None,
            Some(p) if p.join("manifest.json").exists() => {
                Some(Heldout::packed(p, tokenizer, self.heldout_rows)?)
            }
            Some(p) => {
                let text = rr_util::fs::read_text_limited(p, TEXT_LIMIT)?;
                if text.trim().is_empty() {
                    bail!("{}: the text is empty", p.display());
                }
                Some(Heldout::Text(tokenizer.encode(&text, true)?))
            }
        };
        Ok(EvalOptions {
            heldout,
            ..self.options.clone()
        })
    }
}

/// An earlier `rr eval` results file.
pub fn read_report(path: &Path) -> Result<RecurrenceReport> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    RecurrenceReport::from_json(&text).with_context(|| path.display().to_string())
}

/// The tasks an results file holds, in a stable order.
pub fn tasks_of(report: &RecurrenceReport) -> Vec<Task> {
    report
        .recurrences
        .values()
        .flat_map(|r| r.results.keys())
        .filter_map(|name| Task::parse(name).ok())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}
