#!/usr/bin/env python3
"""Run ONNX files exported by densenet-rs with ONNX Runtime and compare their outputs.

The files come from the Rust test `tests/onnx.rs`:

    DENSENET_ONNX_OUT=/tmp/onnx cargo test --test onnx
    /work/venv/bin/python tools/check_onnx.py /tmp/onnx

For every `NAME.onnx` in DIR, `NAME.io.safetensors` holds `input` (three NCHW images),
`ours_batch2` / `ours_batch3` (densenet-rs's outputs on the first two images and on
all three) and, for models loaded from a framework fixture, `reference` (that
framework's output on the fixture's images, the first one or two, e.g. torchvision's
for `torchvision_small`).

Each model is validated with `onnx.checker` (full check, with shape inference), then
run by ONNX Runtime (CPU) at batch 2 and at batch 3 (the batch dimension is dynamic),
and compared with densenet-rs and with the reference, by the parity bar of the tests:
max |a - b| <= 1e-4 * max(1, max |b|), b the expected values. Prints the figures;
exit status 1 if any comparison fails.

Needs numpy, safetensors, onnx and onnxruntime (checked with onnx 1.23.2 and
onnxruntime 1.32.0): `/work/venv/bin/pip install onnx onnxruntime`.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file

TOLERANCE = 1e-4


def compare(label: str, got: np.ndarray, expected: np.ndarray) -> bool:
    """Prints the parity figures of `got` against `expected`; True if within the bar."""
    if got.shape != expected.shape:
        print(f"  {label:<38} FAIL shape {got.shape} != {expected.shape}")
        return False
    diff = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))
    scale = max(1.0, float(np.max(np.abs(expected))))
    ok = diff <= TOLERANCE * scale
    print(
        f"  {label:<38} max|diff| = {diff:.3e}  bound = {TOLERANCE * scale:.3e}"
        f"  {'ok' if ok else 'FAIL'}"
    )
    return ok


def check(onnx_path: Path) -> bool:
    name = onnx_path.stem
    io_path = onnx_path.with_suffix(".io.safetensors")
    if not io_path.exists():
        print(f"{name}: no {io_path.name}, skipped")
        return True
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model, full_check=True)
    graph = model.graph
    opset = {o.domain: o.version for o in model.opset_import}
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
    print(
        f"{name}: ir_version {model.ir_version}, opset {opset.get('', '?')}, "
        f"{len(graph.node)} nodes, {len(graph.initializer)} initializers, "
        f"input {dims(graph.input[0])}, output {dims(graph.output[0])}"
    )

    tensors = load_file(str(io_path))
    with open(io_path, "rb") as f:  # safetensors header: 8-byte length, then JSON
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    x = tensors["input"]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    run = lambda batch: session.run(None, {input_name: np.ascontiguousarray(batch)})[0]

    ok = True
    out2, out3 = run(x[:2]), run(x[:3])
    ok &= compare("batch 2: onnxruntime vs ours", out2, tensors["ours_batch2"])
    ok &= compare("batch 3: onnxruntime vs ours", out3, tensors["ours_batch3"])
    if "reference" in tensors:
        source = header.get("__metadata__", {}).get("reference", "reference")
        ref = tensors["reference"]
        r = len(ref)
        ok &= compare(f"batch 2[:{r}]: onnxruntime vs reference", out2[:r], ref)
        ok &= compare(f"batch 3[:{r}]: onnxruntime vs reference", out3[:r], ref)
        ok &= compare(f"batch 2[:{r}]: ours vs reference", tensors["ours_batch2"][:r], ref)
        print(f"  (reference: {source})")
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="directory written by DENSENET_ONNX_OUT")
    args = parser.parse_args(argv)
    files = sorted(args.dir.glob("*.onnx"))
    if not files:
        print(f"no .onnx files in {args.dir}", file=sys.stderr)
        return 1
    print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}")
    results = [check(path) for path in files]
    failed = results.count(False)
    print(f"{len(results) - failed}/{len(results)} models within the parity bar")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
