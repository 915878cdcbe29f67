//! SentencePiece (SPM) tokenization as llama.cpp's `llm_tokenizer_spm` does it.
//!
//! The text (spaces replaced by U+2581, optionally with a prefix space) starts as one symbol
//! per character. Every adjacent pair whose concatenation is a vocabulary token is a
//! candidate; the candidate with the highest score (ties: leftmost) is merged first, and new
//! candidates with the neighbours are queued. Symbols that are not tokens at the end fall
//! back to `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use crate::Tokenizer;

pub(crate) const SPACE: char = '\u{2581}';

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    end: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the leftmost pair.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score.total_cmp(&o.score).then(o.left.cmp(&self.left))
    }
}

/// Tokenize one raw-text fragment, appending ids to `out`.
pub(crate) fn encode(t: &Tokenizer, fragment: &str, space_prefix: bool, out: &mut Vec<u32>) {
    let mut text = String::with_capacity(fragment.len() * 3 / 2 + 3);
    if space_prefix {
        text.push(SPACE);
    }
    for c in fragment.chars() {
        text.push(if c == ' ' { SPACE } else { c });
    }
    if text.is_empty() {
        return;
    }

    let mut syms: Vec<Symbol> = Vec::with_capacity(text.len());
    for (i, (start, c)) in text.char_indices().enumerate() {
        syms.push(Symbol {
            start,
            end: start + c.len_utf8(),
            prev: i.checked_sub(1),
            next: None,
        });
        if i > 0 {
            syms[i - 1].next = Some(i);
        }
    }

    let mut queue = BinaryHeap::new();
    let try_add =
        |queue: &mut BinaryHeap<Bigram>, syms: &[Symbol], l: Option<usize>, r: Option<usize>| {
            let (Some(l), Some(r)) = (l, r) else { return };
            let s = &text[syms[l].start..syms[r].end];
            if let Some(id) = t.token_id(s) {
                queue.push(Bigram {
                    score: t.scores[id as usize],
                    left: l,
                    right: r,
                    size: s.len(),
                });
            }
        };
    for i in 1..syms.len() {
        try_add(&mut queue, &syms, Some(i - 1), Some(i));
    }

    while let Some(b) = queue.pop() {
        let (l, r) = (syms[b.left], syms[b.right]);
        // Outdated: one side was merged away or grew since the pair was queued.
        if l.start == l.end || r.start == r.end || (l.end - l.start) + (r.end - r.start) != b.size {
            continue;
        }
        syms[b.left].end = r.end;
        syms[b.left].next = r.next;
        syms[b.right].end = syms[b.right].start;
        if let Some(n) = r.next {
            syms[n].prev = Some(b.left);
        }
        let (prev, next) = (syms[b.left].prev, syms[b.left].next);
        try_add(&mut queue, &syms, prev, Some(b.left));
        try_add(&mut queue, &syms, Some(b.left), next);
    }

    let mut i = Some(0);
    while let Some(k) = i {
        let s = &text[syms[k].start..syms[k].end];
        match t.token_id(s) {
            Some(id) => out.push(id),
            None => {
                for &b in s.as_bytes() {
                    out.extend(byte_fallback(t, b));
                }
            }
        }
        i = syms[k].next;
    }
}

/// `<0xXX>`, else the byte itself as a one-character token, else the unknown token.
pub(crate) fn byte_fallback(t: &Tokenizer, b: u8) -> Option<u32> {
    t.byte_tokens[b as usize]
        .or_else(|| {
            if b.is_ascii() {
                t.token_id((b as char).encode_utf8(&mut [0; 4]))
            } else {
                None
            }
        })
        .or(t.unk)
}
