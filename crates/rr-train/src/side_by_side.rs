//! The main job's verdict: the retrofit, the from-scratch control (the same shape with fresh
//! weights, trained with the same recipe) and the static baseline side by side, with the
//! training FLOPs each spent, their held-out loss and their accuracy on held-out synthetic
//! problems (`rr eval --tasks synth`, strict `#### N` match) at the test recurrences; a plot of
//! the retrofit's accuracy per difficulty against test recurrence; one sentence saying what the
//! run shows, written from the numbers.

use std::path::Path;

use anyhow::{Context, Result};
use rr_eval::plot::{line_plot, Series};
use rr_eval::results::RecurrenceReport;

use crate::report::TrainSummary;

/// The accuracy metric: the `#### N` strict match, the task's own scoring.
pub const ACCURACY: &str = "exact_match,strict-match";

/// One finished run and its evaluation.
pub struct Contender {
    pub label: String,
    pub summary: TrainSummary,
    pub eval: Option<RecurrenceReport>,
}

impl Contender {
    /// `run_dir`'s `summary.json` and, when given, its `rr eval` results.
    pub fn read(label: &str, run_dir: &Path, eval: Option<&Path>) -> Result<Self> {
        let path = run_dir.join("summary.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{}: cannot read (is the run finished?)", path.display()))?;
        let summary =
            serde_json::from_str(&text).with_context(|| format!("{}: invalid", path.display()))?;
        let eval = eval.map(rr_eval::job::read_report).transpose()?;
        Ok(Self {
            label: label.to_string(),
            summary,
            eval,
        })
    }

    /// Held-out loss after training at test recurrence `r` (a static run has one, `static`).
    fn heldout(&self, r: usize) -> Option<f64> {
        let after = &self.summary.heldout_after;
        after
            .get(&r.to_string())
            .or_else(|| after.get("static"))
            .copied()
    }

    /// Accuracy on `task` (`synth` or `synth_steps_{k}`) at test recurrence `r` (a static
    /// model's one evaluation whatever `r`).
    fn accuracy(&self, task: &str, r: u32) -> Option<f64> {
        let eval = self.eval.as_ref()?;
        let res = eval.recurrences.get(&r).or_else(|| {
            (eval.recurrences.len() == 1).then(|| eval.recurrences.values().next())?
        })?;
        res.results.get(task)?.get(ACCURACY)?.as_f64()
    }
}

/// The difficulties (`synth_steps_{k}`) an evaluation scored, ascending.
pub fn difficulties(eval: &RecurrenceReport) -> Vec<usize> {
    let mut ks: Vec<usize> = eval
        .recurrences
        .values()
        .flat_map(|res| res.results.keys())
        .filter_map(|t| t.strip_prefix("synth_steps_")?.parse().ok())
        .collect();
    ks.sort_unstable();
    ks.dedup();
    ks
}

/// One line per difficulty: (test recurrence, accuracy).
pub fn accuracy_by_difficulty(eval: &RecurrenceReport) -> Vec<Series> {
    difficulties(eval)
        .into_iter()
        .map(|k| Series {
            name: format!("{k} step{}", if k == 1 { "" } else { "s" }),
            points: eval
                .recurrences
                .iter()
                .filter_map(|(r, res)| {
                    let acc = res
                        .results
                        .get(&format!("synth_steps_{k}"))?
                        .get(ACCURACY)?;
                    Some((f64::from(*r), acc.as_f64()?))
                })
                .collect(),
        })
        .collect()
}

/// What the report compares, at the retrofit's trained mean recurrence `mean`.
pub struct Verdict<'a> {
    pub retrofit: &'a Contender,
    pub control: Option<&'a Contender>,
    pub baseline: Option<&'a Contender>,
    pub mean: usize,
    /// Difficulties beyond this were not trained on.
    pub trained_max_steps: usize,
}

fn pct(x: Option<f64>) -> String {
    x.map(|x| format!("{:.1} %", 100.0 * x))
        .unwrap_or_else(|| "–".into())
}

fn loss(x: Option<f64>) -> String {
    x.map(|x| format!("{x:.3}")).unwrap_or_else(|| "–".into())
}

impl Verdict<'_> {
    /// The retrofit's accuracy on `task` at r = 1 and at its best test recurrence (the
    /// smallest r reaching the best value).
    fn recurrence_gain(&self, task: &str) -> Option<((u32, f64), (u32, f64))> {
        let eval = self.retrofit.eval.as_ref()?;
        let points: Vec<(u32, f64)> = eval
            .recurrences
            .keys()
            .filter_map(|&r| Some((r, self.retrofit.accuracy(task, r)?)))
            .collect();
        let first = *points.first()?;
        let best = points
            .iter()
            .copied()
            .fold(first, |b, p| if p.1 > b.1 { p } else { b });
        Some((first, best))
    }

    /// Mean accuracy over the difficulties beyond the trained range at test recurrence `r`.
    fn beyond_training(&self, r: u32) -> Option<f64> {
        let eval = self.retrofit.eval.as_ref()?;
        let accs: Vec<f64> = difficulties(eval)
            .into_iter()
            .filter(|&k| k > self.trained_max_steps)
            .filter_map(|k| self.retrofit.accuracy(&format!("synth_steps_{k}"), r))
            .collect();
        (!accs.is_empty()).then(|| accs.iter().sum::<f64>() / accs.len() as f64)
    }

    /// One sentence, from the numbers: accuracy against test recurrence, the retrofit against
    /// the control at equal steps, the static baseline with its FLOPs.
    pub fn sentence(&self) -> String {
        let mean = self.mean as u32;
        let mut parts = Vec::new();
        if let Some(((r1, a1), (rb, ab))) = self.recurrence_gain("synth") {
            let mut s = if ab > a1 {
                format!(
                    "the retrofit's accuracy on held-out problems rises with test recurrence, \
                     from {} at r = {r1} to {} at r = {rb}",
                    pct(Some(a1)),
                    pct(Some(ab))
                )
            } else {
                format!(
                    "the retrofit's accuracy on held-out problems does not rise with test \
                     recurrence ({} at r = {r1}, no higher at any other)",
                    pct(Some(a1))
                )
            };
            let beyond = (self.beyond_training(r1), self.beyond_training(rb));
            if let (Some(h1), Some(hb), true) = (beyond.0, beyond.1, rb != r1) {
                s.push_str(&format!(
                    " ({} to {} on the untrained {}+ step problems)",
                    pct(Some(h1)),
                    pct(Some(hb)),
                    self.trained_max_steps + 1
                ));
            }
            parts.push(s);
        }
        if let Some(c) = self.control {
            let (ra, ca) = (
                self.retrofit.accuracy("synth", mean),
                c.accuracy("synth", mean),
            );
            let (rl, cl) = (self.retrofit.heldout(self.mean), c.heldout(self.mean));
            let ahead = match (rl, cl) {
                (Some(r), Some(c)) if r < c => "ahead of",
                (Some(_), Some(_)) => "not ahead of",
                _ => "compared with",
            };
            parts.push(format!(
                "after the same {} steps it is {ahead} the from-scratch control at r = {mean} \
                 (held-out loss {} vs {}, accuracy {} vs {})",
                self.retrofit.summary.steps,
                loss(rl),
                loss(cl),
                pct(ra),
                pct(ca)
            ));
        }
        if let Some(b) = self.baseline {
            let ratio = b.summary.flops / self.retrofit.summary.flops;
            parts.push(format!(
                "the static baseline, trained on the same data with {ratio:.2}× the retrofit's \
                 training FLOPs, reaches held-out loss {} and accuracy {}",
                loss(b.heldout(self.mean)),
                pct(b.accuracy("synth", mean))
            ));
        }
        let mut s = parts.join("; ");
        if let Some(first) = s.get(..1) {
            s = first.to_uppercase() + &s[1..];
        }
        s + "."
    }

    /// The side-by-side table, the plot reference and the sentence, as markdown.
    pub fn markdown(&self, plot_name: &str) -> String {
        let mean = self.mean as u32;
        let mut md = format!(
            "\n## Retrofit, from-scratch control and static baseline\n\n{}\n\n\
             | model | steps | training FLOPs | held-out loss r = 1 | held-out loss r = {mean} | \
             accuracy r = 1 | accuracy r = {mean} | best accuracy (r) |\n\
             |---|---|---|---|---|---|---|---|\n",
            self.sentence()
        );
        let rows = std::iter::once(self.retrofit)
            .chain(self.control)
            .chain(self.baseline);
        for c in rows {
            let best = c.eval.as_ref().and_then(|e| {
                e.recurrences
                    .keys()
                    .filter_map(|&r| Some((r, c.accuracy("synth", r)?)))
                    .fold(None, |b: Option<(u32, f64)>, p| match b {
                        Some(b) if b.1 >= p.1 => Some(b),
                        _ => Some(p),
                    })
            });
            md.push_str(&format!(
                "| {} | {} | {:.3e} | {} | {} | {} | {} | {} |\n",
                c.label,
                c.summary.steps,
                c.summary.flops,
                loss(c.heldout(1)),
                loss(c.heldout(self.mean)),
                pct(c.accuracy("synth", 1)),
                pct(c.accuracy("synth", mean)),
                best.map(|(r, a)| format!("{} ({r})", pct(Some(a))))
                    .unwrap_or_else(|| "–".into())
            ));
        }
        md.push_str(&format!(
            "\nAccuracy is the strict `#### N` match of `rr eval --tasks synth` on held-out \
             problems (another seed than training's); a static model has one accuracy at every r.\n\n\
             ![accuracy per difficulty vs test recurrence]({plot_name})\n"
        ));
        md
    }

    /// The retrofit's accuracy per difficulty against test recurrence, as an SVG.
    pub fn plot(&self, path: &Path) -> Result<()> {
        let eval = self
            .retrofit
            .eval
            .as_ref()
            .context("the retrofit has no evaluation to plot")?;
        line_plot(
            path,
            &format!(
                "retrofit: held-out accuracy per difficulty (trained on 1–{} steps)",
                self.trained_max_steps
            ),
            "test recurrence r",
            "accuracy (#### N exact)",
            &accuracy_by_difficulty(eval),
            true,
        )
    }
}

/// Appends the side-by-side section to `report` (after `rr report`'s own) and writes its plot,
/// `accuracy_by_difficulty.svg`, beside it. The retrofit's recipe (`config.toml` in its run)
/// gives the mean recurrence and the trained difficulties; the baseline's evaluation is the
/// one `rr eval --baseline` wrote beside the retrofit's (`<stem>.baseline.json`), when there.
pub fn append(
    report: &Path,
    run_dir: &Path,
    eval: &Path,
    control: (&Path, &Path),
    baseline: Option<&Path>,
) -> Result<()> {
    let recipe = rr_recipe::TrainConfig::from_path(&run_dir.join("config.toml"))?;
    let mean = recipe
        .mean_recurrence()
        .with_context(|| format!("{}: not a recurrent run", run_dir.display()))?;
    let trained_max_steps = recipe.prepare.as_ref().map_or(0, |p| p.synth_max_steps);
    let retrofit = Contender::read("retrofit", run_dir, Some(eval))?;
    let control = Contender::read("from-scratch control", control.0, Some(control.1))?;
    let baseline_eval = eval.with_file_name(format!(
        "{}.baseline.json",
        eval.file_stem().unwrap_or_default().to_string_lossy()
    ));
    let baseline = baseline
        .map(|b| {
            let e = baseline_eval.exists().then_some(baseline_eval.as_path());
            Contender::read("static baseline", b, e)
        })
        .transpose()?;
    let verdict = Verdict {
        retrofit: &retrofit,
        control: Some(&control),
        baseline: baseline.as_ref(),
        mean,
        trained_max_steps,
    };
    let out_dir = report.parent().unwrap_or(Path::new("."));
    verdict.plot(&out_dir.join("accuracy_by_difficulty.svg"))?;
    let mut md = std::fs::read_to_string(report)
        .with_context(|| format!("{}: cannot read", report.display()))?;
    md.push_str(&verdict.markdown("accuracy_by_difficulty.svg"));
    rr_util::fs::write_atomic(report, md.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rr_eval::results::{EvalResults, Metrics, NSamples};
    use std::collections::BTreeMap;

    /// An evaluation with the given strict accuracies per (recurrence, task).
    fn eval(points: &[(u32, &str, f64)]) -> RecurrenceReport {
        let mut report = RecurrenceReport::default();
        for &(r, task, acc) in points {
            let res: &mut EvalResults = report.recurrences.entry(r).or_default();
            let mut m = Metrics::new();
            m.insert(ACCURACY.into(), acc.into());
            m.insert("exact_match,flexible-extract".into(), 0.99.into());
            let n = NSamples {
                original: 8,
                effective: 8,
            };
            res.add(task, m, n);
        }
        report
    }

    fn contender(
        label: &str,
        flops: f64,
        heldout: &[(&str, f64)],
        e: RecurrenceReport,
    ) -> Contender {
        let heldout_after: BTreeMap<String, f64> =
            heldout.iter().map(|&(k, v)| (k.to_string(), v)).collect();
        Contender {
            label: label.into(),
            summary: TrainSummary {
                name: label.into(),
                kind: "recurrent".into(),
                steps: 200,
                tokens: 0,
                flops,
                final_loss: 0.0,
                wall_seconds: 0.0,
                heldout_before: BTreeMap::new(),
                heldout_after,
            },
            eval: Some(e),
        }
    }

    fn retrofit() -> Contender {
        let e = eval(&[
            (1, "synth", 0.25),
            (1, "synth_steps_1", 0.5),
            (1, "synth_steps_5", 0.0),
            (4, "synth", 0.5),
            (4, "synth_steps_1", 1.0),
            (4, "synth_steps_5", 0.25),
            (8, "synth", 0.5),
            (8, "synth_steps_1", 0.75),
            (8, "synth_steps_5", 0.25),
        ]);
        contender("retrofit", 4e12, &[("1", 2.5), ("4", 1.5)], e)
    }

    #[test]
    fn accuracy_per_difficulty_is_one_line_per_difficulty_over_recurrence() {
        let series = accuracy_by_difficulty(retrofit().eval.as_ref().unwrap());
        let names: Vec<&str> = series.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["1 step", "5 steps"]);
        assert_eq!(series[0].points, [(1.0, 0.5), (4.0, 1.0), (8.0, 0.75)]);
        assert_eq!(series[1].points, [(1.0, 0.0), (4.0, 0.25), (8.0, 0.25)]);
    }

    #[test]
    fn the_sentence_states_the_numbers_and_which_way_they_go() {
        let retrofit = retrofit();
        let control = contender(
            "control",
            4e12,
            &[("4", 2.0)],
            eval(&[(1, "synth", 0.0), (4, "synth", 0.125)]),
        );
        // A static model's evaluation has one entry; it counts at every r.
        let baseline = contender(
            "static",
            2e12,
            &[("static", 1.8)],
            eval(&[(1, "synth", 0.375)]),
        );
        let v = Verdict {
            retrofit: &retrofit,
            control: Some(&control),
            baseline: Some(&baseline),
            mean: 4,
            trained_max_steps: 4,
        };
        assert_eq!(
            v.sentence(),
            "The retrofit's accuracy on held-out problems rises with test recurrence, from \
             25.0 % at r = 1 to 50.0 % at r = 4 (0.0 % to 25.0 % on the untrained 5+ step \
             problems); after the same 200 steps it is ahead of the from-scratch control at \
             r = 4 (held-out loss 1.500 vs 2.000, accuracy 50.0 % vs 12.5 %); the static \
             baseline, trained on the same data with 0.50× the retrofit's training FLOPs, \
             reaches held-out loss 1.800 and accuracy 37.5 %."
        );
        let md = v.markdown("p.svg");
        assert!(
            md.contains(
                "| retrofit | 200 | 4.000e12 | 2.500 | 1.500 | 25.0 % | 50.0 % | 50.0 % (4) |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| static | 200 | 2.000e12 | 1.800 | 1.800 | 37.5 % | 37.5 % | 37.5 % (1) |"
            ),
            "{md}"
        );

        // A control with the lower loss and flat accuracy: the words turn.
        let flat = contender(
            "flat",
            4e12,
            &[("4", 1.0)],
            eval(&[(1, "synth", 0.5), (4, "synth", 0.5)]),
        );
        let v = Verdict {
            retrofit: &flat,
            control: Some(&retrofit),
            baseline: None,
            mean: 4,
            trained_max_steps: 4,
        };
        assert_eq!(
            v.sentence(),
            "The retrofit's accuracy on held-out problems does not rise with test recurrence \
             (50.0 % at r = 1, no higher at any other); after the same 200 steps it is ahead of \
             the from-scratch control at r = 4 (held-out loss 1.000 vs 1.500, accuracy 50.0 % \
             vs 50.0 %)."
        );
    }
}
