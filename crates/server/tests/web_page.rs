//! The chat page at `/` in headless Chromium, driven through chromedriver's WebDriver API:
//! a streamed reply shows exactly the text the API gives, the stop button cancels a reply
//! (the server frees its blocks), and the conversation goes on. Needs Debian's `chromium` and
//! `chromium-driver`; skipped without them unless KESTREL_REQUIRE_BROWSER=1.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kestrel_server::ServerConfig;
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    child: Child,
    base: String,
    session: String,
    http: reqwest::blocking::Client,
}

impl Driver {
    fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let http = common::client();
        let base = format!("http://127.0.0.1:{port}");
        let t0 = Instant::now();
        while http.get(format!("{base}/status")).send().is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = std::env::temp_dir().join(format!("kestrel-chromium-{}", std::process::id()));
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--window-size=1000,800", format!("--user-data-dir={}", profile.display())],
            },
        }}});
        let mut d = Driver {
            child,
            base,
            session: String::new(),
            http,
        };
        let v = d.call("POST", "/session", caps);
        d.session = v["sessionId"]
            .as_str()
            .expect("a WebDriver session")
            .to_string();
        d
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let req = match method {
            "GET" => self.http.get(url),
            "DELETE" => self.http.delete(url),
            _ => self.http.post(url).json(&body),
        };
        let v: Value = req
            .send()
            .expect("WebDriver call")
            .json()
            .expect("WebDriver JSON");
        assert!(
            v["value"].get("error").is_none(),
            "WebDriver {method} {path}: {v}"
        );
        v.get("sessionId")
            .map(|_| v.clone())
            .unwrap_or_else(|| v["value"].clone())
    }

    fn js(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
    }

    fn element(&self, css: &str) -> String {
        let v = self.call(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css);
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            json!({"text": text}),
        );
    }

    fn click(&self, css: &str) {
        let e = self.element(css);
        self.call("POST", &format!("/element/{e}/click"), json!({}));
    }

    /// Poll a script until it returns something truthy.
    fn wait_for(&self, script: &str, what: &str) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.js(script);
            if !(v.is_null() || v == false || v == "") {
                return v;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self
                .http
                .delete(format!("{}/session/{}", self.base, self.session))
                .send();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Text of the last assistant bubble without its footer, and the footer ('' while streaming).
const LAST_REPLY: &str = r#"
    const b = [...document.querySelectorAll('.msg.assistant')].pop();
    if (!b) return null;
    const meta = b.querySelector('.meta');
    return [b.firstChild ? b.firstChild.textContent : '', meta ? meta.textContent : ''];
"#;

#[test]
fn chat_page_streams_stops_and_keeps_history() {
    let required = std::env::var("KESTREL_REQUIRE_BROWSER").is_ok_and(|v| v == "1");
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        assert!(!required, "KESTREL_REQUIRE_BROWSER=1 but {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)");
        eprintln!("skipping: {CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium chromium-driver)");
        return;
    }
    let Some(server) = common::start(ServerConfig::default(), 1024) else {
        return;
    };
    let t0 = Instant::now();
    let d = Driver::start();
    d.call("POST", "/url", json!({"url": server.url()}));
    d.wait_for(
        "return document.getElementById('model').textContent.includes('qwen')",
        "the model name",
    );

    // A greedy reply, streamed into the page, equals the API's answer.
    d.js("document.getElementById('temp').value = '0'; document.getElementById('maxtok').value = '16';");
    d.type_into("#input", "Say hello in French.");
    d.click("#send");
    let done = d.wait_for(
        &format!("const r = (() => {{ {LAST_REPLY} }})(); return r && r[1] ? r : null;"),
        "the first reply",
    );
    let page_text = done[0].as_str().unwrap().to_string();
    let api: Value = common::client()
        .post(format!("{}/v1/chat/completions", server.url()))
        .json(&json!({"messages": [{"role": "user", "content": "Say hello in French."}], "temperature": 0, "max_tokens": 16}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        page_text,
        api["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert!(
        done[1].as_str().unwrap().contains("generated tokens"),
        "footer: {}",
        done[1]
    );

    // A long reply stopped with the button: the footer says so and the server frees its blocks.
    d.js("document.getElementById('maxtok').value = '400';");
    d.type_into("#input", "Count from 1 to 300, separated by commas.");
    d.click("#send");
    d.wait_for(
        &format!("const r = (() => {{ {LAST_REPLY} }})(); return r && r[0].length > 10;"),
        "streamed text",
    );
    assert_eq!(
        d.js("return document.getElementById('stop').disabled"),
        false
    );
    d.click("#stop");
    let stopped = d.wait_for(
        &format!("const r = (() => {{ {LAST_REPLY} }})(); return r && r[1] ? r : null;"),
        "the stop",
    );
    assert!(
        stopped[1].as_str().unwrap().starts_with("stopped"),
        "footer: {}",
        stopped[1]
    );
    let t_stop = Instant::now();
    loop {
        let m = common::client()
            .get(format!("{}/metrics", server.url()))
            .send()
            .unwrap()
            .text()
            .unwrap();
        let get = |name: &str| -> f64 {
            m.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap()
        };
        if get("kestrel_kv_blocks_free") == get("kestrel_kv_blocks_total")
            && get("kestrel_requests_finished_total{reason=\"cancelled\"}") == 1.0
        {
            break;
        }
        assert!(
            t_stop.elapsed() < Duration::from_secs(20),
            "the stopped reply was not cancelled:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The conversation goes on: a third turn, with three user bubbles on the page.
    d.js("document.getElementById('maxtok').value = '8';");
    d.type_into("#input", "Thanks!");
    d.click("#send");
    d.wait_for(
        "return document.querySelectorAll('.msg.assistant .meta').length === 3",
        "the third reply",
    );
    assert_eq!(
        d.js("return document.querySelectorAll('.msg.user').length"),
        3
    );
    assert_eq!(
        d.js("return document.querySelectorAll('.msg.error').length"),
        0
    );

    let png = d.call("GET", "/screenshot", Value::Null);
    if let Some(b64) = png.as_str() {
        let path = std::env::temp_dir().join("kestrel-chat-page.png");
        if std::fs::write(&path, decode_base64(b64)).is_ok() {
            eprintln!("screenshot: {}", path.display());
        }
    }
    eprintln!("chat page: {:.1} s", t0.elapsed().as_secs_f64());
}

fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &c)| n | (val(c) as u32) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}
