//! A SentencePiece (`tokenizer.ggml.model = "llama"`) vocabulary of the model's real size, so
//! that llama.cpp and our tokenizer both load the file and any text tokenizes.
//!
//! Layout (as in Llama 2's `tokenizer.model`): `<unk>` 0 (UNKNOWN), `<s>` 1 and `</s>` 2
//! (CONTROL), the 256 byte tokens `<0x00>`..`<0xFF>` at 3..=258 (BYTE), then filler pieces
//! (NORMAL): `▁`, every printable ASCII character alone and after `▁`, then pairs, then triples,
//! ... until the vocabulary is full. Fillers score −1, −2, ... (shorter pieces first), the rest 0.

use std::collections::HashSet;

use kestrel_gguf::{MetaType, MetaValue};

/// U+2581, SentencePiece's space.
const SPACE: char = '\u{2581}';

/// `tokenizer.ggml.token_type` values.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const BYTE: i32 = 6;

pub const UNK_ID: u32 = 0;
pub const BOS_ID: u32 = 1;
pub const EOS_ID: u32 = 2;

pub struct Vocab {
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    pub types: Vec<i32>,
}

/// Printable ASCII, letters and digits first so that the short pieces are the common ones.
fn alphabet() -> Vec<char> {
    let mut a: Vec<char> = ('a'..='z').chain('A'..='Z').chain('0'..='9').collect();
    a.extend(
        (0x21u8..=0x7E)
            .map(char::from)
            .filter(|c| !c.is_ascii_alphanumeric()),
    );
    a
}

/// The vocabulary of `n` tokens (`n` ≥ 259 + 1).
pub fn spm(n: usize) -> Vocab {
    assert!(
        n > 259,
        "an SPM vocabulary of {n} tokens has no room for fillers"
    );
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![UNKNOWN, CONTROL, CONTROL];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(BYTE);
    }
    let mut scores = vec![0.0f32; tokens.len()];
    let mut taken: HashSet<String> = tokens.iter().cloned().collect();
    let mut push = |s: String, tokens: &mut Vec<String>| {
        if tokens.len() < n && taken.insert(s.clone()) {
            tokens.push(s);
            scores.push(-((tokens.len() - 259) as f32));
            types.push(NORMAL);
        }
    };
    push(SPACE.to_string(), &mut tokens);
    let alpha = alphabet();
    let mut len = 1;
    while tokens.len() < n {
        // Odometer over all strings of `len` characters.
        let mut idx = vec![0usize; len];
        loop {
            let s: String = idx.iter().map(|&i| alpha[i]).collect();
            push(s.clone(), &mut tokens);
            push(format!("{SPACE}{s}"), &mut tokens);
            if tokens.len() >= n {
                break;
            }
            let mut k = len;
            while k > 0 {
                k -= 1;
                idx[k] += 1;
                if idx[k] < alpha.len() {
                    break;
                }
                idx[k] = 0;
            }
            if idx.iter().all(|&i| i == 0) {
                break;
            }
        }
        len += 1;
    }
    Vocab {
        tokens,
        scores,
        types,
    }
}

/// The `tokenizer.*` metadata entries.
pub fn metadata(n: usize, add_space_prefix: bool) -> Vec<(String, MetaValue)> {
    let v = spm(n);
    let arr = |ty, items: Vec<MetaValue>| MetaValue::Array(ty, items);
    vec![
        ("tokenizer.ggml.model".into(), "llama".into()),
        (
            "tokenizer.ggml.tokens".into(),
            arr(
                MetaType::Str,
                v.tokens.into_iter().map(MetaValue::Str).collect(),
            ),
        ),
        (
            "tokenizer.ggml.scores".into(),
            arr(
                MetaType::F32,
                v.scores.into_iter().map(MetaValue::F32).collect(),
            ),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            arr(
                MetaType::I32,
                v.types.into_iter().map(MetaValue::I32).collect(),
            ),
        ),
        ("tokenizer.ggml.unknown_token_id".into(), UNK_ID.into()),
        ("tokenizer.ggml.bos_token_id".into(), BOS_ID.into()),
        ("tokenizer.ggml.eos_token_id".into(), EOS_ID.into()),
        ("tokenizer.ggml.add_bos_token".into(), true.into()),
        ("tokenizer.ggml.add_eos_token".into(), false.into()),
        (
            "tokenizer.ggml.add_space_prefix".into(),
            add_space_prefix.into(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spm_vocab_layout() {
        let v = spm(262_144);
        assert_eq!(v.tokens.len(), 262_144);
        assert_eq!((v.scores.len(), v.types.len()), (262_144, 262_144));
        assert_eq!(&v.tokens[..3], &["<unk>", "<s>", "</s>"]);
        assert_eq!(&v.types[..3], &[UNKNOWN, CONTROL, CONTROL]);
        assert_eq!(v.tokens[3], "<0x00>");
        assert_eq!(v.tokens[3 + 0x0A], "<0x0A>");
        assert_eq!(v.tokens[258], "<0xFF>");
        assert!(v.types[3..259].iter().all(|&t| t == BYTE));
        assert!(v.types[259..].iter().all(|&t| t == NORMAL));
        assert_eq!(v.tokens[259], "\u{2581}");
        assert_eq!(v.tokens[260], "a");
        assert_eq!(v.tokens[261], "\u{2581}a");
        // Scores strictly decrease over the fillers, so merges are well ordered.
        assert!(v.scores[259..].windows(2).all(|w| w[0] > w[1]));
        assert!(v.scores.iter().all(|s| s.is_finite()));
        let unique: HashSet<&String> = v.tokens.iter().collect();
        assert_eq!(unique.len(), v.tokens.len());
        // Every character pair is a piece: text never needs byte fallback for ASCII.
        for p in ["he", "\u{2581}he", "lo", "Z9", "~~"] {
            assert!(unique.contains(&p.to_string()), "{p}");
        }
        assert_eq!(spm(300).tokens.len(), 300);
    }
}
