//! Regex pre-tokenizers for byte-level BPE, chosen by `tokenizer.ggml.pre`.
//!
//! Every character of the input ends up in exactly one piece: text between regex matches
//! (which these patterns never leave, but other patterns could) becomes a piece of its own,
//! as in llama.cpp's `unicode_regex_split`.

use fancy_regex::Regex;

/// GPT-2 (`gpt-2`, `default` and names without a pattern of their own here; llama.cpp has
/// bespoke patterns for some of those, e.g. deepseek-coder or starcoder, which may split
/// differently).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// Llama 3 (`llama-bpe`, `llama3` and relatives): digits in groups of up to three.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen 2 (`qwen2`): the Llama 3 pattern with single digits.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

#[derive(Clone)]
pub struct PreTokenizer {
    regex: Regex,
    /// Emit a whole pre-token as one token when it is in the vocabulary (Llama 3).
    pub(crate) ignore_merges: bool,
}

impl PreTokenizer {
    /// The pre-tokenizer for a `tokenizer.ggml.pre` value.
    pub fn for_pre(pre: &str) -> PreTokenizer {
        let (pattern, ignore_merges) = match pre {
            "qwen2" | "deepseek-r1-qwen" | "qwen35" => (QWEN2, false),
            "llama3" | "llama-bpe" | "llama-v3" | "falcon3" | "smaug-bpe" | "dbrx" | "pixtral" => {
                (LLAMA3, true)
            }
            _ => (GPT2, false),
        };
        PreTokenizer {
            regex: Regex::new(pattern).expect("built-in pre-tokenizer regex compiles"),
            ignore_merges,
        }
    }

    /// Split `text` into pre-tokens.
    pub fn split<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut out = Vec::new();
        let mut last = 0;
        for m in self.regex.find_iter(text) {
            // The patterns cannot fail on valid UTF-8 input within fancy-regex's backtrack
            // limit for realistic pieces; if one does, keep the rest as one piece.
            let Ok(m) = m else { break };
            if m.start() > last {
                out.push(&text[last..m.start()]);
            }
            if m.end() > m.start() {
                out.push(m.as_str());
            }
            last = m.end();
        }
        if last < text.len() {
            out.push(&text[last..]);
        }
        out
    }
}
