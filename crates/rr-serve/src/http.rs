//! The HTTP layer: OpenAI's endpoints on axum, each request checked, queued to the engine,
//! and answered from its event channel (as one JSON body, or as server-sent events in
//! OpenAI's wire format: `data: {json}\n\n` chunks, then `data: [DONE]`).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream::{self, Stream};
use rr_model::{StopReason, Tokenizer};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::api::{ChatRequest, CompletionRequest, Limits, Settings, COMPLETION_DEFAULT_MAX_TOKENS};
use crate::chat::ChatTemplate;
use crate::engine::{Engine, Event, Failure, Finish, Job, ModelInfo, Rejected};
use crate::metrics::Metrics;

pub struct AppState {
    pub engine: Engine,
    pub tokenizer: Arc<Tokenizer>,
    pub info: ModelInfo,
    pub template: Option<ChatTemplate>,
    pub limits: Limits,
    pub request_timeout: Duration,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// An OpenAI-style error: `{"error": {"message", "type", "param", "code"}}`.
fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    let body =
        json!({"error": {"message": message.into(), "type": kind, "param": null, "code": null}});
    (status, Json(body)).into_response()
}

fn bad_request(state: &AppState, message: impl Into<String>) -> Response {
    Metrics::add(&state.engine.metrics.requests_bad, 1);
    error(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({
        "object": "list",
        "data": [{"id": state.info.name, "object": "model", "created": 0, "owned_by": "rr"}],
    }))
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.engine.metrics.render(),
    )
        .into_response()
}

/// Which endpoint a request came through: the shape of its answers.
#[derive(Clone, Copy, PartialEq)]
enum Flavor {
    Completion,
    Chat,
}

// The error is the response itself (large, but built once per refused request).
#[allow(clippy::result_large_err)]
fn parse<T: serde::de::DeserializeOwned>(state: &AppState, body: &Bytes) -> Result<T, Response> {
    serde_json::from_slice(body)
        .map_err(|e| bad_request(state, format!("invalid request body: {e}")))
}

#[allow(clippy::result_large_err)]
fn check_model(state: &AppState, settings: &Settings) -> Result<(), Response> {
    match &settings.model {
        Some(name) if *name != state.info.name => {
            Metrics::add(&state.engine.metrics.requests_bad, 1);
            Err(error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!(
                    "the model `{name}` does not exist; this server has `{}`",
                    state.info.name
                ),
            ))
        }
        _ => Ok(()),
    }
}

async fn completions(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let request: CompletionRequest = match parse(&state, &body) {
        Ok(r) => r,
        Err(response) => return response,
    };
    let prompt = match request.prompt {
        crate::api::OneOrMany::One(p) => p,
        crate::api::OneOrMany::Many(mut list) if list.len() == 1 => list.remove(0),
        crate::api::OneOrMany::Many(_) => {
            return bad_request(&state, "`prompt` must be one string (n = 1)")
        }
    };
    let ids = match state.tokenizer.encode(&prompt, true) {
        Ok(ids) => ids,
        Err(e) => return bad_request(&state, format!("cannot tokenise the prompt: {e}")),
    };
    generate(state, ids, request.settings, Flavor::Completion).await
}

async fn chat_completions(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let request: ChatRequest = match parse(&state, &body) {
        Ok(r) => r,
        Err(response) => return response,
    };
    let Some(template) = &state.template else {
        return bad_request(
            &state,
            "the model has no chat template (`chat_template` in tokenizer_config.json); use /v1/completions",
        );
    };
    if request.messages.is_empty() {
        return bad_request(&state, "`messages` is empty");
    }
    let text = match template.render(&request.messages) {
        Ok(text) => text,
        Err(e) => return bad_request(&state, format!("{e:#}")),
    };
    // The template writes the special tokens itself (Hugging Face's apply_chat_template).
    let ids = match state.tokenizer.encode(&text, false) {
        Ok(ids) => ids,
        Err(e) => return bad_request(&state, format!("cannot tokenise the chat: {e}")),
    };
    generate(state, ids, request.settings, Flavor::Chat).await
}

/// Checks the settings, queues the job, and answers from its events.
async fn generate(
    state: Arc<AppState>,
    ids: Vec<i64>,
    settings: Settings,
    flavor: Flavor,
) -> Response {
    if let Err(response) = check_model(&state, &settings) {
        return response;
    }
    let default_max = (flavor == Flavor::Completion).then_some(COMPLETION_DEFAULT_MAX_TOKENS);
    let options = match settings.decode_options(&state.info, state.limits, ids.len(), default_max) {
        Ok(options) => options,
        Err(message) => return bad_request(&state, message),
    };
    let (events, receiver) = unbounded_channel();
    let job = Job {
        prompt: ids,
        options,
        deadline: Instant::now() + state.request_timeout,
        events,
    };
    match state.engine.submit(job) {
        Ok(()) => {}
        Err(Rejected::QueueFull) => {
            Metrics::add(&state.engine.metrics.requests_rejected, 1);
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "the server's queue is full; retry later",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return response;
        }
        Err(Rejected::Stopped) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "the server is shutting down",
            )
        }
    }
    let answer = Answer::new(&state.info.name, flavor);
    if settings.stream {
        let include_usage = settings.stream_options.is_some_and(|o| o.include_usage);
        Sse::new(sse_events(answer, receiver, include_usage)).into_response()
    } else {
        whole_answer(answer, receiver).await
    }
}

/// The id, time and model name every chunk of one answer carries.
struct Answer {
    id: String,
    created: u64,
    model: String,
    flavor: Flavor,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

impl Answer {
    fn new(model: &str, flavor: Flavor) -> Self {
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let prefix = match flavor {
            Flavor::Completion => "cmpl",
            Flavor::Chat => "chatcmpl",
        };
        Self {
            id: format!("{prefix}-rr{n}"),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: model.to_string(),
            flavor,
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.flavor, chunk) {
            (Flavor::Completion, _) => "text_completion",
            (Flavor::Chat, false) => "chat.completion",
            (Flavor::Chat, true) => "chat.completion.chunk",
        }
    }

    fn envelope(&self, chunk: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// One streamed piece of text (or, for chat, the opening role delta).
    fn chunk(&self, text: Option<&str>, finish: Option<&Finish>) -> Value {
        let reason = finish.map(|f| finish_reason(f.stop));
        let choice = match self.flavor {
            Flavor::Completion => json!({
                "index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": reason,
            }),
            Flavor::Chat => {
                let delta = match (text, finish) {
                    (_, Some(_)) => json!({}),
                    (Some(t), None) => json!({"content": t}),
                    (None, None) => json!({"role": "assistant", "content": ""}),
                };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": reason})
            }
        };
        self.envelope(true, json!([choice]))
    }

    fn whole(&self, text: String, finish: &Finish) -> Value {
        let reason = finish_reason(finish.stop);
        let choice = match self.flavor {
            Flavor::Completion => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": reason})
            }
            Flavor::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": null,
                "finish_reason": reason,
            }),
        };
        let mut body = self.envelope(false, json!([choice]));
        body["usage"] = usage(finish);
        body
    }
}

fn finish_reason(stop: StopReason) -> &'static str {
    match stop {
        StopReason::MaxTokens => "length",
        StopReason::Eos | StopReason::StopString => "stop",
    }
}

/// OpenAI's token counts plus the core iterations spent (total, and per generated token).
fn usage(finish: &Finish) -> Value {
    json!({
        "prompt_tokens": finish.prompt_tokens,
        "completion_tokens": finish.completion_tokens,
        "total_tokens": finish.prompt_tokens + finish.completion_tokens,
        "iterations": finish.iterations,
        "mean_iterations_per_token": finish.mean_iterations,
    })
}

fn failure_response(failure: Failure) -> Response {
    match failure {
        Failure::Timeout => error(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "the request ran past the server's request timeout",
        ),
        Failure::Internal(message) => {
            error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
        }
    }
}

async fn whole_answer(answer: Answer, mut events: UnboundedReceiver<Event>) -> Response {
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Text(piece) => text.push_str(&piece),
            Event::Done(finish) => return Json(answer.whole(text, &finish)).into_response(),
            Event::Failed(failure) => return failure_response(failure),
        }
    }
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "server_error",
        "the engine stopped",
    )
}

/// Where a stream stands.
enum Phase {
    Opening,
    Running,
    Closing,
    Ended,
}

/// The server-sent events of one answer: (chat: a role delta,) a chunk per text piece, a
/// final chunk with the finish reason, (the usage,) then `[DONE]`. A failure mid-stream
/// sends an error object before `[DONE]`.
fn sse_events(
    answer: Answer,
    events: UnboundedReceiver<Event>,
    include_usage: bool,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let data = |v: Value| SseEvent::default().data(v.to_string());
    stream::unfold(
        (answer, events, Phase::Opening, Vec::<SseEvent>::new()),
        move |(answer, mut events, mut phase, mut pending)| async move {
            loop {
                if let Some(event) = pending.pop() {
                    return Some((Ok(event), (answer, events, phase, pending)));
                }
                match phase {
                    Phase::Opening => {
                        phase = Phase::Running;
                        if answer.flavor == Flavor::Chat {
                            pending.push(data(answer.chunk(None, None)));
                        }
                    }
                    Phase::Running => match events.recv().await {
                        Some(Event::Text(piece)) => {
                            pending.push(data(answer.chunk(Some(&piece), None)))
                        }
                        Some(Event::Done(finish)) => {
                            phase = Phase::Closing;
                            if include_usage {
                                let mut last = answer.envelope(true, json!([]));
                                last["usage"] = usage(&finish);
                                pending.push(data(last));
                            }
                            pending.push(data(answer.chunk(None, Some(&finish))));
                        }
                        Some(Event::Failed(failure)) => {
                            phase = Phase::Closing;
                            let message = match failure {
                                Failure::Timeout => {
                                    "the request ran past the server's request timeout".to_string()
                                }
                                Failure::Internal(m) => m,
                            };
                            pending.push(data(json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}})));
                        }
                        None => phase = Phase::Closing,
                    },
                    Phase::Closing => {
                        phase = Phase::Ended;
                        pending.push(SseEvent::default().data("[DONE]"));
                    }
                    Phase::Ended => return None,
                }
            }
        },
    )
}
