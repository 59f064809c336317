#!/usr/bin/env python3
"""Reference gradients for the training code: one training-mode step of the small
torchvision fixture model, computed by torch autograd.

Writes ``tests/fixtures/torchvision_small.grads.safetensors`` (float32) holding

* ``loss``     -- scalar, ``F.cross_entropy(model(input), labels)`` (mean over the batch);
* ``labels``   -- int64 ``[3, 7]``;
* ``logits``   -- float32 ``(2, 10)``, the training-mode logits (BN on batch statistics);
* ``<param>``  -- every parameter's ``.grad`` under its torchvision key
  (``features.conv0.weight``: OIHW; ``classifier.weight``: (out, in); BN
  ``weight``/``bias``);
* ``<bn>.running_mean`` / ``<bn>.running_var`` -- the running statistics after that one
  training-mode forward (momentum 0.1, unbiased batch variance, as torch updates them).

The model is ``torchvision.models.DenseNet(growth_rate=8, block_config=(2, 3, 4, 2),
num_init_features=16, bn_size=4, num_classes=10)`` (``drop_rate=0``: no dropout) with
the weights of ``tests/fixtures/torchvision_small.safetensors`` and the input batch of
``tests/fixtures/torchvision_small.io.safetensors`` (``input``, (2, 3, 64, 64) NCHW),
in ``train()`` mode.

Everything is computed in float64 from the float32 weights and input, then rounded to
float32 once, so the stored values are the exact gradients to float32 precision. The
script also runs the same step in float32 and prints how far torch's own float32
gradients are from that reference (the noise floor any float32 implementation faces).

Usage:
    /work/venv/bin/python tools/make_grad_fixtures.py
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torchvision.models import DenseNet

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(os.path.dirname(HERE), "tests", "fixtures")
WEIGHTS = os.path.join(FIXTURES, "torchvision_small.safetensors")
IO = os.path.join(FIXTURES, "torchvision_small.io.safetensors")
OUT = os.path.join(FIXTURES, "torchvision_small.grads.safetensors")
LABELS = [3, 7]
SIZE_BUDGET = 256 * 1024


def training_step(dtype: torch.dtype):
    """(loss, logits, {param: grad}, {buffer: value}) of one train-mode step in `dtype`."""
    model = DenseNet(growth_rate=8, block_config=(2, 3, 4, 2), num_init_features=16,
                     bn_size=4, num_classes=10, drop_rate=0)
    model.load_state_dict(load_file(WEIGHTS))
    model.to(dtype).train()
    x = load_file(IO)["input"].to(dtype)
    labels = torch.tensor(LABELS, dtype=torch.int64)
    logits = model(x)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    stats = {name: b.detach().clone() for name, b in model.named_buffers()
             if name.endswith("running_mean") or name.endswith("running_var")}
    return loss.detach(), logits.detach(), grads, stats


def kind(name: str) -> str:
    if name.startswith("classifier"):
        return "linear " + name.rsplit(".", 1)[1]
    if ".conv" in name:
        return "conv weight"
    return "bn " + name.rsplit(".", 1)[1]


def main() -> int:
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    loss, logits, grads, stats = training_step(torch.float64)

    # Noise floor: torch's own float32 step against the float64 reference, per tensor
    # max |f32 - f64| / max |f64|, worst per tensor kind.
    loss32, _, grads32, stats32 = training_step(torch.float32)
    worst: dict[str, float] = {}
    for name, g in {**grads, **stats}.items():
        other = {**grads32, **stats32}[name].double()
        rel = float((other - g).abs().max() / g.abs().max().clamp_min(1e-30))
        worst[kind(name)] = max(worst.get(kind(name), 0.0), rel)
    print(f"loss {float(loss):.8f} (float32 run: {float(loss32):.8f})")
    print("torch float32 vs float64, worst max|diff| / max|ref| per tensor kind:")
    for k, v in sorted(worst.items()):
        print(f"  {k:<20} {v:.2e}")
    smallest = min(grads.items(), key=lambda kv: float(kv[1].abs().max()))
    print(f"smallest max|grad| of a tensor: {float(smallest[1].abs().max()):.3e} "
          f"({smallest[0]}); largest: "
          f"{max(float(g.abs().max()) for g in grads.values()):.3e}")

    tensors = {
        "loss": loss.float().contiguous(),
        "labels": torch.tensor(LABELS, dtype=torch.int64),
        "logits": logits.float().contiguous(),
    }
    tensors.update({k: v.float().contiguous() for k, v in grads.items()})
    tensors.update({k: v.float().contiguous() for k, v in stats.items()})
    # One metadata key only, so the file is byte-reproducible (see make_fixtures.py).
    meta = dict(fixture="torchvision_small.grads", model="torchvision_small",
                labels=LABELS, mode="train", drop_rate=0, bn_momentum=0.1,
                computed_in="float64", stored_as="float32")
    save_file(tensors, OUT, metadata={"config": json.dumps(meta, sort_keys=True)})
    size = os.path.getsize(OUT)
    print(f"wrote {OUT}: {len(tensors)} tensors ({len(grads)} gradients, {len(stats)} "
          f"running stats), {size:,} bytes")
    if size > SIZE_BUDGET:
        raise SystemExit(f"{OUT} is {size} bytes > budget {SIZE_BUDGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
