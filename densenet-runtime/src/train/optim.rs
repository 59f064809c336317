//! Optimisers: what turns [`Gradients`] into new weights.
//!
//! - [`Sgd`]: the DenseNet paper's optimiser, SGD with Nesterov momentum 0.9 and weight
//!   decay 1e-4 ([`SgdConfig::default`]), exactly `torch.optim.SGD`'s update;
//! - [`Adam`]: `torch.optim.Adam`'s update (L2 weight decay added to the gradient, bias
//!   correction), as a second optimiser;
//! - [`step_lr`]: the paper's learning-rate schedule, divided by 10 at 50% and at 75% of
//!   the epochs.
//!
//! Both optimisers update every parameter, as torch does by default (weight decay
//! included): conv weights, BatchNorm gamma and beta, linear weight and bias. BatchNorm
//! running statistics are not parameters (the training step updates them). Parameters
//! are walked with [`Model::visit_layers_mut`] and each layer's gradient is looked up
//! by its [`LayerName`](crate::LayerName); gradients have their parameters' layouts
//! (conv HWIO, linear `(out, in)`), so updates are element-wise on the runtime's own
//! arrays. Optimiser state (momentum buffers, Adam moments) is kept per parameter in
//! that walking order and reused across steps: use one optimiser per model.

use ndarray::{ArrayViewD, ArrayViewMutD};

use crate::layers::Conv2d;
use crate::stage::LayerMut;
use crate::stage::Network;
use crate::train::TrainError;
use crate::train::{Gradients, LayerGrad};

/// Settings of [`Sgd`]; [`Default`] is the DenseNet paper's (Huang et al. 2017, §4.2):
/// learning rate 0.1, Nesterov momentum 0.9, weight decay 1e-4.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f32,
    /// Momentum factor (0 disables the momentum buffer). Dampening is always 0.
    pub momentum: f32,
    /// Nesterov momentum (`g + momentum·buf` instead of `buf`).
    pub nesterov: bool,
    /// L2 weight decay, added to the gradient as `weight_decay·p`.
    pub weight_decay: f32,
}

impl Default for SgdConfig {
    /// lr 0.1, momentum 0.9, Nesterov, weight decay 1e-4.
    fn default() -> Self {
        SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 1e-4,
        }
    }
}

impl SgdConfig {
    /// Checks every setting: a positive finite learning rate
    /// ([`TrainError::LearningRate`]), momentum in `[0, 1)` and a finite weight decay
    /// `≥ 0` ([`TrainError::Setting`] naming the field). [`fit`](crate::train::fit)
    /// calls it before the first step.
    ///
    /// # Errors
    /// The first setting out of range.
    pub fn validate(&self) -> Result<(), TrainError> {
        check_lr(self.lr)?;
        check_unit(
            "SgdConfig::momentum",
            self.momentum,
            (0.0..1.0).contains(&self.momentum),
        )?;
        check_decay("SgdConfig::weight_decay", self.weight_decay)
    }
}

/// Stochastic gradient descent with momentum, `torch.optim.SGD`'s update (dampening 0).
/// Per parameter `p` with gradient `g`:
///
/// ```text
/// g ← g + weight_decay·p
/// buf ← g                       (first step)
/// buf ← momentum·buf + g        (later steps)
/// g ← g + momentum·buf          (Nesterov)   or   g ← buf   (otherwise)
/// p ← p − lr·g
/// ```
///
/// With momentum 0 there is no buffer and `p ← p − lr·g`.
#[derive(Clone, Debug)]
pub struct Sgd {
    config: SgdConfig,
    /// One momentum buffer per parameter, in walking order (empty before the first
    /// step); `None` until the parameter's first update (a frozen one has none).
    velocity: Vec<Option<Vec<f32>>>,
}

impl Sgd {
    /// An optimiser with `config` and no state yet.
    pub fn new(config: SgdConfig) -> Self {
        Sgd {
            config,
            velocity: Vec::new(),
        }
    }

    /// The current settings (the learning rate as last set).
    pub fn config(&self) -> SgdConfig {
        self.config
    }

    /// The current learning rate.
    pub fn lr(&self) -> f32 {
        self.config.lr
    }

    /// Sets the learning rate for the following steps (e.g. from [`step_lr`]); the
    /// momentum buffers are kept, as when torch's schedulers change a group's `lr`.
    pub fn set_lr(&mut self, lr: f32) {
        self.config.lr = lr;
    }

    /// Updates every parameter of `model` that `grads` has a gradient for (from
    /// [`loss_and_gradients`](crate::train::loss_and_gradients) on the same model);
    /// layers without one (frozen) are left exactly as they are, weight decay included,
    /// as torch skips parameters whose `grad` is `None`. A parameter's momentum buffer
    /// starts at its first update, so unfreezing continues with the same optimiser.
    ///
    /// # Panics
    ///
    /// If `grads` has a gradient of another kind or shape than its parameter, or if the
    /// model's parameters are not those of the previous steps (the state is per
    /// parameter: use one optimiser per model).
    pub fn step<M: Network + ?Sized>(&mut self, model: &mut M, grads: &Gradients) {
        let config = self.config;
        let stateful = config.momentum != 0.0;
        let velocity = &mut self.velocity;
        let fresh = velocity.is_empty();
        let count = for_each_param(model, grads, &mut |i, mut p, g| {
            if fresh && velocity.len() <= i {
                velocity.resize(i + 1, None);
            }
            let len = if stateful { p.len() } else { 0 };
            let (buf, first) = state(velocity, i, len, || vec![0.0; len]);
            p.for_each_run(|offset, run| {
                let range = offset..offset + run.len();
                let buf = if stateful {
                    &mut buf[range.clone()]
                } else {
                    &mut []
                };
                sgd_update(&config, first, run, &g[range], buf);
            });
        });
        if fresh {
            velocity.resize(count, None);
        }
        check_count(count, velocity.len());
    }
}

/// One parameter's [`Sgd`] update; `buf` is its momentum buffer (empty for momentum 0),
/// `first` whether this is the first step.
fn sgd_update(config: &SgdConfig, first: bool, p: &mut [f32], g: &[f32], buf: &mut [f32]) {
    let SgdConfig {
        lr,
        momentum,
        nesterov,
        weight_decay,
    } = *config;
    if momentum == 0.0 {
        for (p, &g) in p.iter_mut().zip(g) {
            *p -= lr * (g + weight_decay * *p);
        }
        return;
    }
    for ((p, &g), b) in p.iter_mut().zip(g).zip(buf.iter_mut()) {
        let g = g + weight_decay * *p;
        *b = if first { g } else { momentum * *b + g };
        let d = if nesterov { g + momentum * *b } else { *b };
        *p -= lr * d;
    }
}

/// Settings of [`Adam`]; [`Default`] is torch's: learning rate 1e-3, betas (0.9, 0.999),
/// eps 1e-8, no weight decay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f32,
    /// Decay rates of the first and second moment estimates.
    pub betas: (f32, f32),
    /// Added to the denominator for numerical stability.
    pub eps: f32,
    /// L2 weight decay, added to the gradient as `weight_decay·p` (Adam, not AdamW).
    pub weight_decay: f32,
}

impl Default for AdamConfig {
    /// lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0.
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

impl AdamConfig {
    /// Checks every setting: a positive finite learning rate
    /// ([`TrainError::LearningRate`]), both betas in `[0, 1)`, `eps` positive and finite,
    /// and a finite weight decay `≥ 0` ([`TrainError::Setting`] naming the field).
    /// [`fit`](crate::train::fit) calls it before the first step.
    ///
    /// # Errors
    /// The first setting out of range.
    pub fn validate(&self) -> Result<(), TrainError> {
        check_lr(self.lr)?;
        let (b1, b2) = self.betas;
        check_unit("AdamConfig::betas.0", b1, (0.0..1.0).contains(&b1))?;
        check_unit("AdamConfig::betas.1", b2, (0.0..1.0).contains(&b2))?;
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(TrainError::Setting {
                field: "AdamConfig::eps",
                value: self.eps,
                range: "(0, ∞) (finite)",
            });
        }
        check_decay("AdamConfig::weight_decay", self.weight_decay)
    }
}

fn check_lr(lr: f32) -> Result<(), TrainError> {
    if lr.is_finite() && lr > 0.0 {
        Ok(())
    } else {
        Err(TrainError::LearningRate { lr })
    }
}

/// `[0, 1)` settings (momentum, betas): `ok` is the range test (false for NaN).
fn check_unit(field: &'static str, value: f32, ok: bool) -> Result<(), TrainError> {
    if ok {
        Ok(())
    } else {
        Err(TrainError::Setting {
            field,
            value,
            range: "[0, 1)",
        })
    }
}

fn check_decay(field: &'static str, value: f32) -> Result<(), TrainError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(TrainError::Setting {
            field,
            value,
            range: "[0, ∞) (finite)",
        })
    }
}

/// Adam, `torch.optim.Adam`'s update (not `amsgrad`). At step `t` (1-based), per
/// parameter `p` with gradient `g`:
///
/// ```text
/// g ← g + weight_decay·p
/// m ← β₁·m + (1 − β₁)·g
/// v ← β₂·v + (1 − β₂)·g²
/// p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + eps)
/// ```
#[derive(Clone, Debug)]
pub struct Adam {
    config: AdamConfig,
    /// Steps taken.
    t: u32,
    /// Per parameter, in walking order: its own step count and its first and second
    /// moments, `None` until its first update (torch keeps a step count per parameter,
    /// so one unfrozen later starts its bias correction afresh).
    params: Vec<Option<AdamState>>,
}

/// One parameter's [`Adam`] state.
#[derive(Clone, Debug, Default, PartialEq)]
struct AdamState {
    t: u32,
    m: Vec<f32>,
    v: Vec<f32>,
}

impl Adam {
    /// An optimiser with `config` and no state yet.
    pub fn new(config: AdamConfig) -> Self {
        Adam {
            config,
            t: 0,
            params: Vec::new(),
        }
    }

    /// The current settings (the learning rate as last set).
    pub fn config(&self) -> AdamConfig {
        self.config
    }

    /// The current learning rate.
    pub fn lr(&self) -> f32 {
        self.config.lr
    }

    /// Sets the learning rate for the following steps; moments and step count are kept.
    pub fn set_lr(&mut self, lr: f32) {
        self.config.lr = lr;
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u32 {
        self.t
    }

    /// Updates every parameter of `model` once with `grads`.
    ///
    /// # Panics
    ///
    /// As [`Sgd::step`].
    pub fn step<M: Network + ?Sized>(&mut self, model: &mut M, grads: &Gradients) {
        self.t += 1;
        let config = self.config;
        let params = &mut self.params;
        let fresh = params.is_empty();
        let count = for_each_param(model, grads, &mut |i, mut p, g| {
            if fresh && params.len() <= i {
                params.resize(i + 1, None);
            }
            let len = p.len();
            let (s, _) = state(params, i, len, || AdamState {
                t: 0,
                m: vec![0.0; len],
                v: vec![0.0; len],
            });
            s.t += 1;
            let AdamState { t, m, v } = s;
            p.for_each_run(|offset, run| {
                let range = offset..offset + run.len();
                let (m, v) = (&mut m[range.clone()], &mut v[range.clone()]);
                adam_update(&config, *t, run, &g[range], m, v);
            });
        });
        if fresh {
            params.resize(count, None);
        }
        check_count(count, self.params.len());
    }
}

/// One parameter's [`Adam`] update at step `t` (1-based) with its moments `m`, `v`.
fn adam_update(
    config: &AdamConfig,
    t: u32,
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
) {
    let AdamConfig {
        lr,
        betas: (b1, b2),
        eps,
        weight_decay,
    } = *config;
    let t = i32::try_from(t).unwrap_or(i32::MAX);
    let bc1 = 1.0 - f64::from(b1).powi(t);
    let bc2 = 1.0 - f64::from(b2).powi(t);
    let step_size = (f64::from(lr) / bc1) as f32;
    let bc2_sqrt = bc2.sqrt() as f32;
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v) {
        let g = g + weight_decay * *p;
        *m = b1 * *m + (1.0 - b1) * g;
        *v = b2 * *v + (1.0 - b2) * g * g;
        *p -= step_size * *m / (v.sqrt() / bc2_sqrt + eps);
    }
}

/// An optimiser's state as plain data, for training checkpoints (`checkpoint.rs`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct OptimizerState {
    /// `sgd` or `adam`.
    pub kind: &'static str,
    /// Steps taken ([`Adam::steps`]; 0 for SGD, which does not count).
    pub steps: u32,
    /// Per parameter in walking order: `None` before its first update, else its own
    /// step count (1 for SGD) and buffers (SGD: `[velocity]`, empty without momentum;
    /// Adam: `[m, v]`).
    pub params: Vec<Option<(u32, Vec<Vec<f32>>)>>,
}

/// The optimiser of a training run, either kind.
#[derive(Clone, Debug)]
pub(crate) enum Stepper {
    Sgd(Sgd),
    Adam(Adam),
}

impl Stepper {
    pub(crate) fn set_lr(&mut self, lr: f32) {
        match self {
            Stepper::Sgd(o) => o.set_lr(lr),
            Stepper::Adam(o) => o.set_lr(lr),
        }
    }

    pub(crate) fn step<M: Network + ?Sized>(&mut self, model: &mut M, grads: &Gradients) {
        match self {
            Stepper::Sgd(o) => o.step(model, grads),
            Stepper::Adam(o) => o.step(model, grads),
        }
    }

    /// The state, as data.
    pub(crate) fn export(&self) -> OptimizerState {
        match self {
            Stepper::Sgd(o) => OptimizerState {
                kind: "sgd",
                steps: 0,
                params: o
                    .velocity
                    .iter()
                    .map(|b| b.as_ref().map(|b| (1, vec![b.clone()])))
                    .collect(),
            },
            Stepper::Adam(o) => OptimizerState {
                kind: "adam",
                steps: o.t,
                params: o
                    .params
                    .iter()
                    .map(|p| p.as_ref().map(|p| (p.t, vec![p.m.clone(), p.v.clone()])))
                    .collect(),
            },
        }
    }

    /// Replaces the state with `state` (checked by the caller against the model's
    /// parameters); `Err` naming the kinds if `state` is another optimiser's.
    pub(crate) fn import(&mut self, state: OptimizerState) -> Result<(), String> {
        let kind = match self {
            Stepper::Sgd(_) => "sgd",
            Stepper::Adam(_) => "adam",
        };
        if state.kind != kind {
            return Err(format!(
                "the checkpoint's optimiser is {}, this run's is {kind}",
                state.kind
            ));
        }
        match self {
            Stepper::Sgd(o) => {
                o.velocity = state
                    .params
                    .into_iter()
                    .map(|p| p.map(|(_, mut buffers)| buffers.pop().unwrap_or_default()))
                    .collect();
            }
            Stepper::Adam(o) => {
                o.t = state.steps;
                o.params = state
                    .params
                    .into_iter()
                    .map(|p| {
                        p.map(|(t, mut buffers)| {
                            let v = buffers.pop().unwrap_or_default();
                            let m = buffers.pop().unwrap_or_default();
                            AdamState { t, m, v }
                        })
                    })
                    .collect();
            }
        }
        Ok(())
    }
}

/// The DenseNet paper's step schedule: `base_lr` for the first half of training,
/// `base_lr / 10` from epoch `⌈epochs / 2⌉`, `base_lr / 100` from epoch `⌈3·epochs / 4⌉`
/// (`epoch` is 0-based; epochs past the end keep the last rate). With 300 epochs (the
/// paper's CIFAR schedule) the drops are at epochs 150 and 225; with 40, at 20 and 30.
pub fn step_lr(base_lr: f32, epoch: usize, epochs: usize) -> f32 {
    if 4 * epoch >= 3 * epochs {
        base_lr / 100.0
    } else if 2 * epoch >= epochs {
        base_lr / 10.0
    } else {
        base_lr
    }
}

/// A parameter's optimiser state: its length, checked against the parameter's.
trait ParamState {
    fn len(&self) -> usize;
}

impl ParamState for Vec<f32> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
}

impl ParamState for AdamState {
    fn len(&self) -> usize {
        self.m.len()
    }
}

/// The state of parameter `i` (made by `new` at its first update), and whether it was
/// just made. An SGD buffer without momentum is empty: its length is checked as 0.
fn state<S: ParamState>(
    states: &mut [Option<S>],
    i: usize,
    len: usize,
    new: impl FnOnce() -> S,
) -> (&mut S, bool) {
    let slot = states
        .get_mut(i)
        .unwrap_or_else(|| panic!("optimiser state: parameter {i} is new since the last step"));
    let first = slot.is_none();
    let s = slot.get_or_insert_with(new);
    assert_eq!(
        s.len(),
        len,
        "optimiser state: parameter {i} changed size since the last step"
    );
    (s, first)
}

#[track_caller]
fn check_count(count: usize, buffers: usize) {
    assert!(
        count == buffers,
        "optimiser state: {buffers} parameters before, {count} now"
    );
}

/// A parameter, borrowed mutably: an array's values, or a conv weight, updated in place
/// run by run in its stored layout (a wide weight is panel-major: unpacking it for the
/// update and packing it again would copy it twice and allocate).
enum ParamMut<'a> {
    Values(ArrayViewMutD<'a, f32>),
    Conv(&'a mut Conv2d),
}

impl ParamMut<'_> {
    /// Number of values.
    fn len(&self) -> usize {
        match self {
            Self::Values(v) => v.len(),
            Self::Conv(conv) => conv.weight_shape().iter().product(),
        }
    }

    /// Whether its shape (HWIO for a conv weight) is `shape`.
    fn has_shape(&self, shape: &[usize]) -> bool {
        match self {
            Self::Values(v) => v.shape() == shape,
            Self::Conv(conv) => conv.weight_shape() == shape,
        }
    }

    /// `f(offset, run)` for every contiguous run of the values, `offset` being the run's
    /// first index in the parameter's row-major order (the gradient's and the state's).
    fn for_each_run(&mut self, mut f: impl FnMut(usize, &mut [f32])) {
        match self {
            Self::Values(v) => {
                if let Some(values) = v.as_slice_mut() {
                    return f(0, values);
                }
                for (i, x) in v.iter_mut().enumerate() {
                    f(i, core::slice::from_mut(x));
                }
            }
            Self::Conv(conv) => conv.for_each_weight_run_mut(f),
        }
    }
}

/// Calls `f(i, parameter, gradient)` for every parameter of `model`, `i` counting from
/// 0 in walking order (conv weight; BN gamma, beta; linear weight, bias); the gradient
/// skips the parameters of a layer `grads` leaves out (a frozen one), counting them.
/// Returns the number of parameters.
fn for_each_param<M: Network + ?Sized>(
    model: &mut M,
    grads: &Gradients,
    f: &mut dyn FnMut(usize, ParamMut<'_>, &[f32]),
) -> usize {
    let mut i = 0;
    model.visit_layers_mut(&mut |name, layer| {
        let mut apply = |what: &str, p: ParamMut<'_>, g: ArrayViewD<'_, f32>| {
            assert!(p.has_shape(g.shape()), "gradient of {what}: shape");
            // Gradients are made in standard layout; another would be copied.
            let copy;
            let g = match g.as_slice() {
                Some(g) => g,
                None => {
                    copy = g.iter().copied().collect::<Vec<_>>();
                    &copy
                }
            };
            f(i, p, g);
            i += 1;
        };
        match (layer, grads.get(name)) {
            // Frozen: not even borrowed mutably.
            (LayerMut::Conv(_), None) => i += 1,
            (LayerMut::BatchNorm(_) | LayerMut::Linear(_), None) => i += 2,
            (LayerMut::Conv(conv), Some(LayerGrad::Conv { weight })) => apply(
                "conv weight",
                ParamMut::Conv(conv),
                weight.view().into_dyn(),
            ),
            (LayerMut::BatchNorm(bn), Some(LayerGrad::BatchNorm { gamma, beta })) => {
                apply(
                    "BN gamma",
                    ParamMut::Values(bn.gamma_mut().view_mut().into_dyn()),
                    gamma.view().into_dyn(),
                );
                apply(
                    "BN beta",
                    ParamMut::Values(bn.beta_mut().view_mut().into_dyn()),
                    beta.view().into_dyn(),
                );
            }
            (LayerMut::Linear(linear), Some(LayerGrad::Linear { weight, bias })) => {
                apply(
                    "linear weight",
                    ParamMut::Values(linear.weight_mut().view_mut().into_dyn()),
                    weight.view().into_dyn(),
                );
                apply(
                    "linear bias",
                    ParamMut::Values(linear.bias_mut().view_mut().into_dyn()),
                    bias.view().into_dyn(),
                );
            }
            (_, Some(_)) => wrong_kind(name),
        }
    });
    i
}

#[cold]
#[track_caller]
fn wrong_kind(name: crate::LayerName) -> ! {
    panic!("gradient of layer {name:?} is of another kind than the layer")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_lr_drops_at_half_and_three_quarters() {
        assert_eq!(step_lr(0.1, 0, 300), 0.1);
        assert_eq!(step_lr(0.1, 149, 300), 0.1);
        assert_eq!(step_lr(0.1, 150, 300), 0.1 / 10.0);
        assert_eq!(step_lr(0.1, 224, 300), 0.1 / 10.0);
        assert_eq!(step_lr(0.1, 225, 300), 0.1 / 100.0);
        assert_eq!(step_lr(0.1, 299, 300), 0.1 / 100.0);
        assert_eq!(step_lr(0.1, 400, 300), 0.1 / 100.0);
        // Odd counts: the first epoch at or past the fraction.
        let five: Vec<f32> = (0..5).map(|e| step_lr(1.0, e, 5)).collect();
        assert_eq!(five, [1.0, 1.0, 1.0, 0.1, 0.01]);
        let forty: Vec<usize> = (1..40)
            .filter(|&e| step_lr(1.0, e, 40) != step_lr(1.0, e - 1, 40))
            .collect();
        assert_eq!(forty, [20, 30]);
    }

    #[test]
    fn defaults_are_the_paper_and_torch_settings() {
        let sgd = SgdConfig::default();
        assert_eq!(
            (sgd.lr, sgd.momentum, sgd.nesterov, sgd.weight_decay),
            (0.1, 0.9, true, 1e-4)
        );
        let adam = AdamConfig::default();
        assert_eq!(
            (adam.lr, adam.betas, adam.eps, adam.weight_decay),
            (1e-3, (0.9, 0.999), 1e-8, 0.0)
        );
        let mut opt = Sgd::new(sgd);
        opt.set_lr(0.01);
        assert_eq!(opt.lr(), 0.01);
        let mut opt = Adam::new(adam);
        opt.set_lr(0.5);
        assert_eq!((opt.lr(), opt.steps()), (0.5, 0));
    }

    // Generated by tools/make_optim_fixtures.py (torch.optim in float64): the parameter
    // after each of three steps from P0 with gradient g_t[i] = sin(1 + i + 3t).
    const P0: [f32; 5] = [0.5, -1.0, 0.25, 2.0, -0.125];
    const SGD_NESTEROV: [[f64; 5]; 3] = [
        [
            3.401110129e-01,
            -1.172747511e+00,
            2.231824485e-01,
            2.143754474e+00,
            5.719798719e-02,
        ],
        [
            4.157338251e-01,
            -1.064174608e+00,
            2.648344070e-01,
            2.080171091e+00,
            -5.310728769e-02,
        ],
        [
            2.908498398e-01,
            -1.240730583e+00,
            1.988682394e-01,
            2.185418622e+00,
            1.266598702e-01,
        ],
    ];
    const SGD_MOMENTUM: [[f64; 5]; 3] = [
        [
            4.576764508e-01,
            -1.044964871e+00,
            2.428189996e-01,
            2.036840125e+00,
            -7.699128627e-02,
        ],
        [
            4.571965430e-01,
            -1.036964559e+00,
            2.502054646e-01,
            2.036128487e+00,
            -8.321286060e-02,
        ],
        [
            4.236866978e-01,
            -1.078713709e+00,
            2.361222562e-01,
            2.061671004e+00,
            -3.877116073e-02,
        ],
    ];
    const ADAM: [[f64; 5]; 3] = [
        [
            4.990000000e-01,
            -1.001000000e+00,
            2.490000001e-01,
            2.001000000e+00,
            -1.240000000e-01,
        ],
        [
            4.989996571e-01,
            -1.000920834e+00,
            2.493623407e-01,
            2.001017926e+00,
            -1.240682437e-01,
        ],
        [
            4.986785252e-01,
            -1.001254890e+00,
            2.490228742e-01,
            2.001335050e+00,
            -1.237355158e-01,
        ],
    ];
    const ADAM_WD: [[f64; 5]; 3] = [
        [
            4.900000001e-01,
            -1.010000000e+00,
            2.400000006e-01,
            2.010000000e+00,
            -1.150000001e-01,
        ],
        [
            4.899628844e-01,
            -1.007571434e+00,
            2.431561287e-01,
            2.006834311e+00,
            -1.161440929e-01,
        ],
        [
            4.861955290e-01,
            -1.010045260e+00,
            2.386558072e-01,
            2.006921903e+00,
            -1.126112408e-01,
        ],
    ];

    fn grad(t: usize) -> ndarray::ArrayD<f32> {
        ndarray::Array1::from_shape_fn(5, |i| (1.0 + i as f64 + 3.0 * t as f64).sin() as f32)
            .into_dyn()
    }

    #[track_caller]
    fn assert_close(what: &str, ours: &ndarray::ArrayD<f32>, torch: &[f64; 5]) {
        for (i, (&a, &b)) in ours.iter().zip(torch).enumerate() {
            assert!(
                (f64::from(a) - b).abs() <= 2e-6 * b.abs().max(1.0),
                "{what}[{i}]: ours {a} vs torch {b}"
            );
        }
    }

    fn check_sgd(what: &str, config: SgdConfig, expected: &[[f64; 5]; 3]) {
        let mut p = ndarray::Array1::from(P0.to_vec()).into_dyn();
        let mut buf = vec![0.0; 5];
        for (t, row) in expected.iter().enumerate() {
            let (values, g) = (p.as_slice_mut().unwrap(), grad(t));
            sgd_update(&config, t == 0, values, g.as_slice().unwrap(), &mut buf);
            assert_close(&format!("{what} step {}", t + 1), &p, row);
        }
    }

    fn check_adam(what: &str, config: AdamConfig, expected: &[[f64; 5]; 3]) {
        let mut p = ndarray::Array1::from(P0.to_vec()).into_dyn();
        let (mut m, mut v) = (vec![0.0; 5], vec![0.0; 5]);
        for (t, row) in expected.iter().enumerate() {
            let (values, g) = (p.as_slice_mut().unwrap(), grad(t));
            adam_update(
                &config,
                t as u32 + 1,
                values,
                g.as_slice().unwrap(),
                &mut m,
                &mut v,
            );
            assert_close(&format!("{what} step {}", t + 1), &p, row);
        }
    }

    #[test]
    fn sgd_matches_torch_with_changing_gradients() {
        check_sgd("nesterov", SgdConfig::default(), &SGD_NESTEROV);
        let plain = SgdConfig {
            lr: 0.05,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-2,
        };
        check_sgd("momentum", plain, &SGD_MOMENTUM);
    }

    #[test]
    fn sgd_without_momentum_is_plain_descent() {
        let config = SgdConfig {
            lr: 0.5,
            momentum: 0.0,
            nesterov: false,
            weight_decay: 0.1,
        };
        let mut p = ndarray::Array1::from(vec![1.0f32, -2.0]).into_dyn();
        let g = ndarray::Array1::from(vec![0.5f32, 1.0]).into_dyn();
        sgd_update(
            &config,
            true,
            p.as_slice_mut().unwrap(),
            g.as_slice().unwrap(),
            &mut [],
        );
        // p − 0.5·(g + 0.1·p)
        assert_eq!(p.as_slice().unwrap(), [1.0 - 0.5 * 0.6, -2.0 - 0.5 * 0.8]);
    }

    #[test]
    fn adam_matches_torch_with_changing_gradients() {
        check_adam("default", AdamConfig::default(), &ADAM);
        let wd = AdamConfig {
            lr: 1e-2,
            betas: (0.8, 0.99),
            eps: 1e-8,
            weight_decay: 0.1,
        };
        check_adam("weight decay", wd, &ADAM_WD);
    }
}
