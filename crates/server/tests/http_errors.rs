//! Bad requests against a live server: each gets the right status and an OpenAI-style error
//! body, the server keeps serving, and afterwards every KV block is free again.

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use kestrel_server::ServerConfig;
use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};

const KEY: &str = "test-key-123";

/// Checks the OpenAI error shape and returns the error object.
fn expect_error(resp: Response, status: u16, param: Option<&str>, code: Option<&str>) -> Value {
    let got = resp.status().as_u16();
    let body: Value = resp.json().expect("an error body in JSON");
    assert_eq!(got, status, "status; body: {body}");
    let e = body
        .get("error")
        .unwrap_or_else(|| panic!("no 'error' object in {body}"));
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message in {body}"
    );
    assert!(e["type"].is_string(), "type in {body}");
    assert!(
        e.get("param").is_some() && e.get("code").is_some(),
        "param and code keys in {body}"
    );
    if let Some(p) = param {
        assert_eq!(e["param"], p, "param in {body}");
    }
    if let Some(c) = code {
        assert_eq!(e["code"], c, "code in {body}");
    }
    e.clone()
}

struct Api {
    http: Client,
    base: String,
}

impl Api {
    fn post(&self, path: &str, body: impl Into<reqwest::blocking::Body>) -> Response {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .expect("request")
    }

    fn post_json(&self, path: &str, v: &Value) -> Response {
        self.post(path, v.to_string())
    }

    fn chat(&self, extra: Value) -> Response {
        let mut v = json!({"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        self.post_json("/v1/chat/completions", &v)
    }

    fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .unwrap()
            .text()
            .unwrap()
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no metric {name}"))
        .trim()
        .parse()
        .unwrap()
}

/// Wait until no request runs or waits and every KV block is free.
fn wait_idle(api: &Api) -> String {
    let t0 = Instant::now();
    loop {
        let m = api.metrics();
        let idle = metric(&m, "kestrel_kv_blocks_free") == metric(&m, "kestrel_kv_blocks_total")
            && metric(&m, "kestrel_running_sequences") == 0.0
            && metric(&m, "kestrel_queue_depth") == 0.0;
        if idle {
            return m;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the server did not free its blocks:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Open a streaming request and read until its first content arrives; returns the response
/// (still streaming).
fn open_stream(api: &Api, max_tokens: u32) -> Response {
    let mut resp = api.post_json(
        "/v1/completions",
        &json!({"prompt": "Count from one to one hundred: one, two,", "max_tokens": max_tokens, "temperature": 0, "stream": true}),
    );
    assert_eq!(resp.status(), 200);
    let mut buf = [0u8; 256];
    let n = resp.read(&mut buf).expect("first bytes of the stream");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("data: "));
    resp
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let t0 = Instant::now();
    let config = ServerConfig {
        api_key: Some(KEY.into()),
        parallel: 2,
        ..Default::default()
    };
    // A small context so that a long prompt overflows it.
    let Some(server) = common::start(config, 256) else {
        return;
    };
    let api = Api {
        http: common::client(),
        base: server.url(),
    };

    // Unprotected endpoints.
    let h: Value = api
        .http
        .get(format!("{}/health", api.base))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(h["status"], "ok");
    let page = api.http.get(format!("{}/", api.base)).send().unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().unwrap().contains("<html"));

    // Authentication.
    let no_key = api
        .http
        .post(format!("{}/v1/chat/completions", api.base))
        .body("{}")
        .send()
        .unwrap();
    expect_error(no_key, 401, None, Some("invalid_api_key"));
    let wrong_key = api
        .http
        .get(format!("{}/v1/models", api.base))
        .bearer_auth("nope")
        .send()
        .unwrap();
    expect_error(wrong_key, 401, None, Some("invalid_api_key"));
    let models: Value = api
        .http
        .get(format!("{}/v1/models", api.base))
        .bearer_auth(KEY)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(models["data"][0]["id"], common::MODEL);

    // Malformed JSON and wrong types.
    expect_error(
        api.post("/v1/chat/completions", "{\"messages\": [}"),
        400,
        None,
        None,
    );
    expect_error(api.post("/v1/chat/completions", ""), 400, None, None);
    expect_error(api.post("/v1/completions", "[1, 2]"), 400, None, None);
    expect_error(
        api.post_json("/v1/chat/completions", &json!({"messages": "hi"})),
        400,
        Some("messages"),
        None,
    );
    expect_error(
        api.post_json("/v1/chat/completions", &json!({"max_tokens": 3})),
        400,
        None,
        None,
    );
    expect_error(
        api.chat(json!({"max_tokens": "5"})),
        400,
        Some("max_tokens"),
        None,
    );
    expect_error(
        api.chat(json!({"temperature": "hot"})),
        400,
        Some("temperature"),
        None,
    );
    expect_error(api.chat(json!({"stream": 1})), 400, Some("stream"), None);
    expect_error(api.chat(json!({"stop": 7})), 400, Some("stop"), None);
    expect_error(
        api.chat(json!({"messages": [{"role": "user", "content": 5}]})),
        400,
        Some("messages[0].content"),
        None,
    );
    expect_error(
        api.chat(json!({"messages": [{"role": "robot", "content": "x"}]})),
        400,
        Some("messages[0].role"),
        None,
    );
    expect_error(
        api.chat(json!({"messages": [{"content": "x"}]})),
        400,
        None,
        None,
    );
    expect_error(
        api.post_json("/v1/completions", &json!({"prompt": {"a": 1}})),
        400,
        Some("prompt"),
        None,
    );

    // Unknown model, empty messages, bad numbers.
    expect_error(
        api.chat(json!({"model": "gpt-4o"})),
        404,
        Some("model"),
        Some("model_not_found"),
    );
    expect_error(
        api.chat(json!({"messages": []})),
        400,
        Some("messages"),
        None,
    );
    expect_error(
        api.chat(json!({"max_tokens": -1})),
        400,
        Some("max_tokens"),
        None,
    );
    expect_error(
        api.chat(json!({"max_tokens": 0})),
        400,
        Some("max_tokens"),
        None,
    );
    expect_error(
        api.chat(json!({"max_completion_tokens": -7})),
        400,
        Some("max_completion_tokens"),
        None,
    );
    expect_error(
        api.chat(json!({"max_tokens": 1_000_000_000})),
        400,
        Some("max_tokens"),
        Some("context_length_exceeded"),
    );
    expect_error(
        api.chat(json!({"max_tokens": 1e30})),
        400,
        Some("max_tokens"),
        None,
    );
    expect_error(
        api.chat(json!({"temperature": 3.5})),
        400,
        Some("temperature"),
        None,
    );
    expect_error(api.chat(json!({"n": 2})), 400, Some("n"), None);
    expect_error(
        api.chat(json!({"top_logprobs": 3})),
        400,
        Some("top_logprobs"),
        None,
    );
    expect_error(
        api.chat(json!({"stream_options": {"include_usage": true}})),
        400,
        Some("stream_options"),
        None,
    );

    // A prompt longer than the context (256 tokens).
    let long = "the quick brown fox jumps over the lazy dog ".repeat(60);
    expect_error(
        api.chat(json!({"messages": [{"role": "user", "content": long}]})),
        400,
        None,
        Some("context_length_exceeded"),
    );
    expect_error(
        api.post_json("/v1/completions", &json!({"prompt": long, "max_tokens": 1})),
        400,
        None,
        Some("context_length_exceeded"),
    );

    // A 10 MB body (the limit is 1 MB).
    let big = format!("{{\"prompt\": \"{}\"}}", "a".repeat(10 << 20));
    expect_error(api.post("/v1/completions", big), 413, None, None);

    // Unknown endpoint and tokenizer endpoints.
    let r = api
        .http
        .get(format!("{}/v2/nothing", api.base))
        .send()
        .unwrap();
    expect_error(r, 404, None, None);
    let t: Value = api
        .post_json("/tokenize", &json!({"content": "hello world"}))
        .json()
        .unwrap();
    let ids = t["tokens"].clone();
    assert!(!ids.as_array().unwrap().is_empty());
    let d: Value = api
        .post_json("/detokenize", &json!({"tokens": ids}))
        .json()
        .unwrap();
    assert_eq!(d["content"], "hello world");
    expect_error(
        api.post_json("/detokenize", &json!({"tokens": [-1]})),
        400,
        Some("tokens"),
        None,
    );
    expect_error(
        api.post_json("/detokenize", &json!({"tokens": [999_999_999]})),
        400,
        Some("tokens"),
        None,
    );
    expect_error(api.post_json("/tokenize", &json!({})), 400, None, None);

    // A client that goes away mid-stream: its request is cancelled and its blocks freed.
    let before = metric(
        &api.metrics(),
        "kestrel_requests_finished_total{reason=\"cancelled\"}",
    );
    let stream = open_stream(&api, 200);
    drop(stream);
    let m = wait_idle(&api);
    assert_eq!(
        metric(&m, "kestrel_requests_finished_total{reason=\"cancelled\"}"),
        before + 1.0,
        "the dropped stream was cancelled"
    );

    // A client that gives up on a non-streaming request: cancelled as well.
    let impatient = Client::builder()
        .timeout(Duration::from_millis(700))
        .build()
        .unwrap();
    let r = impatient
        .post(format!("{}/v1/completions", api.base))
        .bearer_auth(KEY)
        .json(&json!({"prompt": "Count from one to one hundred: one, two,", "max_tokens": 200, "temperature": 0}))
        .send();
    assert!(r.is_err(), "the client timed out");
    let m = wait_idle(&api);
    assert_eq!(
        metric(&m, "kestrel_requests_finished_total{reason=\"cancelled\"}"),
        before + 2.0,
        "the abandoned request was cancelled"
    );

    // Still serving.
    let ok: Value = api.chat(json!({})).json().unwrap();
    assert_eq!(ok["object"], "chat.completion");
    assert!(ok["choices"][0]["message"]["content"].is_string());
    let m = wait_idle(&api);
    assert!(metric(&m, "kestrel_http_responses_total{status=\"400\"}") >= 20.0);
    assert!(metric(&m, "kestrel_generation_tokens_total") > 0.0);
    eprintln!("bad requests: {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn full_queue_gets_429_and_slow_requests_time_out() {
    let t0 = Instant::now();
    let config = ServerConfig {
        parallel: 1,
        max_queue: 1,
        timeout: Duration::from_secs(3),
        ..Default::default()
    };
    let Some(server) = common::start(config, 512) else {
        return;
    };
    let api = Api {
        http: common::client(),
        base: server.url(),
    };
    // One running, one queued: the third is refused.
    let a = open_stream(&api, 400);
    let b = api.post_json(
        "/v1/completions",
        &json!({"prompt": "Hello", "max_tokens": 400, "temperature": 0, "stream": true}),
    );
    assert_eq!(b.status(), 200);
    expect_error(api.chat(json!({})), 429, None, Some("queue_full"));
    drop(a);
    drop(b);
    wait_idle(&api);

    // Past the 3 s timeout a request ends with a server error, and its blocks are freed.
    let r = api.post_json(
        "/v1/completions",
        &json!({"prompt": "Count from one to one thousand: one, two,", "max_tokens": 500, "temperature": 0}),
    );
    expect_error(r, 500, None, Some("timeout"));
    let m = wait_idle(&api);
    assert_eq!(metric(&m, "kestrel_request_timeouts_total"), 1.0);
    assert_eq!(metric(&m, "kestrel_requests_rejected_total"), 1.0);
    eprintln!("queue and timeout: {:.1} s", t0.elapsed().as_secs_f64());
}
