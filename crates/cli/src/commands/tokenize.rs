//! `kestrel tokenize`: show how a model's tokenizer splits a text, like llama.cpp's
//! `llama-tokenize`.

use std::io::Write;

use anyhow::{Context, Result};
use kestrel_gguf::GgufFile;
use kestrel_tokenizer::Tokenizer;

use crate::models;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Model: a registry name (fetched if needed) or a path to a GGUF file [default: the
    /// default model].
    #[arg(short, long)]
    pub model: Option<String>,
    /// The text to tokenize.
    pub text: String,
    /// Print only the ids, as a list: [1, 2, 3].
    #[arg(long)]
    pub ids_only: bool,
    /// Do not add the BOS token, even if the model asks for it.
    #[arg(long)]
    pub no_bos: bool,
    /// Treat special-token text such as <|im_start|> as plain text.
    #[arg(long)]
    pub no_parse_special: bool,
}

pub fn run(args: Args) -> Result<()> {
    let path = models::resolve_model(args.model.as_deref())?;
    let file = GgufFile::open(&path).with_context(|| format!("cannot load {}", path.display()))?;
    let tok = Tokenizer::from_gguf(&file)
        .with_context(|| format!("cannot load the tokenizer of {}", path.display()))?;
    let ids = tok.encode(&args.text, !args.no_bos, !args.no_parse_special);
    let mut out = std::io::stdout().lock();
    if args.ids_only {
        writeln!(out, "{}", format_ids(&ids))?;
    } else {
        for &id in &ids {
            // Raw bytes, as llama-tokenize prints them (a byte-fallback token may be a partial
            // UTF-8 sequence).
            write!(out, "{id:6} -> '")?;
            out.write_all(&tok.token_bytes(id, true))?;
            writeln!(out, "'")?;
        }
    }
    Ok(())
}

/// `[1, 2, 3]`, like Python's `repr` of a list of ints.
pub fn format_ids(ids: &[u32]) -> String {
    let parts: Vec<String> = ids.iter().map(u32::to_string).collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_print_like_python() {
        assert_eq!(super::format_ids(&[]), "[]");
        assert_eq!(super::format_ids(&[2, 9259, 1902]), "[2, 9259, 1902]");
    }
}
