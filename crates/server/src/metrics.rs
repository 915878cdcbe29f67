//! Server counters and gauges, rendered as Prometheus text at `/metrics`. The engine thread
//! writes the scheduler's numbers after each step; HTTP handlers count responses.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// A Prometheus histogram with fixed upper bounds (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, d: Duration) {
        let v = d.as_secs_f64();
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

const TTFT_BOUNDS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
const ITL_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5,
];

/// An f64 gauge stored as bits.
#[derive(Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Relaxed);
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Relaxed))
    }
}

pub struct Metrics {
    /// Generation requests accepted into the queue.
    pub requests: AtomicU64,
    /// Generation requests that ended, by finish reason (stop, length, cancelled, error).
    pub finished: Mutex<BTreeMap<&'static str, u64>>,
    /// HTTP responses by status code.
    pub responses: Mutex<BTreeMap<u16, u64>>,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    pub preemptions: AtomicU64,
    pub prefix_hit_tokens: AtomicU64,
    /// Requests that ran past the per-request timeout (also counted as cancelled).
    pub timeouts: AtomicU64,
    /// Requests refused with 429 because the queue was full.
    pub rejected: AtomicU64,
    pub queue_depth: AtomicU64,
    pub running: AtomicU64,
    pub kv_blocks_free: AtomicU64,
    pub kv_blocks_total: AtomicU64,
    pub prefill_tps: Gauge,
    pub decode_tps: Gauge,
    pub ttft: Mutex<Histogram>,
    pub itl: Mutex<Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: AtomicU64::new(0),
            finished: Mutex::default(),
            responses: Mutex::default(),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            preemptions: AtomicU64::new(0),
            prefix_hit_tokens: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            running: AtomicU64::new(0),
            kv_blocks_free: AtomicU64::new(0),
            kv_blocks_total: AtomicU64::new(0),
            prefill_tps: Gauge::default(),
            decode_tps: Gauge::default(),
            ttft: Mutex::new(Histogram::new(TTFT_BOUNDS)),
            itl: Mutex::new(Histogram::new(ITL_BOUNDS)),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    pub fn finish(&self, reason: &'static str) {
        *lock(&self.finished).entry(reason).or_default() += 1;
    }

    pub fn response(&self, status: u16) {
        *lock(&self.responses).entry(status).or_default() += 1;
    }

    pub fn render(&self) -> String {
        let mut o = String::new();
        let counter = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        let gauge = |o: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        counter(
            &mut o,
            "kestrel_requests_total",
            "Generation requests accepted.",
            self.requests.load(Relaxed),
        );
        let _ = writeln!(
            o,
            "# HELP kestrel_requests_finished_total Generation requests ended, by reason.\n# TYPE kestrel_requests_finished_total counter"
        );
        for reason in ["stop", "length", "cancelled", "error"] {
            let n = lock(&self.finished).get(reason).copied().unwrap_or(0);
            let _ = writeln!(
                o,
                "kestrel_requests_finished_total{{reason=\"{reason}\"}} {n}"
            );
        }
        let _ = writeln!(
            o,
            "# HELP kestrel_http_responses_total HTTP responses, by status code.\n# TYPE kestrel_http_responses_total counter"
        );
        for (status, n) in lock(&self.responses).iter() {
            let _ = writeln!(o, "kestrel_http_responses_total{{status=\"{status}\"}} {n}");
        }
        counter(
            &mut o,
            "kestrel_prompt_tokens_total",
            "Prompt tokens of finished requests.",
            self.prompt_tokens.load(Relaxed),
        );
        counter(
            &mut o,
            "kestrel_generation_tokens_total",
            "Tokens generated.",
            self.generation_tokens.load(Relaxed),
        );
        counter(
            &mut o,
            "kestrel_preemptions_total",
            "Requests preempted (KV blocks freed, recomputed later).",
            self.preemptions.load(Relaxed),
        );
        counter(
            &mut o,
            "kestrel_prefix_cache_hit_tokens_total",
            "Prompt tokens taken from cached KV blocks of earlier requests instead of computed.",
            self.prefix_hit_tokens.load(Relaxed),
        );
        counter(
            &mut o,
            "kestrel_request_timeouts_total",
            "Requests that ran past the per-request timeout.",
            self.timeouts.load(Relaxed),
        );
        counter(
            &mut o,
            "kestrel_requests_rejected_total",
            "Requests refused because the queue was full (429).",
            self.rejected.load(Relaxed),
        );
        gauge(
            &mut o,
            "kestrel_queue_depth",
            "Requests waiting for admission.",
            self.queue_depth.load(Relaxed) as f64,
        );
        gauge(
            &mut o,
            "kestrel_running_sequences",
            "Requests prefilling or decoding.",
            self.running.load(Relaxed) as f64,
        );
        let (free, total) = (
            self.kv_blocks_free.load(Relaxed),
            self.kv_blocks_total.load(Relaxed),
        );
        gauge(
            &mut o,
            "kestrel_kv_blocks_free",
            "Free KV cache blocks.",
            free as f64,
        );
        gauge(
            &mut o,
            "kestrel_kv_blocks_used",
            "KV cache blocks held by sequences.",
            total.saturating_sub(free) as f64,
        );
        gauge(
            &mut o,
            "kestrel_kv_blocks_total",
            "KV cache blocks in the pool.",
            total as f64,
        );
        gauge(
            &mut o,
            "kestrel_prefill_tokens_per_second",
            "Prompt tokens per second of step time, over steps of the last 10 s that ran prompt tokens.",
            self.prefill_tps.get(),
        );
        gauge(
            &mut o,
            "kestrel_decode_tokens_per_second",
            "Decode tokens per second of step time, over steps of the last 10 s that ran decode tokens.",
            self.decode_tps.get(),
        );
        lock(&self.ttft).render(
            &mut o,
            "kestrel_time_to_first_token_seconds",
            "Time from request arrival to its first generated token.",
        );
        lock(&self.itl).render(
            &mut o,
            "kestrel_inter_token_latency_seconds",
            "Time between consecutive generated tokens of a request.",
        );
        o
    }
}
