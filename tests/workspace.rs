//! `forward_into` with a reused [`Workspace`]: the same numbers as the simple
//! allocating stage-by-stage path (`reference::forward`), bit-identical across calls and
//! batch sizes sharing one workspace, and an arena of exactly the planned size.

use densenet::ndarray::{Array2, Array4, ArrayD};
use densenet::runtime::reference;
use densenet::runtime::{DynamicModel, Error, Model, Workspace};
use densenet::{densenet, densenet_yaml};

densenet_yaml!("specs/densenet121.yaml");
densenet_yaml!("specs/densenet_bc100_k12.yaml");
densenet_yaml!("specs/densenet40_k12.yaml");

densenet! {
    // Odd sizes: a transition floors 11x9 to 5x4; every head kind.
    Features<growth: 4, blocks: [2, 2], stem: cifar, head: none, input: [3, 11, 9], theta: 0.5>;
    MaxPooled<growth: 4, blocks: [1, 2], stem: cifar, head: max, input: [1, 8, 8], bottleneck: false>;
    Pooled<growth: 6, blocks: [2, 1, 2], head: avg, input: [3, 45, 37]>
}

fn input(n: usize, [c, h, w]: [usize; 3], seed: usize) -> Array4<f32> {
    Array4::from_shape_fn((n, c, h, w), |(b, c, y, x)| {
        ((seed * 31 + b * 17 + c * 7 + y * 3 + x * 5) % 29) as f32 / 29.0 - 0.5
    })
}

fn assert_close(actual: &ArrayD<f32>, reference: &ArrayD<f32>) {
    assert_eq!(actual.shape(), reference.shape());
    for (a, r) in actual.iter().zip(reference) {
        assert!(
            (a - r).abs() <= 1e-5 * r.abs().max(1.0),
            "forward_into {a} vs reference {r}"
        );
    }
}

/// `forward_into` at `n` in `ws`, as a dynamic-rank array.
fn run<M: Model>(
    f: impl Fn(&M, &Array4<f32>, &mut Workspace, &mut ArrayD<f32>) -> Result<(), Error>,
    model: &M,
    x: &Array4<f32>,
    ws: &mut Workspace,
    output: &[usize],
) -> ArrayD<f32> {
    let mut shape = vec![x.dim().0];
    shape.extend_from_slice(output);
    let mut out = ArrayD::from_elem(shape, f32::NAN);
    f(model, x, ws, &mut out).unwrap();
    out
}

macro_rules! checks {
    ($model:ty, $seed:expr) => {{
        let model = <$model>::init($seed);
        let into = |m: &$model, x: &Array4<f32>, ws: &mut Workspace, out: &mut ArrayD<f32>| {
            m.forward_into(x.view(), ws, out.view_mut().into_dimensionality().unwrap())
        };
        let output = <$model>::OUTPUT;
        // Each batch alone in a fresh workspace, against the reference path.
        let alone: Vec<_> = (1..=3)
            .map(|n| {
                let x = input(n, <$model>::INPUT, n);
                let mut ws = Workspace::new();
                let y = run(into, &model, &x, &mut ws, output);
                let reference = reference::forward(&model, x.view());
                assert_close(&y, &reference.unwrap());
                assert_eq!(ws.capacity(), <$model>::arena_floats(n), "batch {n}");
                assert_eq!(ws.last_used(), <$model>::arena_floats(n), "batch {n}");
                y
            })
            .collect();
        // One workspace: 3, then 1, then 2, then 1 again: bit-identical.
        let mut ws = Workspace::new();
        for n in [3, 1, 2, 1] {
            let x = input(n, <$model>::INPUT, n);
            assert_eq!(
                run(into, &model, &x, &mut ws, output),
                alone[n - 1],
                "batch {n}"
            );
            assert_eq!(ws.capacity(), <$model>::arena_floats(3));
        }
        // Growing batches: the arena is exactly the plan's at each size.
        let mut ws = Workspace::new();
        for n in 1..=3 {
            let x = input(n, <$model>::INPUT, n);
            run(into, &model, &x, &mut ws, output);
            assert_eq!(ws.capacity(), <$model>::arena_floats(n), "batch {n}");
        }
        assert_eq!(<$model>::ARENA_FLOATS, <$model>::arena_floats(1));
        model
    }};
}

#[test]
fn densenet121_matches_the_reference_path() {
    let model = checks!(DenseNet121, 7);
    // `forward` (thread-local workspace) gives the same bits as `forward_into`.
    let x = input(1, DenseNet121::INPUT, 1);
    let mut ws = Workspace::new();
    let mut out = Array2::zeros((1, 1000));
    model
        .forward_into(x.view(), &mut ws, out.view_mut())
        .unwrap();
    let again = out.clone();
    model
        .forward_into(x.view(), &mut ws, out.view_mut())
        .unwrap();
    assert_eq!(out, again);
    assert_eq!(model.forward(x.view()).unwrap(), out);
    // The arena at batch 1, by hand from DenseNet-121's shapes (floats):
    // concat A = block 1, 56·56·256 = 802,816 (block 3: 14·14·1024 is smaller);
    // concat B = block 2, 28·28·512 = 401,408; BN scale/shift for block 4's last layer,
    // whose norm1 (992 channels) and norm2 (128) are both fused into its 1x1 conv:
    // 2·(992 + 128) = 2,240; scratch = the stem's padded input 3·230·230 = 158,700 and
    // its conv output 112·112·64 = 802,816, 961,516 in all (block 1's widest layer needs
    // only its padded bottleneck, 58·58·128 = 430,592; transition 1 its pooled map,
    // 28·28·256 = 200,704).
    let by_hand = 802_816 + 401_408 + 2_240 + 961_516;
    assert_eq!(DenseNet121::ARENA_FLOATS, by_hand);
    // At batch 8 the blocks still run one image at a time; the stem's 8·961,516 is the
    // largest scratch.
    let concat = 802_816 + 401_408;
    assert_eq!(
        DenseNet121::arena_floats(8),
        8 * concat + 2_240 + 8 * 961_516
    );
}

#[test]
fn cifar_nets_match_the_reference_path() {
    checks!(DenseNetBC100K12, 1);
    checks!(DenseNet40K12, 2);
}

#[test]
fn every_head_and_odd_sizes_match_the_reference_path() {
    checks!(Features, 3);
    checks!(MaxPooled, 4);
    checks!(Pooled, 5);
}

#[test]
fn dynamic_model_shares_the_path() {
    let model = DenseNet40K12::init(9);
    let dynamic = DynamicModel::init(DenseNet40K12::ARCHITECTURE, 9).unwrap();
    let x = input(2, DenseNet40K12::INPUT, 0);
    let expected = model.forward(x.view()).unwrap().into_dyn();
    assert_eq!(dynamic.forward(x.view()).unwrap(), expected);
    let mut ws = Workspace::new();
    let mut out = ArrayD::zeros(expected.shape());
    dynamic
        .forward_into(x.view(), &mut ws, out.view_mut())
        .unwrap();
    assert_eq!(out, expected);
    assert_eq!(ws.capacity(), dynamic.arena_floats(2));
    assert_close(&reference::forward(&dynamic, x.view()).unwrap(), &expected);
}

#[test]
fn a_wrong_output_shape_is_an_error() {
    let model = MaxPooled::init(0);
    let x = input(2, MaxPooled::INPUT, 0);
    let mut ws = Workspace::new();
    let mut out = Array2::zeros((3, 1));
    let err = model
        .forward_into(x.view(), &mut ws, out.view_mut())
        .unwrap_err();
    assert_eq!(
        err,
        Error::OutputShape {
            expected: vec![2, MaxPooled::OUTPUT[0]],
            actual: vec![3, 1]
        }
    );
    let bad = input(2, [1, 8, 7], 0);
    assert!(matches!(
        model.forward_into(bad.view(), &mut ws, out.view_mut()),
        Err(Error::InputShape { .. })
    ));
    // A transposed (non-standard layout) output is fine.
    let mut t = Array2::zeros((MaxPooled::OUTPUT[0], 2));
    model
        .forward_into(x.view(), &mut ws, t.view_mut().reversed_axes())
        .unwrap();
    assert_eq!(t.t(), model.forward(x.view()).unwrap());
}

/// A batch too large to allocate is an error naming the batch, never an abort: here
/// zero-stride views that claim 2^40 and 2^54 images of one value (the second overflows
/// `usize` in bytes).
#[test]
fn a_batch_too_large_to_allocate_is_an_error() {
    let model = Features::init(0);
    let one = [0.5f32];
    for n in [1usize << 40, 1 << 54] {
        let shape = (n, 3, 11, 9);
        let x = densenet::ndarray::ArrayView4::from_shape(
            densenet::ndarray::ShapeBuilder::strides(shape, (0, 0, 0, 0)),
            &one,
        )
        .unwrap();
        let err = model.forward(x).unwrap_err();
        assert!(
            matches!(err, Error::BatchTooLarge { batch, .. } if batch == n),
            "{err:?}"
        );
        assert!(err.to_string().contains("smaller batches"), "{err}");
    }
    // The model still runs afterwards.
    assert!(model.forward(Array4::zeros((2, 3, 11, 9)).view()).is_ok());
}
