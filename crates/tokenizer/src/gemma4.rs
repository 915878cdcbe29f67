//! Gemma 4 tokenization (specs/gemma.md §4.14): SentencePiece-style BPE.
//!
//! - spaces become U+2581, with no prefix space;
//! - the text is split into runs of non-newlines and runs of newlines (`[^\n]+|[\n]+`);
//! - a newline run that is itself a token is emitted whole (`\n\n\n` is one token);
//! - other pieces are merged over code points, lowest merge rank first;
//! - pieces that end up outside the vocabulary fall back to `<0xXX>` byte tokens.

use crate::spm::SPACE;
use crate::Tokenizer;

/// Tokenize one raw-text fragment, appending ids to `out`.
pub(crate) fn encode(t: &Tokenizer, fragment: &str, out: &mut Vec<u32>) {
    let text: String = fragment
        .chars()
        .map(|c| if c == ' ' { SPACE } else { c })
        .collect();
    for chunk in split_newlines(&text) {
        if chunk.starts_with('\n') {
            if let Some(id) = t.token_id(chunk) {
                out.push(id);
                continue;
            }
        }
        for (s, id) in crate::bpe::merge_word(t, chunk) {
            match id {
                Some(id) => out.push(id),
                None => out.extend(s.bytes().filter_map(|b| t.byte_token(b))),
            }
        }
    }
}

/// `[^\n]+|[\n]+`: maximal runs of newlines and of everything else.
fn split_newlines(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        let first = rest.bytes().next()?;
        let is_nl = first == b'\n';
        let len = rest
            .bytes()
            .position(|b| (b == b'\n') != is_nl)
            .unwrap_or(rest.len());
        let (head, tail) = rest.split_at(len);
        rest = tail;
        Some(head)
    })
}

#[cfg(test)]
mod tests {
    use super::split_newlines;

    #[test]
    fn newline_runs() {
        let v: Vec<&str> = split_newlines("a b\n\nc\n").collect();
        assert_eq!(v, ["a b", "\n\n", "c", "\n"]);
        assert_eq!(split_newlines("").count(), 0);
    }
}
