//! The training step's large buffers, planned from a recorded step and kept from one
//! step to the next on each thread.
//!
//! A step of DenseNet-BC-100 at batch 64 touches about half a gigabyte: the block
//! buffers and bottleneck outputs the tape keeps, the gradients of the block buffers and
//! BN-ReLU recomputations. Freshly allocated, every page of it faults in on first touch
//! (and is unmapped again at the end of the step): 12% of a step's time measured with
//! `perf`. So buffers outlive the step, like the inference
//! [`Workspace`](crate::Workspace)'s arena.
//!
//! Which kept vector serves which request is planned, as inference's arena offsets are,
//! but from the step itself: a step's requests are the same from one step to the next
//! (the same model, batch shape and settings make the same requests in the same order).
//! The first step allocates as it goes and frees each buffer when it is given back (its
//! peak is the live peak), recording each request's length and lifetime; at its end the
//! requests are assigned to *slots* greedily by size (largest first, each into the
//! smallest slot whose other requests' lifetimes do not overlap its own; the scheme of
//! TFLite's "greedy by size" shared objects: `densenet_spec::training::assign_slots`,
//! which also plans the same requests from the shapes alone for `summary()`). Each slot
//! is one vector of its largest request's length, allocated once. Later steps take request `i` from its slot: no
//! allocation, no page fault, and a slot's capacity never changes, so the kept memory is
//! constant. A step that asks for something else (another batch size, a last partial
//! batch) is served from the free slots by best fit and fresh vectors, freed at its end,
//! and leaves the plan in place; two such steps in a row with the same requests re-plan.

use densenet_spec::training::{assign_slots, live_peak, BufferRequest as Request};
use ndarray::Array4;

/// Most recycled weight gradients kept: far above a step's (DenseNet-264 has 264 convs).
const MAX_GRADIENTS: usize = 4096;

/// Per request of a step, in order: its length and the slot serving it (`None`: a
/// request that leaves the step, served by a fresh vector each time).
struct Plan {
    requests: Vec<(usize, Option<usize>)>,
}

/// What the plan of a step's buffers holds, for reports (see
/// [`step_memory`](super::step_memory)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlannedBuffers {
    /// Requests the planned step makes.
    pub requests: usize,
    /// Kept vectors serving them.
    pub slots: usize,
    /// Floats the slots hold (the sum of their lengths).
    pub slot_floats: usize,
    /// The most floats live at once during the planned step: the least any plan could
    /// keep.
    pub live_peak_floats: usize,
}

/// A thread's training-step buffers (see the module documentation).
#[derive(Default)]
pub(crate) struct Buffers {
    /// One vector per slot of the plan, `None` while lent out.
    slots: Vec<Option<Vec<f32>>>,
    /// Each slot's address, to recognise its vector when it comes back.
    slot_addresses: Vec<usize>,
    plan: Option<Plan>,
    planned: PlannedBuffers,
    /// The requests the plan was made from.
    planned_requests: Vec<Request>,
    /// This step's requests so far.
    trace: Vec<Request>,
    /// Vectors lent out this step: address and request index.
    lent: Vec<(usize, usize)>,
    events: usize,
    /// Whether every request of this step so far was the plan's.
    on_plan: bool,
    /// The lengths requested by the last step, if it left the plan.
    last_off_plan: Option<Vec<usize>>,
    /// Weight gradients' storage, recycled apart: they leave the step (the caller
    /// updates the weights with them) and come back through `Gradients::recycle`.
    gradients: Vec<Vec<f32>>,
}

fn address(v: &[f32]) -> usize {
    v.as_ptr() as usize
}

impl Buffers {
    /// Starts a step's record (see [`Buffers::end_step`]).
    pub(crate) fn begin_step(&mut self) {
        self.trace.clear();
        self.lent.clear();
        self.events = 0;
        self.on_plan = true;
    }

    /// Ends a step: a first step (or the second alike of two off the plan) is planned,
    /// its slots allocated. `completed` is false for a step that stopped on an error:
    /// its record is dropped.
    pub(crate) fn end_step(&mut self, completed: bool) {
        let on_plan = self.on_plan
            && self
                .plan
                .as_ref()
                .is_some_and(|p| p.requests.len() == self.trace.len());
        if completed && !on_plan {
            let lens: Vec<usize> = self.trace.iter().map(|r| r.len).collect();
            if self.plan.is_none() || self.last_off_plan.as_ref() == Some(&lens) {
                self.replan();
                self.last_off_plan = None;
            } else {
                self.last_off_plan = Some(lens);
            }
        } else if completed {
            self.last_off_plan = None;
        }
        self.trace.clear();
        self.lent.clear();
        self.events = 0;
        self.on_plan = true;
    }

    /// Plans this step's requests into slots and allocates them (the old ones freed first).
    fn replan(&mut self) {
        let (slot_of, caps) = assign_slots(&self.trace);
        let requests: Vec<(usize, Option<usize>)> =
            self.trace.iter().map(|r| r.len).zip(slot_of).collect();
        self.slots = caps
            .iter()
            .map(|&cap| Some(Vec::with_capacity(cap)))
            .collect();
        self.slot_addresses = self
            .slots
            .iter()
            .map(|v| address(v.as_deref().unwrap_or_default()))
            .collect();
        self.planned = PlannedBuffers {
            requests: requests.len(),
            slots: caps.len(),
            slot_floats: caps.iter().sum(),
            live_peak_floats: live_peak(&self.trace),
        };
        self.plan = Some(Plan { requests });
        self.planned_requests = self.trace.clone();
    }

    /// A vector of at least `len` floats' capacity for the step's next request, contents
    /// unspecified: its slot's, else (off the plan) the free slot vector with the least
    /// capacity that holds it, else a new one.
    fn request(&mut self, len: usize) -> Vec<f32> {
        if len == 0 {
            return Vec::new();
        }
        let index = self.trace.len();
        self.events += 1;
        self.trace.push(Request {
            len,
            taken: self.events,
            given: None,
        });
        let planned = self.plan.as_ref().and_then(|p| p.requests.get(index));
        let v = match planned {
            Some(&(l, slot)) if self.on_plan && l == len => match slot {
                Some(k) => self.slots[k].take(),
                None => Some(Vec::with_capacity(len)),
            },
            _ => None,
        };
        let v = v.unwrap_or_else(|| {
            self.on_plan = false;
            let fit = (0..self.slots.len())
                .filter(|&k| self.slots[k].as_ref().is_some_and(|v| v.capacity() >= len))
                .min_by_key(|&k| self.slots[k].as_ref().map_or(0, Vec::capacity));
            fit.and_then(|k| self.slots[k].take())
                .unwrap_or_else(|| Vec::with_capacity(len))
        });
        self.lent.push((address(&v), index));
        v
    }

    /// A zeroed vector of `len` floats (the steps' buffers are all written whole now:
    /// [`Buffers::overwritten`]).
    #[cfg(test)]
    pub(crate) fn zeros(&mut self, len: usize) -> Vec<f32> {
        let mut v = self.request(len);
        v.clear();
        v.resize(len, 0.0);
        v
    }

    /// A vector of `len` floats holding whatever an earlier use left (given-back vectors
    /// keep their length, so this writes nothing but an extension past it): only for a
    /// buffer that is written whole before it is read, which
    /// `tests/train_grads.rs::kept_step_memory_changes_nothing` checks.
    pub(crate) fn overwritten(&mut self, len: usize) -> Vec<f32> {
        let mut v = self.request(len);
        if v.len() >= len {
            v.truncate(len);
        } else {
            v.resize(len, 0.0);
        }
        v
    }

    /// [`Buffers::overwritten`] as an NHWC array of shape `dim`.
    pub(crate) fn overwritten4(&mut self, dim: (usize, usize, usize, usize)) -> Array4<f32> {
        let (n, h, w, c) = dim;
        let v = self.overwritten(n * h * w * c);
        Array4::from_shape_vec(dim, v).expect("n·h·w·c elements")
    }

    /// Gives a vector back: a slot's returns to its slot, any other is freed.
    pub(crate) fn give(&mut self, v: Vec<f32>) {
        if v.capacity() == 0 {
            return;
        }
        let at = address(&v);
        if let Some(i) = self.lent.iter().position(|&(a, _)| a == at) {
            let (_, index) = self.lent.swap_remove(i);
            self.events += 1;
            self.trace[index].given = Some(self.events);
        }
        if let Some(k) =
            (0..self.slots.len()).find(|&k| self.slots[k].is_none() && self.slot_addresses[k] == at)
        {
            self.slots[k] = Some(v);
        }
    }

    /// Gives an array's storage back.
    pub(crate) fn give4(&mut self, a: Array4<f32>) {
        let (v, _) = a.into_raw_vec_and_offset();
        self.give(v);
    }

    /// A vector of `len` floats that leaves the step (a weight gradient), contents
    /// unspecified: the recycled gradient vector with the least capacity that holds
    /// `len`, else a new one.
    pub(crate) fn leaving(&mut self, len: usize) -> Vec<f32> {
        let fit = (0..self.gradients.len())
            .filter(|&i| self.gradients[i].capacity() >= len)
            .min_by_key(|&i| self.gradients[i].capacity());
        let mut v = fit.map_or_else(Vec::new, |i| self.gradients.swap_remove(i));
        v.resize(len, 0.0);
        v.truncate(len);
        v
    }

    /// Keeps a recycled weight gradient's storage for [`Buffers::leaving`] (or frees it,
    /// if the list is full: gradients recycled on a thread that no longer trains cannot
    /// pile up).
    pub(crate) fn give_gradient(&mut self, v: Vec<f32>) {
        if v.capacity() > 0 && self.gradients.len() < MAX_GRADIENTS {
            self.gradients.push(v);
        }
    }

    /// Floats held by the slots and the recycled gradients.
    pub(crate) fn floats(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .chain(&self.gradients)
            .map(Vec::capacity)
            .sum()
    }

    /// The plan's figures (all zero before the first step).
    pub(crate) fn planned(&self) -> PlannedBuffers {
        self.planned
    }

    /// The requests the plan was made from.
    #[cfg(feature = "internals")]
    pub(crate) fn planned_requests(&self) -> &[Request] {
        &self.planned_requests
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(b: &mut Buffers, lens: &[usize]) -> Vec<usize> {
        // Takes all, gives back in reverse pairs: 0 and 1 live together, then 2 alone…
        b.begin_step();
        let mut addresses = Vec::new();
        for pair in lens.chunks(2) {
            let vs: Vec<Vec<f32>> = pair.iter().map(|&l| b.zeros(l)).collect();
            addresses.extend(vs.iter().map(|v| address(v)));
            vs.into_iter().for_each(|v| b.give(v));
        }
        b.end_step(true);
        addresses
    }

    #[test]
    fn a_repeated_step_reuses_its_slots_and_keeps_what_it_planned() {
        let mut b = Buffers::default();
        let lens = [100, 50, 80, 20, 10];
        step(&mut b, &lens);
        // Pairs (100, 50), (80, 20), (10): two slots of 100 and 50 serve them all.
        assert_eq!(
            b.planned(),
            PlannedBuffers {
                requests: 5,
                slots: 2,
                slot_floats: 150,
                live_peak_floats: 150,
            }
        );
        let first = step(&mut b, &lens);
        assert_eq!(
            first,
            step(&mut b, &lens),
            "the same vectors, step after step"
        );
        assert_eq!(b.floats(), 150);
    }

    #[test]
    fn another_step_is_served_then_two_alike_replan() {
        let mut b = Buffers::default();
        step(&mut b, &[100, 50]);
        step(&mut b, &[300, 40]);
        assert_eq!(
            b.planned().slot_floats,
            150,
            "one step off the plan keeps it"
        );
        assert_eq!(b.floats(), 150, "and frees what it allocated");
        step(&mut b, &[300, 40]);
        assert_eq!(b.planned().slot_floats, 340, "the second alike re-plans");
        assert_eq!(b.floats(), 340);
    }

    #[test]
    fn a_step_that_stops_on_an_error_loses_nothing_for_good() {
        let mut b = Buffers::default();
        let lens = [100, 50, 80, 20, 10];
        step(&mut b, &lens);
        let planned = b.planned();
        // A step stops half-way: what it holds is dropped, its slots stay empty.
        b.begin_step();
        drop(b.zeros(100));
        b.end_step(false);
        // The next step runs off the plan (one slot is gone), the one after re-plans.
        step(&mut b, &lens);
        step(&mut b, &lens);
        assert_eq!(b.planned(), planned);
        assert_eq!(b.floats(), 150);
        let first = step(&mut b, &lens);
        assert_eq!(first, step(&mut b, &lens), "back on a plan");
    }

    #[test]
    fn a_request_never_given_back_has_no_slot() {
        let mut b = Buffers::default();
        b.begin_step();
        let kept = b.zeros(64);
        let v = b.zeros(32);
        b.give(v);
        b.end_step(true);
        assert_eq!(b.planned().slots, 1);
        assert_eq!(b.planned().live_peak_floats, 96);
        drop(kept);
    }
}
