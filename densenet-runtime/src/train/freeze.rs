//! Frozen layers: what training leaves alone (Keras's `layer.trainable = False`).
//!
//! A frozen layer's parameters never change (they get no gradient, so no optimiser
//! update, weight decay included); a frozen BatchNorm runs in inference mode (its
//! running statistics normalise and are not updated, as Keras does for a frozen base);
//! a stage whose layers are all frozen drops no units. The frozen stages before the
//! first trainable one run as plain inference and the backward pass stops there, so
//! training only the head costs about an inference pass plus the head.

use std::fmt;
use std::str::FromStr;

use crate::part::{ParsePartError, Part};
use crate::stage::{LayerName, Network};
use crate::train::TrainError;

/// The parts of a model training leaves alone; [`Default`] freezes nothing.
///
/// ```
/// use densenet_runtime::train::Freeze;
/// use densenet_runtime::Part;
///
/// // Keras: `base.trainable = False`, i.e. everything but the classifier.
/// let head_only = Freeze::backbone();
/// assert_eq!(head_only, "backbone".parse()?);
/// let early = Freeze::parts([Part::Stem, Part::Block(1), Part::Transition(1)]);
/// assert_eq!(early.to_string(), "stem,block1,transition1");
/// # Ok::<(), densenet_runtime::ParsePartError>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Freeze {
    parts: Vec<Part>,
}

impl Freeze {
    /// Nothing frozen.
    pub fn none() -> Self {
        Freeze::default()
    }

    /// Everything but the classifier ([`Part::Backbone`]): train a new head on a
    /// pretrained base.
    pub fn backbone() -> Self {
        Freeze::parts([Part::Backbone])
    }

    /// The given parts.
    pub fn parts(parts: impl IntoIterator<Item = Part>) -> Self {
        Freeze {
            parts: parts.into_iter().collect(),
        }
    }

    /// The frozen parts.
    pub fn frozen_parts(&self) -> &[Part] {
        &self.parts
    }

    /// Whether nothing is frozen.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Whether layer `name` is frozen.
    pub fn contains(&self, name: LayerName) -> bool {
        self.parts.iter().any(|p| p.contains(name))
    }

    /// Checks the parts against `model`: each must exist, and something must be left
    /// to train.
    ///
    /// # Errors
    /// [`TrainError::Freeze`] naming the part the model lacks, or saying that every
    /// layer would be frozen.
    pub fn check<M: Network + ?Sized>(&self, model: &M) -> Result<(), TrainError> {
        let name = || model.architecture().name.to_string();
        if let Some(part) = self.parts.iter().find(|p| !p.exists_in(model)) {
            return Err(TrainError::Freeze {
                model: name(),
                reason: format!("it has no part `{part}`"),
            });
        }
        let mut trainable = false;
        model.visit_layers(&mut |layer, _| trainable |= !self.contains(layer));
        if !trainable {
            return Err(TrainError::Freeze {
                model: name(),
                reason: format!("freezing {self} leaves nothing to train"),
            });
        }
        Ok(())
    }
}

impl fmt::Display for Freeze {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.parts.is_empty() {
            return f.write_str("nothing");
        }
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{part}")?;
        }
        Ok(())
    }
}

impl FromStr for Freeze {
    type Err = ParsePartError;

    /// Comma-separated [`Part`] names (`backbone`, `stem,block1`); empty or `none` for
    /// nothing.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() || text == "none" {
            return Ok(Freeze::none());
        }
        text.split(',')
            .map(|p| p.trim().parse())
            .collect::<Result<Vec<Part>, _>>()
            .map(Freeze::parts)
    }
}
