//! `rr serve` through the real binary on 127.0.0.1 (a free port), with stories260K (static)
//! and a (1,3,1) retrofit of it (recurrent). The reference for every greedy answer is
//! `rr generate` on the same prompt and settings, a separate process.

mod client;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use client::{get, post, Server};
use rr_util::test_data::shared_data;
use serde_json::{json, Value};

fn rr(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_rr"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rr {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The model directories every test shares: stories260K with a chat template added, and a
/// (1,3,1) retrofit of it. Made once per test binary.
struct Models {
    _dir: tempfile::TempDir,
    static_model: PathBuf,
    recurrent: PathBuf,
}

/// A chat template that puts BOS and the messages' contents one after the other: the chat
/// prompt of one user message "X" is then exactly the completion prompt "X" with its BOS.
const CHAT_TEMPLATE: &str = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}";

fn models() -> Option<&'static Models> {
    static MODELS: OnceLock<Option<Models>> = OnceLock::new();
    MODELS
        .get_or_init(|| {
            let data = shared_data()?;
            let dir = tempfile::tempdir().unwrap();
            let hf = data.join("models/stories260K/hf");
            let static_model = dir.path().join("stories260K");
            std::fs::create_dir(&static_model).unwrap();
            for f in ["config.json", "model.safetensors", "tokenizer.json"] {
                std::fs::copy(hf.join(f), static_model.join(f)).unwrap();
            }
            let config =
                json!({"chat_template": CHAT_TEMPLATE, "bos_token": "<s>", "eos_token": "</s>"});
            std::fs::write(
                static_model.join("tokenizer_config.json"),
                config.to_string(),
            )
            .unwrap();
            let recurrent = dir.path().join("retrofit");
            rr(&[
                "surgery",
                "--model",
                static_model.to_str().unwrap(),
                "--layers",
                "1,3,1",
                "--out",
                recurrent.to_str().unwrap(),
            ]);
            Some(Models {
                _dir: dir,
                static_model,
                recurrent,
            })
        })
        .as_ref()
}

/// One request's settings: rr's depth fields as `rr generate` flags and as JSON fields.
#[derive(Clone, Debug)]
struct Case {
    prompt: &'static str,
    max_tokens: usize,
    recurrence: Option<usize>,
    exit_kl: Option<f64>,
    min_steps: Option<usize>,
    latest_m: Option<usize>,
}

impl Case {
    fn plain(prompt: &'static str, max_tokens: usize) -> Self {
        Self {
            prompt,
            max_tokens,
            recurrence: None,
            exit_kl: None,
            min_steps: None,
            latest_m: None,
        }
    }

    fn body(&self) -> Value {
        let mut body =
            json!({"prompt": self.prompt, "max_tokens": self.max_tokens, "temperature": 0});
        let fields = [
            ("recurrence", self.recurrence.map(|v| json!(v))),
            ("exit_kl", self.exit_kl.map(|v| json!(v))),
            ("min_steps", self.min_steps.map(|v| json!(v))),
            ("latest_m", self.latest_m.map(|v| json!(v))),
        ];
        for (name, value) in fields {
            if let Some(v) = value {
                body[name] = v;
            }
        }
        body
    }

    /// `rr generate`'s greedy text (without the echoed prompt) and its mean iterations.
    fn reference(&self, model: &Path) -> (String, Option<f64>) {
        let max = self.max_tokens.to_string();
        let mut args: Vec<String> = [
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--device",
            "cpu",
            "--prompt",
            self.prompt,
            "--max-new-tokens",
            &max,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let flags = [
            ("--recurrence", self.recurrence.map(|v| v.to_string())),
            ("--exit-kl", self.exit_kl.map(|v| v.to_string())),
            ("--min-steps", self.min_steps.map(|v| v.to_string())),
            ("--latest-m", self.latest_m.map(|v| v.to_string())),
        ];
        for (flag, value) in flags {
            if let Some(v) = value {
                args.push(flag.into());
                args.push(v);
            }
        }
        let out = Command::new(env!("CARGO_BIN_EXE_rr"))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let text = stdout
            .strip_prefix(self.prompt)
            .and_then(|t| t.strip_suffix('\n'))
            .unwrap_or_else(|| panic!("unexpected rr generate output {stdout:?}"))
            .to_string();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mean = stderr
            .lines()
            .find_map(|l| l.strip_prefix("mean core iterations per token "))
            .map(|l| l.split_whitespace().next().unwrap().parse().unwrap());
        (text, mean)
    }
}

fn completion_text(answer: &Value) -> String {
    answer["choices"][0]["text"].as_str().unwrap().to_string()
}

/// Sends every case at once (one thread each) and returns the answers in order.
fn concurrently(port: u16, cases: &[Case]) -> Vec<(u16, Value)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|c| s.spawn(move || post(port, "/v1/completions", &c.body().to_string())))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let r = h.join().unwrap();
                (r.status, serde_json::from_str(&r.body).unwrap())
            })
            .collect()
    })
}

/// A Prometheus sample's value from /metrics.
fn metric(port: u16, name: &str) -> f64 {
    let text = get(port, "/metrics").body;
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn static_model_greedy_answers_equal_rr_generate_alone_and_batched() {
    let Some(m) = models() else { return };
    let cases = [
        Case::plain("Once upon a time", 20),
        Case::plain("The little dog", 12),
        Case::plain("Lily and Ben went to the park. They", 16),
        Case::plain("One day", 8),
    ];
    let references: Vec<String> = cases
        .iter()
        .map(|c| c.reference(&m.static_model).0)
        .collect();
    let server = Server::start(&m.static_model, &[]);
    for (case, reference) in cases.iter().zip(&references) {
        let r = post(server.port, "/v1/completions", &case.body().to_string());
        assert_eq!(r.status, 200, "{}", r.body);
        let answer: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(&completion_text(&answer), reference, "{case:?}");
        assert_eq!(answer["object"], "text_completion");
        assert_eq!(answer["usage"]["iterations"], 0);
    }
    for ((status, answer), reference) in concurrently(server.port, &cases).iter().zip(&references) {
        assert_eq!(*status, 200);
        assert_eq!(&completion_text(answer), reference);
    }
}

/// 16 requests of mixed depths: fixed recurrences 1 to 8, KL exit with and without a floor,
/// a latest-m cache, prompts of different lengths. The untrained retrofit's successive
/// distributions differ by KL of order 1, so the thresholds that make it exit early are large.
fn mixed_cases() -> Vec<Case> {
    let prompts = [
        "Once upon a time",
        "The little dog",
        "Lily and Ben went to the park. They",
        "One day",
    ];
    (0..16)
        .map(|i| {
            let mut c = Case::plain(prompts[i % 4], 6 + i % 5);
            match i % 4 {
                0 => c.recurrence = Some(1 + i / 2),
                1 => {
                    c.recurrence = Some(8);
                    c.exit_kl = Some(if i < 8 { 0.5 } else { 2.0 });
                }
                2 => {
                    c.recurrence = Some(6);
                    c.exit_kl = Some(2.0);
                    c.min_steps = Some(3);
                }
                _ => {
                    c.recurrence = Some(2 + i / 4);
                    c.latest_m = Some(2);
                }
            }
            c
        })
        .collect()
}

#[test]
fn recurrent_greedy_answers_equal_rr_generate_alone_and_in_a_mixed_batch_of_16() {
    let Some(m) = models() else { return };
    let cases = mixed_cases();
    let references: Vec<(String, Option<f64>)> = std::thread::scope(|s| {
        let handles: Vec<_> = cases
            .iter()
            .map(|c| s.spawn(|| c.reference(&m.recurrent)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let server = Server::start(&m.recurrent, &["--max-batch", "16"]);
    // Alone: the first four (one of each kind).
    for (case, (text, mean)) in cases.iter().zip(&references).take(4) {
        let r = post(server.port, "/v1/completions", &case.body().to_string());
        assert_eq!(r.status, 200, "{}", r.body);
        let answer: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(&completion_text(&answer), text, "{case:?}");
        let usage = &answer["usage"];
        let mean_served = usage["mean_iterations_per_token"].as_f64().unwrap();
        assert!(
            (mean_served - mean.unwrap()).abs() < 0.006,
            "{case:?}: {usage}"
        );
    }
    let steps_before = metric(server.port, "rr_batch_steps_total");
    let rows_before = metric(server.port, "rr_batch_rows_total");
    let answers = concurrently(server.port, &cases);
    for ((case, (text, mean)), (status, answer)) in cases.iter().zip(&references).zip(&answers) {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(&completion_text(answer), text, "{case:?}");
        let usage = &answer["usage"];
        // rr generate prints the mean with two decimals.
        let mean_served = usage["mean_iterations_per_token"].as_f64().unwrap();
        assert!(
            (mean_served - mean.unwrap()).abs() < 0.006,
            "{case:?}: {usage}"
        );
        let sampled = usage["iterations"].as_f64().unwrap() / mean_served;
        assert!(sampled >= usage["completion_tokens"].as_f64().unwrap());
        if case.exit_kl.is_none() {
            assert_eq!(mean_served, case.recurrence.unwrap() as f64);
        }
    }
    // Some exit-rule request stopped short of its maximum, so exit actually happened.
    assert!(cases
        .iter()
        .zip(&answers)
        .any(|(c, (_, a))| c.exit_kl.is_some()
            && a["usage"]["mean_iterations_per_token"].as_f64().unwrap()
                < c.recurrence.unwrap() as f64));
    // The rows shared steps: fewer steps than rows.
    let steps = metric(server.port, "rr_batch_steps_total") - steps_before;
    let rows = metric(server.port, "rr_batch_rows_total") - rows_before;
    assert!(
        rows > steps,
        "mean batch size {} over {steps} steps",
        rows / steps
    );
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_stays_healthy() {
    let Some(m) = models() else { return };
    let server = Server::start(&m.recurrent, &["--max-tokens", "64"]);
    let long_prompt = "Once upon a time ".repeat(200);
    let cases: Vec<(&str, String, u16)> = vec![
        ("malformed JSON", "{\"prompt\": ".into(), 400),
        ("not an object", "[1, 2]".into(), 400),
        ("no prompt", json!({"max_tokens": 4}).to_string(), 400),
        (
            "temperature of the wrong type",
            json!({"prompt": "a", "temperature": "hot"}).to_string(),
            400,
        ),
        (
            "temperature out of range",
            json!({"prompt": "a", "temperature": 3.5}).to_string(),
            400,
        ),
        (
            "top_p out of range",
            json!({"prompt": "a", "top_p": 0}).to_string(),
            400,
        ),
        (
            "prompt over the context",
            json!({"prompt": long_prompt, "max_tokens": 4}).to_string(),
            400,
        ),
        (
            "max_tokens over the limit",
            json!({"prompt": "a", "max_tokens": 65}).to_string(),
            400,
        ),
        (
            "max_tokens zero",
            json!({"prompt": "a", "max_tokens": 0}).to_string(),
            400,
        ),
        (
            "negative recurrence",
            json!({"prompt": "a", "recurrence": -1}).to_string(),
            400,
        ),
        (
            "zero recurrence",
            json!({"prompt": "a", "recurrence": 0}).to_string(),
            400,
        ),
        (
            "NaN-like exit_kl",
            json!({"prompt": "a", "exit_kl": -1.0}).to_string(),
            400,
        ),
        (
            "min_steps without exit_kl",
            json!({"prompt": "a", "min_steps": 2}).to_string(),
            400,
        ),
        (
            "latest_m zero",
            json!({"prompt": "a", "latest_m": 0}).to_string(),
            400,
        ),
        ("n = 2", json!({"prompt": "a", "n": 2}).to_string(), 400),
        (
            "five stop strings",
            json!({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}).to_string(),
            400,
        ),
        (
            "unknown model",
            json!({"prompt": "a", "model": "gpt-4"}).to_string(),
            404,
        ),
    ];
    for (what, body, status) in &cases {
        let r = post(server.port, "/v1/completions", body);
        assert_eq!(r.status, *status, "{what}: {}", r.body);
        let error: Value =
            serde_json::from_str(&r.body).unwrap_or_else(|_| panic!("{what}: {}", r.body));
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {error}"
        );
        assert!(error["error"]["type"].is_string(), "{what}: {error}");
    }
    // Chat: no messages; a static-only model would refuse rr's fields (checked on the static server below).
    let r = post(
        server.port,
        "/v1/chat/completions",
        &json!({"messages": []}).to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(get(server.port, "/health").status, 200);
    assert_eq!(
        metric(server.port, "rr_requests_total{status=\"bad_request\"}"),
        cases.len() as f64 + 1.0
    );
    let ok = post(
        server.port,
        "/v1/completions",
        &json!({"prompt": "One day", "max_tokens": 3}).to_string(),
    );
    assert_eq!(ok.status, 200, "{}", ok.body);

    let server = Server::start(&m.static_model, &[]);
    let r = post(
        server.port,
        "/v1/completions",
        &json!({"prompt": "a", "recurrence": 4}).to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("only to recurrent models"), "{}", r.body);
}

#[test]
fn models_health_and_metrics() {
    let Some(m) = models() else { return };
    let server = Server::start(&m.recurrent, &[]);
    let models: Value = serde_json::from_str(&get(server.port, "/v1/models").body).unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "retrofit");
    assert_eq!(models["data"][0]["object"], "model");
    let health = get(server.port, "/health");
    assert_eq!(health.status, 200);
    let body =
        json!({"prompt": "Once upon a time", "max_tokens": 5, "temperature": 0, "recurrence": 3});
    let r = post(server.port, "/v1/completions", &body.to_string());
    let answer: Value = serde_json::from_str(&r.body).unwrap();
    let metrics = get(server.port, "/metrics");
    assert!(metrics
        .headers
        .to_lowercase()
        .contains("content-type: text/plain; version=0.0.4"));
    let ids = client::prompt_tokens(&answer);
    let mut expected = BTreeMap::new();
    expected.insert("rr_requests_total{status=\"ok\"}", 1.0);
    expected.insert("rr_prompt_tokens_total", ids);
    // Five tokens sampled at recurrence 3 (no EOS within five tokens of an untrained retrofit
    // would change the count, and usage says how many there were).
    let sampled = answer["usage"]["iterations"].as_f64().unwrap() / 3.0;
    expected.insert("rr_generated_tokens_total", sampled);
    expected.insert("rr_core_iterations_total", 3.0 * sampled);
    expected.insert("rr_mean_iterations_per_token", 3.0);
    expected.insert("rr_queue_depth", 0.0);
    expected.insert("rr_batch_size", 0.0);
    for (name, value) in expected {
        assert_eq!(metric(server.port, name), value, "{name}\n{}", metrics.body);
    }
}

/// The Python of `.venv-serve-test` (made by scripts/setup_serve_test_venv.sh): under CI it is
/// created when missing; elsewhere a missing one skips the test, saying so.
fn openai_python() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv-serve-test/bin/python");
    if python.exists() {
        return Some(python);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        let status = Command::new("bash")
            .arg(root.join("scripts/setup_serve_test_venv.sh"))
            .status()
            .unwrap();
        assert!(status.success(), "scripts/setup_serve_test_venv.sh failed");
        return Some(python);
    }
    eprintln!(
        "skipping: {} not found (run scripts/setup_serve_test_venv.sh)",
        python.display()
    );
    None
}

#[test]
fn the_openai_python_client_works_unmodified() {
    let Some(m) = models() else { return };
    let Some(python) = openai_python() else {
        return;
    };
    let prompt = "Once upon a time";
    let (reference, _) = Case::plain(prompt, 24).reference(&m.static_model);
    let server = Server::start(&m.static_model, &[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve/openai_client.py");
    let base_url = format!("http://127.0.0.1:{}/v1", server.port);
    let out = Command::new(python)
        .arg(script)
        .args([&base_url, "stories260K", prompt, "24"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The chat template renders one user message as BOS + its text: the completion's prompt.
    assert_eq!(
        r["usage"]["prompt_tokens"],
        r["chat_usage"]["prompt_tokens"]
    );
    for key in ["completion", "chat", "stream_completion", "stream_chat"] {
        assert_eq!(r[key].as_str().unwrap(), reference, "{key}: {r}");
    }
    let finish = if r["usage"]["completion_tokens"] == 24 {
        "length"
    } else {
        "stop"
    };
    for key in [
        "completion_finish",
        "stream_completion_finish",
        "stream_chat_finish",
    ] {
        assert_eq!(r[key], finish, "{key}: {r}");
    }
    assert_eq!(r["chat_role"], "assistant");
    assert_eq!(r["stream_chat_roles"], json!(["assistant"]));
    assert!(r["stream_completion_chunks"].as_u64().unwrap() > 2, "{r}");
    assert_eq!(r["stream_chat_usage"], r["chat_usage"]);
    assert_eq!(r["bad_request"], 400);
}

/// The raw server-sent events: `data: {json}\n\n` chunks whose texts join to the whole
/// answer, then `data: [DONE]`.
#[test]
fn streaming_is_openai_server_sent_events() {
    let Some(m) = models() else { return };
    let server = Server::start(&m.recurrent, &[]);
    let case = Case {
        recurrence: Some(3),
        exit_kl: Some(2.0),
        ..Case::plain("Once upon a time", 10)
    };
    let whole: Value =
        serde_json::from_str(&post(server.port, "/v1/completions", &case.body().to_string()).body)
            .unwrap();
    let mut body = case.body();
    body["stream"] = json!(true);
    let r = post(server.port, "/v1/completions", &body.to_string());
    assert_eq!(r.status, 200);
    assert!(
        r.headers
            .to_lowercase()
            .contains("content-type: text/event-stream"),
        "{}",
        r.headers
    );
    assert!(r.body.ends_with("data: [DONE]\n\n"), "{:?}", r.body);
    let events = client::sse_data(&r.body);
    let (done, chunks) = events.split_last().unwrap();
    assert_eq!(done, "[DONE]");
    let chunks: Vec<Value> = chunks
        .iter()
        .map(|c| serde_json::from_str(c).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, completion_text(&whole));
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "text_completion" && c["id"] == chunks[0]["id"]));
    let (last, rest) = chunks.split_last().unwrap();
    assert_eq!(
        last["choices"][0]["finish_reason"],
        whole["choices"][0]["finish_reason"]
    );
    assert!(rest
        .iter()
        .all(|c| c["choices"][0]["finish_reason"].is_null()));

    // Chat (surgery keeps the source's tokenizer_config.json, chat template included): a role
    // delta first, then content deltas that join to the whole answer, then an empty delta.
    let chat = json!({"messages": [{"role": "user", "content": "Once upon a time"}], "max_tokens": 5, "temperature": 0});
    let whole: Value =
        serde_json::from_str(&post(server.port, "/v1/chat/completions", &chat.to_string()).body)
            .unwrap();
    let mut body = chat.clone();
    body["stream"] = json!(true);
    let r = post(server.port, "/v1/chat/completions", &body.to_string());
    assert_eq!(r.status, 200, "{}", r.body);
    let events = client::sse_data(&r.body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|c| serde_json::from_str(c).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(
        text,
        whole["choices"][0]["message"]["content"].as_str().unwrap()
    );
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["delta"], json!({}));
    assert_eq!(
        last["choices"][0]["finish_reason"],
        whole["choices"][0]["finish_reason"]
    );
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let Some(m) = models() else { return };
    let server = Server::start(&m.recurrent, &["--max-batch", "1", "--max-queue", "1"]);
    // The six arrive within milliseconds; one runs, one waits, the rest find the queue full.
    let long = Case {
        recurrence: Some(8),
        ..Case::plain("Once upon a time", 20)
    };
    let replies: Vec<client::Reply> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|_| s.spawn(|| post(server.port, "/v1/completions", &long.body().to_string())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let rejected: Vec<&client::Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert!(!rejected.is_empty(), "no request was refused");
    for r in &rejected {
        assert!(
            r.headers.to_lowercase().contains("retry-after: 1"),
            "{}",
            r.headers
        );
        let error: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(error["error"]["type"], "rate_limit_error");
    }
    for r in replies.iter().filter(|r| r.status != 429) {
        assert_eq!(r.status, 200, "{}", r.body);
    }
    assert_eq!(get(server.port, "/health").status, 200);
    assert_eq!(
        metric(server.port, "rr_requests_total{status=\"rejected\"}"),
        rejected.len() as f64
    );
}

#[test]
fn a_request_past_its_timeout_gets_408() {
    let Some(m) = models() else { return };
    let server = Server::start(&m.recurrent, &["--request-timeout", "0.2"]);
    // 500 tokens at recurrence 64 take far longer than 0.2 s on any machine.
    let slow = Case {
        recurrence: Some(64),
        ..Case::plain("Once upon a time", 500)
    };
    let r = post(server.port, "/v1/completions", &slow.body().to_string());
    assert_eq!(r.status, 408, "{}", r.body);
    let error: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(error["error"]["type"], "timeout");
    assert_eq!(get(server.port, "/health").status, 200);
    assert_eq!(
        metric(server.port, "rr_requests_total{status=\"timeout\"}"),
        1.0
    );
    assert_eq!(metric(server.port, "rr_batch_size"), 0.0);
}

#[test]
fn a_client_that_disconnects_cancels_its_row() {
    let Some(m) = models() else { return };
    let server = Server::start(&m.recurrent, &[]);
    let slow = Case {
        recurrence: Some(64),
        ..Case::plain("Once upon a time", 500)
    };
    let mut body = slow.body();
    body["stream"] = json!(true);
    let mut stream = client::post_open(server.port, "/v1/completions", &body.to_string());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stream, &mut first).unwrap();
    drop(stream);
    // The engine notices at its next token boundaries; poll for up to a minute.
    let cancelled = "rr_requests_total{status=\"cancelled\"}";
    for _ in 0..600 {
        if metric(server.port, cancelled) == 1.0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(metric(server.port, cancelled), 1.0);
    assert_eq!(metric(server.port, "rr_batch_size"), 0.0);

    // A non-streaming request whose client hangs up while it runs.
    let connection = client::post_unread(server.port, "/v1/completions", &slow.body().to_string());
    for _ in 0..600 {
        if metric(server.port, "rr_batch_size") == 1.0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(connection);
    for _ in 0..600 {
        if metric(server.port, cancelled) == 2.0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(metric(server.port, cancelled), 2.0);
    assert_eq!(metric(server.port, "rr_batch_size"), 0.0);
    assert_eq!(metric(server.port, "rr_requests_total{status=\"ok\"}"), 0.0);
    assert_eq!(get(server.port, "/health").status, 200);
}

#[test]
fn sigterm_finishes_the_requests_in_flight_and_exits_0() {
    let Some(m) = models() else { return };
    let server = Server::start(&m.recurrent, &[]);
    let port = server.port;
    let case = Case {
        recurrence: Some(8),
        ..Case::plain("Once upon a time", 16)
    };
    let in_flight =
        std::thread::spawn(move || post(port, "/v1/completions", &case.body().to_string()));
    // Wait until the request is running, then stop the server.
    for _ in 0..600 {
        if metric(port, "rr_batch_size") == 1.0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let log = server.stderr.clone();
    let status = server.terminate();
    assert_eq!(status.code(), Some(0));
    let log = log.lock().unwrap().clone();
    assert!(
        log.contains("shutting down") && log.contains("rr serve: stopped"),
        "{log}"
    );
    let r = in_flight.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let answer: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(answer["usage"]["iterations"].as_f64().unwrap() / 8.0, 16.0);
}

#[test]
fn bad_serve_flags_are_one_line_errors() {
    let Some(m) = models() else { return };
    let model = m.recurrent.to_str().unwrap();
    let cases: [(&[&str], &str); 4] = [
        (
            &["serve", "--model", "/nonexistent/model"],
            "/nonexistent/model",
        ),
        (
            &["serve", "--model", model, "--max-batch", "0"],
            "--max-batch",
        ),
        (
            &["serve", "--model", model, "--request-timeout", "0"],
            "--request-timeout",
        ),
        (
            &["serve", "--model", model, "--host", "256.1.1.1"],
            "256.1.1.1",
        ),
    ];
    for (args, names) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_rr"))
            .args(args)
            .args(["--device", "cpu"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(names),
            "{stderr}"
        );
    }
}

/// `rr bench-serve` (what `cargo xtask bench-serve` and the GPU bundle run) measures each level
/// with the request counts it documents, reads the tokens from the answers' `usage`, and
/// writes its JSON and plot.
#[test]
fn bench_serve_measures_every_level() {
    let Some(m) = models() else { return };
    let out = tempfile::tempdir().unwrap();
    rr(&[
        "bench-serve",
        "--model",
        m.recurrent.to_str().unwrap(),
        "--clients",
        "1,5",
        "--max-tokens",
        "4",
        "--out",
        out.path().to_str().unwrap(),
    ]);
    let result: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("serve.json")).unwrap())
            .unwrap();
    let levels = result["levels"].as_array().unwrap();
    // max(2c, 8) requests per level, at most max_tokens new tokens each.
    for (level, (clients, requests)) in levels.iter().zip([(1, 8), (5, 10)]) {
        assert_eq!(level["clients"], clients);
        assert_eq!(level["requests"], requests);
        let tokens = level["tokens"].as_u64().unwrap();
        assert!(tokens >= 1 && tokens <= 4 * requests, "{level}");
        let (p50, p99) = (
            level["latency_p50_s"].as_f64().unwrap(),
            level["latency_p99_s"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99, "{level}");
    }
    assert_eq!(levels.len(), 2);
    assert!(result["sequential"]["tokens_per_s"].as_f64().unwrap() > 0.0);
    let svg = std::fs::read_to_string(out.path().join("serve_tokens_per_s.svg")).unwrap();
    assert!(svg.starts_with("<svg"));
}
