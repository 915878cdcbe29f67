//! Continuous batching through HTTP: many simultaneous greedy streaming requests each produce
//! exactly the text the same request gives when it runs alone.

mod common;

use std::io::{BufRead, BufReader};
use std::time::Instant;

use kestrel_server::ServerConfig;
use serde_json::{json, Value};

/// Simultaneous requests: the 32. On a 2-core machine the whole test (32 solo runs,
/// then 32 at once) takes about 40 s.
const CONCURRENT: usize = 32;
const MAX_TOKENS: u32 = 24;

const TOPICS: &[&str] = &[
    "the sea",
    "a lighthouse",
    "autumn leaves",
    "a cat",
    "compilers",
    "the moon",
    "bread",
    "trains",
];

/// The i-th request: chat and completions alternate, prompts differ in length and content.
fn body(i: usize) -> (String, Value) {
    let topic = TOPICS[i % TOPICS.len()];
    let (chat, system) = match i % 4 {
        0 => (true, true),
        2 => (true, false),
        _ => (false, false),
    };
    if chat {
        let mut messages =
            vec![json!({"role": "user", "content": format!("Write two sentences about {topic}.")})];
        if system {
            messages.insert(0, json!({"role": "system", "content": "You are terse. Request number ".to_string() + &i.to_string()}));
        }
        (
            "/v1/chat/completions".into(),
            json!({"messages": messages, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}),
        )
    } else {
        (
            "/v1/completions".into(),
            json!({"prompt": format!("# {i}: a Python function about {topic}\ndef "), "max_tokens": MAX_TOKENS, "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}),
        )
    }
}

#[derive(Debug, PartialEq)]
struct Streamed {
    text: String,
    finish: String,
    completion_tokens: u64,
}

/// Send one streaming request and read the whole SSE stream.
fn stream(base: &str, i: usize) -> Streamed {
    let (path, body) = body(i);
    let resp = common::client()
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .expect("request");
    assert_eq!(resp.status(), 200);
    let mut out = Streamed {
        text: String::new(),
        finish: String::new(),
        completion_tokens: 0,
    };
    let mut done = false;
    for line in BufReader::new(resp).lines() {
        let line = line.expect("stream line");
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        assert!(!done, "data after [DONE]");
        if data == "[DONE]" {
            done = true;
            continue;
        }
        let v: Value = serde_json::from_str(data).expect("chunk JSON");
        assert!(v.get("error").is_none(), "error in stream: {v}");
        if let Some(c) = v["choices"].get(0) {
            let piece = c["delta"]["content"]
                .as_str()
                .or(c["text"].as_str())
                .unwrap_or("");
            out.text.push_str(piece);
            if let Some(f) = c["finish_reason"].as_str() {
                out.finish = f.into();
            }
        }
        if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
            out.completion_tokens = n;
        }
    }
    assert!(done, "the stream ends with data: [DONE]");
    out
}

#[test]
fn simultaneous_greedy_streams_match_their_solo_runs() {
    let config = ServerConfig {
        parallel: CONCURRENT,
        max_queue: CONCURRENT,
        ..Default::default()
    };
    let Some(server) = common::start(config, 512) else {
        return;
    };
    let base = server.url();

    let t0 = Instant::now();
    let alone: Vec<Streamed> = (0..CONCURRENT).map(|i| stream(&base, i)).collect();
    let t_alone = t0.elapsed();

    let t1 = Instant::now();
    let together: Vec<Streamed> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CONCURRENT)
            .map(|i| {
                let base = &base;
                s.spawn(move || stream(base, i))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let t_together = t1.elapsed();

    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert!(
            !a.text.is_empty() && a.completion_tokens > 0,
            "request {i} generated nothing"
        );
        assert_eq!(
            t, a,
            "request {i}: batched output differs from its solo run"
        );
    }
    // The engine publishes its gauges right after the last step: wait for them.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let m = common::client()
            .get(format!("{base}/metrics"))
            .send()
            .unwrap()
            .text()
            .unwrap();
        let get = |name: &str| -> f64 {
            m.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap()
        };
        if get("kestrel_kv_blocks_free") == get("kestrel_kv_blocks_total") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "KV blocks still held after every request ended:\n{m}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    eprintln!(
        "{CONCURRENT} requests × {MAX_TOKENS} tokens: one at a time {:.1} s, all at once {:.1} s",
        t_alone.as_secs_f64(),
        t_together.as_secs_f64()
    );
}
