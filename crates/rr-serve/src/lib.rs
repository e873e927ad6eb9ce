//! `rr serve`: an OpenAI-compatible HTTP server for static and recurrent models.
//!
//! - `engine.rs`: one thread owns the model and runs the continuous batch (requests join and
//!   leave at token boundaries; rows of any depth share the prelude/coda/head passes).
//! - `api.rs`: the request bodies and their checks; `chat.rs`: chat templates;
//!   `http.rs`: the endpoints on axum; `metrics.rs`: the Prometheus text.
//! - `bench.rs`: `rr bench-serve`, the server against sequential `rr generate` under load.

pub mod api;
pub mod bench;
pub mod chat;
pub mod engine;
pub mod http;
pub mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rr_model::Tokenizer;
use tch::{Device, Kind};

/// Everything `rr serve` is started with.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub model: PathBuf,
    pub host: String,
    /// 0 picks a free port (the address is printed).
    pub port: u16,
    pub device: Device,
    pub dtype: Kind,
    /// Rows in the running batch at most.
    pub max_batch: usize,
    /// Requests waiting for the engine at most; more are answered 429.
    pub max_queue: usize,
    /// `max_tokens` a request may ask for at most.
    pub max_tokens: usize,
    /// From arrival to the last token; a request past it is answered 408.
    pub request_timeout: Duration,
}

/// Loads the model, serves until SIGTERM or Ctrl-C, then lets the requests in flight finish
/// and returns.
pub fn serve(opts: ServeOptions) -> Result<()> {
    anyhow::ensure!(opts.max_batch >= 1, "--max-batch must be at least 1");
    anyhow::ensure!(opts.max_queue >= 1, "--max-queue must be at least 1");
    anyhow::ensure!(opts.max_tokens >= 1, "--max-tokens must be at least 1");
    let tokenizer = Arc::new(Tokenizer::from_path(&opts.model)?);
    let template = chat::ChatTemplate::from_model_dir(&opts.model)?;
    let (engine, info, engine_thread) = engine::Engine::start(
        opts.model.clone(),
        opts.device,
        opts.dtype,
        tokenizer.clone(),
        opts.max_batch,
        opts.max_queue,
    )
    .with_context(|| opts.model.display().to_string())?;
    let state = Arc::new(http::AppState {
        engine,
        tokenizer,
        info,
        template,
        limits: api::Limits {
            max_tokens: opts.max_tokens,
        },
        request_timeout: opts.request_timeout,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((opts.host.as_str(), opts.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", opts.host, opts.port))?;
        let address: SocketAddr = listener.local_addr()?;
        eprintln!("rr serve: {} on http://{address}", state.info.name);
        axum::serve(listener, http::router(state))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("the server failed")
    })?;
    // Every handle is gone with the router: the engine ends once its last row is done.
    engine_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the engine thread panicked"))?;
    eprintln!("rr serve: stopped");
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    eprintln!("rr serve: shutting down; finishing the requests in flight");
}
