//! OpenAI request bodies: parsing, validation and turning them into an engine [`Request`].

use kestrel_engine::{Request, SamplerParams};
use kestrel_tokenizer::{ChatMessage, Tokenizer};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::error::ApiError;

/// Parse a JSON body into a tree (400 when it is not JSON).
pub fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("the body is not valid JSON: {e}"), None))
}

/// Read a typed request out of a JSON tree, naming the offending field in `param`.
pub fn from_json<T: DeserializeOwned>(v: &Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize::<_, T>(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            ApiError::invalid(format!("invalid request body: {inner}"), None)
        } else {
            ApiError::invalid(format!("invalid value for '{path}': {inner}"), Some(&path))
        }
    })
}

/// Parse a body straight into `T`.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    from_json(&parse_json(body)?)
}

#[derive(Deserialize, Default)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// Fields shared by chat and completions.
#[derive(Deserialize, Default)]
pub struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    /// Extensions (llama.cpp server names).
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repeat_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub stop: Option<Value>,
    pub seed: Option<i64>,
    pub n: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<ChatMessageIn>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
}

#[derive(Deserialize)]
pub struct ChatMessageIn {
    pub role: String,
    #[serde(default)]
    pub content: Value,
}

#[derive(Deserialize)]
pub struct CompletionRequest {
    pub prompt: Value,
    /// Legacy completions: how many top candidates to return per token (0..=5).
    pub logprobs: Option<i64>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
}

/// A validated generation request.
pub struct Generation {
    pub request: Request,
    pub stream: bool,
    pub include_usage: bool,
}

/// Server facts the validation needs.
pub struct Limits<'a> {
    pub model_id: &'a str,
    pub n_ctx: usize,
    pub tok: &'a Tokenizer,
}

pub fn check_model(model: Option<&str>, limits: &Limits) -> Result<(), ApiError> {
    match model {
        Some(m) if m != limits.model_id => Err(ApiError::status(
            axum::http::StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!(
                "The model `{m}` does not exist (this server serves `{}`)",
                limits.model_id
            ),
        )
        .with_param("model")
        .with_code("model_not_found")),
        _ => Ok(()),
    }
}

impl ApiError {
    fn with_param(mut self, p: &str) -> Self {
        self.param = Some(p.to_string());
        self
    }
}

/// Text of a message's `content`: a string, or an array of `{"type": "text", "text": ...}` parts.
fn content_text(v: &Value, i: usize) -> Result<String, ApiError> {
    let param = format!("messages[{i}].content");
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    (Some("text"), None) => {
                        return Err(ApiError::invalid(
                            "a text content part needs a string 'text'",
                            Some(&param),
                        ))
                    }
                    (Some(t), _) => {
                        return Err(ApiError::invalid(
                            format!("content parts of type '{t}' are not supported (text only)"),
                            Some(&param),
                        ))
                    }
                    (None, _) => {
                        return Err(ApiError::invalid(
                            "each content part needs a 'type'",
                            Some(&param),
                        ))
                    }
                }
            }
            Ok(out)
        }
        Value::Null => Err(ApiError::invalid(
            "message content is missing",
            Some(&param),
        )),
        _ => Err(ApiError::invalid(
            "message content must be a string or an array of text parts",
            Some(&param),
        )),
    }
}

fn stop_list(v: &Option<Value>) -> Result<Vec<String>, ApiError> {
    let bad = || {
        ApiError::invalid(
            "'stop' must be a string or an array of strings",
            Some("stop"),
        )
    };
    let list = match v {
        None | Some(Value::Null) => vec![],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or_else(bad))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(bad()),
    };
    if list.len() > 16 {
        return Err(ApiError::invalid(
            "at most 16 stop sequences are supported",
            Some("stop"),
        ));
    }
    Ok(list.into_iter().filter(|s| !s.is_empty()).collect())
}

fn in_range(v: Option<f64>, name: &str, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) => Err(ApiError::invalid(
            format!("'{name}' must be between {lo} and {hi}, got {x}"),
            Some(name),
        )),
        _ => Ok(v),
    }
}

/// Validate the shared fields and build the request for `prompt`.
/// `default_max`: max_tokens when the request gives none (None: up to the context).
fn build(
    c: &Common,
    prompt: Vec<u32>,
    limits: &Limits,
    default_max: Option<usize>,
    logprobs: bool,
    top_logprobs: usize,
) -> Result<Generation, ApiError> {
    if let Some(n) = c.n {
        if n != 1 {
            return Err(ApiError::invalid("only n=1 is supported", Some("n")));
        }
    }
    let (max_name, max) = match (c.max_completion_tokens, c.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", Some(m)),
        (None, m) => ("max_tokens", m),
    };
    if let Some(m) = max {
        if m < 1 {
            return Err(ApiError::invalid(
                format!("'{max_name}' must be at least 1, got {m}"),
                Some(max_name),
            ));
        }
    }
    let temperature = in_range(c.temperature, "temperature", 0.0, 2.0)?.unwrap_or(1.0);
    let top_p = in_range(c.top_p, "top_p", 0.0, 1.0)?.unwrap_or(1.0);
    let min_p = in_range(c.min_p, "min_p", 0.0, 1.0)?.unwrap_or(0.0);
    let presence = in_range(c.presence_penalty, "presence_penalty", -2.0, 2.0)?.unwrap_or(0.0);
    let frequency = in_range(c.frequency_penalty, "frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0);
    let repeat = in_range(c.repeat_penalty, "repeat_penalty", 0.0, 10.0)?.unwrap_or(1.0);
    let top_k = match c.top_k {
        Some(k) if k < 0 => {
            return Err(ApiError::invalid(
                "'top_k' must be 0 (off) or more",
                Some("top_k"),
            ))
        }
        Some(k) => k as usize,
        None => 0,
    };
    let stop = stop_list(&c.stop)?;

    let n_ctx = limits.n_ctx;
    if prompt.is_empty() {
        return Err(ApiError::invalid("the prompt is empty", None));
    }
    if prompt.len() + 1 > n_ctx {
        return Err(ApiError::invalid(
            format!(
                "This model's maximum context length is {n_ctx} tokens. However, your prompt is {} tokens, leaving no room to generate.",
                prompt.len()
            ),
            Some("messages"),
        )
        .with_code("context_length_exceeded"));
    }
    let room = n_ctx - prompt.len();
    let max_tokens = match max {
        Some(m) if m as u64 > room as u64 => {
            return Err(ApiError::invalid(
                format!(
                    "This model's maximum context length is {n_ctx} tokens. However, you requested {} tokens ({} in the prompt, {m} for the completion). Please reduce the prompt or '{max_name}'.",
                    prompt.len() as u64 + m as u64,
                    prompt.len()
                ),
                Some(max_name),
            )
            .with_code("context_length_exceeded"))
        }
        Some(m) => m as usize,
        None => default_max.unwrap_or(room).min(room),
    };
    let seed = c.seed.map(|s| s as u64).unwrap_or_else(rand::random);
    let stream = c.stream.unwrap_or(false);
    let include_usage = c
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    if c.stream_options.is_some() && !stream {
        return Err(ApiError::invalid(
            "'stream_options' is only allowed when 'stream' is true",
            Some("stream_options"),
        ));
    }
    Ok(Generation {
        request: Request {
            prompt,
            max_tokens,
            sampler: SamplerParams {
                temperature: temperature as f32,
                top_k,
                top_p: top_p as f32,
                min_p: min_p as f32,
                repeat_penalty: repeat as f32,
                presence_penalty: presence as f32,
                frequency_penalty: frequency as f32,
                penalty_last_n: 64,
                seed,
            },
            stop,
            logprobs,
            top_logprobs,
        },
        stream,
        include_usage,
    })
}

pub fn chat_messages(messages: &[ChatMessageIn]) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "'messages' must not be empty",
            Some("messages"),
        ));
    }
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(ApiError::invalid(
                        format!(
                            "unsupported role '{other}' (system, developer, user or assistant)"
                        ),
                        Some(&format!("messages[{i}].role")),
                    ))
                }
            };
            Ok(ChatMessage::new(role, content_text(&m.content, i)?))
        })
        .collect()
}

pub fn chat(body: &[u8], limits: &Limits) -> Result<Generation, ApiError> {
    let v = parse_json(body)?;
    let common: Common = from_json(&v)?;
    let req: ChatRequest = from_json(&v)?;
    check_model(common.model.as_deref(), limits)?;
    let messages = chat_messages(&req.messages)?;
    let logprobs = req.logprobs.unwrap_or(false);
    let top = match req.top_logprobs {
        None => 0,
        Some(n) if !(0..=20).contains(&n) => {
            return Err(ApiError::invalid(
                "'top_logprobs' must be between 0 and 20",
                Some("top_logprobs"),
            ))
        }
        Some(_) if !logprobs => {
            return Err(ApiError::invalid(
                "'top_logprobs' needs 'logprobs' set to true",
                Some("top_logprobs"),
            ))
        }
        Some(n) => n as usize,
    };
    let text = limits
        .tok
        .apply_chat_template(&messages, true)
        .map_err(|e| {
            ApiError::invalid(format!("the chat template failed: {e}"), Some("messages"))
        })?;
    let prompt = limits.tok.encode(&text, true, true);
    build(&common, prompt, limits, None, logprobs, top)
}

/// OpenAI's default for legacy completions.
const COMPLETIONS_DEFAULT_MAX_TOKENS: usize = 16;

pub fn completion(body: &[u8], limits: &Limits) -> Result<Generation, ApiError> {
    let v = parse_json(body)?;
    let common: Common = from_json(&v)?;
    let req: CompletionRequest = from_json(&v)?;
    check_model(common.model.as_deref(), limits)?;
    if req.echo == Some(true) {
        return Err(ApiError::invalid("'echo' is not supported", Some("echo")));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid(
            "'suffix' is not supported",
            Some("suffix"),
        ));
    }
    let bad = || {
        ApiError::invalid(
            "'prompt' must be a string, an array of one string, or an array of token ids",
            Some("prompt"),
        )
    };
    let vocab = limits.tok.vocab_size() as u64;
    let ids = |a: &[Value]| -> Result<Vec<u32>, ApiError> {
        a.iter()
            .map(|x| {
                x.as_u64()
                    .filter(|&t| t < vocab)
                    .map(|t| t as u32)
                    .ok_or_else(bad)
            })
            .collect()
    };
    let prompt = match &req.prompt {
        Value::String(s) => limits.tok.encode(s, true, true),
        Value::Array(a) if a.len() == 1 && a[0].is_string() => {
            limits
                .tok
                .encode(a[0].as_str().unwrap_or_default(), true, true)
        }
        Value::Array(a) if a.len() == 1 && a[0].is_array() => {
            ids(a[0].as_array().map_or(&[][..], Vec::as_slice))?
        }
        Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_number) => ids(a)?,
        Value::Array(a) if a.len() > 1 => {
            return Err(ApiError::invalid(
                "only one prompt per request is supported",
                Some("prompt"),
            ))
        }
        _ => return Err(bad()),
    };
    let (logprobs, top) = match req.logprobs {
        None => (false, 0),
        Some(n) if !(0..=5).contains(&n) => {
            return Err(ApiError::invalid(
                "'logprobs' must be between 0 and 5",
                Some("logprobs"),
            ))
        }
        Some(n) => (true, n as usize),
    };
    build(
        &common,
        prompt,
        limits,
        Some(COMPLETIONS_DEFAULT_MAX_TOKENS),
        logprobs,
        top,
    )
}
