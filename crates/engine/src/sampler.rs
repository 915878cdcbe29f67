//! Token sampling: penalties, then top-k, top-p, min-p and temperature, then a seeded draw.
//! Temperature 0 (or top-k 1) is greedy: the highest logit, lowest id on ties.

use std::collections::{HashMap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Debug, PartialEq)]
pub struct SamplerParams {
    pub temperature: f32,
    /// 0 = off
    pub top_k: usize,
    /// 1.0 = off
    pub top_p: f32,
    /// 0.0 = off
    pub min_p: f32,
    /// 1.0 = off; divides positive logits (multiplies negative ones) of recent tokens.
    pub repeat_penalty: f32,
    /// Subtracted once from the logit of every recent token.
    pub presence_penalty: f32,
    /// Subtracted per occurrence of a recent token.
    pub frequency_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub penalty_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerParams {
    fn default() -> Self {
        SamplerParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerParams {
    pub fn greedy() -> Self {
        SamplerParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 || self.top_k == 1
    }

    /// Greedy with no penalties: the pick is the raw logits' argmax, which a device backend
    /// can compute without copying the logits (`Engine::step_argmax`).
    pub fn is_plain_greedy(&self) -> bool {
        self.is_greedy()
            && self.repeat_penalty == 1.0
            && self.presence_penalty == 0.0
            && self.frequency_penalty == 0.0
    }
}

pub struct Sampler {
    pub params: SamplerParams,
    rng: StdRng,
    recent: VecDeque<u32>,
}

impl Sampler {
    pub fn new(params: SamplerParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Sampler {
            params,
            rng,
            recent: VecDeque::new(),
        }
    }

    /// Record a token (prompt or generated) for the penalties.
    pub fn accept(&mut self, token: u32) {
        if self.params.penalty_last_n == 0 {
            return;
        }
        if self.recent.len() == self.params.penalty_last_n {
            self.recent.pop_front();
        }
        self.recent.push_back(token);
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let penalised;
        let logits = if self.recent.is_empty()
            || (p.repeat_penalty == 1.0 && p.presence_penalty == 0.0 && p.frequency_penalty == 0.0)
        {
            logits
        } else {
            penalised = self.apply_penalties(logits);
            &penalised
        };
        if p.is_greedy() {
            return argmax(logits);
        }
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, &l)| (i as u32, l))
            .collect();
        if cand.is_empty() {
            return 0;
        }
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 {
            cand.truncate(p.top_k);
        }
        let probs = softmax_sorted(&cand, 1.0);
        if p.top_p < 1.0 {
            let mut cum = 0.0;
            let keep = probs
                .iter()
                .position(|&pr| {
                    cum += pr;
                    cum >= p.top_p
                })
                .map_or(cand.len(), |i| i + 1);
            cand.truncate(keep.max(1));
        }
        if p.min_p > 0.0 {
            let min = probs[0] * p.min_p;
            let keep = probs.iter().take_while(|&&pr| pr >= min).count();
            cand.truncate(keep.max(1));
        }
        let probs = softmax_sorted(&cand, p.temperature);
        let r: f32 = self.rng.gen();
        let mut cum = 0.0;
        for (c, pr) in cand.iter().zip(&probs) {
            cum += pr;
            if r < cum {
                return c.0;
            }
        }
        cand.last().expect("non-empty").0
    }

    fn apply_penalties(&self, logits: &[f32]) -> Vec<f32> {
        let p = &self.params;
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for &t in &self.recent {
            *counts.entry(t).or_default() += 1;
        }
        let mut out = logits.to_vec();
        for (&t, &n) in &counts {
            let Some(l) = out.get_mut(t as usize) else {
                continue;
            };
            if *l > 0.0 {
                *l /= p.repeat_penalty;
            } else {
                *l *= p.repeat_penalty;
            }
            *l -= n as f32 * p.frequency_penalty + p.presence_penalty;
        }
        out
    }
}

/// Index of the largest logit; the lowest index wins ties.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn softmax_sorted(cand: &[(u32, f32)], temperature: f32) -> Vec<f32> {
    let max = cand[0].1;
    let e: Vec<f32> = cand
        .iter()
        .map(|c| ((c.1 - max) / temperature).exp())
        .collect();
    let sum: f32 = e.iter().sum();
    e.into_iter().map(|x| x / sum).collect()
}

fn log_sum_exp(logits: &[f32]) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + logits
        .iter()
        .map(|&l| ((l - max) as f64).exp())
        .sum::<f64>()
        .ln() as f32
}

/// Log-probability of `token` under the raw logits.
pub fn logprob_of(logits: &[f32], token: u32) -> f32 {
    logits[token as usize] - log_sum_exp(logits)
}

/// The `n` most likely tokens with their log-probabilities under the raw logits.
pub fn top_logprobs(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    let lse = log_sum_exp(logits);
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let n = n.min(idx.len());
    if n == 0 {
        return vec![];
    }
    idx.select_nth_unstable_by(n - 1, |&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    idx.truncate(n);
    idx.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    idx.into_iter()
        .map(|i| (i, logits[i as usize] - lse))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..100).map(|i| ((i * 37) % 101) as f32 / 10.0).collect()
    }

    #[test]
    fn greedy_is_argmax() {
        let l = logits();
        let mut s = Sampler::new(SamplerParams::greedy());
        assert_eq!(s.sample(&l), argmax(&l));
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    }

    #[test]
    fn same_seed_same_tokens_and_different_seed_differs() {
        let l: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.1).collect();
        let run = |seed| {
            let mut s = Sampler::new(SamplerParams {
                seed,
                top_k: 0,
                top_p: 1.0,
                min_p: 0.0,
                temperature: 1.0,
                ..Default::default()
            });
            (0..64).map(|_| s.sample(&l)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_and_filters_keep_the_best() {
        let l = logits();
        let best = argmax(&l);
        for params in [
            SamplerParams {
                top_k: 1,
                ..Default::default()
            },
            SamplerParams {
                top_p: 0.0,
                ..Default::default()
            },
            SamplerParams {
                min_p: 1.0,
                ..Default::default()
            },
        ] {
            let mut s = Sampler::new(params);
            for _ in 0..10 {
                assert_eq!(s.sample(&l), best);
            }
        }
    }

    #[test]
    fn penalties_push_recent_tokens_down() {
        let l = vec![2.0, 1.9, 0.0];
        let mut s = Sampler::new(SamplerParams {
            repeat_penalty: 1.5,
            ..SamplerParams::greedy()
        });
        assert_eq!(s.sample(&l), 0);
        s.accept(0);
        assert_eq!(s.sample(&l), 1);
        let mut s = Sampler::new(SamplerParams {
            presence_penalty: 0.5,
            ..SamplerParams::greedy()
        });
        s.accept(0);
        assert_eq!(s.sample(&l), 1);
    }

    #[test]
    fn top_logprobs_are_normalised_and_sorted() {
        let l = vec![0.0, 1.0, 2.0, 3.0];
        let t = top_logprobs(&l, 4);
        assert_eq!(t.iter().map(|x| x.0).collect::<Vec<_>>(), vec![3, 2, 1, 0]);
        let total: f32 = t.iter().map(|x| x.1.exp()).sum();
        assert!((total - 1.0).abs() < 1e-5);
    }
}
