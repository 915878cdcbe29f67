//! Encoding throughput on the real vocabularies (release builds: well under a second for a
//! few KB).

mod common;

use std::time::Instant;

fn corpus() -> String {
    let para = "The quick brown fox jumps over the lazy dog. Ünïcödé 日本語テキスト 🤖🦀\n\
        fn main() {\n    let v: Vec<u32> = (0..1000).map(|i| i * 2).collect();\n    println!(\"{:?}\", v);\n}\n\
        def fibonacci(n):\n\tif n < 2:\n\t\treturn n\n\treturn fibonacci(n - 1) + fibonacci(n - 2)  # slow\n\n";
    para.repeat(16)
}

#[test]
fn encode_speed() {
    let text = corpus();
    for model in common::MODELS {
        let Some(tok) = common::load(model) else {
            continue;
        };
        tok.encode(&text, true, true); // warm up (lazy regex internals, caches)
        let reps = 5;
        let t0 = Instant::now();
        let mut n = 0;
        for _ in 0..reps {
            n = tok.encode(&text, true, true).len();
        }
        let per = t0.elapsed().as_secs_f64() / reps as f64;
        let t1 = Instant::now();
        let ids = tok.encode(&text, true, true);
        let s = tok.decode(&ids, false);
        let dec = t1.elapsed().as_secs_f64();
        assert_eq!(s.len(), text.len());
        eprintln!(
            "{model}: encode {} bytes -> {n} tokens in {:.2} ms ({:.1} MB/s); encode+decode {:.2} ms",
            text.len(),
            per * 1e3,
            text.len() as f64 / per / 1e6,
            dec * 1e3
        );
        let limit = if cfg!(debug_assertions) { 5.0 } else { 0.25 };
        assert!(
            per < limit,
            "{model}: encoding {} bytes took {per:.3} s",
            text.len()
        );
    }
}
