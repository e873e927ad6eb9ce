//! Counters and gauges the server exposes at `GET /metrics` (Prometheus text format 0.0.4).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Metrics {
    pub requests_ok: AtomicU64,
    pub requests_bad: AtomicU64,
    pub requests_rejected: AtomicU64,
    pub requests_timed_out: AtomicU64,
    pub requests_cancelled: AtomicU64,
    pub requests_failed: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Core iterations behind the generated tokens' distributions.
    pub core_iterations: AtomicU64,
    /// Decoding steps the engine ran (one per token boundary of the running batch).
    pub batch_steps: AtomicU64,
    /// Rows summed over those steps (their mean batch size is the ratio).
    pub batch_rows: AtomicU64,
    /// Requests waiting for the engine.
    pub queue_depth: AtomicU64,
    /// Rows in the running batch.
    pub batch_size: AtomicU64,
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The Prometheus exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let requests = [
            ("{status=\"ok\"}", get(&self.requests_ok)),
            ("{status=\"bad_request\"}", get(&self.requests_bad)),
            ("{status=\"rejected\"}", get(&self.requests_rejected)),
            ("{status=\"timeout\"}", get(&self.requests_timed_out)),
            ("{status=\"cancelled\"}", get(&self.requests_cancelled)),
            ("{status=\"error\"}", get(&self.requests_failed)),
        ]
        .map(|(l, v)| (l, v as f64));
        family(
            "rr_requests_total",
            "counter",
            "Requests by outcome.",
            &requests,
        );
        let tokens = get(&self.completion_tokens);
        let iterations = get(&self.core_iterations);
        family(
            "rr_prompt_tokens_total",
            "counter",
            "Prompt tokens prefilled.",
            &[("", get(&self.prompt_tokens) as f64)],
        );
        family(
            "rr_generated_tokens_total",
            "counter",
            "Tokens generated.",
            &[("", tokens as f64)],
        );
        family(
            "rr_core_iterations_total",
            "counter",
            "Core iterations behind the generated tokens.",
            &[("", iterations as f64)],
        );
        family(
            "rr_mean_iterations_per_token",
            "gauge",
            "Core iterations per generated token since start (0 for a static model).",
            &[("", iterations as f64 / tokens.max(1) as f64)],
        );
        family(
            "rr_queue_depth",
            "gauge",
            "Requests waiting for the engine.",
            &[("", get(&self.queue_depth) as f64)],
        );
        family(
            "rr_batch_size",
            "gauge",
            "Rows in the running batch.",
            &[("", get(&self.batch_size) as f64)],
        );
        family(
            "rr_batch_steps_total",
            "counter",
            "Decoding steps (token boundaries) of the running batch.",
            &[("", get(&self.batch_steps) as f64)],
        );
        family(
            "rr_batch_rows_total",
            "counter",
            "Rows summed over decoding steps (divided by the steps: the mean batch size).",
            &[("", get(&self.batch_rows) as f64)],
        );
        out
    }
}
