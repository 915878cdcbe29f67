//! The engine thread: owns the model, the KV pool and the scheduler (a backend may be bound to
//! the thread that created it, as CUDA contexts are). Requests arrive over a channel; each
//! request's events go back over its own channel. A request whose receiver is gone (the client
//! disconnected or timed out) is cancelled and its blocks freed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kestrel_engine::{Backend, Event, Request, RequestId, Scheduler, SchedulerConfig, StepStats};
use kestrel_tokenizer::Tokenizer;
use tokio::sync::mpsc::UnboundedSender;

use crate::metrics::Metrics;

pub enum ToEngine {
    Submit(Submission),
    Shutdown,
}

pub struct Submission {
    pub id: RequestId,
    pub request: Request,
    pub events: UnboundedSender<Event>,
    pub arrived: Instant,
}

struct Client {
    events: UnboundedSender<Event>,
    arrived: Instant,
    last_token: Option<Instant>,
}

/// Throughput over the steps of the last few seconds.
struct Window {
    steps: VecDeque<(Instant, StepStats)>,
}

impl Window {
    const SPAN: Duration = Duration::from_secs(10);

    fn push(&mut self, now: Instant, s: StepStats, m: &Metrics) {
        self.steps.push_back((now, s));
        while self
            .steps
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Self::SPAN)
        {
            self.steps.pop_front();
        }
        let rate = |f: fn(&StepStats) -> usize| {
            let (n, t) = self
                .steps
                .iter()
                .filter(|(_, s)| f(s) > 0)
                .fold((0usize, 0f64), |(n, t), (_, s)| {
                    (n + f(s), t + s.elapsed.as_secs_f64())
                });
            if t > 0.0 {
                n as f64 / t
            } else {
                0.0
            }
        };
        m.prefill_tps.set(rate(|s| s.prefill_tokens));
        m.decode_tps.set(rate(|s| s.decode_tokens));
    }
}

pub fn run<B: Backend>(
    engine: kestrel_engine::Engine<B>,
    tok: &Tokenizer,
    config: SchedulerConfig,
    rx: Receiver<ToEngine>,
    metrics: Arc<Metrics>,
) {
    let mut sched = Scheduler::new(engine, tok, config);
    let mut clients: HashMap<RequestId, Client> = HashMap::new();
    let mut window = Window {
        steps: VecDeque::new(),
    };
    metrics
        .kv_blocks_total
        .store(sched.engine().total_blocks() as u64, Relaxed);
    let publish = |sched: &Scheduler<B>| {
        metrics.queue_depth.store(sched.n_waiting() as u64, Relaxed);
        metrics.running.store(sched.n_running() as u64, Relaxed);
        metrics
            .kv_blocks_free
            .store(sched.engine().free_blocks() as u64, Relaxed);
    };
    publish(&sched);
    loop {
        // Take new requests: wait while idle, otherwise only what is already there.
        let mut first = if sched.has_work() {
            None
        } else {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        };
        loop {
            let msg = match first.take() {
                Some(m) => m,
                None => match rx.try_recv() {
                    Ok(m) => m,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                },
            };
            match msg {
                ToEngine::Shutdown => return,
                ToEngine::Submit(s) => match sched.submit(s.id, s.request) {
                    Ok(()) => {
                        clients.insert(
                            s.id,
                            Client {
                                events: s.events,
                                arrived: s.arrived,
                                last_token: None,
                            },
                        );
                    }
                    Err(e) => {
                        metrics.finish("error");
                        let _ = s.events.send(Event::Error {
                            message: e.to_string(),
                        });
                    }
                },
            }
        }

        // Clients that went away.
        let gone: Vec<RequestId> = clients
            .iter()
            .filter(|(_, c)| c.events.is_closed())
            .map(|(&id, _)| id)
            .collect();
        for id in gone {
            clients.remove(&id);
            if sched.cancel(id) {
                metrics.finish("cancelled");
            }
        }

        if sched.has_work() {
            let out = sched.step();
            let now = Instant::now();
            metrics
                .preemptions
                .fetch_add(out.stats.preempted as u64, Relaxed);
            metrics
                .prefix_hit_tokens
                .fetch_add(out.stats.prefix_hit_tokens as u64, Relaxed);
            if out.stats.prefill_tokens + out.stats.decode_tokens > 0 {
                window.push(now, out.stats, &metrics);
            }
            for (id, ev) in out.events {
                let Some(c) = clients.get_mut(&id) else {
                    continue;
                };
                let mut last = false;
                match &ev {
                    Event::Delta { tokens, .. } if !tokens.is_empty() => {
                        metrics
                            .generation_tokens
                            .fetch_add(tokens.len() as u64, Relaxed);
                        match c.last_token {
                            None => lock(&metrics.ttft).observe(now - c.arrived),
                            Some(t) => lock(&metrics.itl).observe(now - t),
                        }
                        c.last_token = Some(now);
                    }
                    Event::Delta { .. } => {}
                    Event::Finished { reason, usage } => {
                        metrics
                            .prompt_tokens
                            .fetch_add(usage.prompt_tokens as u64, Relaxed);
                        metrics.finish(reason.as_str());
                        last = true;
                    }
                    Event::Error { .. } => {
                        metrics.finish("error");
                        last = true;
                    }
                }
                let sent = c.events.send(ev).is_ok();
                if last {
                    clients.remove(&id);
                } else if !sent {
                    clients.remove(&id);
                    if sched.cancel(id) {
                        metrics.finish("cancelled");
                    }
                }
            }
        }
        publish(&sched);
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
