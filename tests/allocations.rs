//! Allocation counts of a forward pass, with a counting global allocator: after a
//! warm-up call, `forward_into` with a reused workspace allocates nothing.
//!
//! Every kernel of the pass is ours (the direct convolution, BN-ReLU, pooling, the
//! classifier's dot products) and works in the workspace. The one allocation left is
//! rayon's: a pass called from outside rayon's pool is handed to the pool as one task
//! through its global injector, which allocates a block per 63 tasks; called from a
//! thread of the pool, nothing at all.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use densenet::densenet;
use densenet::ndarray::{Array2, Array4};
use densenet::runtime::Workspace;

/// Counts allocation calls (alloc, alloc_zeroed and realloc).
struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
/// Allocation calls by alignment: `[1, 2..=8, 16, 32 and more]`.
static BY_ALIGN: [AtomicUsize; 4] = [const { AtomicUsize::new(0) }; 4];

fn record(layout: Layout) {
    ALLOCS.fetch_add(1, Ordering::Relaxed);
    let bucket = match layout.align() {
        1 => 0,
        2..=8 => 1,
        16 => 2,
        _ => 3,
    };
    BY_ALIGN[bucket].fetch_add(1, Ordering::Relaxed);
}

fn by_align() -> [usize; 4] {
    BY_ALIGN.each_ref().map(|a| a.load(Ordering::Relaxed))
}

/// One test at a time, so the count sees only one of them.
static SERIAL: Mutex<()> = Mutex::new(());

// SAFETY: forwards every call to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(layout);
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

densenet! {
    Small<growth: 8, blocks: [2, 3, 2], init_features: 16, theta: 0.5, input: [3, 64, 64], classes: 10>;
    Plain<growth: 6, blocks: [3, 3], stem: cifar, input: [3, 32, 32], classes: 10, bottleneck: false>
}

fn input(n: usize, [c, h, w]: [usize; 3]) -> Array4<f32> {
    Array4::from_shape_fn((n, c, h, w), |(b, c, y, x)| {
        ((b * 17 + c * 7 + y * 3 + x) % 29) as f32 / 29.0 - 0.5
    })
}

/// Allocation calls made by `f`, run `calls` times after `warm_up` runs; prints them
/// by alignment under `label`.
fn count(label: &str, warm_up: usize, calls: usize, mut f: impl FnMut()) -> (usize, [usize; 4]) {
    for _ in 0..warm_up {
        f();
    }
    let before = ALLOCS.load(Ordering::Relaxed);
    let before_align = by_align();
    for _ in 0..calls {
        f();
    }
    let after = by_align();
    let aligned = [0, 1, 2, 3].map(|i| after[i] - before_align[i]);
    let total = ALLOCS.load(Ordering::Relaxed) - before;
    println!(
        "{label}: {total} allocations in {calls} calls; by alignment \
         [1, 2..=8, 16, >=32]: {aligned:?}"
    );
    (total, aligned)
}

#[test]
fn forward_into_allocates_nothing_after_warm_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let model = Small::init(1);
    let x = input(2, Small::INPUT);
    let mut ws = Workspace::new();
    let mut out = Array2::zeros((2, 10));
    // On a thread of rayon's pool (as a server's request handler might be): zero.
    let (total, _) = rayon::scope(|_| {
        count("Small forward_into on a rayon thread", 3, 50, || {
            model
                .forward_into(x.view(), &mut ws, out.view_mut())
                .unwrap();
        })
    });
    assert_eq!(total, 0);
    // From outside the pool: at most rayon's one injector block per 63 passes.
    let (total, _) = count("Small forward_into", 3, 63, || {
        model
            .forward_into(x.view(), &mut ws, out.view_mut())
            .unwrap();
    });
    assert!(total <= 1, "{total} allocations in 63 calls");
    let plain = Plain::init(2);
    let y = input(3, Plain::INPUT);
    let mut out = Array2::zeros((3, 10));
    let (total, _) = rayon::scope(|_| {
        count("Plain forward_into on a rayon thread", 3, 50, || {
            plain
                .forward_into(y.view(), &mut ws, out.view_mut())
                .unwrap();
        })
    });
    assert_eq!(total, 0);
}

#[test]
fn forward_allocates_only_its_output() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let model = Small::init(1);
    let x = input(2, Small::INPUT);
    let (_, ours) = count("Small forward", 3, 50, || {
        model.forward(x.view()).unwrap();
    });
    // The output array and its shape, per call.
    assert!(ours[1] <= 3 * 50 + 5, "{ours:?}");
}
