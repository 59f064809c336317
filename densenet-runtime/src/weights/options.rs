//! How a weights file is read.

use crate::weights::Naming;

/// How to read a weights file: its naming scheme, and whether its values are checked.
/// A [`Naming`] converts into the default options with that scheme, so
/// `load_safetensors_with(path, Naming::Keras)` keeps working.
///
/// ```
/// use densenet_runtime::weights::LoadOptions;
/// use densenet_runtime::Naming;
///
/// // A file known to hold NaN in an unused tensor, read anyway.
/// let options = LoadOptions { check_values: false, ..LoadOptions::from(Naming::Torchvision) };
/// assert_eq!(options.naming, Naming::Torchvision);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// The naming scheme; [`Naming::Auto`] detects it from the keys.
    pub naming: Naming,
    /// Refuse NaN or infinite values and negative BatchNorm running variances
    /// ([`LoadError::NonFinite`](crate::LoadError::NonFinite),
    /// [`LoadError::NegativeVariance`](crate::LoadError::NegativeVariance)). On by
    /// default: such a file gives NaN outputs. Turning it off reads the values as they
    /// are.
    pub check_values: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            naming: Naming::Auto,
            check_values: true,
        }
    }
}

impl From<Naming> for LoadOptions {
    fn from(naming: Naming) -> Self {
        LoadOptions {
            naming,
            ..LoadOptions::default()
        }
    }
}
