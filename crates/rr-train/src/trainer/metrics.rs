//! `metrics.jsonl`: one JSON line per logged training step and per held-out evaluation, typed
//! here once for the writer and every reader (resume, reports, tests).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// A logged optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepLine {
    /// Optimizer steps completed.
    pub step: usize,
    pub tokens: u64,
    /// Mean training loss of the step's micro-batches (nats/token).
    pub loss: f64,
    pub lr: f64,
    pub lr_multiplier: f64,
    /// The curriculum's scheduled mean recurrence (1 for a static model).
    pub mean_recurrence: usize,
    /// The drawn (n, k) of each micro-batch.
    pub n: Vec<usize>,
    pub k: Vec<usize>,
    pub grad_norm: f64,
    /// Steps (counted from 1) since the previous line whose update was skipped for a
    /// non-finite gradient.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<usize>,
    pub tokens_per_s: f64,
    /// Cumulative training FLOPs (method.md §7).
    pub flops: f64,
    /// Data-parallel runs: seconds per step spent in collectives (the trainer's own timer,
    /// mean over the steps since the previous line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm_s: Option<f64>,
}

/// Held-out loss at each test recurrence (key `static` for a static model).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalLine {
    pub step: usize,
    pub heldout_loss: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MetricsLine {
    Step(StepLine),
    Eval(EvalLine),
}

impl MetricsLine {
    pub fn step(&self) -> usize {
        match self {
            MetricsLine::Step(l) => l.step,
            MetricsLine::Eval(l) => l.step,
        }
    }
}

/// Every line of a run's metrics file.
pub fn read(path: &Path) -> Result<Vec<MetricsLine>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not a metrics line", path.display(), i + 1))
        })
        .collect()
}

/// The lines of a metrics file as written, each with its parse; a last line cut short (a
/// process killed while writing it) is dropped.
fn read_after_kill(path: &Path) -> Result<Vec<(String, MetricsLine)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(parsed) => out.push((line.to_string(), parsed)),
            Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("{}:{}: not a metrics line", path.display(), i + 1))
            }
        }
    }
    Ok(out)
}

/// The training steps of a run's metrics file.
pub fn read_steps(path: &Path) -> Result<Vec<StepLine>> {
    Ok(read(path)?
        .into_iter()
        .filter_map(|l| match l {
            MetricsLine::Step(s) => Some(s),
            MetricsLine::Eval(_) => None,
        })
        .collect())
}

/// The held-out losses logged at `step`, if any.
pub fn eval_at(path: &Path, step: usize) -> Result<Option<BTreeMap<String, f64>>> {
    if !path.exists() {
        return Ok(None);
    }
    Ok(read(path)?.into_iter().find_map(|l| match l {
        MetricsLine::Eval(e) if e.step == step => Some(e.heldout_loss),
        _ => None,
    }))
}

/// The metrics file of a run, appended to line by line.
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens `path` for appending, first dropping lines logged after `keep_through` (a killed
    /// run may have got further than its last checkpoint).
    pub fn open(path: &Path, keep_through: usize) -> Result<Self> {
        if path.exists() {
            // The kept lines stay as written (a re-serialised float may differ in its last
            // digit).
            let mut body = String::new();
            for (text, line) in read_after_kill(path)? {
                if line.step() <= keep_through {
                    body.push_str(&text);
                    body.push('\n');
                }
            }
            rr_util::fs::write_atomic(path, body.as_bytes())?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open metrics", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn log(&mut self, line: &MetricsLine) -> Result<()> {
        writeln!(self.file, "{}", serde_json::to_string(line)?)
            .and_then(|_| self.file.flush())
            .with_context(|| format!("{}: cannot append", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_are_told_apart() {
        let step = MetricsLine::Step(StepLine {
            step: 3,
            tokens: 768,
            loss: 2.5,
            lr: 1e-3,
            lr_multiplier: 1.0,
            mean_recurrence: 4,
            n: vec![2],
            k: vec![3],
            grad_norm: 0.7,
            skipped: vec![2],
            tokens_per_s: 100.0,
            flops: 1e12,
            comm_s: Some(0.25),
        });
        let eval = MetricsLine::Eval(EvalLine {
            step: 3,
            heldout_loss: BTreeMap::from([("4".to_string(), 2.25)]),
        });
        for line in [step, eval] {
            let text = serde_json::to_string(&line).unwrap();
            assert_eq!(serde_json::from_str::<MetricsLine>(&text).unwrap(), line);
        }
        // What older runs wrote by hand parses into the same types.
        let old = r#"{"step": 0, "heldout_loss": {"1": 8.5, "2": 8.4}}"#;
        assert!(matches!(
            serde_json::from_str::<MetricsLine>(old).unwrap(),
            MetricsLine::Eval(_)
        ));
        assert!(serde_json::from_str::<MetricsLine>(r#"{"step": 1}"#).is_err());
    }

    #[test]
    fn reopening_drops_lines_after_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::open(&path, 0).unwrap();
        for step in [0, 5, 10] {
            log.log(&MetricsLine::Eval(EvalLine {
                step,
                heldout_loss: BTreeMap::new(),
            }))
            .unwrap();
        }
        drop(log);
        MetricsLog::open(&path, 5).unwrap();
        let steps: Vec<usize> = read(&path).unwrap().iter().map(MetricsLine::step).collect();
        assert_eq!(steps, [0, 5]);
    }
}
