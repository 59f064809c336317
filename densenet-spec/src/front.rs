//! The front door: a spec, wherever it is written, to checked models.
//!
//! read → parse → check → name, written once for the macros, [`Config`](crate::Config)
//! and the CLI, so all of them take the same keys, the same defaults (a YAML file
//! without `name` is named after its file) and the same name rules.
//!
//! ```
//! use densenet_spec::front::SpecSource;
//!
//! // The paper's DenseNet (L = 40, k = 12): 1,019,722 parameters (tools/reference_counts.txt).
//! let text = "growth: 12\ndepth: 40\nbottleneck: false\nstem: cifar\n";
//! let models = SpecSource::Yaml { text, path: "specs/dense_net40.yaml" }.check().unwrap();
//! let model = models[0].as_ref().unwrap();
//! assert_eq!(model.name.value, "DenseNet40");
//! assert_eq!(model.plan.params, 1_019_722);
//! ```

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::arch::Architecture;
use crate::ast::RawSpec;
use crate::check::{check, check_name, stub_architecture};
use crate::error::{Sp, SpecError, SpecFileError};
use crate::plan::Plan;
use crate::yaml::{parse_yaml, too_large, MAX_SPEC_BYTES};

/// Where a spec is written.
#[derive(Clone, Debug)]
pub enum SpecSource<'a> {
    /// The input of a `densenet!` call: one or more models in the inline syntax.
    #[cfg(feature = "codegen")]
    Inline(proc_macro2::TokenStream),
    /// The text of a YAML spec. `path` is shown in messages; without a `name` key, the
    /// model is named after its file stem.
    Yaml {
        /// The YAML text.
        text: &'a str,
        /// The file it came from, as the user named it.
        path: &'a str,
    },
    /// A YAML spec file, read here.
    YamlFile(&'a Path),
}

/// A model whose spec passed every check, ready to generate or build.
#[derive(Clone)]
pub struct CheckedSpec {
    /// The model's type name and where it was written (a YAML file without `name`:
    /// its first line).
    pub name: Sp<String>,
    /// The name as the struct's identifier, at the user's token for inline specs.
    #[cfg(feature = "codegen")]
    pub ident: syn::Ident,
    /// Attributes and doc comments of an inline spec, for the struct.
    #[cfg(feature = "codegen")]
    pub attrs: Vec<syn::Attribute>,
    /// The struct's visibility (`pub` for YAML specs).
    #[cfg(feature = "codegen")]
    pub vis: syn::Visibility,
    /// Every key resolved.
    pub architecture: Architecture,
    /// Shapes and counts per layer.
    pub plan: Plan,
}

impl fmt::Debug for CheckedSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckedSpec")
            .field("name", &self.name)
            .field("architecture", &self.architecture)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "codegen")]
impl CheckedSpec {
    /// How [`expand_model`](crate::expand::expand_model) declares the struct.
    pub fn item(&self) -> crate::expand::ItemInfo<'_> {
        crate::expand::ItemInfo {
            name: &self.ident,
            attrs: &self.attrs,
            vis: &self.vis,
        }
    }
}

/// A model whose spec has mistakes.
#[derive(Clone, Debug)]
pub struct Rejected {
    /// Every mistake found (at least one), in the order written.
    pub errors: Vec<SpecError>,
    /// A tiny model under the same name, head and API, when the name itself is usable:
    /// the macros emit it beside their errors so later uses of the name add none.
    pub stand_in: Option<Box<CheckedSpec>>,
}

/// A spec file that could not be read.
#[derive(Debug)]
pub struct ReadError {
    /// The file.
    pub path: PathBuf,
    /// What the OS said.
    pub source: std::io::Error,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot read {}: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Why a YAML spec file gives no model.
#[derive(Debug)]
pub enum LoadError {
    /// The file cannot be read.
    Read(ReadError),
    /// The spec has mistakes; each carries `file:line:column`.
    Spec(SpecFileError),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Read(e) => e.fmt(f),
            LoadError::Spec(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for LoadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoadError::Read(e) => Some(e),
            LoadError::Spec(e) => Some(e),
        }
    }
}

impl SpecSource<'_> {
    /// Every model the source declares, each checked or rejected with all its mistakes.
    /// An inline source that does not parse is one rejected model without a stand-in.
    ///
    /// # Errors
    /// A [`SpecSource::YamlFile`] that cannot be read.
    pub fn check(&self) -> Result<Vec<Result<CheckedSpec, Rejected>>, ReadError> {
        Ok(match self {
            #[cfg(feature = "codegen")]
            SpecSource::Inline(tokens) => match crate::parse::parse_specs(tokens.clone()) {
                Ok(specs) => specs.into_iter().map(checked).collect(),
                Err(e) => vec![Err(Rejected {
                    errors: vec![e],
                    stand_in: None,
                })],
            },
            SpecSource::Yaml { text, path } => vec![yaml(text, Path::new(path))],
            SpecSource::YamlFile(path) => vec![yaml_file(path)?],
        })
    }
}

/// A YAML spec file on disk to its checked model: what the CLI and build scripts load.
///
/// # Errors
/// The file cannot be read, or every mistake in it, each with `file:line:column`.
pub fn check_yaml_file(path: &Path) -> Result<CheckedSpec, LoadError> {
    yaml_file(path)
        .map_err(LoadError::Read)?
        .map_err(|rejected| {
            LoadError::Spec(SpecFileError {
                path: path.display().to_string(),
                errors: rejected.errors,
            })
        })
}

/// The model name of a YAML spec without `name`: its file stem in UpperCamelCase.
pub fn default_model_name(path: &Path) -> String {
    upper_camel_case(path.file_stem().and_then(|s| s.to_str()).unwrap_or("model"))
}

/// `densenet_bc100` → `DensenetBc100`.
pub fn upper_camel_case(stem: &str) -> String {
    stem.split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase())
                .into_iter()
                .chain(chars)
                .collect::<String>()
        })
        .collect()
}

/// Reads at most [`MAX_SPEC_BYTES`] and one byte more: a larger file (or a device that
/// never ends) is refused without reading it all.
fn yaml_file(path: &Path) -> Result<Result<CheckedSpec, Rejected>, ReadError> {
    let read_error = |source| ReadError {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_SPEC_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() > MAX_SPEC_BYTES {
        let size = std::fs::metadata(path).ok().map(|m| m.len());
        return Ok(Err(Rejected {
            errors: vec![too_large(size.filter(|&s| s > MAX_SPEC_BYTES as u64))],
            stand_in: None,
        }));
    }
    let text = String::from_utf8(bytes).map_err(|_| {
        read_error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        ))
    })?;
    Ok(yaml(&text, path))
}

fn yaml(text: &str, path: &Path) -> Result<CheckedSpec, Rejected> {
    match parse_yaml(text, &default_model_name(path)) {
        Ok(spec) => checked(spec),
        Err(errors) => Err(Rejected {
            errors,
            stand_in: None,
        }),
    }
}

/// check → name → plan; on mistakes, a stand-in if the name can declare one.
fn checked(spec: RawSpec) -> Result<CheckedSpec, Rejected> {
    match check(&spec) {
        Ok(architecture) => model(&spec, architecture).map_err(|e| Rejected {
            errors: vec![e],
            stand_in: None,
        }),
        Err(errors) => {
            let stand_in = check_name(&spec.name)
                .ok()
                .and_then(|()| model(&spec, stub_architecture(&spec)).ok())
                .map(Box::new);
            Err(Rejected { errors, stand_in })
        }
    }
}

fn model(spec: &RawSpec, architecture: Architecture) -> Result<CheckedSpec, SpecError> {
    Ok(CheckedSpec {
        name: spec.name.clone(),
        #[cfg(feature = "codegen")]
        ident: ident(&spec.name)?,
        #[cfg(feature = "codegen")]
        attrs: spec.attrs.clone(),
        #[cfg(feature = "codegen")]
        vis: spec.vis.clone(),
        plan: Plan::new(&architecture),
        architecture,
    })
}

/// The struct's identifier, at the name's token when it is one. The name rules of
/// `check_name` admit only identifiers, so the error is a second line of defence.
#[cfg(feature = "codegen")]
fn ident(name: &Sp<String>) -> Result<syn::Ident, SpecError> {
    let mut ident = syn::parse_str::<syn::Ident>(&name.value).map_err(|_| {
        let message = format!(
            "`{}` cannot name a Rust type; choose another model name",
            name.value
        );
        SpecError::new(name.span, message)
    })?;
    if let crate::error::Span::Rust(span) = name.span {
        ident.set_span(span);
    }
    Ok(ident)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        let source = SpecSource::Yaml {
            text,
            path: "x.yaml",
        };
        match &source.check().unwrap()[0] {
            Ok(_) => Vec::new(),
            Err(rejected) => rejected.errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn a_yaml_spec_without_name_is_named_after_its_file() {
        let source = SpecSource::Yaml {
            text: "growth: 12\ndepth: 40\n",
            path: "specs/densenet_bc100-k12.yaml",
        };
        let models = source.check().unwrap();
        assert_eq!(models[0].as_ref().unwrap().name.value, "DensenetBc100K12");
        assert_eq!(upper_camel_case("self"), "Self");
        // …and that name obeys the same rules as a written one.
        let source = SpecSource::Yaml {
            text: "growth: 12\ndepth: 40\n",
            path: "self.yaml",
        };
        let Err(rejected) = &source.check().unwrap()[0] else {
            panic!("`Self` accepted")
        };
        assert_eq!(
            rejected.errors[0].to_string(),
            "1:1: model name `Self` is a Rust keyword; choose another name, e.g. `DenseNet121`"
        );
    }

    #[test]
    fn keyword_and_primitive_names_are_rejected_without_a_stand_in() {
        for (name, kind) in [
            ("f32", "primitive type"),
            ("usize", "primitive type"),
            ("bool", "primitive type"),
            ("str", "primitive type"),
            ("Self", "keyword"),
            ("self", "keyword"),
            ("crate", "keyword"),
            ("super", "keyword"),
        ] {
            let text = format!("name: {name}\ngrowth: 12\ndepth: 40\n");
            assert_eq!(
                errors(&text),
                [format!(
                    "1:7: model name `{name}` is a Rust {kind}; choose another name, e.g. `DenseNet121`"
                )]
            );
            let source = SpecSource::Yaml {
                text: &text,
                path: "x.yaml",
            };
            let Err(rejected) = &source.check().unwrap()[0] else {
                panic!()
            };
            assert!(rejected.stand_in.is_none(), "{name}");
        }
        assert_eq!(
            errors("name: F32\ngrowth: 12\ndepth: 40\n"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_rejected_model_with_a_good_name_has_a_stand_in() {
        let source = SpecSource::Yaml {
            text: "name: Net\ngrowth: 0\ndepth: 40\nhead: avg\n",
            path: "x.yaml",
        };
        let Err(rejected) = &source.check().unwrap()[0] else {
            panic!()
        };
        let stand_in = rejected.stand_in.as_ref().unwrap();
        assert_eq!(stand_in.ident.to_string(), "Net");
        assert_eq!(stand_in.architecture.head, crate::Head::Avg);
    }

    #[test]
    fn inline_sources_give_one_outcome_per_model() {
        let tokens: proc_macro2::TokenStream =
            "pub A<growth: 12, depth: 40, bottleneck: false, stem: cifar>; B<growth: 0, depth: 40>; \
             pub f32<growth: 1, depth: 10>"
                .parse()
                .unwrap();
        let models = SpecSource::Inline(tokens).check().unwrap();
        assert_eq!(models.len(), 3);
        assert_eq!(models[0].as_ref().unwrap().plan.params, 1_019_722);
        let b = models[1].as_ref().unwrap_err();
        assert_eq!(b.errors[0].message, "`growth` must be at least 1; got 0");
        assert!(b.stand_in.is_some());
        let f32 = models[2].as_ref().unwrap_err();
        assert_eq!(
            f32.errors[0].message,
            "model name `f32` is a Rust primitive type; choose another name, e.g. `DenseNet121`"
        );
        assert!(f32.stand_in.is_none());
    }

    #[test]
    fn files_are_read_and_named_here() {
        let dir = std::env::temp_dir().join(format!("densenet-front-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tiny_net.yaml");
        std::fs::write(&path, "growth: 4\nblocks: [1]\nstem: cifar\n").unwrap();
        assert_eq!(check_yaml_file(&path).unwrap().name.value, "TinyNet");
        std::fs::write(&path, "growth: 4\nblocks: [0]\n").unwrap();
        let err = check_yaml_file(&path).unwrap_err().to_string();
        assert!(err.ends_with("tiny_net.yaml:2:10: a dense block needs at least one layer; got 0 (remove the block instead)"), "{err}");
        let missing = check_yaml_file(&dir.join("missing.yaml")).unwrap_err();
        assert!(matches!(missing, LoadError::Read(_)), "{missing:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
