//! Allocations of a training step, with a counting global allocator: after the first
//! step of a shape, a step (forward, backward, SGD update, gradients recycled as `fit`
//! recycles them) allocates no large buffer. The tape's block buffers, bottleneck
//! outputs, buffer gradients, pooled maps, the stem's maps and argmax, every scratch
//! matrix and the weight gradients come from the thread's step memory, kept from one
//! step to the next (`train/buffers.rs`).
//!
//! Which kept vector serves which request is planned from the first step; a step of
//! another batch size (an epoch's last, partial batch) is served around the plan and
//! leaves it in place, checked below.
//!
//! After the first step, a step allocates nothing of its own: per-layer statistics,
//! coefficients, partial sums and the BatchNorm and classifier gradients come from a
//! pool of small vectors (`train/recycled.rs`), products run on `gemm_unpacked` in the
//! step's scratch, the optimiser updates packed conv weights in place, and the step's
//! bookkeeping (tape list, gradient map and list) is kept between steps. Driven from a
//! thread of rayon's pool, a step allocates nothing at all (tested below). Driven from
//! another thread, as here, rayon's shared job queue takes a 1.5 KiB block per 63 jobs
//! handed to the pool: one to three a step. (Before this, a step made ~1,200 plain
//! allocations and ~550 SIMD-aligned ones, the `gemm` crate's packing buffers.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use densenet::densenet;
use densenet::ndarray::Array4;
use densenet::runtime::train::{
    kept_step_memory, loss_and_gradients_frozen, step_memory, Freeze, Sgd, SgdConfig, StepConfig,
};
use densenet::runtime::{Model, Rng};

/// Counts allocation calls and bytes (alloc, alloc_zeroed and realloc's new size),
/// apart for SIMD-aligned ones.
struct Counting;

/// `[calls, bytes, largest]` of allocations aligned to less than 32 bytes.
static PLAIN: [AtomicUsize; 3] = [const { AtomicUsize::new(0) }; 3];
/// `[calls, bytes, largest]` of allocations aligned to 32 bytes or more.
static ALIGNED: [AtomicUsize; 3] = [const { AtomicUsize::new(0) }; 3];

/// While set, only allocations on threads of the test's own rayon pool count: libtest's
/// threads (spawning the next tests, which wait on [`SERIAL`]) allocate meanwhile.
static POOL_THREADS_ONLY: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Whether this thread is one of the test's own rayon pool's.
    static IN_TEST_POOL: Cell<bool> = const { Cell::new(false) };
}

fn record(size: usize, align: usize) {
    if POOL_THREADS_ONLY.load(Ordering::Relaxed) && !IN_TEST_POOL.with(Cell::get) {
        return;
    }
    let stats = if align >= 32 { &ALIGNED } else { &PLAIN };
    stats[0].fetch_add(1, Ordering::Relaxed);
    stats[1].fetch_add(size, Ordering::Relaxed);
    stats[2].fetch_max(size, Ordering::Relaxed);
}

/// Reads and resets one counter set.
fn drain(stats: &[AtomicUsize; 3]) -> [usize; 3] {
    stats.each_ref().map(|a| a.swap(0, Ordering::Relaxed))
}

// SAFETY: forwards every call to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size(), layout.align());
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size(), layout.align());
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size, layout.align());
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One test at a time, so the counts see only one of them.
static SERIAL: Mutex<()> = Mutex::new(());

densenet! {
    /// DenseNet-BC, CIFAR stem, with dropout (its masks are regenerated, not stored).
    Bc<growth: 12, blocks: [4, 4, 4], stem: cifar, theta: 0.5, input: [3, 32, 32], classes: 10, dropout: 0.1>;
    /// ImageNet stem (7x7 conv, BN, max pool with its argmax), plain layers.
    Plain<growth: 8, blocks: [3, 3], init_features: 16, bottleneck: false, theta: 0.5, input: [3, 64, 64], classes: 5>;
    /// Growth 32 on 28x28 and 14x14 maps: Winograd forward 3x3s and input gradients,
    /// whose transforms live in per-thread buffers.
    Wide<growth: 32, blocks: [2, 2], init_features: 32, stem: cifar, theta: 0.5, input: [3, 28, 28], classes: 5>;
    /// A 7x7 block 1: its transition's pool backward on an odd map.
    Odd<growth: 8, blocks: [2, 2], init_features: 16, theta: 0.5, input: [3, 28, 28], classes: 5>
}

/// `[calls, bytes, largest]` of plain and of aligned allocations of each of `steps`
/// SGD steps on one batch with `freeze`, the gradients recycled after the update as
/// `fit` does. Also the step memory the thread keeps after each.
fn steps<M: Model>(
    model: M,
    n: usize,
    freeze: &Freeze,
    steps: usize,
) -> Vec<([usize; 3], [usize; 3], usize)> {
    steps_of(model, &vec![n; steps], freeze)
}

/// [`steps`] with a batch of `batches[i]` images in step `i`.
fn steps_of<M: Model>(
    mut model: M,
    batches: &[usize],
    freeze: &Freeze,
) -> Vec<([usize; 3], [usize; 3], usize)> {
    let arch = model.architecture().clone();
    let [c, h, w] = arch.input;
    let mut rng = Rng::new(5);
    let n = batches.iter().copied().max().unwrap_or(0);
    let x = Array4::from_shape_simple_fn((n, c, h, w), || rng.uniform() - 0.5);
    let labels: Vec<usize> = (0..n).map(|i| i % arch.classes).collect();
    let mut sgd = Sgd::new(SgdConfig::default());
    batches
        .iter()
        .map(|&n| {
            let (x, labels) = (
                x.slice(densenet::ndarray::s![..n, .., .., ..]),
                &labels[..n],
            );
            drain(&PLAIN);
            drain(&ALIGNED);
            let (_, grads) = loss_and_gradients_frozen(
                &mut model,
                x.view(),
                labels,
                StepConfig::default(),
                freeze,
                &mut Rng::new(0),
            )
            .unwrap();
            sgd.step(&mut model, &grads);
            grads.recycle();
            (drain(&PLAIN), drain(&ALIGNED), kept_step_memory())
        })
        .collect()
}

/// After the first step a step makes at most 4 allocations, none of 2 KiB or more
/// (rayon's queue blocks, see the module comment), and the memory kept between steps
/// stays what the first step left (no capacity creeping up).
fn only_rayons_queue_blocks_after_warm_up<M: Model>(
    label: &str,
    model: M,
    n: usize,
    freeze: &Freeze,
) {
    let counts = steps(model, n, freeze, 5);
    for (i, (plain, aligned, kept)) in counts.iter().enumerate() {
        println!(
            "{label} step {i}: {} allocations, {} KiB, largest {} KiB; \
             SIMD-aligned: {}, {} KiB; kept {} KiB",
            plain[0],
            plain[1] / 1024,
            plain[2] / 1024,
            aligned[0],
            aligned[1] / 1024,
            kept / 1024
        );
    }
    let kept = counts[0].2;
    for (i, (plain, aligned, kept_after)) in counts.iter().enumerate().skip(1) {
        assert_eq!(
            *kept_after, kept,
            "{label} step {i}: kept step memory changed"
        );
        assert!(
            plain[2] < 2048 && plain[0] + aligned[0] <= 4,
            "{label} step {i}: {} allocations, {} SIMD-aligned, the largest {} bytes",
            plain[0],
            aligned[0],
            plain[2]
        );
    }
}

/// Driven from a thread of rayon's pool (the steps' parallel work then goes to that
/// thread's own queue, not the pool's shared injector, whose blocks are allocated as
/// work comes in from outside), a step after the first allocates nothing at all.
#[test]
fn a_step_run_inside_the_pool_allocates_nothing_after_warm_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .start_handler(|_| IN_TEST_POOL.with(|f| f.set(true)))
        .build()
        .unwrap();
    POOL_THREADS_ONLY.store(true, Ordering::Relaxed);
    // Each model from fresh step memory (the thread's, planned by its first step).
    let fresh = || densenet::runtime::train::release_step_memory();
    for (label, counts) in [
        (
            "BC, batch 16",
            pool.install(|| (fresh(), steps(Bc::init(1), 16, &Freeze::none(), 4)).1),
        ),
        (
            "plain, batch 8",
            pool.install(|| (fresh(), steps(Plain::init(2), 8, &Freeze::none(), 4)).1),
        ),
        (
            "growth 32, batch 4",
            pool.install(|| (fresh(), steps(Wide::init(3), 4, &Freeze::none(), 4)).1),
        ),
    ] {
        POOL_THREADS_ONLY.store(false, Ordering::Relaxed);
        for (i, (plain, aligned, _)) in counts.iter().enumerate().skip(1) {
            println!("{label} step {i}: {plain:?} plain, {aligned:?} SIMD-aligned");
            assert_eq!(
                (plain[0], aligned[0]),
                (0, 0),
                "{label} step {i}: allocations"
            );
        }
    }
}

#[test]
fn a_bottleneck_step_allocates_only_rayons_queue_blocks_after_warm_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    only_rayons_queue_blocks_after_warm_up("BC, batch 16", Bc::init(1), 16, &Freeze::none());
}

#[test]
fn an_imagenet_stem_step_allocates_only_rayons_queue_blocks_after_warm_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    only_rayons_queue_blocks_after_warm_up("plain, batch 8", Plain::init(2), 8, &Freeze::none());
}

/// Fine-tuning's first phase: the frozen backbone runs as inference (its output copied
/// into the step memory), only the head trains.
#[test]
fn a_frozen_backbone_step_allocates_only_rayons_queue_blocks_after_warm_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let label = "BC, backbone frozen, batch 16";
    only_rayons_queue_blocks_after_warm_up(label, Bc::init(3), 16, &Freeze::backbone());
}

/// An epoch's last batch is smaller: that step is served from the plan's free vectors
/// (and fresh ones, freed again, where none holds a request), and the full batches after it run on the plan as
/// before (no large allocation, the same kept memory). The plan keeps at most a third
/// more than the most the step has live at once (the price of whole vectors rather
/// than offsets in one block: a later request can only reuse a vector as large).
#[test]
fn a_smaller_batch_between_full_ones_leaves_the_plan_in_place() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let counts = steps_of(Bc::init(4), &[16, 16, 7, 16, 16], &Freeze::none());
    let planned = step_memory().buffers;
    assert!(planned.requests > 0 && planned.slots > 0);
    assert!(
        planned.live_peak_floats <= planned.slot_floats
            && 3 * planned.slot_floats <= 4 * planned.live_peak_floats,
        "{planned:?}"
    );
    let kept = counts[1].2;
    assert_eq!(counts[2].2, kept, "the partial batch's step keeps the plan");
    for (i, (plain, _, kept_after)) in counts.iter().enumerate().skip(3) {
        assert_eq!(*kept_after, kept, "step {i}");
        assert!(plain[2] < 64 * 1024, "step {i}: {} bytes", plain[2]);
    }
}

/// The buffers a real step plans from its requests are those `Plan::training` lists from
/// the shapes alone (so `summary()`'s training figure is what a step keeps): the same
/// number of requests, the same slots, the same live peak; and the plan scales with the
/// batch (up to the padded grids' zero tails).
#[test]
fn a_step_plans_the_buffers_the_shapes_predict() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    fn check<M: Model>(label: &str, model: M, n: usize) {
        let plan = model.plan().training(n);
        densenet::runtime::train::release_step_memory();
        steps(model, n, &Freeze::none(), 1);
        let made = densenet::runtime::train::planned_requests();
        let differ =
            (0..made.len().max(plan.requests.len())).find(|&i| made.get(i) != plan.requests.get(i));
        assert!(
            differ.is_none(),
            "{label}, batch {n}: request {differ:?} of the step differs from the plan's: \
             {:?} against {:?}",
            differ.and_then(|i| made.get(i)),
            differ.and_then(|i| plan.requests.get(i))
        );
        let measured = step_memory().buffers;
        let figures = |p: &densenet::runtime::spec::TrainingPlan| {
            (
                p.requests.len(),
                p.slots.len(),
                p.slot_floats(),
                p.live_peak_floats(),
            )
        };
        assert_eq!(
            (
                measured.requests,
                measured.slots,
                measured.slot_floats,
                measured.live_peak_floats
            ),
            figures(&plan),
            "{label}, batch {n}"
        );
    }
    check("BC", Bc::init(1), 16);
    check("BC", Bc::init(1), 5);
    check("plain, ImageNet stem", Plain::init(2), 8);
    check("plain, ImageNet stem", Plain::init(2), 3);
    // Bottlenecks without dropout: BN2's input gradient formed inside the 1x1 backward.
    check("growth 32, no dropout", Wide::init(3), 4);
    check("odd transition input", Odd::init(4), 3);
    use densenet::runtime::Network;
    let (one, many) = (
        Bc::init(0).plan().training(1),
        Bc::init(0).plan().training(7),
    );
    // Linear in the batch, up to the zero tails of the padded grids the 3x3s' weight
    // gradients read (a few pixels each, whatever the batch): under 1%.
    for (many, one) in [
        (many.slot_floats(), one.slot_floats()),
        (many.live_peak_floats(), one.live_peak_floats()),
    ] {
        assert!(
            many <= 7 * one && (7 * one - many) * 100 < many,
            "batch 7: {many}, batch 1: {one}"
        );
    }
}
