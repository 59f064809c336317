//! A model built at run time from an [`Architecture`], for specs that are only known
//! then (the `densenet` CLI, tools).
//!
//! Not a second implementation: it holds the stages [`init_stages`] builds (the same
//! layers, in the same order, from the same seed as a generated model's) and gets
//! everything else — forward passes, loading, saving, ONNX export, training, summary —
//! from [`Model`](crate::Model), like a generated model.

#[cfg(feature = "std")]
use std::path::Path;

use crate::prelude::*;
use crate::spec::{Architecture, Plan};
use crate::stage::{init_stages, Network, Stage, StageMut, StageRef};
use crate::weights::{self, LoadOptions};
use crate::{Error, LoadError, Rng};

/// A DenseNet whose architecture is a run-time value. Everything it can do comes from
/// [`Model`](crate::Model) (bring the trait into scope).
#[derive(Clone, Debug)]
pub struct DynamicModel {
    architecture: Architecture,
    plan: Plan,
    stages: Vec<Stage>,
}

impl DynamicModel {
    /// A model of `architecture` with the deterministic initial weights a generated model
    /// of it gets from `init(seed)`.
    ///
    /// # Errors
    /// [`Error::InvalidArchitecture`] when `architecture` breaks a spec rule (its fields
    /// are public, so it may not come from `densenet_spec::check`): checked by the same
    /// rules as a written spec ([`Architecture::validate`]).
    pub fn init(architecture: Architecture, seed: u64) -> Result<Self, Error> {
        Self::init_with(architecture, &mut Rng::new(seed))
    }

    /// [`init`](Self::init) drawing from `rng`.
    ///
    /// # Errors
    /// As [`init`](Self::init).
    pub fn init_with(architecture: Architecture, rng: &mut Rng) -> Result<Self, Error> {
        if let Err(errors) = architecture.validate() {
            return Err(Error::InvalidArchitecture {
                model: architecture.name.to_string(),
                problems: errors.into_iter().map(|e| e.message).collect(),
            });
        }
        let plan = Plan::new(&architecture);
        let stages = init_stages(&architecture, &plan, rng);
        Ok(DynamicModel {
            architecture,
            plan,
            stages,
        })
    }

    /// Loads weights into a model of `architecture`, read as `options` say: a [`Naming`](crate::Naming)
    /// (torchvision/timm, Keras, or `Auto`) or [`LoadOptions`].
    ///
    /// # Errors
    /// A [`LoadError`] naming the tensor and what was wrong; [`LoadError::Model`] for an
    /// architecture that breaks a spec rule.
    pub fn from_safetensors_bytes(
        architecture: Architecture,
        bytes: &[u8],
        options: impl Into<LoadOptions>,
    ) -> Result<Self, LoadError> {
        // Every weight gets overwritten: skip drawing the initial ones.
        let mut model =
            DynamicModel::init_with(architecture, &mut Rng::zeros()).map_err(LoadError::Model)?;
        weights::load_into(&mut model, bytes, options.into())?;
        Ok(model)
    }

    /// [`from_safetensors_bytes`](Self::from_safetensors_bytes) from a file.
    ///
    /// # Errors
    /// [`LoadError::Io`] if the file cannot be read, else as `from_safetensors_bytes`.
    #[cfg(feature = "std")]
    pub fn load_safetensors(
        architecture: Architecture,
        path: impl AsRef<Path>,
        options: impl Into<LoadOptions>,
    ) -> Result<Self, LoadError> {
        let bytes = weights::read_file(path.as_ref())?;
        Self::from_safetensors_bytes(architecture, &bytes, options)
    }

    /// Floats of the activation arena a batch of `batch` needs ([`Plan::arena_floats`]).
    pub fn arena_floats(&self, batch: usize) -> usize {
        self.plan.arena_floats(batch)
    }
}

impl Network for DynamicModel {
    fn architecture(&self) -> &Architecture {
        &self.architecture
    }

    fn plan(&self) -> &Plan {
        &self.plan
    }

    fn stage(&self, index: usize) -> Option<StageRef<'_>> {
        self.stages.get(index).map(Stage::as_ref)
    }

    fn stage_mut(&mut self, index: usize) -> Option<StageMut<'_>> {
        self.stages.get_mut(index).map(Stage::as_mut)
    }
}
