//! Named parts of a network (`stem`, `block2`, `head`, `classifier`, `backbone`, …):
//! what partial loading skips and training freezes.

use core::fmt;
use core::str::FromStr;

use thiserror::Error;

use crate::prelude::*;
use crate::stage::{LayerName, Network, Site};

/// A part of a DenseNet, by the names of its generated fields (and Keras's notion of a
/// base model).
///
/// ```
/// use densenet_runtime::Part;
///
/// let part: Part = "block3".parse()?;
/// assert_eq!(part, Part::Block(3));
/// assert_eq!("backbone".parse::<Part>()?, Part::Backbone);
/// assert!("block0".parse::<Part>().is_err());
/// # Ok::<(), densenet_runtime::ParsePartError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    /// The stem (`features.conv0`, and `norm0` for an ImageNet stem).
    Stem,
    /// Dense block `n` (1-based).
    Block(usize),
    /// Transition `n` (1-based; it follows block `n`).
    Transition(usize),
    /// The head: the final BatchNorm (`norm5`) and the classifier, if any.
    Head,
    /// The classifier (the `Linear` layer) alone: what a new task replaces.
    Classifier,
    /// Everything but the classifier: torchvision's `features`, Keras's
    /// `DenseNet121(include_top=False)` base (which includes the final BatchNorm).
    Backbone,
}

impl Part {
    /// Whether the layer `name` belongs to this part.
    pub fn contains(self, name: LayerName) -> bool {
        let classifier = name.site == Site::Head && name.part == "classifier";
        match (self, name.site) {
            (Part::Stem, Site::Stem) | (Part::Head, Site::Head) => true,
            (Part::Block(n), Site::Dense { block, .. }) => n == block,
            (Part::Transition(n), Site::Transition { index }) => n == index,
            (Part::Classifier, _) => classifier,
            (Part::Backbone, _) => !classifier,
            _ => false,
        }
    }

    /// Whether `model` has this part (a block or transition number in range; a
    /// classifier for [`Part::Classifier`]).
    pub fn exists_in<M: Network + ?Sized>(self, model: &M) -> bool {
        let mut found = false;
        model.visit_layers(&mut |name, _| found |= self.contains(name));
        found
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Stem => f.write_str("stem"),
            Part::Block(n) => write!(f, "block{n}"),
            Part::Transition(n) => write!(f, "transition{n}"),
            Part::Head => f.write_str("head"),
            Part::Classifier => f.write_str("classifier"),
            Part::Backbone => f.write_str("backbone"),
        }
    }
}

/// A string that names no [`Part`].
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("unknown part `{text}`: expected stem, block<N>, transition<N> (N from 1), head, classifier or backbone")]
pub struct ParsePartError {
    /// The text given.
    pub text: String,
}

impl FromStr for Part {
    type Err = ParsePartError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let numbered = |prefix: &str| {
            text.strip_prefix(prefix)
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&n| n >= 1)
        };
        match text {
            "stem" => Ok(Part::Stem),
            "head" => Ok(Part::Head),
            "classifier" => Ok(Part::Classifier),
            "backbone" => Ok(Part::Backbone),
            _ => numbered("block")
                .map(Part::Block)
                .or_else(|| numbered("transition").map(Part::Transition))
                .ok_or_else(|| ParsePartError {
                    text: text.to_string(),
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_select_their_layers() {
        for part in [
            Part::Stem,
            Part::Block(2),
            Part::Transition(3),
            Part::Head,
            Part::Classifier,
            Part::Backbone,
        ] {
            assert_eq!(part.to_string().parse::<Part>(), Ok(part));
        }
        let dense = LayerName::new(Site::Dense { block: 2, layer: 5 }, "conv1");
        let norm5 = LayerName::new(Site::Head, "norm5");
        let fc = LayerName::new(Site::Head, "classifier");
        assert!(Part::Block(2).contains(dense) && !Part::Block(1).contains(dense));
        assert!(Part::Backbone.contains(dense) && Part::Backbone.contains(norm5));
        assert!(!Part::Backbone.contains(fc) && Part::Classifier.contains(fc));
        assert!(Part::Head.contains(norm5) && Part::Head.contains(fc));
        for bad in ["", "block", "block0", "blockx", "Stem", "transition-1"] {
            assert!(bad.parse::<Part>().is_err(), "{bad}");
        }
    }
}
