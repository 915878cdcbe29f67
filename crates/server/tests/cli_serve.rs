//! The `kestrel` binary end to end: `kestrel serve` answers greedy requests, sent all at once,
//! with exactly the text `kestrel run --temp 0` prints for the same prompts. Needs the binary
//! (`cargo build --release` builds it; CI does before testing) and the model; skips otherwise.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const PROMPTS: &[&str] = &[
    "def quicksort(arr):",
    "The three primary colours are",
    "<|im_start|>user\nName a planet.<|im_end|>\n<|im_start|>assistant\n",
    "#include <stdio.h>\n\nint main(void) {",
];
const N: usize = 20;

fn binary() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let exe = target.join("release").join("kestrel");
    if exe.is_file() {
        Some(exe)
    } else {
        eprintln!(
            "skipping: {} not built (cargo build --release)",
            exe.display()
        );
        None
    }
}

/// Kills the server when the test ends, however it ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn kestrel_serve_matches_kestrel_run() {
    let Some(model) = common::model_path() else {
        return;
    };
    let Some(exe) = binary() else { return };
    let t0 = Instant::now();

    let want: Vec<(String, String)> = PROMPTS
        .iter()
        .map(|p| {
            let out = Command::new(&exe)
                .args(["run", "-m"])
                .arg(&model)
                .args(["--temp", "0", "-n", &N.to_string(), "--json", "-p", p])
                .output()
                .expect("kestrel run");
            assert!(
                out.status.success(),
                "kestrel run failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: Value = serde_json::from_slice(&out.stdout).expect("kestrel run --json");
            (
                v["text"].as_str().unwrap().to_string(),
                v["finish_reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();

    let mut child = Command::new(&exe)
        .args(["serve", "-m"])
        .arg(&model)
        .args(["--port", "0", "--ctx", "512", "--parallel", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kestrel serve");
    let stderr = child.stderr.take().unwrap();
    let server = Server(child);
    // The startup line names the address.
    let mut url = None;
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("server log");
        if let Some(rest) = line.split("listening on ").nth(1) {
            url = rest.split_whitespace().next().map(str::to_string);
            break;
        }
    }
    let url = url.expect("a 'listening on' line");
    assert!(
        url.starts_with("http://127.0.0.1:"),
        "binds loopback by default: {url}"
    );

    let got: Vec<(String, String)> = std::thread::scope(|s| {
        let hs: Vec<_> = PROMPTS
            .iter()
            .map(|p| {
                let url = &url;
                s.spawn(move || {
                    let v: Value = common::client()
                        .post(format!("{url}/v1/completions"))
                        .json(&json!({"prompt": p, "max_tokens": N, "temperature": 0}))
                        .send()
                        .expect("request")
                        .json()
                        .expect("JSON");
                    let c = &v["choices"][0];
                    (
                        c["text"].as_str().unwrap().to_string(),
                        c["finish_reason"].as_str().unwrap().to_string(),
                    )
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    drop(server);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "prompt {:?}", PROMPTS[i]);
    }
    assert!(t0.elapsed() < Duration::from_secs(120));
    eprintln!(
        "kestrel serve vs kestrel run: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}
