//! Chat templates: `tokenizer.chat_template` rendered with minijinja, or a built-in format
//! chosen from the vocabulary when the GGUF has none.
//!
//! The environment mirrors HF transformers' (`trim_blocks`, `lstrip_blocks`, Python string
//! methods through minijinja-contrib's pycompat, `raise_exception`, `strftime_now`).

use minijinja::{context, Environment, Error, ErrorKind, Value};

use crate::{Tokenizer, TokenizerError, TokenizerKind};

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// `<|im_start|>role\ncontent<|im_end|>\n`.
pub const CHATML: &str = r"{% for m in messages %}{{ '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Gemma 2/3: no system role; a system message is folded into the first user turn.
pub const GEMMA: &str = r"{{ bos_token }}{% if messages and messages[0].role == 'system' %}{% set prefix = (messages[0].content | trim) + '\n\n' %}{% set rest = messages[1:] %}{% else %}{% set prefix = '' %}{% set rest = messages %}{% endif %}{% for m in rest %}{{ '<start_of_turn>' + ('model' if m.role == 'assistant' else m.role) + '\n' + (prefix if loop.first else '') + (m.content | trim) + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";

/// Gemma 4: native system role, assistant rendered as `model`.
pub const GEMMA4: &str = r"{{ bos_token }}{% for m in messages %}{{ '<|turn>' + ('model' if m.role == 'assistant' else m.role) + '\n' + (m.content | trim) + '<turn|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|turn>model\n' }}{% endif %}";

/// Llama 3 header format.
pub const LLAMA3: &str = r"{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m.role + '<|end_header_id|>\n\n' + (m.content | trim) + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

/// The built-in template for a vocabulary without `tokenizer.chat_template`.
pub fn builtin_template(t: &Tokenizer) -> Option<&'static str> {
    let has = |s: &str| t.token_id(s).is_some();
    if has("<|im_start|>") && has("<|im_end|>") {
        Some(CHATML)
    } else if t.kind == TokenizerKind::Gemma4 || (has("<|turn>") && has("<turn|>")) {
        Some(GEMMA4)
    } else if has("<start_of_turn>") && has("<end_of_turn>") {
        Some(GEMMA)
    } else if has("<|start_header_id|>") && has("<|end_header_id|>") && has("<|eot_id|>") {
        Some(LLAMA3)
    } else {
        None
    }
}

pub(crate) fn apply(
    t: &Tokenizer,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
) -> Result<String, TokenizerError> {
    let source = match t.chat_template() {
        Some(s) => s,
        None => builtin_template(t).ok_or(TokenizerError::NoChatTemplate)?,
    };
    let piece = |id: Option<u32>| id.and_then(|i| t.piece(i)).unwrap_or("").to_string();
    let (bos, eos) = (piece(t.bos), piece(t.eos));
    let mut out = render(source, messages, add_generation_prompt, &bos, &eos)?;
    // The tokenizer adds BOS/EOS itself: drop the template's copies (llama.cpp does the same).
    if t.add_bos && !bos.is_empty() && out.starts_with(&bos) {
        out.drain(..bos.len());
    }
    if t.add_eos && !eos.is_empty() && out.ends_with(&eos) {
        out.truncate(out.len() - eos.len());
    }
    Ok(out)
}

/// Render a chat template source with the usual HF variables.
pub fn render(
    source: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String, TokenizerError> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<Value, Error> {
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |fmt: String| -> Result<Value, Error> {
        Ok(Value::from(strftime_now(&fmt)))
    });
    let tmpl = env.template_from_str(source).map_err(|e| {
        TokenizerError::Template(format!("cannot parse tokenizer.chat_template: {e:#}"))
    })?;
    let msgs: Vec<Value> = messages
        .iter()
        .map(|m| context! { role => m.role.as_str(), content => m.content.as_str() })
        .collect();
    tmpl.render(context! {
        messages => msgs,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    })
    .map_err(|e| TokenizerError::Template(format!("rendering failed: {e:#}")))
}

/// The current UTC time formatted with the common strftime fields
/// (`%Y %m %d %e %B %b %H %M %S %y %A %a %j %%`); others are kept verbatim.
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    format_time(secs, fmt)
}

fn format_time(secs: i64, fmt: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    let days = secs.div_euclid(86400);
    let tod = secs.rem_euclid(86400);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy_mar = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_mar + 2) / 153;
    let d = doy_mar - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    const CUM: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = CUM[(m - 1) as usize] + d + i64::from(leap && m > 2);
    let wday = DAYS[days.rem_euclid(7) as usize];
    let month = MONTHS[(m - 1) as usize];

    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out += &y.to_string(),
            Some('y') => out += &format!("{:02}", y.rem_euclid(100)),
            Some('m') => out += &format!("{m:02}"),
            Some('d') => out += &format!("{d:02}"),
            Some('e') => out += &format!("{d:2}"),
            Some('B') => out += month,
            Some('b') => out += &month[..3],
            Some('A') => out += wday,
            Some('a') => out += &wday[..3],
            Some('H') => out += &format!("{:02}", tod / 3600),
            Some('M') => out += &format!("{:02}", tod / 60 % 60),
            Some('S') => out += &format!("{:02}", tod % 60),
            Some('j') => out += &format!("{yday:03}"),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format() {
        // 2024-07-26 13:05:09 UTC, a Friday.
        let t = 1_721_999_109;
        assert_eq!(format_time(t, "%d %b %Y"), "26 Jul 2024");
        assert_eq!(
            format_time(t, "%A %B %e %H:%M:%S %j %y %%"),
            "Friday July 26 13:05:09 208 24 %"
        );
        assert_eq!(format_time(0, "%Y-%m-%d %a"), "1970-01-01 Thu");
        assert_eq!(format_time(951_782_400, "%Y-%m-%d %j"), "2000-02-29 060");
    }

    #[test]
    fn builtin_templates_render() {
        let msgs = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", " Hi "),
            ChatMessage::new("assistant", "Hello."),
            ChatMessage::new("user", "Bye"),
        ];
        let r = |src| render(src, &msgs, true, "<bos>", "<eos>").unwrap();
        assert_eq!(
            r(GEMMA),
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n\
             <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
        assert_eq!(
            r(CHATML),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n Hi <|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n\
             <|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            r(GEMMA4),
            "<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\nHello.<turn|>\n<|turn>user\nBye<turn|>\n<|turn>model\n"
        );
        assert_eq!(
            r(LLAMA3),
            "<bos><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nBye<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
    }

    #[test]
    fn python_methods_and_exceptions() {
        let msgs = [ChatMessage::new("user", "  x  ")];
        let src = "{{ messages[0].content.strip() }}|{{ messages[0].role.startswith('us') }}|{{ 'a,b'.split(',') | length }}";
        assert_eq!(render(src, &msgs, false, "", "").unwrap(), "x|True|2");
        let err = render(
            "{{ raise_exception('no system role') }}",
            &msgs,
            false,
            "",
            "",
        )
        .unwrap_err();
        assert!(err.to_string().contains("no system role"), "{err}");
    }
}
