//! Allocation counts of a forward pass, with a counting global allocator: after a
//! warm-up call, `forward_into` with a reused workspace allocates nothing in our code.
//!
//! What remains comes from dependencies and is pinned down by the other tests here:
//! the `gemm` crate (0.19) allocates on every call: `vec![false; mc / MR]`
//! (gemm-common `gemm.rs:490`, and per extra thread `:654`) and, when it packs an
//! operand, a `MemBuffer` (`:437`): 1 to 4 allocations per GEMM, ~25 per forward pass
//! of the small test net. rayon's global injector allocates a block per 63 jobs
//! injected from outside its pool. Both disappear with the custom conv kernels.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use densenet::densenet;
use densenet::ndarray::{Array2, Array4};
use densenet::runtime::kernels::gemm::{gemm, MatMut, MatRef};
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

/// Our code allocates `f32` buffers (alignment 4) and shapes (alignment 8); the
/// `gemm` crate's per-call allocations have alignment 1 (`vec![false; mc / MR]` in
/// gemm-common 0.19 `gemm.rs` lines 490 and 654) or its SIMD alignment (`MemBuffer::new`
/// for packed operands, line 437). So "nothing of alignment 2..=8" is "nothing from
/// us", up to rayon: its global injector queue (crossbeam `Injector`) allocates one
/// block (alignment 8) per 63 jobs injected from a thread outside the pool, which shows
/// as a few allocations per 50 calls (3 and 8 measured; a lone parallel GEMM shows it
/// too). Attributed to rayon by elimination, not yet confirmed with a backtrace.
#[test]
fn forward_into_allocates_nothing_after_warm_up() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let model = Small::init(1);
    let x = input(2, Small::INPUT);
    let mut ws = Workspace::new();
    let mut out = Array2::zeros((2, 10));
    let (_, ours) = count("Small forward_into", 3, 50, || {
        model
            .forward_into(x.view(), &mut ws, out.view_mut())
            .unwrap();
    });
    assert!(ours[1] <= 10, "allocations of alignment 2..=8: {ours:?}");
    let plain = Plain::init(2);
    let y = input(3, Plain::INPUT);
    let mut out = Array2::zeros((3, 10));
    let (_, ours) = count("Plain forward_into", 3, 50, || {
        plain
            .forward_into(y.view(), &mut ws, out.view_mut())
            .unwrap();
    });
    assert!(ours[1] <= 10, "allocations of alignment 2..=8: {ours:?}");
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

#[test]
fn gemm_allocates_per_call() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for (m, k, n) in [(64, 48, 32), (4096, 288, 32), (3136, 1152, 32)] {
        let a = vec![0.5f32; m * k];
        let b = vec![0.25f32; k * n];
        let mut c = vec![0f32; m * n];
        let (_, aligned) = count(&format!("gemm {m}x{k}x{n}"), 3, 20, || {
            gemm(
                1.0,
                MatRef::row_major(&a, m, k),
                MatRef::row_major(&b, k, n),
                0.0,
                MatMut::row_major(&mut c, m, n),
            )
        });
        // Alignment 1 and SIMD-aligned: the crate's own buffers, every call.
        assert!(aligned[0] >= 20 && aligned[1] <= 2, "{aligned:?}");
    }
}
