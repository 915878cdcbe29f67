//! Shared by the server tests: find the small real model, load it on the CPU, start a server on
//! an ephemeral loopback port.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kestrel_cpu::CpuBackend;
use kestrel_engine::{Engine, EngineConfig};
use kestrel_gguf::GgufFile;
use kestrel_server::{ServerConfig, ServerHandle};
use kestrel_tokenizer::Tokenizer;

pub const MODEL: &str = "qwen2.5-coder-0.5b";

/// `$KESTREL_HOME/models/<MODEL>.gguf` (or `~/.cache/kestrel/models`), or None with a skip
/// message when it is not there.
pub fn model_path() -> Option<PathBuf> {
    let home = std::env::var_os("KESTREL_HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kestrel")))?;
    let p = home.join("models").join(format!("{MODEL}.gguf"));
    if p.is_file() {
        Some(p)
    } else {
        eprintln!(
            "skipping: {} not found (run `kestrel pull {MODEL}`, or set KESTREL_HOME)",
            p.display()
        );
        None
    }
}

/// The model on the CPU with room for `kv_tokens` tokens in all.
pub fn load(path: &PathBuf, n_ctx: usize, kv_tokens: usize) -> (Engine<CpuBackend>, Tokenizer) {
    let file = Arc::new(GgufFile::open(path).expect("open the model"));
    let spec = kestrel_model::spec_from_gguf(&file).expect("model spec");
    let tok = Tokenizer::from_gguf(&file).expect("tokenizer");
    let engine = Engine::load(
        CpuBackend::new(),
        spec,
        &file,
        EngineConfig { n_ctx, kv_tokens },
        &mut |_, _| {},
    )
    .expect("load the model");
    (engine, tok)
}

/// A server for the test model on 127.0.0.1 with an ephemeral port.
pub fn start(mut config: ServerConfig, n_ctx: usize) -> Option<ServerHandle> {
    let path = model_path()?;
    config.host = "127.0.0.1".into();
    config.port = 0;
    config.model_id = MODEL.into();
    let kv_tokens = n_ctx * config.parallel.max(1);
    let server = kestrel_server::start(config, move || Ok(load(&path, n_ctx, kv_tokens)))
        .expect("start the server");
    eprintln!("test server at {}", server.url());
    Some(server)
}

pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("HTTP client")
}
