#!/usr/bin/env python3
"""Generate the reference fixtures in tests/fixtures/ (random weights, fixed seeds).

Every fixture <name> is two safetensors files:

* ``<name>.safetensors``    -- the weights exactly as the framework names and lays them
  out (torch: the full ``state_dict()``, ``num_batches_tracked`` included; Keras 3:
  ``{v.path: v}`` over ``model.weights``, HWIO conv kernels, (in, out) dense kernel).
* ``<name>.io.safetensors`` -- ``input`` (float32, NCHW) and ``output`` (float32 logits,
  no softmax) of the model in eval / inference mode.

BatchNorm is exercised: running mean ~ 0.1*randn, running var ~ U(0.5, 1.5),
gamma ~ U(0.5, 1.5), beta ~ 0.1*randn; the classifier bias ~ 0.1*randn.

The stored ``output`` is computed in float64 from the (float32) weights and input and
rounded to float32 once, so it is the exact model output to float32 precision and
reproducible across machines; the script also runs the framework in float32 and checks
that it agrees.

Usage:
    python tools/make_fixtures.py                 # writes tests/fixtures/*
    python tools/make_fixtures.py --large DIR     # also a full-size densenet121 into DIR
    python tools/make_fixtures.py --only keras_small --print-keys
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
# float64 reference runs of the Keras model need 64-bit JAX; float32 runs are unaffected.
os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from safetensors.numpy import save_file as np_save_file  # noqa: E402
from safetensors.torch import save_file as torch_save_file  # noqa: E402
from torchvision.models import DenseNet  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from reference_counts import CifarDenseNet  # noqa: E402

FIXTURES = os.path.join(REPO, "tests", "fixtures")
SIZE_BUDGET = 3 * 1024 * 1024  # all of tests/fixtures/*.safetensors together

# Tolerances for the float32-framework vs float64-reference agreement check.
ATOL, RTOL = 1e-4, 1e-4


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def randomise_torch_bn(model: nn.Module, seed: int) -> None:
    """Random BN affine params + running stats, and a random classifier bias."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
            elif isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.copy_(0.1 * torch.randn(m.out_features, generator=g))


def torch_outputs(model: nn.Module, x: torch.Tensor):
    """(float64-reference output rounded to f32, float32 framework output)."""
    model.eval()
    with torch.no_grad():
        out32 = model(x).float()
        m64 = model.double()
        out64 = m64(x.double())
        model.float()
    return out64.float(), out32


def check_close(name: str, ref: np.ndarray, got: np.ndarray, what: str) -> float:
    diff = float(np.max(np.abs(ref.astype(np.float64) - got.astype(np.float64))))
    ok = np.allclose(got, ref, atol=ATOL, rtol=RTOL)
    print(f"  {name}: max |{what}| = {diff:.3e} {'OK' if ok else 'TOO LARGE'}")
    if not ok:
        raise SystemExit(f"{name}: {what} disagree (max abs diff {diff})")
    return diff


def describe(name: str, tensors: dict, print_keys: bool) -> None:
    keys = list(tensors.keys())
    print(f"  {name}: {len(keys)} tensors; first 10 keys (model order):")
    for k in keys[: (len(keys) if print_keys else 10)]:
        t = tensors[k]
        print(f"    {k:<55} {tuple(t.shape)} {t.dtype}")


def output_stats(out: np.ndarray) -> str:
    return (f"output shape {tuple(out.shape)}, mean {out.mean():+.4f}, std {out.std():.4f}, "
            f"max|.| {np.abs(out).max():.4f}")


def save_torch_fixture(dirpath, name, model, x, meta, print_keys) -> None:
    sd = model.state_dict()
    sd = {k: v.detach().clone().contiguous() for k, v in sd.items()}
    out, out32 = torch_outputs(model, x)
    check_close(name, out.numpy(), out32.numpy(), "f64 reference - torch f32 output")
    # One key only: safetensors writes __metadata__ from a hash map, so several keys
    # would come out in a different order on each run and break byte-reproducibility.
    metadata = {"config": json.dumps(dict(meta, fixture=name), sort_keys=True)}
    torch_save_file(sd, os.path.join(dirpath, f"{name}.safetensors"), metadata=metadata)
    torch_save_file({"input": x.contiguous(), "output": out.contiguous()},
                    os.path.join(dirpath, f"{name}.io.safetensors"), metadata=metadata)
    describe(name, sd, print_keys)
    print("  " + output_stats(out.numpy()))


# --------------------------------------------------------------------------------------
# torch fixtures
# --------------------------------------------------------------------------------------
def make_torchvision_small(dirpath, print_keys):
    name = "torchvision_small"
    print(f"[{name}]")
    meta = dict(source="torchvision.models.DenseNet", growth_rate=8, block_config=[2, 3, 4, 2],
                num_init_features=16, bn_size=4, num_classes=10, input_nchw=[2, 3, 64, 64],
                bn_eps=1e-5, seed=1)
    torch.manual_seed(1)
    model = DenseNet(growth_rate=8, block_config=(2, 3, 4, 2), num_init_features=16,
                     bn_size=4, num_classes=10)
    randomise_torch_bn(model, seed=101)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1001))
    save_torch_fixture(dirpath, name, model, x, meta, print_keys)


def make_cifar_bc(dirpath, print_keys):
    name = "cifar_bc"
    print(f"[{name}]")
    meta = dict(source="tools/reference_counts.py:CifarDenseNet (paper-style CIFAR DenseNet-BC)",
                depth=40, growth_rate=12, bottleneck=True, bn_size=4, theta=0.5,
                layers_per_block=6, stem_channels=24, stem="conv3x3 stride 1 pad 1, no BN/ReLU/pool",
                num_classes=10, input_nchw=[2, 3, 32, 32], bn_eps=1e-5, seed=2)
    torch.manual_seed(2)
    model = CifarDenseNet(depth=40, growth_rate=12, bottleneck=True, theta=0.5, num_classes=10)
    assert model.config["n"] == 6 and model.config["stem_channels"] == 24, model.config
    randomise_torch_bn(model, seed=102)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1002))
    save_torch_fixture(dirpath, name, model, x, meta, print_keys)


def make_large(dirpath, print_keys):
    name = "densenet121"
    print(f"[{name} (large, local only) -> {dirpath}]")
    os.makedirs(dirpath, exist_ok=True)
    meta = dict(source="torchvision.models.DenseNet", growth_rate=32,
                block_config=[6, 12, 24, 16], num_init_features=64, bn_size=4,
                num_classes=1000, input_nchw=[1, 3, 224, 224], bn_eps=1e-5, seed=4)
    torch.manual_seed(4)
    model = DenseNet(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64,
                     bn_size=4, num_classes=1000)
    randomise_torch_bn(model, seed=104)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1004))
    save_torch_fixture(dirpath, name, model, x, meta, print_keys)


# --------------------------------------------------------------------------------------
# Keras fixture
# --------------------------------------------------------------------------------------
KERAS_BLOCKS = [1, 2, 2, 1]
KERAS_EPS = 1.001e-5


def keras_densenet_fn():
    """keras.applications.densenet.DenseNet(blocks, ...) -- in Keras 3 the generic
    builder is not exported in the public namespace (only DenseNet121/169/201 are), so
    fall back to keras.src.applications.densenet.DenseNet."""
    import keras.applications.densenet as public
    if hasattr(public, "DenseNet"):
        return public.DenseNet
    from keras.src.applications import densenet as private
    return private.DenseNet


def build_keras(floatx: str):
    import keras
    # Both are needed: once a global dtype policy exists, set_floatx alone no longer
    # changes the dtype new layers get.
    keras.config.set_floatx(floatx)
    keras.config.set_dtype_policy(floatx)
    try:
        model = keras_densenet_fn()(KERAS_BLOCKS, weights=None, input_shape=(64, 64, 3),
                                    classes=10, classifier_activation=None)
    finally:
        keras.config.set_floatx("float32")
        keras.config.set_dtype_policy("float32")
    assert all(v.dtype == floatx for v in model.weights), floatx
    return model


def keras_random_weights(model, seed: int) -> dict:
    """Deterministic float32 values for every variable, keyed by v.path, drawn from a
    numpy Generator (independent of Keras's own initialisers)."""
    rng = np.random.default_rng(seed)
    vals = {}
    for v in model.weights:
        shape = tuple(v.shape)
        kind = v.path.rsplit("/", 1)[-1]
        if kind == "kernel" and len(shape) == 4:  # HWIO conv kernel, He normal
            kh, kw, cin, _ = shape
            a = rng.standard_normal(shape) * np.sqrt(2.0 / (kh * kw * cin))
        elif kind == "kernel" and len(shape) == 2:  # (in, out) dense kernel
            bound = 1.0 / np.sqrt(shape[0])
            a = rng.uniform(-bound, bound, shape)
        elif kind == "bias":
            a = 0.1 * rng.standard_normal(shape)
        elif kind == "gamma":
            a = rng.uniform(0.5, 1.5, shape)
        elif kind == "beta":
            a = 0.1 * rng.standard_normal(shape)
        elif kind == "moving_mean":
            a = 0.1 * rng.standard_normal(shape)
        elif kind == "moving_variance":
            a = rng.uniform(0.5, 1.5, shape)
        else:
            raise SystemExit(f"unexpected Keras variable {v.path} {shape}")
        vals[v.path] = np.ascontiguousarray(a.astype(np.float32))
    return vals


def keras_to_torchvision(vals: dict, num_classes: int) -> nn.Module:
    """The same network as torchvision.models.DenseNet (k=32, init 64, bn_size 4, BN eps
    1.001e-5) with the Keras weights mapped in; an independent check of the semantics."""
    tv = DenseNet(growth_rate=32, block_config=tuple(KERAS_BLOCKS), num_init_features=64,
                  bn_size=4, num_classes=num_classes)
    for m in tv.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = KERAS_EPS
    sd = {}

    def conv(tname, kname):
        sd[f"{tname}.weight"] = torch.from_numpy(vals[f"{kname}/kernel"].transpose(3, 2, 0, 1).copy())

    def bn(tname, kname):
        sd[f"{tname}.weight"] = torch.from_numpy(vals[f"{kname}/gamma"])
        sd[f"{tname}.bias"] = torch.from_numpy(vals[f"{kname}/beta"])
        sd[f"{tname}.running_mean"] = torch.from_numpy(vals[f"{kname}/moving_mean"])
        sd[f"{tname}.running_var"] = torch.from_numpy(vals[f"{kname}/moving_variance"])
        sd[f"{tname}.num_batches_tracked"] = torch.tensor(0)

    conv("features.conv0", "conv1_conv")
    bn("features.norm0", "conv1_bn")
    for b, n in enumerate(KERAS_BLOCKS, start=1):
        for j in range(1, n + 1):
            t, k = f"features.denseblock{b}.denselayer{j}", f"conv{b + 1}_block{j}"
            bn(f"{t}.norm1", f"{k}_0_bn")
            conv(f"{t}.conv1", f"{k}_1_conv")
            bn(f"{t}.norm2", f"{k}_1_bn")
            conv(f"{t}.conv2", f"{k}_2_conv")
        if b != len(KERAS_BLOCKS):
            bn(f"features.transition{b}.norm", f"pool{b + 1}_bn")
            conv(f"features.transition{b}.conv", f"pool{b + 1}_conv")
    bn("features.norm5", "bn")
    sd["classifier.weight"] = torch.from_numpy(vals["predictions/kernel"].T.copy())
    sd["classifier.bias"] = torch.from_numpy(vals["predictions/bias"])
    tv.load_state_dict(sd, strict=True)
    return tv.eval()


def make_keras_small(dirpath, print_keys):
    import keras
    name = "keras_small"
    print(f"[{name}] keras {keras.__version__}, backend {keras.backend.backend()}")
    fn = keras_densenet_fn()
    print(f"  builder: {fn.__module__}.{fn.__name__}")
    meta = dict(source=f"{fn.__module__}.DenseNet (keras {keras.__version__}, backend jax)",
                blocks=KERAS_BLOCKS, growth_rate=32, num_init_features=64, bn_size=4,
                reduction=0.5, num_classes=10, classifier_activation=None,
                keras_input_nhwc=[2, 64, 64, 3], stored_input_nchw=[2, 3, 64, 64],
                bn_eps=KERAS_EPS, layout="conv kernels HWIO, dense kernel (in, out)", seed=3)

    keras.utils.set_random_seed(3)
    model32 = build_keras("float32")
    vals = keras_random_weights(model32, seed=103)
    paths = [v.path for v in model32.weights]
    assert len(set(paths)) == len(paths), "duplicate v.path"
    for v in model32.weights:
        v.assign(vals[v.path])

    x_nchw = np.random.default_rng(1003).standard_normal((2, 3, 64, 64)).astype(np.float32)
    x_nhwc = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))
    out32 = np.asarray(model32(x_nhwc, training=False))
    assert out32.dtype == np.float32, out32.dtype

    # float64 run of the same Keras model (same weights, same input) -> stored output.
    model64 = build_keras("float64")
    assert [v.path for v in model64.weights] == paths
    for v in model64.weights:
        v.assign(vals[v.path].astype(np.float64))
    out64 = np.asarray(model64(x_nhwc.astype(np.float64), training=False))
    assert out64.dtype == np.float64, out64.dtype
    out = out64.astype(np.float32)
    check_close(name, out, out32, "f64 reference - keras f32 output")

    # Independent check: torchvision DenseNet (eps 1.001e-5) with the weights mapped.
    tv = keras_to_torchvision(vals, 10).double()
    with torch.no_grad():
        tv_out = tv(torch.from_numpy(x_nchw).double()).numpy()
    check_close(name, out, tv_out.astype(np.float32),
                "keras f64 - torchvision(mapped, eps 1.001e-5) f64")

    # One key only: safetensors writes __metadata__ from a hash map, so several keys
    # would come out in a different order on each run and break byte-reproducibility.
    metadata = {"config": json.dumps(dict(meta, fixture=name), sort_keys=True)}
    np_save_file(vals, os.path.join(dirpath, f"{name}.safetensors"), metadata=metadata)
    np_save_file({"input": x_nchw, "output": np.ascontiguousarray(out)},
                 os.path.join(dirpath, f"{name}.io.safetensors"), metadata=metadata)
    describe(name, vals, print_keys)
    print("  " + output_stats(out))


# --------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=FIXTURES, help="fixture directory (default tests/fixtures)")
    ap.add_argument("--large", metavar="DIR",
                    help="also write a full-size random densenet121 (224x224, batch 1) into DIR "
                         "(~32 MB; not for committing)")
    ap.add_argument("--only", action="append",
                    choices=["torchvision_small", "cifar_bc", "keras_small"],
                    help="generate only these fixtures (repeatable)")
    ap.add_argument("--print-keys", action="store_true", help="print every tensor name")
    args = ap.parse_args(argv)

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    os.makedirs(args.out, exist_ok=True)
    makers = {"torchvision_small": make_torchvision_small, "cifar_bc": make_cifar_bc,
              "keras_small": make_keras_small}
    for name, fn in makers.items():
        if args.only and name not in args.only:
            continue
        fn(args.out, args.print_keys)

    total = 0
    print(f"\nfiles in {args.out}:")
    for f in sorted(os.listdir(args.out)):
        if f.endswith(".safetensors"):
            size = os.path.getsize(os.path.join(args.out, f))
            total += size
            print(f"  {f:<40} {size:>10,} bytes")
    print(f"  {'total':<40} {total:>10,} bytes")
    if total > SIZE_BUDGET:
        raise SystemExit(f"fixtures total {total} bytes > budget {SIZE_BUDGET}")

    if args.large:
        make_large(args.large, args.print_keys)
        for f in sorted(os.listdir(args.large)):
            print(f"  {f:<40} {os.path.getsize(os.path.join(args.large, f)):>12,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
