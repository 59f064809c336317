//! The DenseNet spec language, shared by the `densenet!` macros, build scripts and tools.
//!
//! The pipeline, one module a phase:
//!
//! ```text
//! parse (inline tokens) ─┐
//!                        ├─> RawSpec ─check─> Architecture ─plan─> Plan ─expand─> Rust
//! yaml (spec files) ─────┘   (ast.rs)  (check.rs) (arch.rs)  (plan.rs)  (expand.rs)
//! ```
//!
//! [`front`] runs everything up to the plan for the macros, [`Config`] and tools, from a
//! [`SpecSource`]; [`keys`] describes every key once (its rendering is `docs/SPEC.md`).
//!
//! Every parsed value keeps its [`Span`], so each [`SpecError`] points at the
//! offending token or YAML line; all errors of a spec are reported together.
//!
//! ```
//! use densenet_spec::{check, parse_yaml, Plan};
//!
//! let spec = parse_yaml("name: DenseNet121\ngrowth: 32\nblocks: [6, 12, 24, 16]\ntheta: 0.5\n", "x")
//!     .unwrap();
//! let arch = check(&spec).unwrap();
//! assert_eq!(Plan::new(&arch).params, 7_978_856);
//! ```
#![deny(missing_docs)]
// Checking and planning need only `core` and `alloc`, so the runtime can run on bare
// metal; parsing (tokens, YAML, files) is behind `std`.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod arch;
pub mod ast;
pub mod check;
#[cfg(feature = "build")]
pub mod config;
pub mod error;
#[cfg(feature = "codegen")]
pub mod expand;
#[cfg(feature = "yaml")]
pub mod front;
pub mod keys;
#[cfg(feature = "codegen")]
pub mod parse;
pub mod plan;
mod prelude;
pub mod training;
#[cfg(feature = "yaml")]
pub mod yaml;

pub use arch::{Architecture, Head, Stem};
pub use ast::{Entry, RawSpec, Value};
pub use check::check;
#[cfg(feature = "build")]
pub use config::{CompileError, Config};
pub use error::{RustSpan, Sp, Span, SpecError, SpecFileError};
#[cfg(feature = "yaml")]
pub use front::{check_yaml_file, CheckedSpec, LoadError, Rejected, SpecSource};
#[cfg(feature = "codegen")]
pub use parse::parse_specs;
pub use plan::{ArenaPlan, LayerKind, LayerPlan, Plan, StagePlan};
pub use training::{BufferRequest, TrainingPlan};
#[cfg(feature = "yaml")]
pub use yaml::parse_yaml;
