//! End-of-run artefacts: `summary.json`, `summary.md` (a table) and SVG plots of the training
//! loss against step and of the held-out loss against test recurrence.

use std::path::Path;

use anyhow::{Context, Result};
use rr_eval::plot::{line_plot, Series};

use crate::trainer::TrainSummary;

/// Training losses `(step, loss)` from a run's `metrics.jsonl`.
pub fn read_losses(run_dir: &Path) -> Result<Vec<(f64, f64)>> {
    let path = run_dir.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}: corrupt line", path.display()))?;
        if let (Some(step), Some(loss)) = (v["step"].as_f64(), v["loss"].as_f64()) {
            out.push((step, loss));
        }
    }
    Ok(out)
}

fn recurrence_points(losses: &std::collections::BTreeMap<String, f64>) -> Vec<(f64, f64)> {
    let mut pts: Vec<(f64, f64)> = losses.iter().filter_map(|(r, l)| r.parse::<f64>().ok().map(|r| (r, *l))).collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    pts
}

pub fn write_run_report(run_dir: &Path, s: &TrainSummary) -> Result<()> {
    std::fs::write(run_dir.join("summary.json"), serde_json::to_string_pretty(s)?)?;
    let losses = read_losses(run_dir)?;
    line_plot(
        &run_dir.join("loss.svg"),
        &format!("{}: training loss", s.name),
        "optimizer step",
        "loss (nats/token)",
        &[Series { name: s.kind.clone(), points: losses }],
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
            &[Series { name: "before training".into(), points: before }, Series { name: "after training".into(), points: after }],
            true,
        )?;
    }
    let mut md = format!(
        "# {}\n\n{} model, {} steps, {} tokens, {:.3e} training FLOPs, {:.0} s; final training loss {:.4}.\n\n",
        s.name, s.kind, s.steps, s.tokens, s.flops, s.wall_seconds, s.final_loss
    );
    md.push_str("| test recurrence | held-out loss before | after |\n|---|---|---|\n");
    for (r, after) in &s.heldout_after {
        let before = s.heldout_before.get(r).map(|b| format!("{b:.4}")).unwrap_or_else(|| "–".into());
        md.push_str(&format!("| {r} | {before} | {after:.4} |\n"));
    }
    md.push_str("\n![training loss](loss.svg)\n");
    if has_recurrences {
        md.push_str("\n![held-out loss](heldout.svg)\n");
    }
    std::fs::write(run_dir.join("summary.md"), md)?;
    Ok(())
}
