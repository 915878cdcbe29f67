//! Detokenization: whole sequences and incremental (streaming) decoding.

use crate::spm::SPACE;
use crate::{TokenType, Tokenizer, TokenizerKind};

/// Append the bytes of one token.
pub(crate) fn push_token_bytes(t: &Tokenizer, id: u32, render_special: bool, out: &mut Vec<u8>) {
    let Some(piece) = t.pieces.get(id as usize) else {
        return;
    };
    match t.types[id as usize] {
        TokenType::Control | TokenType::Unknown => {
            if render_special {
                out.extend_from_slice(piece.as_bytes());
            }
        }
        // Added tokens are stored as the text they stand for.
        TokenType::UserDefined => out.extend_from_slice(piece.as_bytes()),
        TokenType::Unused => {}
        TokenType::Byte => match parse_byte_piece(piece) {
            Some(b) => out.push(b),
            None => out.extend_from_slice(piece.as_bytes()),
        },
        TokenType::Normal => match t.kind {
            TokenizerKind::Spm | TokenizerKind::Gemma4 => {
                // Files without token types still mark byte tokens by their text.
                if let Some(b) =
                    parse_byte_piece(piece).filter(|&b| t.byte_tokens[b as usize] == Some(id))
                {
                    out.push(b);
                    return;
                }
                let mut buf = [0u8; 4];
                for c in piece.chars() {
                    let c = if c == SPACE { ' ' } else { c };
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
            TokenizerKind::Bpe { .. } => {
                let mut buf = [0u8; 4];
                for c in piece.chars() {
                    match crate::bpe::char_to_byte(c) {
                        Some(b) => out.push(b),
                        None => out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes()),
                    }
                }
            }
        },
    }
}

/// `<0xXX>` -> the byte.
fn parse_byte_piece(p: &str) -> Option<u8> {
    let hex = p.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Tracks the SPM prefix space: with `add_space_prefix`, the first text token after any
/// leading control tokens loses one leading space (the one the encoder added).
#[derive(Clone, Copy)]
struct PrefixStrip {
    pending: bool,
}

impl PrefixStrip {
    fn new(t: &Tokenizer) -> Self {
        PrefixStrip {
            pending: t.add_space_prefix,
        }
    }

    fn apply(&mut self, t: &Tokenizer, id: u32, bytes: &mut Vec<u8>, start: usize) {
        if !self.pending {
            return;
        }
        match t.types.get(id as usize) {
            None | Some(TokenType::Control | TokenType::Unknown | TokenType::Unused) => {}
            Some(_) => {
                if bytes.get(start) == Some(&b' ') {
                    bytes.remove(start);
                }
                self.pending = false;
            }
        }
    }
}

pub(crate) fn decode(t: &Tokenizer, ids: &[u32], render_special: bool) -> String {
    let mut bytes = Vec::with_capacity(ids.len() * 4);
    let mut strip = PrefixStrip::new(t);
    for &id in ids {
        let start = bytes.len();
        push_token_bytes(t, id, render_special, &mut bytes);
        strip.apply(t, id, &mut bytes, start);
    }
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// Incremental detokenizer for streaming: never emits half a UTF-8 character.
///
/// The concatenation of everything `push` and `finish` return equals
/// `Tokenizer::decode` of all pushed ids: complete characters are emitted as soon as they
/// are known, an incomplete sequence is held back until its last byte arrives, and a
/// sequence that can no longer become valid becomes U+FFFD exactly as `decode` does.
pub struct StreamDecoder<'a> {
    tok: &'a Tokenizer,
    render_special: bool,
    pending: Vec<u8>,
    strip: PrefixStrip,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(t: &'a Tokenizer, render_special: bool) -> Self {
        StreamDecoder {
            tok: t,
            render_special,
            pending: Vec::new(),
            strip: PrefixStrip::new(t),
        }
    }

    /// Add one token; returns the text that is now complete (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        let start = self.pending.len();
        push_token_bytes(self.tok, id, self.render_special, &mut self.pending);
        self.strip.apply(self.tok, id, &mut self.pending, start);
        self.drain(false)
    }

    /// End of stream: whatever is held back, with an incomplete tail as U+FFFD.
    pub fn finish(&mut self) -> String {
        self.drain(true)
    }

    /// Bytes held back because they do not yet form a complete character.
    pub fn pending_bytes(&self) -> &[u8] {
        &self.pending
    }

    fn drain(&mut self, at_end: bool) -> String {
        let mut out = String::new();
        let mut pos = 0;
        while pos < self.pending.len() {
            match std::str::from_utf8(&self.pending[pos..]) {
                Ok(s) => {
                    out.push_str(s);
                    pos = self.pending.len();
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    let s =
                        std::str::from_utf8(&self.pending[pos..pos + valid]).expect("valid prefix");
                    out.push_str(s);
                    pos += valid;
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{FFFD}');
                            pos += n;
                        }
                        None if at_end => {
                            out.push('\u{FFFD}');
                            pos = self.pending.len();
                        }
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..pos);
        out
    }
}
