//! The continuous-batching scheduler against the single-sequence `generate` loop that
//! `kestrel run` uses: greedy requests give exactly the same tokens and text whatever else is
//! in the batch, however prompts are chunked, and through preemption.

mod common;

use std::collections::HashMap;
use std::time::Instant;

use kestrel_engine::{
    generate, Event, FinishReason, GenerateParams, Request, RequestId, SamplerParams, Scheduler,
    SchedulerConfig,
};
use kestrel_tokenizer::Tokenizer;

const PROMPTS: &[&str] = &[
    "def fibonacci(n):",
    "The capital of France is",
    "// A function in C that reverses a string in place\n",
    "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "import numpy as np\n\n# Compute the mean of each column of a matrix",
    "1, 2, 3, 4, 5,",
];

#[derive(Debug, Default, Clone, PartialEq)]
struct Out {
    text: String,
    tokens: Vec<u32>,
    finish: Option<FinishReason>,
}

/// The reference: `generate` alone on a fresh engine sequence, as `kestrel run --temp 0` does.
fn reference(
    engine: &mut kestrel_engine::Engine<kestrel_cpu::CpuBackend>,
    tok: &Tokenizer,
    prompt: &[u32],
    max_tokens: usize,
    stop: &[String],
) -> Out {
    let seq = engine.new_seq();
    let params = GenerateParams {
        max_tokens,
        sampler: SamplerParams::greedy(),
        stop: stop.to_vec(),
        ..Default::default()
    };
    let g = generate(engine, tok, seq, prompt, &params, &mut |_| true).expect("generate");
    engine.free_seq(seq);
    Out {
        text: g.text,
        tokens: g.generated_ids,
        finish: Some(g.finish),
    }
}

fn request(prompt: Vec<u32>, max_tokens: usize, stop: &[String]) -> Request {
    Request {
        prompt,
        max_tokens,
        sampler: SamplerParams::greedy(),
        stop: stop.to_vec(),
        logprobs: false,
        top_logprobs: 0,
    }
}

fn apply(outs: &mut HashMap<RequestId, Out>, events: Vec<(RequestId, Event)>) {
    for (id, ev) in events {
        let out = outs.entry(id).or_default();
        assert!(out.finish.is_none(), "event after the end for {id}");
        match ev {
            Event::Delta { text, tokens, .. } => {
                out.text.push_str(&text);
                out.tokens.extend(tokens);
            }
            Event::Finished { reason, usage } => {
                assert_eq!(usage.completion_tokens, out.tokens.len());
                out.finish = Some(reason);
            }
            Event::Error { message } => panic!("request {id} failed: {message}"),
        }
    }
}

/// Run everything submitted to completion; returns the number of preemptions.
fn drain<B: kestrel_engine::Backend>(
    s: &mut Scheduler<B>,
    outs: &mut HashMap<RequestId, Out>,
) -> usize {
    let mut preempted = 0;
    let mut steps = 0;
    while s.has_work() {
        let o = s.step();
        preempted += o.stats.preempted;
        apply(outs, o.events);
        steps += 1;
        assert!(steps < 100_000, "the scheduler does not finish");
    }
    preempted
}

#[test]
fn batched_greedy_equals_generate_alone() {
    let Some(path) = common::model_path() else {
        return;
    };
    let t0 = Instant::now();
    let n_ctx = 512;
    let (mut engine, tok) = common::load(&path, n_ctx, n_ctx * 8);
    let max_tokens = 24;
    let stops: Vec<Vec<String>> = (0..PROMPTS.len())
        .map(|i| {
            if i == 1 {
                vec![".".to_string()]
            } else {
                vec![]
            }
        })
        .collect();
    let prompts: Vec<Vec<u32>> = PROMPTS.iter().map(|p| tok.encode(p, true, true)).collect();
    let want: Vec<Out> = prompts
        .iter()
        .zip(&stops)
        .map(|(p, st)| reference(&mut engine, &tok, p, max_tokens, st))
        .collect();
    assert_eq!(engine.free_blocks(), engine.total_blocks());

    // Budgets: plenty (whole prompts in one step), and tiny (prompts split into chunks that
    // share steps with other requests' decodes).
    for budget in [512, 7] {
        let mut s = Scheduler::new(
            engine,
            &tok,
            SchedulerConfig {
                max_running: 8,
                token_budget: budget,
                ubatch: 512,
            },
        );
        // Staggered arrivals: some requests join while others are mid-generation.
        let mut outs = HashMap::new();
        for (i, p) in prompts.iter().enumerate() {
            s.submit(i as u64, request(p.clone(), max_tokens, &stops[i]))
                .unwrap();
            if i % 2 == 1 {
                for _ in 0..3 {
                    apply(&mut outs, s.step().events);
                }
            }
        }
        drain(&mut s, &mut outs);
        for (i, w) in want.iter().enumerate() {
            assert_eq!(
                &outs[&(i as u64)],
                w,
                "budget {budget}, prompt {:?}",
                PROMPTS[i]
            );
        }
        assert_eq!(
            s.engine().free_blocks(),
            s.engine().total_blocks(),
            "all blocks free again"
        );
        engine = s.into_engine();
    }
    eprintln!(
        "batched_greedy_equals_generate_alone: {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn preemption_recomputes_to_the_same_tokens() {
    let Some(path) = common::model_path() else {
        return;
    };
    let t0 = Instant::now();
    let n_ctx = 256;
    // 8 blocks of 16 tokens for four requests that grow to 3-4 blocks each: some must be
    // preempted and recomputed.
    let (mut engine, tok) = common::load(&path, n_ctx, 128);
    let max_tokens = 40;
    let prompts: Vec<Vec<u32>> = PROMPTS[..4]
        .iter()
        .map(|p| tok.encode(p, true, true))
        .collect();
    let want: Vec<Out> = prompts
        .iter()
        .map(|p| reference(&mut engine, &tok, p, max_tokens, &[]))
        .collect();
    let mut s = Scheduler::new(
        engine,
        &tok,
        SchedulerConfig {
            max_running: 4,
            token_budget: 64,
            ubatch: 512,
        },
    );
    for (i, p) in prompts.iter().enumerate() {
        s.submit(i as u64, request(p.clone(), max_tokens, &[]))
            .unwrap();
    }
    let mut outs = HashMap::new();
    let preempted = drain(&mut s, &mut outs);
    assert!(preempted > 0, "the test should force preemption");
    for (i, w) in want.iter().enumerate() {
        assert_eq!(&outs[&(i as u64)], w, "prompt {:?}", PROMPTS[i]);
    }
    assert_eq!(s.engine().free_blocks(), s.engine().total_blocks());
    eprintln!(
        "preemption_recomputes_to_the_same_tokens: {preempted} preemptions, {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn cancel_frees_blocks_and_rejects_bad_requests() {
    let Some(path) = common::model_path() else {
        return;
    };
    let (engine, tok) = common::load(&path, 64, 256);
    let mut s = Scheduler::new(engine, &tok, SchedulerConfig::default());
    let p = tok.encode(PROMPTS[0], true, true);
    assert!(s.submit(1, request(vec![], 4, &[])).is_err());
    assert!(
        s.submit(1, request(vec![1; 64], 4, &[])).is_err(),
        "prompt fills the context"
    );
    assert!(s.submit(1, request(p.clone(), 0, &[])).is_err());
    s.submit(1, request(p.clone(), 30, &[])).unwrap();
    assert!(
        s.submit(1, request(p.clone(), 30, &[])).is_err(),
        "duplicate id"
    );
    s.submit(2, request(p.clone(), 30, &[])).unwrap();
    s.step();
    s.step();
    assert!(s.engine().free_blocks() < s.engine().total_blocks());
    assert!(s.cancel(1));
    assert!(s.cancel(2));
    assert!(!s.cancel(3));
    assert!(!s.has_work());
    assert_eq!(s.engine().free_blocks(), s.engine().total_blocks());
    // Max tokens are capped by the context: a 60-token prompt in a 64 context gets 4.
    let long: Vec<u32> = p.iter().copied().cycle().take(60).collect();
    s.submit(5, request(long, 1000, &[])).unwrap();
    let mut outs = HashMap::new();
    drain(&mut s, &mut outs);
    assert!(outs[&5].tokens.len() <= 4);
}

/// Requests sharing a long prompt prefix: later ones start from the cached blocks of earlier
/// ones (also after those finished and freed them), and every answer still equals `generate`
/// alone; at the end every block is free again.
#[test]
fn prefix_reuse_keeps_answers_and_frees_blocks() {
    let Some(path) = common::model_path() else {
        return;
    };
    let n_ctx = 256;
    let (mut engine, tok) = common::load(&path, n_ctx, n_ctx * 4);
    let system = "You are a careful assistant who answers programming questions with short, \
                  correct code and one sentence of explanation. Never add anything else: no \
                  greetings, no apologies, no alternatives, no warnings, and no questions back \
                  to the user. Use the language the question names, and keep every line \
                  of code under eighty characters.\n";
    let questions = [
        "Reverse a list in Python.",
        "Sum an array in C.",
        "Sort strings in Rust.",
    ];
    let prompts: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| tok.encode(&format!("{system}{q}\n"), true, true))
        .collect();
    let max_tokens = 12;
    let want: Vec<Out> = prompts
        .iter()
        .map(|p| reference(&mut engine, &tok, p, max_tokens, &[]))
        .collect();
    let mut s = Scheduler::new(engine, &tok, SchedulerConfig::default());
    let mut outs = HashMap::new();
    let mut hits = 0;
    // The first alone (it registers the prefix, then frees its blocks), the others together.
    for (i, p) in prompts.iter().enumerate() {
        s.submit(i as u64, request(p.clone(), max_tokens, &[]))
            .unwrap();
        if i == 0 {
            while s.has_work() {
                let o = s.step();
                hits += o.stats.prefix_hit_tokens;
                apply(&mut outs, o.events);
            }
        }
    }
    while s.has_work() {
        let o = s.step();
        hits += o.stats.prefix_hit_tokens;
        apply(&mut outs, o.events);
    }
    for (i, w) in want.iter().enumerate() {
        assert_eq!(&outs[&(i as u64)], w, "prompt {i}");
    }
    // The shared system text is several full blocks; the CPU shares the blocks whose tokens
    // take the chunk-independent kernel route and attention (chunks of 64+ tokens).
    assert!(hits >= 2 * 32, "prefix tokens reused: {hits}");
    assert_eq!(s.engine().free_blocks(), s.engine().total_blocks());
}
