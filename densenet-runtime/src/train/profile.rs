//! Where a training step's time goes: [`StepProfile`], the wall time of each phase of
//! [`loss_and_gradients_profiled`](super::loss_and_gradients_profiled), per stage.
//!
//! Phases are timed on the calling thread around each piece of work (which runs on
//! the step's threads inside): they do not overlap, so their sum is at most the step's
//! wall time, and what is left is the bookkeeping between them. Timing costs two clock
//! reads a phase (a few hundred a step); an unprofiled step reads no clock.

use std::fmt;
use std::time::{Duration, Instant};

/// The forward or the backward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pass {
    /// The training-mode forward pass, recording what the backward needs.
    Forward,
    /// The backward pass.
    Backward,
}

/// A stage of the network, as [`Network::stage`](crate::Network::stage) walks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StepStage {
    /// The batch's NCHW → NHWC copy, or the frozen stages run in inference mode.
    Input,
    /// The stem.
    Stem,
    /// Dense block `n` (from 1).
    Block(usize),
    /// Transition `n` (from 1, after block `n`).
    Transition(usize),
    /// The classifier head and the loss.
    Head,
}

impl fmt::Display for StepStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepStage::Input => f.write_str("input"),
            StepStage::Stem => f.write_str("stem"),
            StepStage::Block(n) => write!(f, "dense block {n}"),
            StepStage::Transition(n) => write!(f, "transition {n}"),
            StepStage::Head => f.write_str("head"),
        }
    }
}

/// The work a phase does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Part {
    /// A whole stage's forward or backward (input, stem forward, transition, head).
    Whole,
    /// Bottleneck layers' BN1-ReLU and 1x1 convolution.
    Bottleneck1x1,
    /// The batch statistics of the bottleneck outputs (BN2), dropout included.
    Bn2Statistics,
    /// The layers' 3x3 convolutions, with the BN-ReLU before them.
    Conv3x3,
    /// The batch moments of each layer's new channels, dropout included.
    NewChannelMoments,
    /// Completing the gradient of each layer's new channels (the BatchNorm terms the
    /// later layers deferred), dropout included.
    NewChannelGradients,
    /// The 3x3 convolutions' weight and input gradients (with BN2-ReLU's backward sums
    /// over the input gradient, without dropout).
    Conv3x3Backward,
    /// BN2-ReLU's backward with dropout (its whole backward; without dropout, its sums
    /// run inside the 3x3's input gradient, timed there, and its input gradient inside
    /// the 1x1 backward).
    Bn2Backward,
    /// Bottleneck layers' 1x1 backward: BN1-ReLU recomputed, the weight and input
    /// gradients, BN1's sums.
    Bottleneck1x1Backward,
    /// A basic (no bottleneck) layer's backward, BN1-ReLU included.
    BasicLayerBackward,
    /// The gradient of the block's input, completed.
    BlockInputGradient,
    /// The softmax cross-entropy and its gradient.
    Loss,
    /// The stem's max pool backward.
    PoolBackward,
    /// The stem's BN-ReLU backward.
    BnReluBackward,
    /// The stem conv's weight gradient.
    ConvWeightGradient,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Whole => "all",
            Part::Bottleneck1x1 => "BN1-ReLU + 1x1 convs",
            Part::Bn2Statistics => "BN2 statistics",
            Part::Conv3x3 => "BN-ReLU + 3x3 convs",
            Part::NewChannelMoments => "new channels' moments",
            Part::NewChannelGradients => "new channels' gradients",
            Part::Conv3x3Backward => "3x3 backward (+ BN2 sums)",
            Part::Bn2Backward => "BN2-ReLU backward",
            Part::Bottleneck1x1Backward => "1x1 backward, BN1-ReLU recomputed",
            Part::BasicLayerBackward => "basic layers' backward",
            Part::BlockInputGradient => "block input gradient",
            Part::Loss => "softmax cross-entropy",
            Part::PoolBackward => "max pool backward",
            Part::BnReluBackward => "BN-ReLU backward",
            Part::ConvWeightGradient => "conv weight gradient",
        })
    }
}

/// One phase: a part of a stage's forward or backward, its calls (one per layer for a
/// dense block's parts) and their total wall time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Phase {
    /// Forward or backward.
    pub pass: Pass,
    /// The stage.
    pub stage: StepStage,
    /// The work.
    pub part: Part,
    /// How many times it ran in the step.
    pub calls: usize,
    /// Its wall time over those calls.
    pub time: Duration,
}

/// The wall time of each phase of a training step, in the order the phases first ran
/// (see [`loss_and_gradients_profiled`](super::loss_and_gradients_profiled)).
/// `Display` prints it as a table, with each phase's share of the step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepProfile {
    phases: Vec<Phase>,
    step: Duration,
}

impl StepProfile {
    /// The phases, in the order they first ran.
    pub fn phases(&self) -> &[Phase] {
        &self.phases
    }

    /// The step's wall time, from its first check to its gradients returned.
    pub fn step_time(&self) -> Duration {
        self.step
    }

    /// The time of the phases doing `part` in `pass`, over all stages, and their calls.
    pub fn part(&self, pass: Pass, part: Part) -> (usize, Duration) {
        self.phases
            .iter()
            .filter(|p| p.pass == pass && p.part == part)
            .fold((0, Duration::ZERO), |(c, t), p| (c + p.calls, t + p.time))
    }

    /// Adds the phases and step time of `other` (another step of the same model) to
    /// these, for a profile over several steps.
    pub fn add(&mut self, other: &StepProfile) {
        for p in &other.phases {
            self.record(p.pass, p.stage, p.part, p.time, p.calls);
        }
        self.step += other.step;
    }

    fn record(&mut self, pass: Pass, stage: StepStage, part: Part, time: Duration, calls: usize) {
        let at = self
            .phases
            .iter()
            .rposition(|p| (p.pass, p.stage, p.part) == (pass, stage, part));
        match at {
            Some(i) => {
                self.phases[i].calls += calls;
                self.phases[i].time += time;
            }
            None => self.phases.push(Phase {
                pass,
                stage,
                part,
                calls,
                time,
            }),
        }
    }
}

impl fmt::Display for StepProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let step = self.step.as_secs_f64().max(f64::MIN_POSITIVE);
        writeln!(
            f,
            "{:<9} {:<14} {:<34} {:>6} {:>10} {:>6}",
            "pass", "stage", "phase", "calls", "ms", "%"
        )?;
        for p in &self.phases {
            let pass = match p.pass {
                Pass::Forward => "forward",
                Pass::Backward => "backward",
            };
            let ms = p.time.as_secs_f64() * 1e3;
            writeln!(
                f,
                "{:<9} {:<14} {:<34} {:>6} {:>10.1} {:>6.1}",
                pass,
                p.stage.to_string(),
                p.part.to_string(),
                p.calls,
                ms,
                100.0 * p.time.as_secs_f64() / step
            )?;
        }
        let timed: Duration = self.phases.iter().map(|p| p.time).sum();
        let other = self.step.saturating_sub(timed);
        writeln!(
            f,
            "{:<9} {:<14} {:<34} {:>6} {:>10.1} {:>6.1}",
            "",
            "",
            "between phases",
            "",
            other.as_secs_f64() * 1e3,
            100.0 * other.as_secs_f64() / step
        )?;
        write!(
            f,
            "{:<9} {:<14} {:<34} {:>6} {:>10.1} {:>6.1}",
            "step",
            "",
            "",
            "",
            self.step.as_secs_f64() * 1e3,
            100.0
        )
    }
}

/// The step's clock: times phases into a [`StepProfile`] when there is one, and reads
/// no clock otherwise.
pub(super) struct Clock<'a>(Option<&'a mut StepProfile>);

impl<'a> Clock<'a> {
    pub(super) fn new(profile: Option<&'a mut StepProfile>) -> Self {
        Clock(profile)
    }

    /// Now, if profiling.
    pub(super) fn start(&self) -> Option<Instant> {
        self.0.as_ref().map(|_| Instant::now())
    }

    /// Adds the time since `start` to the phase.
    pub(super) fn lap(&mut self, start: Option<Instant>, pass: Pass, stage: StepStage, part: Part) {
        if let (Some(profile), Some(start)) = (self.0.as_deref_mut(), start) {
            profile.record(pass, stage, part, start.elapsed(), 1);
        }
    }

    /// Sets the step's wall time to the time since `start`.
    pub(super) fn finish(&mut self, start: Option<Instant>) {
        if let (Some(profile), Some(start)) = (self.0.as_deref_mut(), start) {
            profile.step = start.elapsed();
        }
    }
}
