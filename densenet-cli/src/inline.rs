//! Inline specs on the command line (`densenet expand 'pub Net<growth: 12, depth: 40>'`):
//! lexed as Rust tokens, with errors shown under the part of the argument they are about.
//!
//! Token spans know their place in the argument because this crate turns on
//! proc-macro2's `span-locations`.

use std::ops::Range;
use std::str::FromStr;

use densenet_spec::{Span, SpecError};
use proc_macro2::TokenStream;

/// The argument as tokens, or the lexer's complaint under the offending character.
pub fn tokens(text: &str) -> Result<TokenStream, String> {
    TokenStream::from_str(text).map_err(|e| {
        let span = e.span();
        let message = "the spec is not Rust tokens: an unclosed string or bracket, or a character \
                       Rust does not use";
        located(text, message, bytes(text, span))
    })
}

/// Every error, each under the part of `text` it points at.
pub fn render_errors(text: &str, errors: &[SpecError]) -> String {
    errors
        .iter()
        .map(|e| match e.span {
            Span::Rust(span) => located(text, &e.message, bytes(text, span)),
            Span::Yaml { .. } => e.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\nerror: ")
}

/// The bytes of `text` a span covers; the end of the text for spans of no token
/// (a parser's "unexpected end of input").
fn bytes(text: &str, span: proc_macro2::Span) -> Range<usize> {
    match span.source_text() {
        Some(_) => span.byte_range(),
        None => text.len()..text.len(),
    }
}

/// `message`, then the line of `text` holding `at` with carets under it:
///
/// ```text
/// `growth` must be at least 1; got 0
///   |
/// 1 | pub Net<growth: 0, depth: 40>
///   |                 ^
/// ```
fn located(text: &str, message: &str, at: Range<usize>) -> String {
    let start = at.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = &text[line_start..line_end];
    let number = text[..line_start].matches('\n').count() + 1;
    let indent = text[line_start..start].chars().count();
    let end = at.end.clamp(start, line_end);
    let width = text[start..end].chars().count().max(1);
    let gutter = " ".repeat(number.to_string().len());
    format!(
        "{message}\n{gutter} |\n{number} | {line}\n{gutter} | {}{}",
        " ".repeat(indent),
        "^".repeat(width)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carets_sit_under_the_span() {
        assert_eq!(
            located("pub Net<growth: 0>", "bad", 16..17),
            "bad\n  |\n1 | pub Net<growth: 0>\n  |                 ^"
        );
        // Second line of a multi-line argument, a multi-character span.
        assert_eq!(
            located("A<growth: 1,\n  blocks: x>", "bad", 15..21),
            "bad\n  |\n2 |   blocks: x>\n  |   ^^^^^^"
        );
        // The end of the text (nothing to underline): one caret past it.
        assert_eq!(located("A<", "bad", 2..2), "bad\n  |\n1 | A<\n  |   ^");
    }

    #[test]
    fn lexer_errors_are_located() {
        let err = tokens("Net<growth: \"12>").unwrap_err();
        assert!(err.contains("\n1 | Net<growth: \"12>\n"), "{err}");
    }
}
