//! HTTP routes and handlers.

use std::convert::Infallible;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request as HttpRequest, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt;
use kestrel_engine::{Event, FinishReason, StepLogprobs, Usage};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::api::{self, Generation, Limits};
use crate::engine_thread::{Submission, ToEngine};
use crate::error::ApiError;
use crate::{deadline, now_secs, AppState, Inflight};

type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    let protected = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{*id}", get(model))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(protected)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.body_limit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_large_bodies,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_responses,
        ))
        .with_state(state)
}

async fn count_responses(State(st): St, req: HttpRequest, next: Next) -> Response {
    let resp = next.run(req).await;
    st.metrics.response(resp.status().as_u16());
    resp
}

/// Bodies past this are not read to the end before the 413: the connection is closed instead.
const DRAIN_LIMIT: usize = 64 << 20;

/// 413 for a body whose Content-Length is over the limit. The body is read (and dropped) first,
/// up to `DRAIN_LIMIT` bytes or 10 s: a server that answers and closes while the client is still
/// sending makes the client fail with a broken pipe instead of reading the answer.
async fn refuse_large_bodies(State(st): St, req: HttpRequest, next: Next) -> Response {
    let limit = st.config.body_limit;
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match length {
        Some(n) if n > limit as u64 => {
            let mut body = req.into_body().into_data_stream();
            let drain = async {
                let mut read = 0;
                while let Some(Ok(chunk)) = body.next().await {
                    read += chunk.len();
                    if read > DRAIN_LIMIT {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), drain).await;
            too_large(limit).into_response()
        }
        _ => next.run(req).await,
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::status(
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request_error",
        format!("the request body is larger than the limit of {limit} bytes"),
    )
    .with_code("request_too_large")
}

async fn auth(State(st): St, req: HttpRequest, next: Next) -> Response {
    if let Some(key) = &st.config.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match given {
            Some(g) if constant_time_eq(g.as_bytes(), key.as_bytes()) => {}
            Some(_) => {
                return ApiError::status(
                    StatusCode::UNAUTHORIZED,
                    "invalid_request_error",
                    "Incorrect API key provided.",
                )
                .with_code("invalid_api_key")
                .into_response()
            }
            None => {
                return ApiError::status(
                    StatusCode::UNAUTHORIZED,
                    "invalid_request_error",
                    "You didn't provide an API key: send it as 'Authorization: Bearer KEY'.",
                )
                .with_code("invalid_api_key")
                .into_response()
            }
        }
    }
    next.run(req).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found() -> ApiError {
    ApiError::status(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "no such endpoint",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::status(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method not allowed on this endpoint",
    )
}

async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn metrics(State(st): St) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.metrics.render(),
    )
        .into_response()
}

fn model_object(st: &AppState) -> Value {
    json!({
        "id": st.config.model_id,
        "object": "model",
        "created": st.created,
        "owned_by": "kestrel",
        "max_model_len": st.n_ctx,
    })
}

async fn models(State(st): St) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_object(&st)]}))
}

async fn model(State(st): St, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    api::check_model(Some(&id), &limits(&st))?;
    Ok(Json(model_object(&st)))
}

fn limits(st: &AppState) -> Limits<'_> {
    Limits {
        model_id: &st.config.model_id,
        n_ctx: st.n_ctx,
        tok: &st.tok,
    }
}

/// The body, or 413 past the limit / 400 when it cannot be read.
fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(limit)
        } else {
            ApiError::invalid(format!("could not read the request body: {e}"), None)
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Generation

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

/// A request accepted by the engine: its events, and its place in the queue.
struct Accepted {
    events: mpsc::UnboundedReceiver<Event>,
    _inflight: Inflight,
    id: String,
    deadline: Instant,
}

fn submit(st: &Arc<AppState>, g: &Generation, kind: Kind) -> Result<Accepted, ApiError> {
    let Some(inflight) = Inflight::acquire(st) else {
        st.metrics.rejected.fetch_add(1, Relaxed);
        return Err(ApiError::status(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "the server's request queue is full; retry later",
        )
        .with_code("queue_full"));
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let n = st.next_id.fetch_add(1, Relaxed);
    let sub = Submission {
        id: n,
        request: g.request.clone(),
        events: tx,
        arrived: Instant::now(),
    };
    st.to_engine
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send(ToEngine::Submit(sub))
        .map_err(|_| ApiError::internal("the engine has stopped"))?;
    st.metrics.requests.fetch_add(1, Relaxed);
    let prefix = match kind {
        Kind::Chat => "chatcmpl",
        Kind::Completion => "cmpl",
    };
    Ok(Accepted {
        events: rx,
        _inflight: inflight,
        id: format!("{prefix}-{:016x}{:08x}", rand::random::<u64>(), n),
        deadline: deadline(st),
    })
}

async fn chat_completions(State(st): St, body: Result<Bytes, BytesRejection>) -> Response {
    let r = (|| {
        let body = body_bytes(body, st.config.body_limit)?;
        api::chat(&body, &limits(&st))
    })();
    match r {
        Ok(g) => generate(st, g, Kind::Chat).await,
        Err(e) => e.into_response(),
    }
}

async fn completions(State(st): St, body: Result<Bytes, BytesRejection>) -> Response {
    let r = (|| {
        let body = body_bytes(body, st.config.body_limit)?;
        api::completion(&body, &limits(&st))
    })();
    match r {
        Ok(g) => generate(st, g, Kind::Completion).await,
        Err(e) => e.into_response(),
    }
}

async fn generate(st: Arc<AppState>, g: Generation, kind: Kind) -> Response {
    let acc = match submit(&st, &g, kind) {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    if g.stream {
        stream_response(st, g, kind, acc)
    } else {
        match collect(&st, acc, &g, kind).await {
            Ok(v) => Json(v).into_response(),
            Err(e) => e.into_response(),
        }
    }
}

fn timeout_error(st: &AppState) -> ApiError {
    st.metrics.timeouts.fetch_add(1, Relaxed);
    ApiError::internal(format!(
        "the request did not finish within the server's timeout of {} s",
        st.config.timeout.as_secs()
    ))
    .with_code("timeout")
}

/// Wait for the next event or the deadline (None: timed out).
async fn next_event(acc: &mut Accepted) -> Option<Option<Event>> {
    let deadline = tokio::time::Instant::from_std(acc.deadline);
    tokio::time::timeout_at(deadline, acc.events.recv())
        .await
        .ok()
}

/// Non-streaming: gather the whole answer.
async fn collect(
    st: &AppState,
    mut acc: Accepted,
    g: &Generation,
    kind: Kind,
) -> Result<Value, ApiError> {
    let mut text = String::new();
    let mut lps: Vec<StepLogprobs> = Vec::new();
    let (reason, usage) = loop {
        match next_event(&mut acc).await {
            None => return Err(timeout_error(st)),
            Some(None) => return Err(ApiError::internal("the engine dropped the request")),
            Some(Some(Event::Delta {
                text: t, logprobs, ..
            })) => {
                text.push_str(&t);
                lps.extend(logprobs);
            }
            Some(Some(Event::Finished { reason, usage })) => break (reason, usage),
            Some(Some(Event::Error { message })) => return Err(ApiError::internal(message)),
        }
    };
    let logprobs = g.request.logprobs.then(|| match kind {
        Kind::Chat => chat_logprobs(st, &lps),
        Kind::Completion => completion_logprobs(st, &lps, 0),
    });
    let choice = match kind {
        Kind::Chat => json!({
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": logprobs,
            "finish_reason": finish_str(reason),
        }),
        Kind::Completion => json!({
            "index": 0,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": finish_str(reason),
        }),
    };
    Ok(json!({
        "id": acc.id,
        "object": match kind { Kind::Chat => "chat.completion", Kind::Completion => "text_completion" },
        "created": now_secs(),
        "model": st.config.model_id,
        "system_fingerprint": Value::Null,
        "choices": [choice],
        "usage": usage_json(usage),
    }))
}

fn finish_str(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Length => "length",
        _ => "stop",
    }
}

fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

fn token_text(st: &AppState, id: u32) -> (String, Vec<u8>) {
    let bytes = st.tok.token_bytes(id, true);
    (String::from_utf8_lossy(&bytes).into_owned(), bytes)
}

fn chat_logprobs(st: &AppState, lps: &[StepLogprobs]) -> Value {
    let content: Vec<Value> = lps
        .iter()
        .map(|s| {
            let (t, b) = token_text(st, s.token);
            let top: Vec<Value> = s
                .top
                .iter()
                .map(|&(id, lp)| {
                    let (t, b) = token_text(st, id);
                    json!({"token": t, "logprob": lp, "bytes": b})
                })
                .collect();
            json!({"token": t, "logprob": s.logprob, "bytes": b, "top_logprobs": top})
        })
        .collect();
    json!({"content": content})
}

/// Legacy completions format; `offset` is the text offset of the first token.
fn completion_logprobs(st: &AppState, lps: &[StepLogprobs], mut offset: usize) -> Value {
    let mut tokens = vec![];
    let mut token_logprobs = vec![];
    let mut top = vec![];
    let mut offsets = vec![];
    for s in lps {
        let (t, _) = token_text(st, s.token);
        offsets.push(offset);
        offset += t.len();
        tokens.push(t);
        token_logprobs.push(s.logprob);
        let m: serde_json::Map<String, Value> = s
            .top
            .iter()
            .map(|&(id, lp)| (token_text(st, id).0, json!(lp)))
            .collect();
        top.push(Value::Object(m));
    }
    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": offsets})
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// Streaming: one SSE event per delta, then the finish chunk, the usage chunk when asked, and
/// `data: [DONE]`. A task forwards engine events into the body; when the client goes away the
/// body is dropped, the task ends, and with it the engine's channel: the engine cancels.
fn stream_response(st: Arc<AppState>, g: Generation, kind: Kind, mut acc: Accepted) -> Response {
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(64);
    let created = now_secs();
    let object = match kind {
        Kind::Chat => "chat.completion.chunk",
        Kind::Completion => "text_completion",
    };
    let include_usage = g.include_usage;
    let want_logprobs = g.request.logprobs;
    tokio::spawn(async move {
        let id = acc.id.clone();
        let chunk = |choice: Value| {
            let mut v = json!({
                "id": id,
                "object": object,
                "created": created,
                "model": st.config.model_id,
                "system_fingerprint": Value::Null,
                "choices": [choice],
            });
            if include_usage {
                v["usage"] = Value::Null;
            }
            v
        };
        if kind == Kind::Chat {
            let first = chunk(json!({
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": Value::Null,
                "finish_reason": Value::Null,
            }));
            if out_tx.send(sse(&first)).await.is_err() {
                return;
            }
        }
        let mut offset = 0;
        loop {
            let ev = tokio::select! {
                _ = out_tx.closed() => return,
                ev = next_event(&mut acc) => ev,
            };
            let frame = match ev {
                None => {
                    let e = timeout_error(&st);
                    let _ = out_tx.send(sse(&e.body())).await;
                    break;
                }
                Some(None) => {
                    let e = ApiError::internal("the engine dropped the request");
                    let _ = out_tx.send(sse(&e.body())).await;
                    break;
                }
                Some(Some(Event::Error { message })) => {
                    let _ = out_tx.send(sse(&ApiError::internal(message).body())).await;
                    break;
                }
                Some(Some(Event::Delta { text, logprobs, .. })) => {
                    if text.is_empty() && (logprobs.is_empty() || !want_logprobs) {
                        continue;
                    }
                    let lp = want_logprobs.then(|| match kind {
                        Kind::Chat => chat_logprobs(&st, &logprobs),
                        Kind::Completion => completion_logprobs(&st, &logprobs, offset),
                    });
                    offset += text.len();
                    match kind {
                        Kind::Chat => chunk(json!({
                            "index": 0,
                            "delta": {"content": text},
                            "logprobs": lp,
                            "finish_reason": Value::Null,
                        })),
                        Kind::Completion => chunk(json!({
                            "index": 0,
                            "text": text,
                            "logprobs": lp,
                            "finish_reason": Value::Null,
                        })),
                    }
                }
                Some(Some(Event::Finished { reason, usage })) => {
                    let last = match kind {
                        Kind::Chat => chunk(json!({
                            "index": 0,
                            "delta": {},
                            "logprobs": Value::Null,
                            "finish_reason": finish_str(reason),
                        })),
                        Kind::Completion => chunk(json!({
                            "index": 0,
                            "text": "",
                            "logprobs": Value::Null,
                            "finish_reason": finish_str(reason),
                        })),
                    };
                    if out_tx.send(sse(&last)).await.is_err() {
                        return;
                    }
                    if include_usage {
                        let mut u = chunk(Value::Null);
                        u["choices"] = json!([]);
                        u["usage"] = usage_json(usage);
                        if out_tx.send(sse(&u)).await.is_err() {
                            return;
                        }
                    }
                    break;
                }
            };
            if out_tx.send(sse(&frame)).await.is_err() {
                return;
            }
        }
        let _ = out_tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    let body = futures_util::stream::poll_fn(move |cx| {
        out_rx.poll_recv(cx).map(|o| o.map(Ok::<_, Infallible>))
    });
    let mut resp = Response::new(Body::from_stream(body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

// ---------------------------------------------------------------------------------------------
// Tokenizer endpoints

#[derive(Deserialize)]
struct TokenizeRequest {
    content: Option<String>,
    prompt: Option<String>,
    messages: Option<Vec<api::ChatMessageIn>>,
    add_special: Option<bool>,
    add_generation_prompt: Option<bool>,
    with_pieces: Option<bool>,
    model: Option<String>,
}

async fn tokenize(
    State(st): St,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body_bytes(body, st.config.body_limit)?;
    let req: TokenizeRequest = api::parse_body(&body)?;
    api::check_model(req.model.as_deref(), &limits(&st))?;
    let ids = match (req.content.or(req.prompt), &req.messages) {
        (Some(text), None) => st.tok.encode(&text, req.add_special.unwrap_or(true), true),
        (None, Some(m)) => {
            let msgs = api::chat_messages(m)?;
            let text = st
                .tok
                .apply_chat_template(&msgs, req.add_generation_prompt.unwrap_or(true))
                .map_err(|e| {
                    ApiError::invalid(format!("the chat template failed: {e}"), Some("messages"))
                })?;
            st.tok.encode(&text, true, true)
        }
        _ => {
            return Err(ApiError::invalid(
                "give exactly one of 'content' (or 'prompt') and 'messages'",
                None,
            ))
        }
    };
    let mut v = json!({"tokens": ids, "count": ids.len(), "max_model_len": st.n_ctx});
    if req.with_pieces == Some(true) {
        v["pieces"] = ids
            .iter()
            .map(|&id| Value::String(token_text(&st, id).0))
            .collect();
    }
    Ok(Json(v))
}

#[derive(Deserialize)]
struct DetokenizeRequest {
    tokens: Vec<i64>,
    model: Option<String>,
}

async fn detokenize(
    State(st): St,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = body_bytes(body, st.config.body_limit)?;
    let req: DetokenizeRequest = api::parse_body(&body)?;
    api::check_model(req.model.as_deref(), &limits(&st))?;
    let vocab = st.tok.vocab_size() as i64;
    let ids: Vec<u32> = req
        .tokens
        .iter()
        .map(|&t| {
            (0..vocab).contains(&t).then_some(t as u32).ok_or_else(|| {
                ApiError::invalid(
                    format!("token id {t} is outside the vocabulary (0..{vocab})"),
                    Some("tokens"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    let text = st.tok.decode(&ids, false);
    Ok(Json(json!({"content": text, "prompt": text})))
}
