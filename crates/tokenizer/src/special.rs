//! Special tokens: splitting text at control/user-defined token texts, and the
//! end-of-generation set.
//!
//! Splitting follows llama.cpp's `tokenizer_st_partition`: the candidate tokens are taken
//! longest text first, and each one splits every remaining text fragment at all of its
//! non-overlapping occurrences, left to right. Control and unknown tokens take part only
//! with `parse_special`; user-defined tokens always do.

use std::collections::{HashMap, HashSet};

use crate::{TokenType, Tokenizer};

/// A piece of the input: text still to tokenize, or an already recognised token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

#[derive(Clone)]
pub struct SpecialMatcher {
    /// (id, always matched) in llama.cpp's order: longest text first, then by id.
    order: Vec<(u32, bool)>,
    texts: Vec<String>,
    /// text -> index into `order`.
    by_text: HashMap<String, usize>,
    /// Distinct text lengths in bytes, for the occurrence scan.
    lengths: Vec<usize>,
}

impl SpecialMatcher {
    pub fn new(pieces: &[String], types: &[TokenType]) -> SpecialMatcher {
        let mut cands: Vec<(u32, bool)> = types
            .iter()
            .enumerate()
            .filter_map(|(i, t)| match t {
                TokenType::Control | TokenType::Unknown => Some((i as u32, false)),
                TokenType::UserDefined => Some((i as u32, true)),
                _ => None,
            })
            .filter(|&(i, _)| !pieces[i as usize].is_empty())
            .collect();
        cands.sort_by(|a, b| {
            let (la, lb) = (pieces[a.0 as usize].len(), pieces[b.0 as usize].len());
            lb.cmp(&la).then(a.0.cmp(&b.0))
        });
        let texts: Vec<String> = cands
            .iter()
            .map(|&(i, _)| pieces[i as usize].clone())
            .collect();
        let mut by_text = HashMap::new();
        for (k, t) in texts.iter().enumerate() {
            by_text.entry(t.clone()).or_insert(k);
        }
        let mut lengths: Vec<usize> = texts.iter().map(String::len).collect();
        lengths.dedup();
        SpecialMatcher {
            order: cands,
            texts,
            by_text,
            lengths,
        }
    }

    /// Indices (into `order`) of candidates that occur somewhere in `text`, ascending.
    fn occurring(&self, text: &str, parse_special: bool) -> Vec<usize> {
        let mut found = HashSet::new();
        let bytes = text.as_bytes();
        for start in 0..bytes.len() {
            if !text.is_char_boundary(start) {
                continue;
            }
            for &len in &self.lengths {
                let end = start + len;
                if end > bytes.len() || !text.is_char_boundary(end) {
                    continue;
                }
                if let Some(&k) = self.by_text.get(&text[start..end]) {
                    if parse_special || self.order[k].1 {
                        found.insert(k);
                    }
                }
            }
        }
        let mut v: Vec<usize> = found.into_iter().collect();
        v.sort_unstable();
        v
    }

    /// Split `text` into raw-text fragments and special tokens.
    pub fn partition<'a>(&self, text: &'a str, parse_special: bool) -> Vec<Fragment<'a>> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut frags = vec![Fragment::Text(text)];
        for k in self.occurring(text, parse_special) {
            let (id, _) = self.order[k];
            let needle = self.texts[k].as_str();
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Text(mut s) = f else {
                    next.push(f);
                    continue;
                };
                while let Some(pos) = s.find(needle) {
                    if pos > 0 {
                        next.push(Fragment::Text(&s[..pos]));
                    }
                    next.push(Fragment::Token(id));
                    s = &s[pos + needle.len()..];
                }
                if !s.is_empty() {
                    next.push(Fragment::Text(s));
                }
            }
            frags = next;
        }
        frags.retain(|f| !matches!(f, Fragment::Text("")));
        frags
    }
}

/// Texts that end generation wherever they appear in a vocabulary (llama.cpp's list).
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
    // FIM/repository separators of code models (llama.cpp stops on these too).
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|fim_repo|>",
    "<|file_sep|>",
];

/// The end-of-generation ids: the given ids (eos, eot, eom) plus tokens with EOG texts.
/// Gemma 4 stops on `<turn|>` and `<eos>` (HF `eos_token_id: [1, 106]`); its `</s>` is text.
pub(crate) fn eog_set(t: &Tokenizer, ids: [Option<u32>; 3]) -> HashSet<u32> {
    let mut set: HashSet<u32> = ids.into_iter().flatten().collect();
    for text in EOG_TEXTS {
        if let Some(id) = t.token_id(text) {
            set.insert(id);
        }
    }
    if t.kind == crate::TokenizerKind::Gemma4 {
        for text in ["<turn|>", "<eos>"] {
            if let Some(id) = t.token_id(text) {
                set.insert(id);
            }
        }
    }
    set
}
