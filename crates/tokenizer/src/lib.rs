//! kestrel-tokenizer: the tokenizers of GGUF models, built from `tokenizer.*` metadata.
//!
//! Three algorithms, chosen by `tokenizer.ggml.model`:
//! - `llama`: SentencePiece (SPM) with score-driven merges and `<0xXX>` byte fallback ([`spm`]);
//! - `gpt2`: byte-level BPE with rank-ordered merges and a regex pre-tokenizer picked by
//!   `tokenizer.ggml.pre` ([`bpe`], [`pretokenize`]);
//! - `gemma4`: SentencePiece-style BPE over code points with byte fallback ([`gemma4`]).
//!
//! Behaviour follows llama.cpp, which produced the reference token ids in `shared/testdata`:
//! control and user-defined token texts are split out before normal tokenization
//! ([`special`]), the BOS/EOS rule comes from `tokenizer.ggml.add_bos_token`/`add_eos_token`,
//! and end-of-generation tokens are found by id and by their well-known texts.
//!
//! Round trips: `decode(encode(s))== s` for any `s` with byte-level BPE, Gemma 4 and SPM
//! without a prefix space (Gemma 3). Exceptions, shared with llama.cpp and SentencePiece: a
//! literal U+2581 in SPM/Gemma 4 input decodes as a space, and an SPM model with
//! `add_space_prefix` (Llama 2 style) gets a space inserted after every special or
//! user-defined token in the input (the leading prefix space itself is removed by `decode`).

use std::collections::{HashMap, HashSet};

use kestrel_gguf::{GgufError, GgufFile};

pub mod bpe;
pub mod chat;
pub mod decode;
pub mod gemma4;
pub mod pretokenize;
pub mod special;
pub mod spm;

pub use chat::ChatMessage;
pub use decode::StreamDecoder;

/// Which algorithm a tokenizer runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// SentencePiece (`tokenizer.ggml.model = "llama"`).
    Spm,
    /// GPT-2 byte-level BPE (`"gpt2"`); `pre` is `tokenizer.ggml.pre` (`"default"` when absent).
    Bpe { pre: String },
    /// Gemma 4 SentencePiece-style BPE (`"gemma4"`).
    Gemma4,
}

/// Everything that can go wrong building a tokenizer or rendering a chat template.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("GGUF metadata: {0}")]
    Gguf(#[from] GgufError),
    #[error("missing metadata key {0:?}")]
    MissingKey(&'static str),
    #[error("unsupported tokenizer model {0:?} (key tokenizer.ggml.model; supported: llama, gpt2, gemma4)")]
    UnsupportedModel(String),
    #[error("invalid metadata key {key:?}: {reason}")]
    BadMetadata { key: &'static str, reason: String },
    #[error("no chat template: the GGUF has no tokenizer.chat_template and no built-in format fits its vocabulary")]
    NoChatTemplate,
    #[error("chat template: {0}")]
    Template(String),
}

/// `tokenizer.ggml.token_type` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl TokenType {
    fn from_i64(v: i64) -> TokenType {
        match v {
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            // 1 and anything undefined (0 in some old files) behave as normal text.
            _ => TokenType::Normal,
        }
    }
}

/// A tokenizer loaded from GGUF metadata. Cheap to share: `Send + Sync`, immutable.
#[derive(Clone)]
pub struct Tokenizer {
    pub(crate) kind: TokenizerKind,
    pub(crate) pieces: Vec<String>,
    pub(crate) types: Vec<TokenType>,
    pub(crate) scores: Vec<f32>,
    pub(crate) token_to_id: HashMap<String, u32>,
    /// BPE merges: (left id, right id) -> (rank, merged id).
    pub(crate) merges: HashMap<(u32, u32), (u32, u32)>,
    /// `<0xXX>` byte tokens by byte value.
    pub(crate) byte_tokens: Vec<Option<u32>>,
    pub(crate) bos: Option<u32>,
    pub(crate) eos: Option<u32>,
    pub(crate) unk: Option<u32>,
    pub(crate) add_bos: bool,
    pub(crate) add_eos: bool,
    pub(crate) add_space_prefix: bool,
    pub(crate) specials: special::SpecialMatcher,
    pub(crate) eog: HashSet<u32>,
    pub(crate) chat_template: Option<String>,
    pub(crate) pretok: Option<pretokenize::PreTokenizer>,
}

fn bad(key: &'static str, reason: impl Into<String>) -> TokenizerError {
    TokenizerError::BadMetadata {
        key,
        reason: reason.into(),
    }
}

/// An optional token id key, checked against the vocabulary size.
fn token_id_key(
    f: &GgufFile,
    key: &'static str,
    n_vocab: usize,
) -> Result<Option<u32>, TokenizerError> {
    match f.get_u64(key)? {
        None => Ok(None),
        Some(id) if (id as usize) < n_vocab => Ok(Some(id as u32)),
        // Some converters write -1 / u32::MAX for "none".
        Some(id) if id == u32::MAX as u64 || id == u64::MAX => Ok(None),
        Some(id) => Err(bad(
            key,
            format!("token id {id} is outside the vocabulary of {n_vocab}"),
        )),
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("vocab_size", &self.pieces.len())
            .field("merges", &self.merges.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .field("add_eos", &self.add_eos)
            .field("add_space_prefix", &self.add_space_prefix)
            .field("eog", &self.eog_ids())
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

impl Tokenizer {
    /// Build the tokenizer described by a GGUF file's `tokenizer.*` keys.
    pub fn from_gguf(f: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        const MODEL: &str = "tokenizer.ggml.model";
        const TOKENS: &str = "tokenizer.ggml.tokens";
        const TYPES: &str = "tokenizer.ggml.token_type";
        const SCORES: &str = "tokenizer.ggml.scores";
        const MERGES: &str = "tokenizer.ggml.merges";

        let model = f.get_str(MODEL)?.ok_or(TokenizerError::MissingKey(MODEL))?;
        let kind = match model {
            "llama" => TokenizerKind::Spm,
            "gpt2" => TokenizerKind::Bpe {
                pre: f
                    .get_str("tokenizer.ggml.pre")?
                    .unwrap_or("default")
                    .to_string(),
            },
            "gemma4" => TokenizerKind::Gemma4,
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        };

        let tokens = f
            .get_str_array(TOKENS)?
            .ok_or(TokenizerError::MissingKey(TOKENS))?;
        let n = tokens.len();
        if n == 0 {
            return Err(bad(TOKENS, "empty vocabulary"));
        }
        if n > u32::MAX as usize {
            return Err(bad(TOKENS, format!("{n} tokens do not fit u32 ids")));
        }
        let pieces: Vec<String> = tokens.iter().map(|s| s.to_string()).collect();

        let types: Vec<TokenType> = match f.get_array(TYPES)? {
            None => vec![TokenType::Normal; n],
            Some(a) if a.len() != n => {
                return Err(bad(TYPES, format!("{} entries for {n} tokens", a.len())));
            }
            Some(a) => a
                .iter()
                .map(|v| v.as_i64().map(TokenType::from_i64))
                .collect::<Option<_>>()
                .ok_or_else(|| bad(TYPES, "not an integer array"))?,
        };
        let scores: Vec<f32> = match f.get_array(SCORES)? {
            None => vec![0.0; n],
            Some(a) if a.len() != n => {
                return Err(bad(SCORES, format!("{} entries for {n} tokens", a.len())));
            }
            Some(a) => a
                .iter()
                .map(|v| v.as_f64().map(|x| x as f32))
                .collect::<Option<_>>()
                .ok_or_else(|| bad(SCORES, "not a numeric array"))?,
        };

        // First occurrence wins for duplicated texts (as HF does for its vocab map).
        let mut token_to_id = HashMap::with_capacity(n);
        for (i, p) in pieces.iter().enumerate() {
            token_to_id.entry(p.clone()).or_insert(i as u32);
        }

        let mut byte_tokens = vec![None; 256];
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            *slot = token_to_id.get(&format!("<0x{b:02X}>")).copied();
        }

        let mut merges = HashMap::new();
        if !matches!(kind, TokenizerKind::Spm) {
            let list = f
                .get_str_array(MERGES)?
                .ok_or(TokenizerError::MissingKey(MERGES))?;
            merges.reserve(list.len());
            for (rank, m) in list.iter().enumerate() {
                // Split at the first space after the first character (the parts never contain
                // a literal space: byte-level BPE maps it to 'Ġ', Gemma 4 to '▁').
                let split = m
                    .char_indices()
                    .skip(1)
                    .find(|&(_, c)| c == ' ')
                    .map(|(i, _)| i);
                let Some(i) = split else {
                    return Err(bad(
                        MERGES,
                        format!("merge {rank} ({m:?}) has no separating space"),
                    ));
                };
                let (l, r) = (&m[..i], &m[i + 1..]);
                let (Some(&li), Some(&ri)) = (token_to_id.get(l), token_to_id.get(r)) else {
                    continue;
                };
                let mut joined = String::with_capacity(l.len() + r.len());
                joined.push_str(l);
                joined.push_str(r);
                if let Some(&mi) = token_to_id.get(&joined) {
                    merges.entry((li, ri)).or_insert((rank as u32, mi));
                }
            }
        }

        let bos = token_id_key(f, "tokenizer.ggml.bos_token_id", n)?;
        let eos = token_id_key(f, "tokenizer.ggml.eos_token_id", n)?;
        let unk = token_id_key(f, "tokenizer.ggml.unknown_token_id", n)?.or_else(|| {
            types
                .iter()
                .position(|&t| t == TokenType::Unknown)
                .map(|i| i as u32)
        });

        let add_bos = match kind {
            TokenizerKind::Gemma4 => true,
            TokenizerKind::Spm => f.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(true),
            TokenizerKind::Bpe { .. } => {
                f.get_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false)
            }
        };
        let add_eos = f.get_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
        let add_space_prefix = match kind {
            TokenizerKind::Spm => f
                .get_bool("tokenizer.ggml.add_space_prefix")?
                .unwrap_or(true),
            _ => false,
        };
        if add_bos && bos.is_none() {
            return Err(bad(
                "tokenizer.ggml.bos_token_id",
                "absent, but the model adds a BOS token",
            ));
        }
        if add_eos && eos.is_none() {
            return Err(bad(
                "tokenizer.ggml.eos_token_id",
                "absent, but tokenizer.ggml.add_eos_token is true",
            ));
        }

        let pretok = match &kind {
            TokenizerKind::Bpe { pre } => Some(pretokenize::PreTokenizer::for_pre(pre)),
            _ => None,
        };
        let specials = special::SpecialMatcher::new(&pieces, &types);
        let mut tok = Tokenizer {
            kind,
            pieces,
            types,
            scores,
            token_to_id,
            merges,
            byte_tokens,
            bos,
            eos,
            unk,
            add_bos,
            add_eos,
            add_space_prefix,
            specials,
            eog: HashSet::new(),
            chat_template: f.get_str("tokenizer.chat_template")?.map(str::to_string),
            pretok,
        };
        let eot = token_id_key(f, "tokenizer.ggml.eot_token_id", n)?;
        let eom = token_id_key(f, "tokenizer.ggml.eom_token_id", n)?;
        tok.eog = special::eog_set(&tok, [eos, eot, eom]);
        Ok(tok)
    }

    pub fn kind(&self) -> &TokenizerKind {
        &self.kind
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    /// Tokenize `text`.
    ///
    /// `add_special`: apply the model's add_bos/add_eos rule. `parse_special`: recognise
    /// control token texts such as `<|im_start|>` in `text`. User-defined tokens (Gemma 3's
    /// whitespace runs, Qwen's `<tool_call>`) are always recognised, as in llama.cpp and HF.
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        // SPM adds the prefix space at the start and after every special token.
        let mut prev_special = true;
        for frag in self.specials.partition(text, parse_special) {
            match frag {
                special::Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                special::Fragment::Text(s) => {
                    match &self.kind {
                        TokenizerKind::Spm => {
                            spm::encode(self, s, self.add_space_prefix && prev_special, &mut out)
                        }
                        TokenizerKind::Bpe { .. } => bpe::encode(self, s, &mut out),
                        TokenizerKind::Gemma4 => gemma4::encode(self, s, &mut out),
                    }
                    prev_special = false;
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    /// Decode ids to text; control tokens (bos/eos/turn markers) are rendered only when
    /// `render_special`. Invalid UTF-8 is replaced by U+FFFD.
    pub fn decode(&self, ids: &[u32], render_special: bool) -> String {
        decode::decode(self, ids, render_special)
    }

    /// The raw vocabulary string of a token.
    pub fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(String::as_str)
    }

    /// The bytes this token decodes to (no prefix-space removal).
    pub fn token_bytes(&self, id: u32, render_special: bool) -> Vec<u8> {
        let mut v = Vec::new();
        decode::push_token_bytes(self, id, render_special, &mut v);
        v
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// End of generation: eos, eot, and tokens such as `<|im_end|>`, `<|endoftext|>`,
    /// `<end_of_turn>`, Gemma 4's `<turn|>`.
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// All end-of-generation ids, ascending.
    pub fn eog_ids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.eog.iter().copied().collect();
        v.sort_unstable();
        v
    }

    /// Control and user-defined tokens, by id.
    pub fn special_tokens(&self) -> Vec<(u32, String)> {
        self.types
            .iter()
            .enumerate()
            .filter(|(_, t)| matches!(t, TokenType::Control | TokenType::UserDefined))
            .map(|(i, _)| (i as u32, self.pieces[i].clone()))
            .collect()
    }

    /// `tokenizer.chat_template`, if the GGUF has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Render a chat with the GGUF's template (or a built-in one for its vocabulary).
    /// A leading BOS text is removed when the tokenizer adds BOS itself, so that
    /// `encode(prompt, true, true)` has exactly one BOS (as llama.cpp does).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        chat::apply(self, messages, add_generation_prompt)
    }

    /// The type of a token.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// The id of an exact vocabulary string.
    pub fn token_id(&self, piece: &str) -> Option<u32> {
        self.token_to_id.get(piece).copied()
    }

    pub(crate) fn byte_token(&self, b: u8) -> Option<u32> {
        self.byte_tokens[b as usize].or(self.unk)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokenizer_is_send_sync() {
        fn check<T: Send + Sync + Clone>() {}
        check::<super::Tokenizer>();
    }
}
