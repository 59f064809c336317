//! YAML spec files: the same keys as the inline syntax, plus `name`.
//!
//! The only file that knows the YAML crate. serde_yaml reports where syntax errors are,
//! but its values carry no positions, so a small scanner over the text finds the line
//! and column of each top-level key and list item for the checks' messages.

use std::collections::HashMap;

use crate::ast::{Entry, RawSpec, Value};
use crate::error::{Sp, Span, SpecError};
use crate::keys::example;

/// Parses the text of a YAML spec. `default_name` names the model when the file has no
/// `name` key (callers derive it from the file name).
///
/// Texts longer than [`MAX_SPEC_BYTES`] are refused. A byte-order mark at the start is
/// skipped; positions count from the character after it.
pub fn parse_yaml(text: &str, default_name: &str) -> Result<RawSpec, Vec<SpecError>> {
    if text.len() > MAX_SPEC_BYTES {
        return Err(vec![too_large(Some(text.len() as u64))]);
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let index = KeyIndex::new(text);
    let doc: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| vec![syntax_error(&e, &index)])?;
    let serde_yaml::Value::Mapping(map) = doc else {
        return Err(vec![SpecError::new(
            at(1, 1),
            "a spec file must be a mapping of keys, like `growth: 32` on its own line",
        )]);
    };
    let mut entries = Vec::new();
    let mut name = Sp::new(default_name.to_string(), at(1, 1));
    let mut errors = Vec::new();
    for (key, value) in &map {
        let Some(key) = key.as_str() else {
            errors.push(SpecError::new(
                at(1, 1),
                "keys must be plain words like `growth`",
            ));
            continue;
        };
        let (key_pos, value_pos) = index.find(key);
        if key == "name" {
            match value.as_str() {
                Some(s) => name = Sp::new(s.to_string(), at(value_pos.0, value_pos.1)),
                None => errors.push(SpecError::new(
                    at(value_pos.0, value_pos.1),
                    "`name` must be a string, the model's type name, e.g. `name: DenseNet121`",
                )),
            }
            continue;
        }
        let items = index.list_items(key);
        entries.push(Entry {
            key: Sp::new(key.to_string(), at(key_pos.0, key_pos.1)),
            value: convert(value, at(value_pos.0, value_pos.1), &items),
        });
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(RawSpec {
        span: at(1, 1),
        name,
        #[cfg(feature = "codegen")]
        attrs: Vec::new(),
        #[cfg(feature = "codegen")]
        vis: syn::parse_quote!(pub),
        entries,
    })
}

/// The largest spec file read, in bytes: 1 MiB. A spec is a dozen lines; this bounds the
/// time any file can take (well under a second) and the errors it can give.
pub const MAX_SPEC_BYTES: usize = 1 << 20;

/// The error for a spec of `size` bytes (unknown: more than the limit) past
/// [`MAX_SPEC_BYTES`].
pub(crate) fn too_large(size: Option<u64>) -> SpecError {
    let size = size.map_or(format!("more than {MAX_SPEC_BYTES}"), |s| s.to_string());
    SpecError::new(
        at(1, 1),
        format!(
            "spec file is {size} bytes; at most {MAX_SPEC_BYTES} (1 MiB) are read: \
             a spec is a few `key: value` lines"
        ),
    )
}

fn at(line: usize, column: usize) -> Span {
    Span::Yaml { line, column }
}

fn syntax_error(e: &serde_yaml::Error, index: &KeyIndex) -> SpecError {
    let (line, column) = e
        .location()
        .map_or((1, 1), |l| index.clamp(l.line(), l.column()));
    let message = short_positions(&e.to_string());
    // serde_yaml rejects a repeated key without saying where: find the repeat.
    if message.starts_with("duplicate entry") {
        if let Some((key, line)) = index.first_repeated_key().filter(|(key, _)| {
            [format!("{key:?}"), format!("`{key}`"), key.to_string()]
                .iter()
                .any(|k| message.ends_with(&format!("with key {k}")))
        }) {
            return SpecError::new(
                at(line + 1, 1),
                format!("duplicate key `{key}`; give each key once"),
            );
        }
    }
    // Integers beyond 64 bits fail inside serde_yaml as "invalid type: integer `…` as u128".
    if let Some(rest) = message
        .split_once("invalid type: integer `")
        .map(|(_, r)| r)
    {
        if let Some((digits, _)) = rest.split_once('`') {
            let key = message.split_once(": invalid type").map_or("", |(k, _)| k);
            let base = key.split('[').next().unwrap_or(key);
            return SpecError::new(
                at(line, column),
                format!(
                    "integer {digits} is too large for `{key}`; use a realistic size, as in `{}`",
                    example(base)
                ),
            );
        }
    }
    let hint = if message.contains("mapping values are not allowed") {
        "; write one `key: value` a line, keys at the start of the line"
    } else if message.contains("tab character") {
        "; indent with spaces"
    } else {
        ""
    };
    SpecError::new(at(line, column), format!("invalid YAML: {message}{hint}"))
}

/// libyaml's message without the position reported separately (the first
/// " at line L column C"), and with later positions as `L:C`:
/// "did not find expected ',' or ']', while parsing a flow sequence at 2:9".
fn short_positions(message: &str) -> String {
    const AT: &str = " at line ";
    let mut out = String::new();
    let mut rest = message;
    let mut first = true;
    while let Some(i) = rest.find(AT) {
        out.push_str(&rest[..i]);
        let after = &rest[i + AT.len()..];
        let line_end = after
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(after.len());
        let (line, tail) = after.split_at(line_end);
        let Some(tail) = tail.strip_prefix(" column ") else {
            out.push_str(AT);
            rest = after;
            continue;
        };
        let col_end = tail
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(tail.len());
        if !first {
            out.push_str(&format!(" at {line}:{}", &tail[..col_end]));
        }
        first = false;
        rest = &tail[col_end..];
    }
    out.push_str(rest);
    out
}

fn convert(value: &serde_yaml::Value, span: Span, items: &[(usize, usize)]) -> Sp<Value> {
    use serde_yaml::Value as Y;
    let v = match value {
        Y::Null => Value::Other("nothing (null)"),
        Y::Bool(b) => Value::Bool(*b),
        Y::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::Int(i.into()),
            (_, Some(u), _) => Value::Int(u.into()),
            (_, _, Some(x)) => Value::Float(x),
            _ => Value::Other("a number"),
        },
        Y::String(s) => Value::Str(s.clone()),
        Y::Sequence(seq) => Value::List(
            seq.iter()
                .enumerate()
                .map(|(i, v)| {
                    let span = items.get(i).map_or(span, |&(l, c)| at(l, c));
                    convert(v, span, &[])
                })
                .collect(),
        ),
        Y::Mapping(_) => Value::Other("a mapping"),
        Y::Tagged(_) => Value::Other("a tagged value"),
    };
    Sp::new(v, span)
}

/// Positions of top-level keys, their values and list items, read off the raw text.
///
/// Built in one pass over the text and looked up by key, so a spec is scanned a fixed
/// number of times whatever its size: rescanning every line for each key made a
/// 150 KB file of keys take minutes.
struct KeyIndex<'a> {
    /// The lines, without their line breaks.
    lines: Vec<&'a str>,
    /// Each key written at the start of a line, in order, with its 0-based line and the
    /// byte offset just past its colon.
    keys: Vec<(String, usize, usize)>,
    /// The first of `keys` for each key.
    first: HashMap<String, usize>,
    /// The second of `keys` written for a key already in `keys`, if any.
    first_repeat: Option<usize>,
}

impl<'a> KeyIndex<'a> {
    /// Lines as YAML (libyaml) counts them: `\n`, `\r\n`, `\r`, NEL, LS and PS all end one.
    fn new(text: &'a str) -> Self {
        let mut lines = Vec::new();
        let mut start = 0;
        let mut chars = text.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}') {
                lines.push(&text[start..i]);
                start = i + c.len_utf8();
                if c == '\r' && matches!(chars.peek(), Some(&(_, '\n'))) {
                    chars.next();
                    start += 1;
                }
            }
        }
        lines.push(&text[start..]);
        let mut index = KeyIndex {
            lines,
            keys: Vec::new(),
            first: HashMap::new(),
            first_repeat: None,
        };
        for (i, line) in index.lines.iter().enumerate() {
            let Some((key, after_colon)) = line_key(line) else {
                continue;
            };
            let k = index.keys.len();
            if index.first.contains_key(&key) {
                index.first_repeat.get_or_insert(k);
            } else {
                index.first.insert(key.clone(), k);
            }
            index.keys.push((key, i, after_colon));
        }
        index
    }

    /// A position inside the text: libyaml puts the end of a text without a final line
    /// break on a line of its own, past the last one.
    fn clamp(&self, line: usize, column: usize) -> (usize, usize) {
        match self.lines.last() {
            Some(last) if line > self.lines.len() => (self.lines.len(), last.chars().count() + 1),
            _ => (line.max(1), column.max(1)),
        }
    }

    /// The first top-level key written twice, with the 0-based line of the repeat.
    fn first_repeated_key(&self) -> Option<(&str, usize)> {
        let (key, line, _) = &self.keys[self.first_repeat?];
        Some((key, *line))
    }

    /// The 0-based line of top-level `key:` and the byte offset just past its colon.
    fn key_line(&self, key: &str) -> Option<(usize, usize)> {
        let (_, line, after_colon) = self.keys[*self.first.get(key)?];
        Some((line, after_colon))
    }

    /// 1-based positions of the key and of its value.
    fn find(&self, key: &str) -> ((usize, usize), (usize, usize)) {
        let Some((i, after_colon)) = self.key_line(key) else {
            return ((1, 1), (1, 1));
        };
        let line = self.lines[i];
        let rest = &line[after_colon..];
        let value_col = after_colon + (rest.len() - rest.trim_start().len());
        let value_pos = if rest.trim().is_empty() || rest.trim_start().starts_with('#') {
            // Block value on the next lines.
            self.next_content_line(i)
                .unwrap_or((i + 1, column(line, after_colon)))
        } else {
            (i + 1, column(line, value_col))
        };
        ((i + 1, 1), value_pos)
    }

    fn next_content_line(&self, i: usize) -> Option<(usize, usize)> {
        (i + 1..self.lines.len()).find_map(|j| {
            let line = self.lines[j];
            let trimmed = line.trim_start();
            (!trimmed.is_empty() && !trimmed.starts_with('#'))
                .then(|| (j + 1, column(line, line.len() - trimmed.len())))
        })
    }

    /// Positions of the items of a list value, flow (`[6, 12]`) or block (`- 6`).
    fn list_items(&self, key: &str) -> Vec<(usize, usize)> {
        let Some((i, after_colon)) = self.key_line(key) else {
            return Vec::new();
        };
        let line = self.lines[i];
        let rest = &line[after_colon..];
        let trimmed = rest.trim_start();
        if trimmed.starts_with('[') {
            let open = after_colon + (rest.len() - trimmed.len());
            // Columns counted as the items go: once per character, not once per item.
            let mut col = column(line, open);
            let mut items = Vec::new();
            let mut expect_item = true;
            for ch in line[open + 1..].chars() {
                col += 1;
                match ch {
                    ']' | '#' => break,
                    ',' => expect_item = true,
                    c if c.is_whitespace() => {}
                    _ if expect_item => {
                        items.push((i + 1, col));
                        expect_item = false;
                    }
                    _ => {}
                }
            }
            return items;
        }
        let mut items = Vec::new();
        for (j, line) in self.lines.iter().enumerate().skip(i + 1) {
            let trimmed = line.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let indent = line.len() - trimmed.len();
            match trimmed.strip_prefix('-') {
                Some(item) => {
                    let col = indent + 1 + (item.len() - item.trim_start().len());
                    items.push((j + 1, column(line, col)));
                }
                None if indent == 0 => break,
                None => {}
            }
        }
        items
    }
}

/// The key a line starts with, plain (`growth:`) or quoted (`"growth":`, `'growth':`),
/// and the byte offset just past its colon.
fn line_key(line: &str) -> Option<(String, usize)> {
    let (key, rest) = if let Some(quoted) = line.strip_prefix('"') {
        // Escapes would change the key: such keys are not found, and sit at 1:1.
        let end = quoted.find(['"', '\\'])?;
        (quoted[..end].to_string(), quoted[end..].strip_prefix('"')?)
    } else if let Some(quoted) = line.strip_prefix('\'') {
        // `''` is a quote inside a single-quoted key.
        let mut end = 0;
        loop {
            end += quoted[end..].find('\'')?;
            if quoted[end + 1..].starts_with('\'') {
                end += 2;
            } else {
                break;
            }
        }
        (quoted[..end].replace("''", "'"), &quoted[end + 1..])
    } else {
        // A plain key ends at the first `:` followed by a space or the end of the line.
        let colon = line
            .match_indices(':')
            .map(|(i, _)| i)
            .find(|&i| line[i + 1..].is_empty() || line[i + 1..].starts_with([' ', '\t']))?;
        let key = line[..colon].trim_end();
        // Comments, list items and flow or block indicators are not plain keys.
        let indicator = key.starts_with(['#', '[', ']', '{', '}', ',', '&', '*', '!', '|', '>'])
            || key.starts_with(['%', '@', '`'])
            || ["- ", "? "].iter().any(|p| key.starts_with(p))
            || key == "-"
            || key == "?";
        if key.is_empty() || key.starts_with(char::is_whitespace) || indicator {
            return None;
        }
        (key.to_string(), &line[colon..])
    };
    let after_key = line.len() - rest.len();
    let colon = rest.len() - rest.trim_start().len();
    rest.trim_start()
        .starts_with(':')
        .then(|| (key, after_key + colon + 1))
}

/// 1-based character column of a byte offset.
fn column(line: &str, byte: usize) -> usize {
    line.get(..byte)
        .map_or(line.chars().count(), |s| s.chars().count())
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(span: Span) -> (usize, usize) {
        match span {
            Span::Yaml { line, column } => (line, column),
            Span::Rust(_) => panic!("not a yaml span"),
        }
    }

    #[test]
    fn keys_values_and_items_have_positions() {
        let text =
            "# comment\nname: Net\ngrowth: 32\nblocks: [6, 0, 24]\ninput:\n  - 3\n  - 64\n  - 64\n";
        let spec = parse_yaml(text, "Default").unwrap();
        assert_eq!(spec.name.value, "Net");
        assert_eq!(pos(spec.name.span), (2, 7));
        assert_eq!(pos(spec.entries[0].key.span), (3, 1));
        assert_eq!(pos(spec.entries[0].value.span), (3, 9));
        let Value::List(items) = &spec.entries[1].value.value else {
            panic!()
        };
        assert_eq!(pos(items[1].span), (4, 13));
        let Value::List(items) = &spec.entries[2].value.value else {
            panic!()
        };
        assert_eq!(pos(items[2].span), (8, 5));
    }

    #[test]
    fn syntax_errors_carry_their_position() {
        let errors = parse_yaml("growth: 32\nblocks: [6, 12\n", "X").unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].message.starts_with("invalid YAML"),
            "{}",
            errors[0].message
        );
        assert!(pos(errors[0].span).0 >= 2);
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let errors = parse_yaml("growth: 32\ngrowth: 12\nblocks: [1]\n", "X").unwrap_err();
        assert_eq!(pos(errors[0].span), (2, 1));
        assert_eq!(
            errors[0].message,
            "duplicate key `growth`; give each key once"
        );
    }

    #[test]
    fn quoted_duplicate_keys_are_found() {
        for (text, line, key) in [
            ("growth: 32\n\"growth\": 12\nblocks: [1]\n", 2, "growth"),
            ("\"growth\": 32\nblocks: [1]\n'growth': 12\n", 3, "growth"),
            ("'it''s': 1\nblocks: [1]\n\"it's\": 2\n", 3, "it's"),
            ("# a: 1\n# a: 1\nblocks: [1]\nblocks: [2]\n", 4, "blocks"),
        ] {
            let errors = parse_yaml(text, "X").unwrap_err();
            assert_eq!(pos(errors[0].span), (line, 1), "{text:?}");
            assert_eq!(
                errors[0].message,
                format!("duplicate key `{key}`; give each key once")
            );
        }
    }

    /// Editors on Windows start files with a byte-order mark; YAML allows one.
    #[test]
    fn a_byte_order_mark_is_skipped() {
        let spec = parse_yaml("\u{feff}growth: 32\nblocks: [6, 12]\n", "X").unwrap();
        assert_eq!(spec.entries[0].key.value, "growth");
        assert_eq!(pos(spec.entries[0].value.span), (1, 9));
        let Value::List(items) = &spec.entries[1].value.value else {
            panic!()
        };
        assert_eq!(pos(items[1].span), (2, 13));
    }

    #[test]
    fn texts_past_the_limit_are_refused() {
        let text = "# padding\n".repeat(MAX_SPEC_BYTES / 10 + 1);
        let errors = parse_yaml(&text, "X").unwrap_err();
        assert_eq!(pos(errors[0].span), (1, 1));
        assert_eq!(
            errors[0].message,
            format!(
                "spec file is {} bytes; at most 1048576 (1 MiB) are read: \
                 a spec is a few `key: value` lines",
                text.len()
            )
        );
        // At the limit, a text is read.
        let mut text = "growth: 4\nblocks: [1]\n".to_string();
        text.push_str(&"#".repeat(MAX_SPEC_BYTES - text.len()));
        assert!(parse_yaml(&text, "X").is_ok());
    }

    #[test]
    fn columns_count_characters_in_long_flow_lists() {
        let mut text = "blocks: [\u{e9}".to_string();
        for _ in 0..1000 {
            text.push_str(", \u{1f980}");
        }
        text.push_str("]\n");
        let index = KeyIndex::new(&text);
        let items = index.list_items("blocks");
        assert_eq!(items.len(), 1001);
        assert_eq!(items[0], (1, 10));
        assert_eq!(items[1000], (1, 10 + 3 * 1000));
    }

    #[test]
    fn lines_end_as_libyaml_ends_them() {
        let spec = parse_yaml("growth: 32\rblocks: [1]\u{2028}theta: 0.5", "X").unwrap();
        assert_eq!(pos(spec.entries[1].key.span), (2, 1));
        assert_eq!(pos(spec.entries[2].value.span), (3, 8));
        // libyaml puts the end of a text without a final newline on a line of its own.
        let errors = parse_yaml("growth: 32\nblocks: [1, 2", "X").unwrap_err();
        assert_eq!(pos(errors[0].span), (2, 14));
    }

    #[test]
    fn huge_integers_name_their_key() {
        let errors = parse_yaml("growth: 1000000000000000000000\n", "X").unwrap_err();
        assert!(
            errors[0]
                .message
                .starts_with("integer 1000000000000000000000 is too large for `growth`"),
            "{}",
            errors[0].message
        );
    }
}
