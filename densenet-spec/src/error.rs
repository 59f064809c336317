//! Where a spec came from, and what was wrong with it.

use core::fmt;

use crate::prelude::*;

/// A place in a spec: a Rust token (inline `densenet!`) or a line and column of a YAML file.
#[derive(Clone, Copy, Debug)]
pub enum Span {
    /// A token of the macro input.
    Rust(RustSpan),
    /// A 1-based line and column in a YAML file.
    Yaml {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
}

impl Span {
    /// A span for values that were not written by the user (defaults).
    pub fn call_site() -> Self {
        #[cfg(feature = "std")]
        return Span::Rust(proc_macro2::Span::call_site());
        #[cfg(not(feature = "std"))]
        Span::Rust(RustSpan)
    }
}

/// A token's place in the macro input: `proc_macro2::Span` with the `std` feature
/// (which the macros and tools use); nothing without it, where specs are only checked,
/// never parsed from tokens.
#[cfg(feature = "std")]
pub type RustSpan = proc_macro2::Span;

/// A token's place in the macro input: `proc_macro2::Span` with the `std` feature
/// (which the macros and tools use); nothing without it, where specs are only checked,
/// never parsed from tokens.
#[cfg(not(feature = "std"))]
#[derive(Clone, Copy, Debug)]
pub struct RustSpan;

/// A value together with where it was written.
#[derive(Clone, Debug)]
pub struct Sp<T> {
    /// The value.
    pub value: T,
    /// Where it was written.
    pub span: Span,
}

/// Compares values only: where they were written does not matter.
impl<T: PartialEq> PartialEq for Sp<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<T> Sp<T> {
    /// Wraps `value` with its `span`.
    pub fn new(value: T, span: Span) -> Self {
        Sp { value, span }
    }
}

/// One mistake in a spec: where, and a lower-case message that says the fix.
#[derive(Clone, Debug)]
pub struct SpecError {
    /// Where the mistake is.
    pub span: Span,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl SpecError {
    /// A new error at `span`.
    pub fn new(span: Span, message: impl Into<String>) -> Self {
        SpecError {
            span,
            message: message.into(),
        }
    }
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.span {
            Span::Yaml { line, column } => write!(f, "{line}:{column}: {}", self.message),
            Span::Rust(_) => f.write_str(&self.message),
        }
    }
}

impl core::error::Error for SpecError {}

/// All the mistakes found in one spec file, reported together, each with `file:line:column`.
#[derive(Clone, Debug)]
pub struct SpecFileError {
    /// The spec file as the user named it.
    pub path: String,
    /// Every mistake found (at least one).
    pub errors: Vec<SpecError>,
}

impl fmt::Display for SpecFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match e.span {
                Span::Yaml { line, column } => {
                    write!(f, "{}:{line}:{column}: {}", self.path, e.message)?
                }
                Span::Rust(_) => write!(f, "{}: {}", self.path, e.message)?,
            }
        }
        Ok(())
    }
}

impl core::error::Error for SpecFileError {}
