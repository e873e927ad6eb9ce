//! End-of-run artefacts: `summary.json`, `summary.md` (a table) and SVG plots of the training
//! loss against step and of the held-out loss against test recurrence.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use rr_eval::plot::{line_plot, Series};

use crate::trainer::metrics::{read, read_steps, MetricsLine};
use rr_eval::compute::interpolate;
use serde::{Deserialize, Serialize};

/// What a finished run reports (`summary.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub name: String,
    pub kind: String,
    pub steps: usize,
    pub tokens: u64,
    pub flops: f64,
    pub final_loss: f64,
    pub wall_seconds: f64,
    /// Held-out loss per test recurrence (key "static" for the baseline), before and after.
    pub heldout_before: BTreeMap<String, f64>,
    pub heldout_after: BTreeMap<String, f64>,
}

/// Training losses `(step, loss)` from a run's `metrics.jsonl`.
pub fn read_losses(run_dir: &Path) -> Result<Vec<(f64, f64)>> {
    let steps = read_steps(&run_dir.join("metrics.jsonl"))?;
    Ok(steps.iter().map(|l| (l.step as f64, l.loss)).collect())
}

fn recurrence_points(losses: &BTreeMap<String, f64>) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = losses
        .iter()
        .filter_map(|(r, l)| r.parse::<f64>().ok().map(|r| (r, *l)))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    pts
}

/// The entries of a held-out map in order of test recurrence (1, 4, 16, not the map's 1, 16,
/// 4), a non-numeric key such as `static` last.
fn by_recurrence(losses: &BTreeMap<String, f64>) -> Vec<(&String, &f64)> {
    let mut entries: Vec<(&String, &f64)> = losses.iter().collect();
    entries.sort_by_key(|(r, _)| r.parse::<usize>().unwrap_or(usize::MAX));
    entries
}

pub fn write_run_report(run_dir: &Path, s: &TrainSummary) -> Result<()> {
    std::fs::write(
        run_dir.join("summary.json"),
        serde_json::to_string_pretty(s)?,
    )?;
    let losses = read_losses(run_dir)?;
    line_plot(
        &run_dir.join("loss.svg"),
        &format!("{}: training loss", s.name),
        "optimizer step",
        "loss (nats/token)",
        &[Series {
            name: s.kind.clone(),
            points: losses,
        }],
        false,
    )?;
    let before = recurrence_points(&s.heldout_before);
    let after = recurrence_points(&s.heldout_after);
    let has_recurrences = !after.is_empty();
    if has_recurrences {
        line_plot(
            &run_dir.join("heldout.svg"),
            &format!("{}: held-out loss vs test recurrence", s.name),
            "test recurrence r",
            "held-out loss (nats/token)",
            &[
                Series {
                    name: "before training".into(),
                    points: before,
                },
                Series {
                    name: "after training".into(),
                    points: after,
                },
            ],
            true,
        )?;
    }
    let mut md = format!(
        "# {}\n\n{} model, {} steps, {} tokens, {:.3e} training FLOPs, {:.0} s; final training loss {:.4}.\n\n",
        s.name, s.kind, s.steps, s.tokens, s.flops, s.wall_seconds, s.final_loss
    );
    md.push_str("| test recurrence | held-out loss before | after |\n|---|---|---|\n");
    for (r, after) in by_recurrence(&s.heldout_after) {
        let before = s
            .heldout_before
            .get(r)
            .map(|b| format!("{b:.4}"))
            .unwrap_or_else(|| "–".into());
        md.push_str(&format!("| {r} | {before} | {after:.4} |\n"));
    }
    md.push_str("\n![training loss](loss.svg)\n");
    if has_recurrences {
        md.push_str("\n![held-out loss](heldout.svg)\n");
    }
    std::fs::write(run_dir.join("summary.md"), md)?;
    Ok(())
}

/// `(flops, loss)` of every training line in a run's metrics.
pub fn read_loss_vs_flops(run_dir: &Path) -> Result<Vec<(f64, f64)>> {
    let steps = read_steps(&run_dir.join("metrics.jsonl"))?;
    Ok(steps.iter().map(|l| (l.flops, l.loss)).collect())
}

/// Held-out losses of a run's evaluation checkpoints, each with the training FLOPs spent by
/// then (read off the logged steps' cumulative FLOPs, linear between logged steps; 0 at step 0).
pub fn read_heldout_vs_flops(run_dir: &Path) -> Result<Vec<(f64, BTreeMap<String, f64>)>> {
    let lines = read(&run_dir.join("metrics.jsonl"))?;
    let mut flops_by_step = vec![(0.0, 0.0)];
    let mut evals: BTreeMap<usize, BTreeMap<String, f64>> = BTreeMap::new();
    for line in lines {
        match line {
            MetricsLine::Step(l) => flops_by_step.push((l.step as f64, l.flops)),
            // A resumed run may evaluate a step again: the later line wins.
            MetricsLine::Eval(e) => {
                evals.insert(e.step, e.heldout_loss);
            }
        }
    }
    flops_by_step.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(evals
        .into_iter()
        .filter_map(|(step, losses)| {
            interpolate(&flops_by_step, step as f64).map(|flops| (flops, losses))
        })
        .collect())
}

fn read_summary(run_dir: &Path) -> Result<serde_json::Value> {
    let path = run_dir.join("summary.json");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read (is the run finished?)", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid", path.display()))
}

/// `report.md` in `run_dir`: the retrofit against its static baseline (same optimizer
/// settings and steps), its held-out losses at equal training FLOPs read off the baseline's
/// held-out curve, with plots of held-out loss against test recurrence and of training loss
/// against FLOPs.
pub fn write_comparison(
    run_dir: &Path,
    baseline: Option<&Path>,
    out_dir: &Path,
) -> Result<std::path::PathBuf> {
    let mut comparison = Comparison::read(run_dir, baseline)?;
    comparison.run_evals = read_heldout_vs_flops(run_dir)?;
    if let Some(b) = baseline {
        comparison.base_curve = read_heldout_vs_flops(b)?
            .into_iter()
            .filter_map(|(flops, losses)| losses.get("static").map(|&l| (flops, l)))
            .collect();
    }
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("{}: cannot create", out_dir.display()))?;
    comparison.plot_heldout(&out_dir.join("heldout_vs_recurrence.svg"))?;
    plot_loss_vs_flops(run_dir, baseline, &out_dir.join("loss_vs_flops.svg"))?;
    let path = out_dir.join("report.md");
    std::fs::write(&path, comparison.markdown())
        .with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(path)
}

/// A finished run and its baseline, as their `summary.json` files tell them.
struct Comparison {
    run: serde_json::Value,
    base: Option<serde_json::Value>,
    /// The run's held-out loss by test recurrence, before and after training.
    before: BTreeMap<String, f64>,
    after: BTreeMap<String, f64>,
    /// The baseline's held-out loss (its one entry, `static`), before and after training.
    base_before: Option<f64>,
    base_after: Option<f64>,
    /// The run's evaluation checkpoints: (training FLOPs, held-out loss by test recurrence).
    run_evals: Vec<(f64, BTreeMap<String, f64>)>,
    /// The baseline's held-out curve: (training FLOPs, loss) at its evaluation checkpoints.
    base_curve: Vec<(f64, f64)>,
}

impl Comparison {
    fn read(run_dir: &Path, baseline: Option<&Path>) -> Result<Self> {
        let run = read_summary(run_dir)?;
        let base = baseline.map(read_summary).transpose()?;
        let heldout = |v: &serde_json::Value, key: &str| -> BTreeMap<String, f64> {
            serde_json::from_value(v[key].clone()).unwrap_or_default()
        };
        let base_heldout = |key: &str| {
            base.as_ref()
                .and_then(|b| heldout(b, key).get("static").copied())
        };
        Ok(Self {
            before: heldout(&run, "heldout_before"),
            after: heldout(&run, "heldout_after"),
            base_before: base_heldout("heldout_before"),
            base_after: base_heldout("heldout_after"),
            run,
            base,
            run_evals: Vec::new(),
            base_curve: Vec::new(),
        })
    }

    /// Held-out loss against test recurrence: the retrofit before and after training, and
    /// the baseline's final loss as a flat line.
    fn plot_heldout(&self, path: &Path) -> Result<()> {
        let mut series = vec![
            Series {
                name: "retrofit, before".into(),
                points: recurrence_points(&self.before),
            },
            Series {
                name: "retrofit, after".into(),
                points: recurrence_points(&self.after),
            },
        ];
        if let Some(b) = self.base_after {
            let xs: Vec<f64> = recurrence_points(&self.after).iter().map(|p| p.0).collect();
            series.push(Series {
                name: "static baseline, after".into(),
                points: xs.iter().map(|&x| (x, b)).collect(),
            });
        }
        line_plot(
            path,
            "held-out loss vs test recurrence",
            "test recurrence r",
            "held-out loss (nats/token)",
            &series,
            true,
        )
    }

    /// `report.md`: a table of the runs, a table of held-out losses and the two plots.
    fn markdown(&self) -> String {
        let num = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        let mut md = format!("# {}\n\n", self.run["name"].as_str().unwrap_or("run"));
        md.push_str("| run | steps | tokens | training FLOPs | wall time (s) | final training loss |\n|---|---|---|---|---|---|\n");
        let runs = std::iter::once(("retrofit", &self.run))
            .chain(self.base.iter().map(|b| ("static baseline", b)));
        for (label, v) in runs {
            md.push_str(&format!(
                "| {label} | {} | {} | {:.3e} | {:.0} | {:.4} |\n",
                v["steps"],
                v["tokens"],
                num(v, "flops"),
                num(v, "wall_seconds"),
                num(v, "final_loss")
            ));
        }
        md.push_str("\nHeld-out loss (nats/token) by test recurrence:\n\n| r | retrofit before | retrofit after | static baseline before | after |\n|---|---|---|---|---|\n");
        let fmt = |x: Option<f64>| x.map(|x| format!("{x:.4}")).unwrap_or_else(|| "–".into());
        for (r, a) in by_recurrence(&self.after) {
            md.push_str(&format!(
                "| {r} | {} | {a:.4} | {} | {} |\n",
                fmt(self.before.get(r).copied()),
                fmt(self.base_before),
                fmt(self.base_after)
            ));
        }
        if !self.base_curve.is_empty() {
            md.push_str(&self.equal_flops_table());
        }
        md.push_str("\n![held-out loss vs test recurrence](heldout_vs_recurrence.svg)\n\n![training loss vs FLOPs](loss_vs_flops.svg)\n");
        md
    }
}

impl Comparison {
    /// The paper's comparison: at each of the retrofit's evaluation checkpoints, the baseline's
    /// held-out loss at the same training FLOPs, read off its held-out curve (linear between its
    /// evaluation checkpoints; none beyond its last).
    fn equal_flops_table(&self) -> String {
        let recurrences: Vec<&String> = by_recurrence(&self.after)
            .into_iter()
            .map(|(r, _)| r)
            .collect();
        let mut md = String::from(
            "\nAt equal training FLOPs (the baseline read off its held-out curve, linear between \
             its evaluation checkpoints):\n\n| training FLOPs |",
        );
        for r in &recurrences {
            md.push_str(&format!(" retrofit r = {r} |"));
        }
        md.push_str(" static baseline |\n|---|");
        md.push_str(&"---|".repeat(recurrences.len() + 1));
        md.push('\n');
        for (flops, losses) in &self.run_evals {
            md.push_str(&format!("| {flops:.3e} |"));
            for r in &recurrences {
                let cell = losses.get(*r).map(|l| format!("{l:.4}"));
                md.push_str(&format!(" {} |", cell.unwrap_or_else(|| "–".into())));
            }
            let base = interpolate(&self.base_curve, *flops);
            let cell = base
                .map(|l| format!("{l:.4}"))
                .unwrap_or_else(|| "–".into());
            md.push_str(&format!(" {cell} |\n"));
        }
        md
    }
}

/// Training loss against training FLOPs of the run and, when there is one, its baseline.
fn plot_loss_vs_flops(run_dir: &Path, baseline: Option<&Path>, path: &Path) -> Result<()> {
    let mut series = vec![Series {
        name: "retrofit".into(),
        points: read_loss_vs_flops(run_dir)?,
    }];
    if let Some(b) = baseline {
        series.push(Series {
            name: "static baseline".into(),
            points: read_loss_vs_flops(b)?,
        });
    }
    line_plot(
        path,
        "training loss vs training FLOPs",
        "training FLOPs",
        "loss (nats/token)",
        &series,
        false,
    )
}

/// Adds an `rr eval` results file of the run to its `report.md`: the task table and the plots
/// `rr eval` draws (headline metric against test recurrence), written as `eval*` in `out_dir`.
pub fn append_eval(report: &Path, eval: &Path, out_dir: &Path) -> Result<()> {
    let results = rr_eval::job::read_report(eval)?;
    let tasks = rr_eval::job::tasks_of(&results);
    rr_eval::evaluate::write_outputs(&results, None, &tasks, &out_dir.join("eval.json"))?;
    let mut md = std::fs::read_to_string(report)
        .with_context(|| format!("{}: cannot read", report.display()))?;
    md.push_str(&format!(
        "\n## Task accuracy by test recurrence\n\nFrom `{}`:\n\n{}",
        eval.display(),
        results.to_markdown()
    ));
    if results.recurrences.len() > 1 {
        for t in &tasks {
            md.push_str(&format!("\n![{0}](eval_{0}.svg)\n", t.name()));
        }
    }
    rr_util::fs::write_atomic(report, md.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_out_losses_are_listed_by_test_recurrence() {
        let losses: BTreeMap<String, f64> = [("16", 0.3), ("1", 0.5), ("static", 0.2), ("4", 0.4)]
            .into_iter()
            .map(|(r, l)| (r.to_string(), l))
            .collect();
        let order: Vec<&str> = by_recurrence(&losses)
            .into_iter()
            .map(|(r, _)| r.as_str())
            .collect();
        assert_eq!(order, ["1", "4", "16", "static"]);
    }
}
