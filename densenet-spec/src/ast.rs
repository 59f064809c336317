//! The spec as written: an ordered list of `key: value` entries, each with its span.
//!
//! Both front ends (the inline `densenet!` syntax and YAML files) produce this; the
//! checks in `check.rs` then treat them alike.

use crate::error::{Sp, Span};
use crate::prelude::*;

/// A literal value as written in a spec.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// An integer literal (negative ones too, so checks can say what was wrong).
    Int(i128),
    /// A floating-point literal.
    Float(f64),
    /// `true` or `false`.
    Bool(bool),
    /// A quoted string, or a plain YAML scalar that is not a number or boolean.
    Str(String),
    /// A bare Rust identifier such as `cifar`.
    Ident(String),
    /// `[a, b, c]`.
    List(Vec<Sp<Value>>),
    /// Anything else (a YAML mapping, null, …), described for the error message.
    Other(&'static str),
}

impl Value {
    /// How the value reads in an error message ("an integer", "a list", …).
    pub fn describe(&self) -> String {
        match self {
            Value::Int(i) => format!("the integer {i}"),
            Value::Float(x) => format!("the float {x}"),
            Value::Bool(b) => format!("`{b}`"),
            Value::Str(s) => format!("the string {s:?}"),
            Value::Ident(s) => format!("`{s}`"),
            Value::List(_) => "a list".to_string(),
            Value::Other(what) => (*what).to_string(),
        }
    }

    /// The word of an identifier or a string, for keys like `stem: cifar`.
    pub fn as_word(&self) -> Option<&str> {
        match self {
            Value::Ident(s) | Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// One `key: value` entry.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The key as written.
    pub key: Sp<String>,
    /// The value as written.
    pub value: Sp<Value>,
}

/// One model declaration, before any checks.
#[derive(Clone)]
pub struct RawSpec {
    /// The model's type name.
    pub name: Sp<String>,
    /// Outer attributes and doc comments (inline syntax only), passed through to the struct.
    #[cfg(feature = "codegen")]
    pub attrs: Vec<syn::Attribute>,
    /// The struct's visibility (`pub` for YAML specs).
    #[cfg(feature = "codegen")]
    pub vis: syn::Visibility,
    /// The entries in the order written.
    pub entries: Vec<Entry>,
    /// Where the whole declaration is, for errors about missing keys.
    pub span: Span,
}

impl core::fmt::Debug for RawSpec {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RawSpec")
            .field("name", &self.name)
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}
