//! Build-time generation from YAML specs, for `build.rs` (in the manner of prost-build).
//!
//! ```no_run
//! // build.rs
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     densenet_spec::Config::new().compile(&["specs/densenet121.yaml"])?;
//!     Ok(())
//! }
//! // src/main.rs: include!(concat!(env!("OUT_DIR"), "/densenet121.rs"));
//! ```
//!
//! The generated code is exactly what `densenet_yaml!` expands to (one code generator),
//! formatted with prettyplease under a `// @generated` header, and written only when it
//! changed so Cargo does not rebuild needlessly.

use std::fmt;
use std::path::{Path, PathBuf};

use proc_macro2::TokenStream;
use quote::ToTokens;

use crate::error::SpecFileError;
use crate::expand::{default_runtime_path, expand_model};
use crate::front::{CheckedSpec, ReadError, SpecSource};

/// Why a build-time compilation failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum CompileError {
    /// A spec could not be read or its output written.
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A spec has mistakes; each carries `file:line:column`.
    Spec(SpecFileError),
    /// No output directory: not run from a build script and none given with [`Config::out_dir`].
    NoOutDir,
    /// [`Config::runtime_path`] was given something that is not a Rust path.
    RuntimePath(String),
}

impl From<ReadError> for CompileError {
    fn from(e: ReadError) -> Self {
        CompileError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompileError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            CompileError::Spec(e) => e.fmt(f),
            CompileError::NoOutDir => {
                f.write_str("OUT_DIR is not set: run from build.rs or call Config::out_dir")
            }
            CompileError::RuntimePath(path) => write!(
                f,
                "runtime path `{path}` is not a Rust path; give one like `::densenet_runtime`"
            ),
        }
    }
}

impl std::error::Error for CompileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CompileError::Io { source, .. } => Some(source),
            CompileError::Spec(e) => Some(e),
            CompileError::NoOutDir | CompileError::RuntimePath(_) => None,
        }
    }
}

/// Compiles YAML specs to Rust source files.
#[derive(Clone, Debug)]
pub struct Config {
    out_dir: Option<PathBuf>,
    runtime: String,
    cargo_directives: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            out_dir: None,
            runtime: default_runtime_path().to_string(),
            cargo_directives: true,
        }
    }
}

impl Config {
    /// Output to `$OUT_DIR`, code referring to the runtime as `::densenet::runtime`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes the files to `dir` instead of `$OUT_DIR`.
    pub fn out_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.out_dir = Some(dir.into());
        self
    }

    /// The path generated code uses for the runtime, e.g. `::densenet_runtime` for a crate
    /// that depends on `densenet-runtime` directly. Default: `::densenet::runtime`.
    pub fn runtime_path(mut self, path: &str) -> Self {
        self.runtime = path.to_string();
        self
    }

    /// Whether to print `cargo:rerun-if-changed` for each spec (default: yes).
    pub fn cargo_directives(mut self, print: bool) -> Self {
        self.cargo_directives = print;
        self
    }

    /// Compiles each spec to `<out_dir>/<file stem>.rs`; returns the written paths.
    ///
    /// # Errors
    /// The first spec that cannot be read or has mistakes (all of its mistakes, with
    /// `file:line:column`), or an output that cannot be written.
    pub fn compile(&self, specs: &[impl AsRef<Path>]) -> Result<Vec<PathBuf>, CompileError> {
        let out_dir = match &self.out_dir {
            Some(dir) => dir.clone(),
            None => std::env::var_os("OUT_DIR")
                .map(PathBuf::from)
                .ok_or(CompileError::NoOutDir)?,
        };
        let mut written = Vec::new();
        for spec in specs {
            let spec = spec.as_ref();
            if self.cargo_directives {
                println!("cargo:rerun-if-changed={}", spec.display());
            }
            let code =
                self.generate_source(&SpecSource::YamlFile(spec), &spec.display().to_string())?;
            let stem = spec.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
            let out = out_dir.join(format!("{stem}.rs"));
            if std::fs::read_to_string(&out).ok().as_deref() != Some(code.as_str()) {
                std::fs::write(&out, code).map_err(|source| CompileError::Io {
                    path: out.clone(),
                    source,
                })?;
            }
            written.push(out);
        }
        Ok(written)
    }

    /// The formatted Rust source for one YAML spec's text; `path` is shown in messages
    /// and the header, and names the model when the spec has no `name`.
    ///
    /// # Errors
    /// [`CompileError::Spec`] with every mistake in the spec.
    pub fn generate(&self, text: &str, path: &str) -> Result<String, CompileError> {
        self.generate_source(&SpecSource::Yaml { text, path }, path)
    }

    /// The formatted Rust source for every model of `source`; `shown` names it in
    /// messages and the header.
    ///
    /// # Errors
    /// [`CompileError::Spec`] with every mistake of every model, [`CompileError::Io`] for
    /// a file that cannot be read.
    pub fn generate_source(
        &self,
        source: &SpecSource<'_>,
        shown: &str,
    ) -> Result<String, CompileError> {
        let mut models = Vec::new();
        let mut errors = Vec::new();
        for model in source.check()? {
            match model {
                Ok(model) => models.push(model),
                Err(rejected) => errors.extend(rejected.errors),
            }
        }
        if !errors.is_empty() {
            return Err(CompileError::Spec(SpecFileError {
                path: shown.to_string(),
                errors,
            }));
        }
        self.render(&models, shown)
    }

    /// The models' code, formatted under the `// @generated` header.
    fn render(&self, models: &[CheckedSpec], shown: &str) -> Result<String, CompileError> {
        let runtime = syn::parse_str::<syn::Path>(&self.runtime)
            .map_err(|_| CompileError::RuntimePath(self.runtime.clone()))?
            .into_token_stream();
        let tokens: TokenStream = models
            .iter()
            .map(|m| expand_model(&m.item(), &m.architecture, &m.plan, &runtime))
            .collect();
        let file: syn::File = syn::parse2(tokens).expect("generated code is valid Rust");
        Ok(format!(
            "// @generated by densenet-spec from {shown}. Do not edit: change the spec instead.\n\n{}",
            unparse(file)
        ))
    }
}

/// `prettyplease::unparse`, except that the items inside the runtime's `__if_std!` (the
/// methods that take paths), which it would print as raw tokens, are formatted too.
fn unparse(file: syn::File) -> String {
    let format = |items: Vec<syn::Item>| {
        prettyplease::unparse(&syn::File {
            shebang: None,
            attrs: Vec::new(),
            items,
        })
    };
    let mut out = String::new();
    let mut plain = Vec::new();
    for item in file.items {
        let gated = match &item {
            syn::Item::Macro(m)
                if m.mac
                    .path
                    .segments
                    .last()
                    .is_some_and(|s| s.ident == "__if_std") =>
            {
                syn::parse2::<syn::File>(m.mac.tokens.clone())
                    .ok()
                    .map(|inner| {
                        (
                            m.mac.path.to_token_stream().to_string().replace(' ', ""),
                            inner,
                        )
                    })
            }
            _ => None,
        };
        match gated {
            Some((path, inner)) => {
                out.push_str(&format(std::mem::take(&mut plain)));
                // Not indented: the doc comments inside keep their text as written.
                out.push_str(&format!("{path}! {{\n{}}}\n", format(inner.items)));
            }
            None => plain.push(item),
        }
    }
    out.push_str(&format(plain));
    out
}
