//! The `densenet!` and `densenet_yaml!` macros: a thin shell over `densenet-spec`.
//!
//! Each macro hands its spec to the front door (`densenet_spec::front`: parse → check →
//! plan) and expands what comes back. All errors of a spec are reported at once, each at
//! the offending token (or, for YAML, naming `file:line:column` at the path literal),
//! followed by the front door's stand-in model (a tiny placeholder with the same API) so
//! that later uses of the name do not add a cascade of errors.
//!
//! Use them through the `densenet` crate: its `macro_rules!` wrappers call these with
//! their own `$crate` first (`$crate; pub Net<…>`), and generated code reaches the
//! runtime through that path, so a renamed dependency works.
#![deny(missing_docs)]

use std::path::{Path, PathBuf};

use densenet_spec::expand::expand_model;
use densenet_spec::front::{CheckedSpec, Rejected, SpecSource};
use densenet_spec::{Span, SpecError};
use proc_macro2::{TokenStream, TokenTree};
use quote::quote;

/// `densenet::densenet!`'s implementation: `facade-path; spec…`.
#[doc(hidden)]
#[proc_macro]
pub fn densenet(input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    let (rt, spec) = match split_runtime(input.into()) {
        Ok(split) => split,
        Err(e) => return e.to_compile_error().into(),
    };
    match SpecSource::Inline(spec).check() {
        Ok(models) => models
            .iter()
            .map(|model| expand(model, &rt, rust_error))
            .collect::<TokenStream>()
            .into(),
        Err(e) => syn::Error::new(proc_macro2::Span::call_site(), e)
            .to_compile_error()
            .into(),
    }
}

/// `densenet::densenet_yaml!`'s implementation: `facade-path; "spec.yaml"`.
#[doc(hidden)]
#[proc_macro]
pub fn densenet_yaml(input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    let (rt, rest) = match split_runtime(input.into()) {
        Ok(split) => split,
        Err(e) => return e.to_compile_error().into(),
    };
    let lit = match syn::parse2::<syn::LitStr>(rest) {
        Ok(lit) => lit,
        Err(e) => {
            let msg = "expected the spec's path as a string, e.g. \
                       `densenet_yaml!(\"specs/densenet121.yaml\")`";
            return syn::Error::new(e.span(), msg).to_compile_error().into();
        }
    };
    match expand_yaml(&lit, &rt) {
        Ok(tokens) | Err(tokens) => tokens.into(),
    }
}

/// The facade's path (the tokens before the first `;`, `$crate` from the wrappers) as
/// `<path>::runtime`, and the rest of the input.
fn split_runtime(input: TokenStream) -> syn::Result<(TokenStream, TokenStream)> {
    let mut tokens = input.into_iter();
    let mut facade = TokenStream::new();
    for tt in tokens.by_ref() {
        match tt {
            TokenTree::Punct(p) if p.as_char() == ';' => {
                return Ok((quote!(#facade::runtime), tokens.collect()))
            }
            tt => facade.extend([tt]),
        }
    }
    Err(syn::Error::new(
        proc_macro2::Span::call_site(),
        "use this macro through the `densenet` crate: `densenet::densenet!`",
    ))
}

fn expand_yaml(lit: &syn::LitStr, rt: &TokenStream) -> Result<TokenStream, TokenStream> {
    let fail = |msg: String| syn::Error::new(lit.span(), msg).to_compile_error();
    let rel = lit.value();
    if Path::new(&rel).is_absolute() {
        return Err(fail(format!(
            "absolute path `{rel}`: give the spec's path relative to the crate root (CARGO_MANIFEST_DIR), \
             e.g. \"specs/densenet121.yaml\""
        )));
    }
    let full = spec_root().join(&rel);
    let models = SpecSource::YamlFile(&full).check().map_err(|e| {
        let shown = full.display();
        fail(match e.source.kind() {
            std::io::ErrorKind::NotFound => format!(
                "spec file `{rel}` not found (looked for {shown}); \
                 paths are relative to the crate root (CARGO_MANIFEST_DIR)"
            ),
            _ => format!("cannot read spec file `{rel}` at {shown}: {}", e.source),
        })
    })?;
    let model: TokenStream = models
        .iter()
        .map(|m| expand(m, rt, |e| syn::Error::new(lit.span(), located(&rel, e))))
        .collect();
    let full = full.to_string_lossy().into_owned();
    // Makes Cargo rebuild when the spec changes.
    Ok(quote! {
        const _: &str = ::core::include_str!(#full);
        #model
    })
}

/// The directory spec paths are relative to: the calling crate's root.
///
/// `DENSENET_MANIFEST_DIR`, when set, takes the place of `CARGO_MANIFEST_DIR`: harnesses
/// such as trybuild compile test cases in a generated crate under `target/`, whose
/// manifest directory does not hold the specs (the fix trybuild's author recommends,
/// dtolnay/trybuild#202).
fn spec_root() -> PathBuf {
    std::env::var_os("DENSENET_MANIFEST_DIR")
        .or_else(|| std::env::var_os("CARGO_MANIFEST_DIR"))
        .map_or_else(|| PathBuf::from("."), PathBuf::from)
}

/// `file:line:column: message` for YAML errors.
fn located(path: &str, e: &SpecError) -> String {
    match e.span {
        Span::Yaml { line, column } => format!("{path}:{line}:{column}: {}", e.message),
        Span::Rust(_) => format!("{path}: {}", e.message),
    }
}

fn rust_error(e: &SpecError) -> syn::Error {
    match e.span {
        Span::Rust(span) => syn::Error::new(span, &e.message),
        Span::Yaml { .. } => syn::Error::new(proc_macro2::Span::call_site(), e.to_string()),
    }
}

/// The model, or its errors and the stand-in.
fn expand(
    model: &Result<CheckedSpec, Rejected>,
    rt: &TokenStream,
    to_error: impl Fn(&SpecError) -> syn::Error,
) -> TokenStream {
    let code = |m: &CheckedSpec| expand_model(&m.item(), &m.architecture, &m.plan, rt);
    match model {
        Ok(model) => code(model),
        Err(Rejected { errors, stand_in }) => {
            let mut tokens: TokenStream = errors
                .iter()
                .map(|e| to_error(e).to_compile_error())
                .collect();
            tokens.extend(stand_in.as_deref().map(code));
            tokens
        }
    }
}
