#!/usr/bin/env python3
"""Golden values for the layer unit tests of densenet-runtime.

Every test input is a deterministic pattern (no random seeds), defined identically here
and in the Rust tests:

    pattern(shape, a, m)[i] = ((i * a) % m - m // 2) / m     (i = flat index, float32)

laid out in torch's order (NCHW activations, OIHW conv weights, (out, in) linear
weights). The Rust tests build the same tensors, permute them to NHWC / HWIO, run the
layer and permute the result back to NCHW before comparing with the values printed here.

The reference is computed in float64 with plain numpy loops straight from the
definitions (torch semantics: zero padding for convolutions, -inf padding and floor
mode for max pooling, floor mode for average pooling, inference-mode batch norm). If
torch is installed, every case is also run through torch.nn.functional and must agree.

Usage:
    python3 tools/layer_reference.py            # print every case as Rust constants
    python3 tools/layer_reference.py conv1x1    # only the named cases
"""

import sys

import numpy as np

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # torch is optional: numpy alone defines the golden values
    torch = None


def pattern(shape, a, m):
    n = int(np.prod(shape))
    i = np.arange(n, dtype=np.int64)
    return (((i * a) % m - m // 2) / m).astype(np.float32).reshape(shape)


# ---------------------------------------------------------------- numpy references


def conv2d(x, w, stride, padding):
    """x (N, C, H, W), w (O, C, KH, KW) -> (N, O, OH, OW), float64, zero padding."""
    n, c, h, wd = x.shape
    o, c2, kh, kw = w.shape
    assert c == c2
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh = (h + 2 * padding - kh) // stride + 1
    ow = (wd + 2 * padding - kw) // stride + 1
    out = np.zeros((n, o, oh, ow))
    for oy in range(oh):
        for ox in range(ow):
            patch = xp[:, :, oy * stride : oy * stride + kh, ox * stride : ox * stride + kw]
            out[:, :, oy, ox] = np.einsum("nchw,ochw->no", patch, w.astype(np.float64))
    return out


def batch_norm(x, gamma, beta, mean, var, eps):
    """Inference-mode batch norm over axis 1 of NCHW, float64."""
    s = lambda v: v.astype(np.float64).reshape(1, -1, 1, 1)
    return (x.astype(np.float64) - s(mean)) / np.sqrt(s(var) + eps) * s(gamma) + s(beta)


def max_pool2d(x, k, stride, padding):
    """-inf padding, floor mode, as torch.nn.MaxPool2d."""
    n, c, h, w = x.shape
    xp = np.pad(
        x.astype(np.float64),
        ((0, 0), (0, 0), (padding, padding), (padding, padding)),
        constant_values=-np.inf,
    )
    oh = (h + 2 * padding - k) // stride + 1
    ow = (w + 2 * padding - k) // stride + 1
    out = np.empty((n, c, oh, ow))
    for oy in range(oh):
        for ox in range(ow):
            win = xp[:, :, oy * stride : oy * stride + k, ox * stride : ox * stride + k]
            out[:, :, oy, ox] = win.max(axis=(2, 3))
    return out


def avg_pool2d(x, k, stride):
    """No padding, floor mode, as torch.nn.AvgPool2d(k, stride)."""
    n, c, h, w = x.shape
    oh = (h - k) // stride + 1
    ow = (w - k) // stride + 1
    out = np.empty((n, c, oh, ow))
    for oy in range(oh):
        for ox in range(ow):
            win = x[:, :, oy * stride : oy * stride + k, ox * stride : ox * stride + k]
            out[:, :, oy, ox] = win.astype(np.float64).mean(axis=(2, 3))
    return out


def linear(x, w, b):
    return x.astype(np.float64) @ w.astype(np.float64).T + b.astype(np.float64)


# ---------------------------------------------------------------- the cases

BN_GAMMA = np.array([0.5, -1.25, 2.0], dtype=np.float32)
BN_BETA = np.array([0.1, 0.0, -0.3], dtype=np.float32)
BN_MEAN = np.array([0.05, -0.2, 0.15], dtype=np.float32)
BN_VAR = np.array([0.9, 0.04, 2.5], dtype=np.float32)
BN_EPS = 1e-5


def cases():
    """name -> (snippet, numpy result, torch thunk or None)."""
    out = {}

    def conv_case(name, xs, ws, stride, padding):
        x, w = pattern(*xs), pattern(*ws)
        snippet = (
            f"x = pattern({xs[0]}, {xs[1]}, {xs[2]}); w = pattern({ws[0]}, {ws[1]}, {ws[2]})\n"
            f"y = F.conv2d(x, w, stride={stride}, padding={padding})"
        )
        t = lambda: F.conv2d(torch.from_numpy(x), torch.from_numpy(w), stride=stride, padding=padding)
        out[name] = (snippet, conv2d(x, w, stride, padding), t)

    conv_case("conv3x3_s1_p1", ((1, 3, 5, 5), 7, 11), ((4, 3, 3, 3), 5, 13), 1, 1)
    conv_case("conv7x7_s2_p3", ((1, 3, 9, 9), 7, 11), ((4, 3, 7, 7), 5, 13), 2, 3)
    conv_case("conv1x1", ((2, 5, 3, 3), 7, 11), ((3, 5, 1, 1), 5, 13), 1, 0)
    conv_case("conv3x2_s2_p1", ((2, 2, 7, 5), 7, 11), ((3, 2, 3, 2), 5, 13), 2, 1)

    bx = pattern((2, 3, 2, 3), 7, 11) * 4
    bn_snip = (
        "x = pattern((2, 3, 2, 3), 7, 11) * 4\n"
        "bn = nn.BatchNorm2d(3, eps=1e-5).eval()  # weight, bias, running_mean, running_var =\n"
        "#   [0.5, -1.25, 2.0], [0.1, 0.0, -0.3], [0.05, -0.2, 0.15], [0.9, 0.04, 2.5]\n"
    )
    bn = lambda: F.batch_norm(
        torch.from_numpy(bx),
        torch.from_numpy(BN_MEAN),
        torch.from_numpy(BN_VAR),
        torch.from_numpy(BN_GAMMA),
        torch.from_numpy(BN_BETA),
        training=False,
        eps=BN_EPS,
    )
    y = batch_norm(bx, BN_GAMMA, BN_BETA, BN_MEAN, BN_VAR, BN_EPS)
    out["batch_norm"] = (bn_snip + "y = bn(x)", y, bn)
    out["batch_norm_relu"] = (bn_snip + "y = F.relu(bn(x))", np.maximum(y, 0), lambda: F.relu(bn()))

    for name, shape in [("max_pool_odd", (1, 2, 7, 7)), ("max_pool_even", (1, 2, 8, 8))]:
        x = pattern(shape, 7, 11) - 0.25
        t = (lambda x: lambda: F.max_pool2d(torch.from_numpy(x), 3, stride=2, padding=1))(x)
        snippet = f"x = pattern({shape}, 7, 11) - 0.25\ny = F.max_pool2d(x, 3, stride=2, padding=1)"
        out[name] = (snippet, max_pool2d(x, 3, 2, 1), t)

    x = pattern((1, 2, 7, 7), 7, 11)
    out["avg_pool_odd"] = (
        "x = pattern((1, 2, 7, 7), 7, 11)\ny = F.avg_pool2d(x, 2, stride=2)",
        avg_pool2d(x, 2, 2),
        lambda: F.avg_pool2d(torch.from_numpy(pattern((1, 2, 7, 7), 7, 11)), 2, stride=2),
    )

    g = pattern((2, 3, 3, 4), 7, 11)
    out["global_avg_pool"] = (
        "x = pattern((2, 3, 3, 4), 7, 11)\ny = x.mean(dim=(2, 3))",
        g.astype(np.float64).mean(axis=(2, 3)),
        lambda: torch.from_numpy(g).mean(dim=(2, 3)),
    )
    out["global_max_pool"] = (
        "x = pattern((2, 3, 3, 4), 7, 11)\ny = x.amax(dim=(2, 3))",
        g.astype(np.float64).max(axis=(2, 3)),
        lambda: torch.from_numpy(g).amax(dim=(2, 3)),
    )

    lx, lw, lb = pattern((2, 5), 7, 11), pattern((3, 5), 5, 13), pattern((3,), 3, 7)
    out["linear"] = (
        "x = pattern((2, 5), 7, 11); w = pattern((3, 5), 5, 13); b = pattern((3,), 3, 7)\n"
        "y = F.linear(x, w, b)",
        linear(lx, lw, lb),
        lambda: F.linear(torch.from_numpy(lx), torch.from_numpy(lw), torch.from_numpy(lb)),
    )
    return out


# ---------------------------------------------------------------- the RNG stream


def rng_seed0(count=3):
    """First outputs of SplitMix64-seeded xoshiro256++ (densenet_runtime::rng::Rng::new(0))."""
    mask = (1 << 64) - 1
    rotl = lambda x, k: ((x << k) | (x >> (64 - k))) & mask
    state, s = 0, []
    for _ in range(4):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        s.append(z ^ (z >> 31))
    out = []
    for _ in range(count):
        out.append((rotl((s[0] + s[3]) & mask, 23) + s[0]) & mask)
        t = (s[1] << 17) & mask
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
    return out


# ---------------------------------------------------------------- printing


def rust_const(name, values):
    flat = np.asarray(values, dtype=np.float64).ravel()
    body = ", ".join(str(np.float32(v)) for v in flat)
    return f"const {name.upper()}: [f32; {flat.size}] = [{body}];"


def main(selected):
    all_cases = cases()
    unknown = [s for s in selected if s not in all_cases]
    if unknown:
        sys.exit(f"unknown case(s) {unknown}; known: {sorted(all_cases)}")
    for name, (snippet, y, t) in all_cases.items():
        if selected and name not in selected:
            continue
        if torch is not None:
            yt = t().double().numpy()
            assert np.allclose(y, yt, rtol=1e-5, atol=1e-6), f"{name}: numpy and torch disagree"
        print(f"// {name}: shape {tuple(y.shape)}")
        for line in snippet.splitlines():
            print(f"//   {line}")
        print(rust_const(name, y))
        print()
    if not selected:
        print(f"// rng seed 0: {rng_seed0()}")
        print(f"// torch cross-check: {'done' if torch is not None else 'skipped (torch not installed)'}")


if __name__ == "__main__":
    main(sys.argv[1:])
