//! Walking a model's layers by name: what weight loading and saving build on.
//!
//! A layer's [`LayerName`] is structural (which block, which layer, which part), so each
//! naming scheme (torchvision/timm, Keras) is a function of it, in `weights/naming.rs`.

use densenet_spec::Architecture;

use crate::layers::{BatchNorm2d, Conv2d, Linear};

/// Where a layer sits in the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Site {
    /// The stem.
    Stem,
    /// Dense layer `layer` (1-based) of dense block `block` (1-based).
    Dense {
        /// 1-based block index.
        block: usize,
        /// 1-based layer index within the block.
        layer: usize,
    },
    /// Transition `index` (1-based; it follows block `index`).
    Transition {
        /// 1-based transition index.
        index: usize,
    },
    /// The head.
    Head,
}

/// A layer's structural name: its site and its torchvision part name (`conv0`, `norm1`,
/// `conv2`, `norm`, `norm5`, `classifier`, …).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LayerName {
    /// Where the layer is.
    pub site: Site,
    /// Its torchvision part name.
    pub part: &'static str,
}

impl LayerName {
    /// A name at `site` for `part`.
    pub const fn new(site: Site, part: &'static str) -> Self {
        LayerName { site, part }
    }
}

/// A layer with weights, borrowed.
#[derive(Clone, Copy, Debug)]
pub enum LayerRef<'a> {
    /// A convolution.
    Conv(&'a Conv2d),
    /// A batch norm.
    BatchNorm(&'a BatchNorm2d),
    /// A linear layer.
    Linear(&'a Linear),
}

/// A layer with weights, borrowed mutably.
#[derive(Debug)]
pub enum LayerMut<'a> {
    /// A convolution.
    Conv(&'a mut Conv2d),
    /// A batch norm.
    BatchNorm(&'a mut BatchNorm2d),
    /// A linear layer.
    Linear(&'a mut Linear),
}

/// What generated models implement so the runtime can load, save (and later train) them.
pub trait Model: Sized {
    /// The checked architecture the model was generated from.
    const ARCHITECTURE: Architecture;

    /// A model with deterministic initial weights.
    fn init(seed: u64) -> Self;

    /// Calls `f` on every layer with weights, in network order.
    fn visit_layers(&self, f: &mut dyn FnMut(LayerName, LayerRef<'_>));

    /// Calls `f` on every layer with weights, mutably, in the same order.
    fn visit_layers_mut(&mut self, f: &mut dyn FnMut(LayerName, LayerMut<'_>));
}
