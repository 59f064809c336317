//! A Keras-style model summary: one row a layer, then the totals.

use core::fmt;

use crate::prelude::*;
use densenet_spec::{Head, Plan};

/// A printable summary of a model's layers, shapes and parameter counts, in the
/// format of Keras's `model.summary()` (shapes are NCHW, as `forward` takes them).
#[derive(Clone, Copy, Debug)]
pub struct Summary<'a> {
    name: &'a str,
    plan: &'a Plan,
}

impl<'a> Summary<'a> {
    /// A summary of `plan` titled `name`.
    pub fn new(name: &'a str, plan: &'a Plan) -> Self {
        Summary { name, plan }
    }

    /// Trainable plus non-trainable parameters, as Keras's "Total params".
    pub fn total_params(&self) -> u64 {
        self.plan.params + self.plan.buffers
    }

    /// Trainable parameters.
    pub fn trainable_params(&self) -> u64 {
        self.plan.params
    }

    /// Non-trainable parameters (BatchNorm running statistics).
    pub fn non_trainable_params(&self) -> u64 {
        self.plan.buffers
    }
}

/// `1234567` → `"1,234,567"`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// f32 storage size as Keras prints it (binary units).
fn size(params: u64) -> String {
    let bytes = params as f64 * 4.0;
    match bytes {
        b if b >= 1024.0 * 1024.0 * 1024.0 => format!("{:.2} GB", b / (1024.0 * 1024.0 * 1024.0)),
        b if b >= 1024.0 * 1024.0 => format!("{:.2} MB", b / (1024.0 * 1024.0)),
        b if b >= 1024.0 => format!("{:.2} KB", b / 1024.0),
        b => format!("{b:.0} B"),
    }
}

fn shape(dims: &[usize]) -> String {
    let dims: Vec<String> = dims.iter().map(usize::to_string).collect();
    format!("(None, {})", dims.join(", "))
}

impl fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: Vec<(String, String, String)> = self
            .plan
            .layers
            .iter()
            .map(|l| {
                (
                    format!("{} ({})", l.name, l.kind.keras_class()),
                    shape(&l.output),
                    thousands(l.params + l.buffers),
                )
            })
            .collect();
        let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(12) + 2;
        let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(12) + 2;
        let w2 = rows.iter().map(|r| r.2.len()).max().unwrap_or(0).max(7);
        let width = 1 + w0 + w1 + w2;
        writeln!(f, "Model: \"{}\"", self.name)?;
        writeln!(f, "{}", "_".repeat(width))?;
        writeln!(
            f,
            " {:<w0$}{:<w1$}{:>w2$}",
            "Layer (type)", "Output Shape", "Param #"
        )?;
        writeln!(f, "{}", "=".repeat(width))?;
        for (name, shape, params) in &rows {
            writeln!(f, " {name:<w0$}{shape:<w1$}{params:>w2$}")?;
        }
        writeln!(f, "{}", "=".repeat(width))?;
        let (total, trainable, frozen) = (
            self.total_params(),
            self.trainable_params(),
            self.non_trainable_params(),
        );
        writeln!(f, "Total params: {} ({})", thousands(total), size(total))?;
        writeln!(
            f,
            "Trainable params: {} ({})",
            thousands(trainable),
            size(trainable)
        )?;
        writeln!(
            f,
            "Non-trainable params: {} ({})",
            thousands(frozen),
            size(frozen)
        )?;
        writeln!(f, "MACs per image: {}", thousands(self.plan.macs))?;
        let arena = self.plan.arena_floats(1) as u64;
        writeln!(f, "Activation arena: {} at batch 1", size(arena))?;
        if self.plan.head == Head::Classifier {
            // Every request of a training step is a multiple of the batch (see
            // `densenet_spec::training`): one image's figure says it all.
            let training = self.plan.training(1);
            writeln!(
                f,
                "Training step buffers: {} per image (a step at batch n keeps n times \
                 this; {} live at most)",
                size(training.slot_floats() as u64),
                size(training.live_peak_floats() as u64)
            )?;
        }
        write!(f, "{}", "_".repeat(width))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_like_keras() {
        assert_eq!(thousands(8_062_504), "8,062,504");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        // Keras 3.15 `DenseNet121().summary()`: "Total params: 8,062,504 (30.76 MB)",
        // "Trainable params: 7,978,856 (30.44 MB)", "Non-trainable params: 83,648 (326.75 KB)".
        assert_eq!(size(8_062_504), "30.76 MB");
        assert_eq!(size(7_978_856), "30.44 MB");
        assert_eq!(size(83_648), "326.75 KB");
    }
}
