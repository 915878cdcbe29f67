//! kestrel-server: an OpenAI-compatible HTTP API over the engine, with continuous batching.
//!
//! Threads: the engine thread ([`engine_thread`]) loads the model and owns it, the KV pool and
//! the [`kestrel_engine::Scheduler`]; a tokio runtime serves HTTP (axum). A handler validates the
//! request, tokenizes it, and sends it to the engine thread over a channel together with the
//! sending half of its own event channel; the engine thread streams each request's events back
//! over that channel. Dropping the receiving half (client gone, timeout) cancels the request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use kestrel_engine::{Backend, Engine, SchedulerConfig};
use kestrel_tokenizer::Tokenizer;

pub mod api;
pub mod engine_thread;
pub mod error;
pub mod metrics;
mod routes;

use engine_thread::ToEngine;
use metrics::Metrics;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub host: String,
    /// 0 picks a free port (see [`ServerHandle::addr`]).
    pub port: u16,
    /// When set, `/v1/*`, `/tokenize` and `/detokenize` need `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Requests running (holding KV) at once.
    pub parallel: usize,
    /// Requests that may wait beyond `parallel` before new ones get 429.
    pub max_queue: usize,
    /// Tokens per engine step (decodes plus prefill chunks).
    pub token_budget: usize,
    /// Prompt chunk size the arithmetic follows (`SchedulerConfig::ubatch`); equal to
    /// `kestrel run --ubatch` for the same answers.
    pub ubatch: usize,
    /// Largest request body in bytes (413 above).
    pub body_limit: usize,
    /// A request still generating after this long is cancelled.
    pub timeout: Duration,
    /// The name `/v1/models` reports and requests may give as `model`.
    pub model_id: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            parallel: 4,
            max_queue: 64,
            token_budget: 512,
            ubatch: 512,
            body_limit: 1 << 20,
            timeout: Duration::from_secs(600),
            model_id: "default".into(),
        }
    }
}

/// What the HTTP side shares.
pub(crate) struct AppState {
    pub config: ServerConfig,
    pub tok: Arc<Tokenizer>,
    pub n_ctx: usize,
    pub to_engine: Mutex<Sender<ToEngine>>,
    pub metrics: Arc<Metrics>,
    /// Generation requests accepted and not yet answered (the queue bound).
    pub inflight: AtomicUsize,
    pub next_id: AtomicU64,
    pub created: u64,
}

/// A running server: its address, and the way to stop it.
pub struct ServerHandle {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    http: Option<JoinHandle<Result<()>>>,
    engine: Option<JoinHandle<()>>,
    to_engine: Sender<ToEngine>,
}

impl ServerHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://host:port`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serve until the process ends (or the HTTP server fails).
    pub fn wait(mut self) -> Result<()> {
        let r = self.http.take().map_or(Ok(()), |h| {
            h.join()
                .unwrap_or_else(|_| Err(anyhow!("the HTTP thread panicked")))
        });
        self.stop_engine();
        r
    }

    fn stop_engine(&mut self) {
        let _ = self.to_engine.send(ToEngine::Shutdown);
        if let Some(h) = self.engine.take() {
            let _ = h.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.http.take() {
            let _ = h.join();
        }
        self.stop_engine();
    }
}

/// Start the engine thread (which calls `load` to build the engine: backends may be bound to
/// the thread that created them) and the HTTP server; return once both are up.
pub fn start<B, F>(config: ServerConfig, load: F) -> Result<ServerHandle>
where
    B: Backend + 'static,
    F: FnOnce() -> Result<(Engine<B>, Tokenizer)> + Send + 'static,
{
    let metrics = Arc::new(Metrics::default());
    let (to_engine, rx) = std::sync::mpsc::channel::<ToEngine>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(Arc<Tokenizer>, usize)>>();
    let sched_config = SchedulerConfig {
        max_running: config.parallel.max(1),
        token_budget: config.token_budget,
        ubatch: config.ubatch,
    };
    let engine_metrics = metrics.clone();
    let engine = std::thread::Builder::new()
        .name("kestrel-engine".into())
        .spawn(move || {
            let (engine, tok) = match load() {
                Ok(x) => x,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let tok = Arc::new(tok);
            let _ = ready_tx.send(Ok((tok.clone(), engine.config.n_ctx)));
            engine_thread::run(engine, &tok, sched_config, rx, engine_metrics);
        })
        .context("starting the engine thread")?;
    let (tok, n_ctx) = match ready_rx.recv() {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            let _ = engine.join();
            return Err(e);
        }
        Err(_) => {
            let _ = engine.join();
            return Err(anyhow!("the engine thread died while loading the model"));
        }
    };

    let listener = std::net::TcpListener::bind((config.host.as_str(), config.port))
        .with_context(|| format!("binding {}:{}", config.host, config.port))?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let state = Arc::new(AppState {
        config,
        tok,
        n_ctx,
        to_engine: Mutex::new(to_engine.clone()),
        metrics,
        inflight: AtomicUsize::new(0),
        next_id: AtomicU64::new(1),
        created,
    });
    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let http = std::thread::Builder::new()
        .name("kestrel-http".into())
        .spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)?;
                let app = routes::router(state);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = shutdown_rx.await;
                    })
                    .await?;
                Ok(())
            })
        })
        .context("starting the HTTP thread")?;
    Ok(ServerHandle {
        addr,
        shutdown: Some(shutdown_tx),
        http: Some(http),
        engine: Some(engine),
        to_engine,
    })
}

/// Keeps a request counted in `inflight` until dropped.
pub(crate) struct Inflight(Arc<AppState>);

impl Inflight {
    pub fn acquire(state: &Arc<AppState>) -> Option<Inflight> {
        let limit = state.config.parallel.max(1) + state.config.max_queue;
        state
            .inflight
            .fetch_update(Relaxed, Relaxed, |n| (n < limit).then_some(n + 1))
            .ok()
            .map(|_| Inflight(state.clone()))
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Relaxed);
    }
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn deadline(state: &AppState) -> Instant {
    Instant::now() + state.config.timeout
}
