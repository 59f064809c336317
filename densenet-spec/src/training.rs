//! The training step's buffers, planned from the shapes: every buffer a step of
//! `densenet_runtime::train` asks for, in order, with its lifetime, and their assignment
//! to kept vectors (*slots*).
//!
//! The runtime plans its kept vectors from the requests its first step actually makes
//! (`train/buffers.rs`), with [`assign_slots`]; this module lists the same requests from
//! a [`Plan`] alone, so the training memory is known before any step (`summary()` prints
//! it) and a test (`tests/train_allocations.rs`) holds the two lists equal.
//!
//! Every request is a multiple of the batch size, and neither their order nor their
//! lifetimes depend on it, so the plan at batch `n` is `n` times the plan at batch 1.

use crate::arch::{Head, Stem};
use crate::plan::{window_output, Plan};
use crate::prelude::*;

/// One buffer a training step asks for: its length in `f32`s and the events (requests
/// and returns, counted from 1) at which it is taken and given back (`None`: it leaves
/// the step).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferRequest {
    /// Floats.
    pub len: usize,
    /// The event that takes it.
    pub taken: usize,
    /// The event that gives it back.
    pub given: Option<usize>,
}

/// The planned buffers of one training step (every stage trained, no frozen part).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainingPlan {
    /// Batch size.
    pub batch: usize,
    /// The step's requests, in order.
    pub requests: Vec<BufferRequest>,
    /// The slot serving each request ([`assign_slots`]).
    pub slot_of: Vec<Option<usize>>,
    /// Each slot's length in floats.
    pub slots: Vec<usize>,
}

impl TrainingPlan {
    /// Floats the slots hold: what a step keeps in buffers between steps.
    pub fn slot_floats(&self) -> usize {
        self.slots.iter().sum()
    }

    /// The most floats live at once during the step ([`live_peak`]).
    pub fn live_peak_floats(&self) -> usize {
        live_peak(&self.requests)
    }
}

/// Records requests as the runtime's buffers count them.
#[derive(Default)]
struct Recorder {
    requests: Vec<BufferRequest>,
    events: usize,
}

impl Recorder {
    /// Takes a buffer of `len` floats; returns its index (`None` for an empty one,
    /// which is no request).
    fn take(&mut self, len: usize) -> Option<usize> {
        if len == 0 {
            return None;
        }
        self.events += 1;
        self.requests.push(BufferRequest {
            len,
            taken: self.events,
            given: None,
        });
        Some(self.requests.len() - 1)
    }

    fn give(&mut self, id: Option<usize>) {
        if let Some(i) = id {
            self.events += 1;
            self.requests[i].given = Some(self.events);
        }
    }
}

impl Plan {
    /// The buffers of one training step at batch `batch` with every stage trained and the
    /// architecture's dropout rate, in the order the runtime's tape asks for them (see
    /// the module documentation).
    pub fn training(&self, batch: usize) -> TrainingPlan {
        let requests = self.training_requests(batch);
        let (slot_of, slots) = assign_slots(&requests);
        TrainingPlan {
            batch,
            requests,
            slot_of,
            slots,
        }
    }

    /// The requests of [`Plan::training`], mirroring `train/tape.rs` stage by stage.
    fn training_requests(&self, n: usize) -> Vec<BufferRequest> {
        let mut r = Recorder::default();
        let [c_img, h_img, w_img] = self.input;
        let c0 = self.stem.c_out;
        // Forward. The batch in NHWC, then the stem.
        let input = r.take(n * h_img * w_img * c_img);
        let (oh, ow) = match self.stem_kind {
            Stem::ImageNet => (window_output(h_img, 7, 2, 3), window_output(w_img, 7, 2, 3)),
            Stem::Cifar => (h_img, w_img),
        };
        let stem_y = r.take(n * oh * ow * c0);
        let mut next = match self.stem_kind {
            Stem::ImageNet => {
                let relu = r.take(n * oh * ow * c0);
                let (ph, pw) = (self.stem.height, self.stem.width);
                let out = r.take(n * ph * pw * c0);
                r.give(relu);
                out
            }
            Stem::Cifar => stem_y,
        };
        // Per block: its buffer and its layers' bottleneck outputs, held to its backward.
        let mut held: Vec<(Option<usize>, Vec<Option<usize>>)> = Vec::new();
        for (i, b) in self.blocks.iter().enumerate() {
            let rows = n * b.height * b.width;
            let padded = n * (b.height + 2) * (b.width + 2);
            let buffer = r.take(rows * b.c_out);
            let mut zs = Vec::new();
            for j in 0..b.layers {
                let c = b.c_in + j * self.growth;
                match self.bottleneck {
                    Some(bn) => {
                        // (The 3x3 reads BN2-ReLU of it as it goes, or its padded map
                        // from the step's scratch.)
                        zs.push(r.take(rows * bn * self.growth));
                    }
                    None => {
                        let p = r.take(padded * c);
                        r.give(p);
                    }
                }
            }
            r.give(next);
            held.push((buffer, zs));
            if let Some(t) = self.transitions.get(i) {
                // BN-ReLU and the pool in one pass: no full-size map.
                let pooled = r.take(n * t.height * t.width * t.c_in);
                next = r.take(n * t.height * t.width * t.c_out);
                r.give(pooled);
            }
        }
        let Some(last) = self.blocks.last() else {
            return r.requests;
        };
        let head_in = n * last.height * last.width * self.head_channels;
        let normed = r.take(head_in);
        r.give(normed);

        // Backward: the head, then block, transition, …, block 1, the stem.
        let mut grad = None;
        if self.head == Head::Classifier {
            let d_relu = r.take(head_in);
            grad = r.take(head_in);
            r.give(d_relu);
        }
        for (i, b) in self.blocks.iter().enumerate().rev() {
            let rows = n * b.height * b.width;
            for j in (0..b.layers).rev() {
                let c = b.c_in + j * self.growth;
                let d_new = r.take(rows * self.growth);
                match self.bottleneck {
                    // BN1's input gradient goes straight into the block's gradient.
                    Some(bn) => {
                        let width = rows * bn * self.growth;
                        // (The 3x3's weight gradient reads BN2-ReLU of the bottleneck
                        // output as it goes, or forms it in the step's scratch.)
                        let d_normed2 = r.take(width);
                        if self.dropout > 0.0 {
                            // BN2's input gradient written whole, then the dropout's mask.
                            let dz = r.take(width);
                            r.give(d_normed2);
                            r.give(dz);
                        } else {
                            // Formed a chunk at a time by the 1x1 backward from
                            // `d_normed2`.
                            r.give(d_normed2);
                        }
                    }
                    None => {
                        let d_normed = r.take(rows * c);
                        let normed = r.take(rows * c);
                        r.give(normed);
                        r.give(d_normed);
                    }
                }
                r.give(d_new);
            }
            let dx = r.take(rows * b.c_in);
            r.give(grad);
            grad = dx;
            let (buffer, zs) = held.pop().expect("one per block");
            r.give(buffer);
            zs.into_iter().for_each(|z| r.give(z));
            if i > 0 {
                let t = &self.transitions[i - 1];
                let before = &self.blocks[i - 1];
                let x_len = n * before.height * before.width * t.c_in;
                let pooled = r.take(n * t.height * t.width * t.c_in);
                let d_pooled = r.take(n * t.height * t.width * t.c_in);
                r.give(grad);
                r.give(pooled);
                if before.height.is_multiple_of(2) && before.width.is_multiple_of(2) {
                    // The pool's backward formed row by row inside BN-ReLU's.
                    grad = r.take(x_len);
                    r.give(d_pooled);
                } else {
                    let d_relu = r.take(x_len);
                    r.give(d_pooled);
                    grad = r.take(x_len);
                    r.give(d_relu);
                }
            }
        }
        if self.stem_kind == Stem::ImageNet {
            let d_relu = r.take(n * oh * ow * c0);
            r.give(grad);
            grad = r.take(n * oh * ow * c0);
            r.give(d_relu);
        }
        r.give(grad);
        r.give(input);
        if self.stem_kind == Stem::ImageNet {
            r.give(stem_y);
        }
        r.requests
    }
}

/// Assigns requests to slots greedily by size (TFLite's "greedy by size" for shared
/// objects): largest first (earliest first among equals), each into the smallest slot
/// none of whose requests' lifetimes overlaps its own, else a new slot of its length.
/// A request never given back gets no slot. Returns each request's slot and each slot's
/// length.
pub fn assign_slots(requests: &[BufferRequest]) -> (Vec<Option<usize>>, Vec<usize>) {
    let mut order: Vec<usize> = (0..requests.len())
        .filter(|&i| requests[i].given.is_some())
        .collect();
    order.sort_by_key(|&i| (core::cmp::Reverse(requests[i].len), i));
    let mut slots: Vec<usize> = Vec::new();
    let mut lives: Vec<Vec<(usize, usize)>> = Vec::new();
    let mut slot_of = vec![None; requests.len()];
    for i in order {
        let r = requests[i];
        let life = (r.taken, r.given.unwrap_or(usize::MAX));
        let free = |k: &usize| lives[*k].iter().all(|&(a, b)| b < life.0 || life.1 < a);
        // Slots were opened largest first, so every one holds `r`; the last free one is
        // the smallest.
        let k = match (0..slots.len()).rev().find(free) {
            Some(k) => k,
            None => {
                slots.push(r.len);
                lives.push(Vec::new());
                slots.len() - 1
            }
        };
        lives[k].push(life);
        slot_of[i] = Some(k);
    }
    (slot_of, slots)
}

/// The most floats live at once (a request never given back lives to the end).
pub fn live_peak(requests: &[BufferRequest]) -> usize {
    let mut events: Vec<(usize, bool, usize)> = Vec::with_capacity(2 * requests.len());
    for r in requests {
        events.push((r.taken, true, r.len));
        if let Some(g) = r.given {
            events.push((g, false, r.len));
        }
    }
    events.sort_unstable();
    let (mut live, mut peak) = (0usize, 0usize);
    for (_, taken, len) in events {
        if taken {
            live += len;
            peak = peak.max(live);
        } else {
            live -= len;
        }
    }
    peak
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(len: usize, taken: usize, given: usize) -> BufferRequest {
        BufferRequest {
            len,
            taken,
            given: Some(given),
        }
    }

    #[test]
    fn slots_are_shared_by_requests_that_do_not_overlap() {
        // 100 and 50 live together, then 80 and 20, then 10.
        let requests = [
            request(100, 1, 3),
            request(50, 2, 4),
            request(80, 5, 7),
            request(20, 6, 8),
            request(10, 9, 10),
        ];
        let (slot_of, slots) = assign_slots(&requests);
        assert_eq!(slots, [100, 50]);
        assert_eq!(slot_of, [Some(0), Some(1), Some(0), Some(1), Some(1)]);
        assert_eq!(live_peak(&requests), 150);
    }
}
