//! The inline syntax of `densenet!`:
//!
//! ```text
//! specs := (attribute* visibility Ident '<' entries '>' ';'?)*
//! entries := (Ident ':' value),* ','?
//! value := '-'? literal | Ident | '[' value,* ','? ']'
//! ```
//!
//! Values are read token by token rather than as Rust expressions, so `theta: 0.5>`
//! never parses as a comparison.

use proc_macro2::{Delimiter, TokenStream, TokenTree};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream, Parser};
use syn::{Attribute, Ident, Lit, Token, Visibility};

use crate::ast::{Entry, RawSpec, Value};
use crate::check::TOO_LARGE;
use crate::error::{Sp, Span, SpecError};
use crate::keys::example;

/// Parses the input of one `densenet!` call: one or more model declarations.
pub fn parse_specs(tokens: TokenStream) -> Result<Vec<RawSpec>, SpecError> {
    let parser = |input: ParseStream| {
        let mut specs = Vec::new();
        while !input.is_empty() {
            specs.push(input.parse::<SpecItem>()?.0);
            if input.peek(Token![;]) {
                input.parse::<Token![;]>()?;
            }
        }
        if specs.is_empty() {
            return Err(input.error(
                "expected a model, e.g. `pub DenseNet121<growth: 32, blocks: [6, 12, 24, 16], theta: 0.5>`",
            ));
        }
        Ok(specs)
    };
    parser
        .parse2(tokens)
        .map_err(|e| SpecError::new(Span::Rust(e.span()), e.to_string()))
}

struct SpecItem(RawSpec);

impl Parse for SpecItem {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let attrs = input.call(Attribute::parse_outer)?;
        let vis: Visibility = input.parse()?;
        // A keyword before `<` (`pub Self<…>`) is read as a name, so the checks can say
        // why it cannot be one.
        let name: Ident = if input.peek(Ident::peek_any) && input.peek2(Token![<]) {
            input.call(Ident::parse_any)?
        } else {
            input.parse().map_err(|e| {
                syn::Error::new(
                    e.span(),
                    "expected the model's name, e.g. `pub DenseNet121<growth: 32, …>`",
                )
            })?
        };
        if !input.peek(Token![<]) {
            return Err(input.error(format!(
                "expected `<` after `{name}`: write the spec as `{name}<growth: 32, blocks: [6, 12, 24, 16]>`"
            )));
        }
        let open: Token![<] = input.parse()?;
        let unclosed = || {
            syn::Error::new(
                open.span,
                format!("unclosed `<`: end the spec of `{name}` with `>`"),
            )
        };
        let mut entries = Vec::new();
        while !input.peek(Token![>]) {
            if input.is_empty() {
                return Err(unclosed());
            }
            let key: Ident = input
                .call(Ident::parse_any)
                .map_err(|e| syn::Error::new(e.span(), "expected a key, like `growth: 32`"))?;
            let key_name = key.to_string();
            input.parse::<Token![:]>().map_err(|e| {
                syn::Error::new(
                    e.span(),
                    format!("expected `:` after `{key}`, as in `{}`", example(&key_name)),
                )
            })?;
            let value = parse_value(input, &key_name)?;
            entries.push(Entry {
                key: Sp::new(key_name, Span::Rust(key.span())),
                value,
            });
            if input.peek(Token![,]) {
                input.parse::<Token![,]>()?;
            } else if input.is_empty() {
                return Err(unclosed());
            } else if !input.peek(Token![>]) {
                return Err(if input.peek(Ident::peek_any) {
                    input.error("expected `,` before the next key")
                } else {
                    input.error(format!(
                        "expected `,` or `>` after the value of `{key}`; values are literals \
                         such as `32`, `0.5`, `cifar` or `[6, 12]`, not expressions"
                    ))
                });
            }
        }
        input.parse::<Token![>]>()?;
        Ok(SpecItem(RawSpec {
            span: Span::Rust(name.span()),
            name: Sp::new(name.to_string(), Span::Rust(name.span())),
            attrs,
            vis,
            entries,
        }))
    }
}

/// One value of `key`: `-`? literal, a word, or a `[…]` list of values.
fn parse_value(input: ParseStream, key: &str) -> syn::Result<Sp<Value>> {
    if input.peek(Token![-]) {
        let minus: Token![-] = input.parse()?;
        let number = match input.parse::<TokenTree>() {
            Ok(TokenTree::Literal(l)) => Some(l),
            _ => None,
        };
        let value = match number.as_ref().map(|l| literal(l, key)) {
            Some(Ok(Value::Int(i))) => Value::Int(-i),
            Some(Ok(Value::Float(x))) => Value::Float(-x),
            Some(Ok(Value::Other(TOO_LARGE))) => Value::Other(TOO_LARGE),
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(syn::Error::new(
                    minus.span,
                    "`-` must be followed by a number",
                ))
            }
        };
        // On stable Rust a span cannot cover two tokens: point at the sign.
        let span = number
            .and_then(|l| minus.span.join(l.span()))
            .unwrap_or(minus.span);
        return Ok(Sp::new(value, Span::Rust(span)));
    }
    if input.is_empty() || input.peek(Token![,]) || input.peek(Token![>]) {
        return Err(input.error(format!(
            "expected a value for `{key}`, as in `{}`",
            example(key)
        )));
    }
    let tt: TokenTree = input.parse()?;
    let span = Span::Rust(tt.span());
    let value = match &tt {
        TokenTree::Group(g) if g.delimiter() == Delimiter::Bracket => {
            let items = (|input: ParseStream| {
                let mut items = Vec::new();
                while !input.is_empty() {
                    items.push(parse_value(input, key)?);
                    if !input.is_empty() {
                        input.parse::<Token![,]>().map_err(|e| {
                            syn::Error::new(e.span(), "expected `,` between list items")
                        })?;
                    }
                }
                Ok(items)
            })
            .parse2(g.stream())?;
            Value::List(items)
        }
        TokenTree::Ident(i) if i == "true" => Value::Bool(true),
        TokenTree::Ident(i) if i == "false" => Value::Bool(false),
        TokenTree::Ident(i) => Value::Ident(i.to_string()),
        TokenTree::Literal(l) => literal(l, key)?,
        TokenTree::Group(_) => {
            return Err(syn::Error::new(
                tt.span(),
                "expected a value; lists use square brackets: `[6, 12, 24, 16]`",
            ))
        }
        TokenTree::Punct(_) => {
            return Err(syn::Error::new(
                tt.span(),
                format!("expected a value for `{key}`, as in `{}`", example(key)),
            ))
        }
    };
    Ok(Sp::new(value, span))
}

/// A literal token's value. Integers beyond `i128` become [`TOO_LARGE`], which no key
/// accepts, so the checks report them with the spec's other errors. A suffix (`300u8`,
/// `0.5f32`) is refused: the checks choose the types, and `256u8` would pass as 256.
fn literal(l: &proc_macro2::Literal, key: &str) -> syn::Result<Value> {
    let lit = Lit::new(l.clone());
    let suffix = lit.suffix();
    if !suffix.is_empty() {
        let written = l.to_string();
        let plain = written.strip_suffix(suffix).unwrap_or(&written);
        let kind = match lit {
            Lit::Int(_) | Lit::Float(_) => "number",
            _ => "literal",
        };
        return Err(syn::Error::new(
            l.span(),
            format!("`{key}` takes a plain {kind}: write `{plain}`, not `{written}`"),
        ));
    }
    Ok(match lit {
        Lit::Int(i) => i
            .base10_parse::<i128>()
            .map_or(Value::Other(TOO_LARGE), Value::Int),
        Lit::Float(f) => Value::Float(f.base10_parse::<f64>()?),
        Lit::Str(s) => Value::Str(s.value()),
        Lit::Bool(b) => Value::Bool(b.value),
        _ => Value::Other("a literal of another kind"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    #[test]
    fn parses_several_models_with_attributes() {
        let specs = parse_specs(quote! {
            /// Docs.
            pub DenseNet121<growth: 32, blocks: [6, 12, 24, 16], theta: 0.5>;
            #[allow(dead_code)]
            Tiny<growth: 4, depth: 10, stem: cifar, bottleneck: false, eps: -1e-3,>
        })
        .unwrap();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[0].name.value, "DenseNet121");
        assert_eq!(specs[0].attrs.len(), 1);
        assert_eq!(specs[0].entries[2].value.value, Value::Float(0.5));
        assert_eq!(specs[1].entries[3].value.value, Value::Bool(false));
        assert_eq!(specs[1].entries[4].value.value, Value::Float(-1e-3));
        match &specs[0].entries[1].value.value {
            Value::List(items) => assert_eq!(items.len(), 4),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn suffixed_literals_are_refused() {
        for (spec, message) in [
            (
                quote!(X<growth: 32, classes: 300u8>),
                "`classes` takes a plain number: write `300`, not `300u8`",
            ),
            (
                quote!(X<theta: 0.5f32>),
                "`theta` takes a plain number: write `0.5`, not `0.5f32`",
            ),
            (
                quote!(X<blocks: [6, 12usize]>),
                "`blocks` takes a plain number: write `12`, not `12usize`",
            ),
            (
                quote!(X<eps: -1e-5f64>),
                "`eps` takes a plain number: write `1e-5`, not `1e-5f64`",
            ),
            (
                quote!(X<stem: "cifar"x>),
                "`stem` takes a plain literal: write `\"cifar\"`, not `\"cifar\"x`",
            ),
        ] {
            let error = parse_specs(spec).unwrap_err();
            assert_eq!(error.message, message);
        }
    }

    #[test]
    fn syntax_errors_are_errors() {
        for bad in [
            quote!(),
            quote!(pub X),
            quote!(X<growth 32>),
            quote!(X<growth: 32),
            quote!(X<growth: (1)>),
        ] {
            assert!(parse_specs(bad).is_err());
        }
    }
}
