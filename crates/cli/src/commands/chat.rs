//! `kestrel chat`: an interactive multi-turn chat through the model's chat template. The KV
//! cache keeps the conversation, so each turn only runs its new tokens; Ctrl-C stops a reply.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use kestrel_engine::{generate, Backend, GenerateParams};
use kestrel_tokenizer::ChatMessage;

use crate::commands::run::{speed_line, SamplingArgs};
use crate::load::{load_on, ContextArgs, Loaded, OnBackend};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub ctx: ContextArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// A system message for the conversation.
    #[arg(long)]
    pub system: Option<String>,
    /// Tokens per reply at most.
    #[arg(short = 'n', long = "n-predict", default_value_t = 1024)]
    pub n_predict: usize,
}

pub fn run(a: Args) -> Result<()> {
    let ctx = a.ctx.clone();
    load_on(&ctx, 1, Cmd(a))
}

struct Cmd(Args);

impl OnBackend for Cmd {
    type Out = ();
    fn run<B: Backend>(self, m: Loaded<B>) -> Result<()> {
        run_on(self.0, m)
    }
}

fn run_on<B: Backend>(a: Args, mut m: Loaded<B>) -> Result<()> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let generating = Arc::new(AtomicBool::new(false));
    {
        let (interrupted, generating) = (interrupted.clone(), generating.clone());
        ctrlc::set_handler(move || {
            if generating.load(Ordering::SeqCst) {
                interrupted.store(true, Ordering::SeqCst);
            } else {
                eprintln!();
                std::process::exit(130);
            }
        })?;
    }
    let mut messages: Vec<ChatMessage> = a
        .system
        .iter()
        .map(|s| ChatMessage {
            role: "system".into(),
            content: s.clone(),
        })
        .collect();
    let seq = m.engine.new_seq();
    // Tokens currently in the KV cache for `seq`.
    let mut cached: Vec<u32> = Vec::new();
    let sampler = a.sampling.params();
    eprintln!(
        "chatting with {} — empty line or Ctrl-D quits, Ctrl-C stops a reply",
        m.path.display()
    );
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        messages.push(ChatMessage {
            role: "user".into(),
            content: line.trim_end().to_string(),
        });
        let prompt = m.tok.apply_chat_template(&messages, true)?;
        let ids = m.tok.encode(&prompt, true, true);
        let common = cached.iter().zip(&ids).take_while(|(a, b)| a == b).count();
        // Always re-run at least the last token so the step yields logits.
        let keep = common.min(ids.len().saturating_sub(1));
        m.engine.truncate_seq(seq, keep);
        cached.truncate(keep);
        let room = m.engine.config.n_ctx.saturating_sub(ids.len() + 1);
        if room == 0 {
            eprintln!("the conversation no longer fits the context ({} tokens); start a new chat or raise --ctx", ids.len());
            messages.pop();
            continue;
        }
        let params = GenerateParams {
            max_tokens: a.n_predict.min(room),
            sampler: sampler.clone(),
            ..Default::default()
        };
        interrupted.store(false, Ordering::SeqCst);
        generating.store(true, Ordering::SeqCst);
        let g = generate(
            &mut m.engine,
            &m.tok,
            seq,
            &ids[keep..],
            &params,
            &mut |piece| {
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
                !interrupted.load(Ordering::SeqCst)
            },
        );
        generating.store(false, Ordering::SeqCst);
        let g = g?;
        println!();
        eprintln!("[{}]", speed_line(&g));
        cached.extend_from_slice(&ids[keep..]);
        cached.extend_from_slice(&g.generated_ids);
        // The cache holds every generated token but the last (it was sampled, not run).
        cached.pop();
        m.engine.truncate_seq(seq, cached.len());
        messages.push(ChatMessage {
            role: "assistant".into(),
            content: g.text.clone(),
        });
    }
    Ok(())
}
