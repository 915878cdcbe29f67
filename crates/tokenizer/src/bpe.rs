//! Rank-ordered BPE merges (shared by GPT-2 byte-level BPE and Gemma 4) and the GPT-2
//! byte <-> unicode mapping.
//!
//! A word starts as one symbol per code point. Adjacent pairs listed in
//! `tokenizer.ggml.merges` are candidates; the lowest rank (ties: leftmost) merges first, as
//! in llama.cpp's `llm_tokenizer_bpe_session`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::OnceLock;

use crate::Tokenizer;

/// GPT-2's printable stand-in for each byte.
pub fn byte_to_char(b: u8) -> char {
    tables().0[b as usize]
}

/// The byte a GPT-2 stand-in character represents.
pub fn char_to_byte(c: char) -> Option<u8> {
    let i = c as u32;
    if i < 324 {
        let b = tables().1[i as usize];
        (b != u16::MAX).then_some(b as u8)
    } else {
        None
    }
}

fn tables() -> &'static ([char; 256], [u16; 324]) {
    static T: OnceLock<([char; 256], [u16; 324])> = OnceLock::new();
    T.get_or_init(|| {
        let printable = |b: u32| {
            (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
        };
        let mut fwd = ['\0'; 256];
        let mut rev = [u16::MAX; 324];
        let mut n = 0u32;
        for b in 0..256u32 {
            let c = if printable(b) {
                b
            } else {
                n += 1;
                255 + n
            };
            fwd[b as usize] = char::from_u32(c).expect("valid code point");
            rev[c as usize] = b as u16;
        }
        (fwd, rev)
    })
}

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    end: usize,
    id: Option<u32>,
    prev: Option<usize>,
    next: Option<usize>,
}

/// Run the merges over `word`. Returns the final symbols as (text, id when a token).
pub(crate) fn merge_word<'w>(t: &Tokenizer, word: &'w str) -> Vec<(&'w str, Option<u32>)> {
    let mut syms: Vec<Symbol> = Vec::with_capacity(word.len());
    for (i, (start, c)) in word.char_indices().enumerate() {
        let end = start + c.len_utf8();
        syms.push(Symbol {
            start,
            end,
            id: t.token_id(&word[start..end]),
            prev: i.checked_sub(1),
            next: None,
        });
        if i > 0 {
            syms[i - 1].next = Some(i);
        }
    }

    // Heap entries: (rank, left index, left id, right id) - the ids detect stale entries.
    let mut queue: BinaryHeap<Reverse<(u32, usize, u32, u32)>> = BinaryHeap::new();
    let add = |queue: &mut BinaryHeap<_>, syms: &[Symbol], l: Option<usize>| {
        let Some(l) = l else { return };
        let Some(r) = syms[l].next else { return };
        if let (Some(a), Some(b)) = (syms[l].id, syms[r].id) {
            if let Some(&(rank, _)) = t.merges.get(&(a, b)) {
                queue.push(Reverse((rank, l, a, b)));
            }
        }
    };
    for i in 0..syms.len() {
        add(&mut queue, &syms, Some(i));
    }

    while let Some(Reverse((_, l, a, b))) = queue.pop() {
        let left = syms[l];
        let Some(r) = left.next else { continue };
        let right = syms[r];
        if left.start == left.end || left.id != Some(a) || right.id != Some(b) {
            continue;
        }
        let merged = t.merges[&(a, b)].1;
        syms[l].end = right.end;
        syms[l].id = Some(merged);
        syms[l].next = right.next;
        syms[r].end = syms[r].start;
        if let Some(n) = right.next {
            syms[n].prev = Some(l);
        }
        add(&mut queue, &syms, left.prev);
        add(&mut queue, &syms, Some(l));
    }

    let mut out = Vec::new();
    let mut i = if syms.is_empty() { None } else { Some(0) };
    while let Some(k) = i {
        let s = syms[k];
        out.push((&word[s.start..s.end], s.id));
        i = s.next;
    }
    out
}

/// GPT-2 byte-level BPE of one raw-text fragment.
pub(crate) fn encode(t: &Tokenizer, fragment: &str, out: &mut Vec<u32>) {
    let pre = t
        .pretok
        .as_ref()
        .expect("BPE tokenizer has a pre-tokenizer");
    let mut word = String::new();
    for piece in pre.split(fragment) {
        word.clear();
        word.extend(piece.bytes().map(byte_to_char));
        if pre.ignore_merges {
            if let Some(id) = t.token_id(&word) {
                out.push(id);
                continue;
            }
        }
        for (s, id) in merge_word(t, &word) {
            match id {
                Some(id) => out.push(id),
                // Not a token (only with broken vocabularies): try its characters one by
                // one, dropping what is missing, as llama.cpp does.
                None => out.extend(
                    s.chars()
                        .filter_map(|c| t.token_id(c.encode_utf8(&mut [0; 4]))),
                ),
            }
        }
    }
}
