//! One model, many threads: results are bit-identical to a single-threaded call, and
//! repeated calls do not grow memory.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Mutex;

use densenet::densenet;
use densenet::ndarray::Array4;

/// Counts live heap bytes, to see that forward passes give back all they take.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

/// The tests of this binary run one at a time so the heap count sees only one of them.
static SERIAL: Mutex<()> = Mutex::new(());

// SAFETY: forwards every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

// Growth 12: bottlenecks of 48 channels, whose weights are stored packed (two panels, the
// second masked), so the threads share the panel-major path.
densenet! {
    Shared<growth: 12, blocks: [2, 3, 2], init_features: 16, theta: 0.5, input: [3, 48, 48], classes: 10>;
    Tiny<growth: 4, blocks: [1, 1], stem: cifar, input: [3, 8, 8], classes: 3>
}

fn input(seed: usize, [c, h, w]: [usize; 3]) -> Array4<f32> {
    Array4::from_shape_fn((2, c, h, w), |(n, c, y, x)| {
        ((seed * 31 + n * 17 + c * 7 + y * 3 + x) % 29) as f32 / 29.0 - 0.5
    })
}

#[test]
fn eight_threads_match_a_single_thread_bit_for_bit() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let model = Shared::init(3);
    let inputs: Vec<_> = (0..8).map(|i| input(i, Shared::INPUT)).collect();
    // The same weights in another instance, so the threads below make `model`'s first
    // calls concurrently (each thread's workspace is made then).
    let single = Shared::init(3);
    let alone: Vec<_> = inputs
        .iter()
        .map(|x| single.forward(x.view()).unwrap())
        .collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = inputs
            .iter()
            .map(|x| {
                let model = &model;
                scope.spawn(move || {
                    (0..5)
                        .map(|_| model.forward(x.view()).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for (handle, expected) in handles.into_iter().zip(&alone) {
            for output in handle.join().unwrap() {
                assert_eq!(&output, expected);
            }
        }
    });
}

#[test]
fn memory_stays_flat_over_10_000_calls() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let model = Tiny::init(0);
    let x = input(0, Tiny::INPUT);
    for _ in 0..100 {
        model.forward(x.view()).unwrap(); // warm-up: thread pools, lazy statics
    }
    let before = LIVE.load(Ordering::Relaxed);
    for _ in 0..10_000 {
        model.forward(x.view()).unwrap();
    }
    let grown = LIVE.load(Ordering::Relaxed) - before;
    // A leak of even one byte per call would show as 10 KB.
    assert!(
        grown.abs() < 4096,
        "live heap changed by {grown} bytes over 10,000 calls"
    );
}

#[test]
fn a_batch_split_over_threads_matches_one_thread_and_one_image() {
    // A batch that splits over the pool's threads takes its dense blocks one task per
    // thread (each image on single-threaded kernels); one thread, three threads for
    // four images, or one image at a time split each convolution instead. Same bits.
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let model = Shared::init(5);
    let x = Array4::from_shape_fn((4, 3, 48, 48), |(n, c, y, x)| {
        ((n * 13 + c * 7 + y * 3 + x) % 31) as f32 / 31.0 - 0.5
    });
    let on = |threads: usize, x: densenet::ndarray::ArrayView4<'_, f32>| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| model.forward(x).unwrap())
    };
    let batch = on(2, x.view());
    assert_eq!(batch, on(1, x.view()), "two threads against one");
    assert_eq!(batch, on(3, x.view()), "three threads, four images");
    for i in 0..4 {
        let one = on(2, x.slice(densenet::ndarray::s![i..i + 1, .., .., ..]));
        assert_eq!(batch.row(i), one.row(0), "image {i} alone");
    }
}
