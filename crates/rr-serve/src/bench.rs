//! `rr bench-serve`: total tokens/s and latency of `rr serve` under 1, 4, 16 and 64
//! concurrent clients, against the same requests run one after another by `rr generate`.
//! Part of the `rr` binary so that the GPU bundle (no cargo there) runs the same benchmark as
//! `cargo xtask bench-serve`.
//!
//! Requests cycle through eight prompts and the recurrences 2, 4 and 8 (so the batch mixes
//! depths), greedy, `max_tokens` new tokens each. A level with c clients sends
//! max(2c, 8) requests, each client one at a time (a closed loop). The baseline's tokens/s is
//! what `rr generate` itself reports (model loading excluded), summed over its runs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;

/// What one benchmark runs: `rr` is the binary whose `generate` and `serve` are measured.
pub struct BenchOptions {
    pub rr: PathBuf,
    pub model: PathBuf,
    /// cpu, cuda or auto
    pub device: String,
    /// Concurrent clients, one level each.
    pub clients: Vec<usize>,
    /// New tokens per request.
    pub max_tokens: usize,
    /// Folder for `serve.json` and `serve_tokens_per_s.svg`.
    pub out: PathBuf,
}

const PROMPTS: [&str; 8] = [
    "Once upon a time",
    "The little dog",
    "Lily and Ben went to the park. They",
    "One day, a girl named Sue",
    "Tom had a red ball.",
    "The sun was hot and",
    "There was a big tree in the garden.",
    "Mom said",
];
const RECURRENCES: [usize; 3] = [2, 4, 8];

/// Request `i`: its prompt and recurrence.
fn request(i: usize) -> (&'static str, usize) {
    (
        PROMPTS[i % PROMPTS.len()],
        RECURRENCES[i % RECURRENCES.len()],
    )
}

/// Runs every level and writes `serve.json` and the plot into `opts.out`; `progress` gets a
/// line per level. Returns the results.
pub fn run(opts: &BenchOptions, mut progress: impl FnMut(&str)) -> Result<serde_json::Value> {
    if opts.clients.is_empty() || opts.clients.contains(&0) {
        bail!("--clients: give one or more client counts of at least 1");
    }
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("{}: cannot create", opts.out.display()))?;
    let (seq_tokens, seq_seconds) =
        sequential(&opts.rr, &opts.model, &opts.device, opts.max_tokens)?;
    let sequential_tps = seq_tokens as f64 / seq_seconds;
    progress(&format!(
        "sequential rr generate {sequential_tps:.1} tokens/s"
    ));

    let max_clients = opts.clients.iter().copied().max().unwrap_or(1);
    let server = Server::start(&opts.rr, &opts.model, &opts.device, max_clients)?;
    let mut rows = Vec::new();
    for &clients in &opts.clients {
        let row = level(server.port, clients, opts.max_tokens)?;
        progress(&format!(
            "{clients:>3} clients {:>8.1} tokens/s ({:.2}x) p50 {:.2} s p99 {:.2} s",
            row.tokens_per_s,
            row.tokens_per_s / sequential_tps,
            row.p50,
            row.p99
        ));
        rows.push(json!({
            "clients": clients,
            "requests": row.requests,
            "tokens": row.tokens,
            "seconds": row.seconds,
            "tokens_per_s": row.tokens_per_s,
            "speedup_vs_sequential": row.tokens_per_s / sequential_tps,
            "latency_p50_s": row.p50,
            "latency_p99_s": row.p99,
        }));
    }
    drop(server);
    let result = json!({
        "model": opts.model.display().to_string(),
        "device": opts.device,
        "max_tokens": opts.max_tokens,
        "recurrences": RECURRENCES,
        "sequential": {"tokens": seq_tokens, "seconds": seq_seconds, "tokens_per_s": sequential_tps},
        "levels": rows,
    });
    let json_path = opts.out.join("serve.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&result)?)
        .with_context(|| format!("{}: cannot write", json_path.display()))?;
    let svg_path = opts.out.join("serve_tokens_per_s.svg");
    std::fs::write(&svg_path, plot(&result))
        .with_context(|| format!("{}: cannot write", svg_path.display()))?;
    progress(&format!(
        "wrote {} and {}",
        json_path.display(),
        svg_path.display()
    ));
    Ok(result)
}

/// Six requests (every prompt/recurrence pairing's first six) through `rr generate`, one
/// after another: (tokens, seconds) as it reports them.
fn sequential(rr: &Path, model: &Path, device: &str, max_tokens: usize) -> Result<(usize, f64)> {
    let (mut tokens, mut seconds) = (0, 0.0);
    for i in 0..6 {
        let (prompt, recurrence) = request(i);
        let output = Command::new(rr)
            .args(["generate", "--device", device, "--prompt", prompt])
            .args(["--max-new-tokens", &max_tokens.to_string()])
            .args(["--recurrence", &recurrence.to_string()])
            .arg("--model")
            .arg(model)
            .output()
            .context("cannot run rr generate")?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            bail!("rr generate failed: {stderr}");
        }
        // "N tokens in S s (X tokens/s)"
        let line = stderr
            .lines()
            .find(|l| l.contains(" tokens in "))
            .with_context(|| format!("rr generate printed no timing: {stderr}"))?;
        let words: Vec<&str> = line.split_whitespace().collect();
        tokens += words[0].parse::<usize>()?;
        seconds += words[3].parse::<f64>()?;
    }
    Ok((tokens, seconds))
}

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(rr: &Path, model: &Path, device: &str, max_batch: usize) -> Result<Self> {
        let mut child = Command::new(rr)
            .args(["serve", "--port", "0", "--device", device])
            .args(["--max-batch", &max_batch.to_string()])
            .args(["--max-queue", &(4 * max_batch).to_string()])
            .arg("--model")
            .arg(model)
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start rr serve")?;
        let stderr = child.stderr.take().context("no stderr")?;
        for line in BufReader::new(stderr).lines() {
            let line = line?;
            if let Some(address) = line.split("http://").nth(1) {
                let port = address.rsplit(':').next().unwrap_or("").trim().parse()?;
                return Ok(Self { child, port });
            }
        }
        let _ = child.kill();
        bail!("rr serve stopped before listening")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Level {
    requests: usize,
    tokens: usize,
    seconds: f64,
    tokens_per_s: f64,
    p50: f64,
    p99: f64,
}

/// `clients` threads sending requests one at a time until max(2·clients, 8) are answered.
fn level(port: u16, clients: usize, max_tokens: usize) -> Result<Level> {
    let total = (2 * clients).max(8);
    let next = AtomicUsize::new(0);
    let url = format!("http://127.0.0.1:{port}/v1/completions");
    let started = Instant::now();
    let answers: Vec<Result<Vec<(usize, f64)>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            return Ok(done);
                        }
                        let (prompt, recurrence) = request(i);
                        let body = json!({"prompt": prompt, "max_tokens": max_tokens,
                            "temperature": 0, "recurrence": recurrence});
                        let sent = Instant::now();
                        let reply = ureq::post(&url)
                            .set("Content-Type", "application/json")
                            .send_string(&body.to_string())
                            .context("request to rr serve")?
                            .into_string()?;
                        let answer: serde_json::Value = serde_json::from_str(&reply)?;
                        let tokens = answer["usage"]["completion_tokens"]
                            .as_u64()
                            .context("no usage in the answer")?;
                        done.push((tokens as usize, sent.elapsed().as_secs_f64()));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut latencies = Vec::new();
    let mut tokens = 0;
    for answer in answers {
        for (n, latency) in answer? {
            tokens += n;
            latencies.push(latency);
        }
    }
    latencies.sort_by(f64::total_cmp);
    let quantile = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    Ok(Level {
        requests: latencies.len(),
        tokens,
        seconds,
        tokens_per_s: tokens as f64 / seconds,
        p50: quantile(0.5),
        p99: quantile(0.99),
    })
}

/// Bars of tokens/s per client count, with the sequential baseline as a dashed line.
fn plot(result: &serde_json::Value) -> String {
    let levels = result["levels"].as_array().cloned().unwrap_or_default();
    let baseline = result["sequential"]["tokens_per_s"].as_f64().unwrap_or(0.0);
    let top = levels
        .iter()
        .filter_map(|l| l["tokens_per_s"].as_f64())
        .fold(baseline, f64::max)
        * 1.15;
    let (w, h, left, bottom, plot_h) = (520.0, 320.0, 70.0, 270.0, 230.0);
    let y = |v: f64| bottom - v / top * plot_h;
    let bar_w = (w - left - 20.0) / levels.len().max(1) as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"16\" text-anchor=\"middle\" font-size=\"14\">rr serve: total tokens/s by concurrent clients</text>\n\
         <line x1=\"{left}\" y1=\"{bottom}\" x2=\"{}\" y2=\"{bottom}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{bottom}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n\
         <text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">tokens/s</text>\n",
        w / 2.0,
        w - 10.0,
        bottom - plot_h,
        bottom - plot_h / 2.0,
        bottom - plot_h / 2.0,
    );
    for tick in 0..=4 {
        let v = top / 1.15 * tick as f64 / 4.0;
        svg += &format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text>\n",
            left - 6.0,
            y(v) + 4.0
        );
    }
    for (i, l) in levels.iter().enumerate() {
        let v = l["tokens_per_s"].as_f64().unwrap_or(0.0);
        let x = left + i as f64 * bar_w + bar_w * 0.2;
        svg += &format!(
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#4477aa\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{v:.0}</text>\n\
             <text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{} clients</text>\n",
            y(v),
            bar_w * 0.6,
            bottom - y(v),
            x + bar_w * 0.3,
            y(v) - 4.0,
            x + bar_w * 0.3,
            bottom + 16.0,
            l["clients"]
        );
    }
    svg += &format!(
        "<line x1=\"{left}\" y1=\"{b:.1}\" x2=\"{}\" y2=\"{b:.1}\" stroke=\"#cc3311\" stroke-dasharray=\"6 4\"/>\n\
         <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#cc3311\">sequential rr generate {baseline:.0}</text>\n</svg>\n",
        w - 10.0,
        w - 12.0,
        y(baseline) - 4.0,
        b = y(baseline),
    );
    svg
}
