//! Generated models on `core` + `alloc` only, as on a microcontroller: the three
//! fixture models (torchvision, the paper's CIFAR DenseNet-BC, Keras) with their weights
//! compiled in, run by `forward_into` in an arena the caller owns.
//!
//! CI builds this crate for `x86_64-unknown-none` and `thumbv7em-none-eabihf` (Cortex-M4F)
//! and runs `tests/fixtures.rs` on the host with the runtime's `std` feature off, which
//! compares the logits with the frameworks'.
//!
//! ```sh
//! cargo build -p densenet-no-std-test --target thumbv7em-none-eabihf --release
//! DENSENET_EXPECT_NO_STD=1 cargo test -p densenet-no-std-test
//! ```
#![no_std]

extern crate alloc;

use alloc::boxed::Box;

use densenet::ndarray::{ArrayView4, ArrayViewMut2};
use densenet::{densenet, Error, LoadError, Model, Workspace};

densenet! {
    /// torchvision `DenseNet(growth_rate=8, block_config=(2, 3, 4, 2), num_init_features=16)`.
    pub TorchvisionSmall<growth: 8, blocks: [2, 3, 4, 2], init_features: 16, theta: 0.5, input: [3, 64, 64], classes: 10>;
    /// The paper's CIFAR DenseNet-BC, L = 40, k = 12.
    pub CifarBC<depth: 40, growth: 12, theta: 0.5, stem: cifar, classes: 10>;
    /// Keras `DenseNet(blocks=[1, 2, 2, 1], input_shape=(64, 64, 3), classes=10)`.
    pub KerasSmall<growth: 32, blocks: [1, 2, 2, 1], theta: 0.5, input: [3, 64, 64], classes: 10, eps: 1.001e-5>
}

/// The fixtures' weights, in the order of [`model`].
pub const WEIGHTS: [&[u8]; 3] = [
    include_bytes!("../../fixtures/torchvision_small.safetensors"),
    include_bytes!("../../fixtures/cifar_bc.safetensors"),
    include_bytes!("../../fixtures/keras_small.safetensors"),
];

/// Whether the runtime was built with `std` (it is when a workspace-wide build turns the
/// feature on for another member; `cargo test -p densenet-no-std-test` alone does not).
pub const RUNTIME_HAS_STD: bool = densenet::runtime::__private::STD;

/// Fixture `index`'s model with its weights.
///
/// # Errors
/// A [`LoadError`] if the embedded weights do not load (or `index` is past the last).
pub fn model(index: usize) -> Result<Box<dyn Model>, LoadError> {
    let weights = WEIGHTS.get(index).copied().unwrap_or_default();
    Ok(match index {
        0 => Box::new(TorchvisionSmall::from_safetensors_bytes(weights)?),
        1 => Box::new(CifarBC::from_safetensors_bytes(weights)?),
        _ => Box::new(KerasSmall::from_safetensors_bytes(weights)?),
    })
}

/// Floats of fixture `index`'s arena at batch `batch`, as the macro computed them: what
/// a bare-metal caller reserves up front ([`Workspace::with_capacity`]).
pub const fn arena_floats(index: usize, batch: usize) -> usize {
    match index {
        0 => TorchvisionSmall::arena_floats(batch),
        1 => CifarBC::arena_floats(batch),
        _ => KerasSmall::arena_floats(batch),
    }
}

/// `model`'s logits for the NCHW batch `x` into `out`, every activation in `ws`.
///
/// # Errors
/// As `forward_into`: a wrong input or output shape, an empty batch.
pub fn classify(
    model: &dyn Model,
    x: ArrayView4<'_, f32>,
    ws: &mut Workspace,
    out: ArrayViewMut2<'_, f32>,
) -> Result<(), Error> {
    model.forward_into(x, ws, out.into_dyn())
}
