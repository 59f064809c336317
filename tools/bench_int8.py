#!/usr/bin/env python3
"""DenseNet-121 int8 side by side: ours (``precision::Quantized``) against ONNX Runtime's
own int8 model of the same weights, and both fp32s, alternating in one run.

What it does:

1. builds ``examples/bench_precision.rs`` in release and runs it with ``--export
   WORKDIR``: DenseNet-121 (torchvision layout, the fixtures' random weights), its ONNX
   graph from our exporter (opset 17, dynamic batch), 16 calibration images and 16
   evaluation images (generated, ImageNet-normalised, raw f32 NCHW);
2. quantizes the ONNX graph with ``onnxruntime.quantization.quantize_static``: QDQ
   format, per-channel s8 weights, u8 activations, min-max calibration on the *same* 16
   images our int8 model is calibrated on (after ``quant_pre_process``: shape inference
   and ORT's graph optimisations);
3. starts ``bench_precision --serve`` and, for each batch size and thread count, times
   ours fp32 / bf16 / int8 and ORT fp32 / int8 (intra-op threads T, inter-op 1,
   ``ORT_ENABLE_ALL``) alternately: ``--rounds`` rounds, each running every variant for
   ``--iters`` passes after one untimed pass, the order rotated each round;
4. prints medians over all timed passes, the ratios (ours int8 / ORT int8, ours int8 /
   ORT fp32, ...), and the logits' agreement of each int8 model with its own fp32 on the
   16 evaluation images (cosine, top-1).

No torch needed (``tools/bench_compare.py`` imports torch at module level, so this
comparison lives in its own script)::

    python3 -m venv /work/venv-ort && /work/venv-ort/bin/pip install onnxruntime onnx numpy
    /work/venv-ort/bin/python tools/bench_int8.py [--rounds 7 --batches 1,8 --threads 1,2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

REPO = Path(__file__).resolve().parent.parent
SHAPE = (3, 224, 224)


def build() -> Path:
    subprocess.run(
        ["cargo", "build", "--release", "--example", "bench_precision"], cwd=REPO, check=True
    )
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "release" / "examples" / "bench_precision"


def read_images(path: Path) -> np.ndarray:
    data = np.fromfile(path, dtype="<f4")
    return data.reshape((-1,) + SHAPE)


class Images(CalibrationDataReader):
    """The calibration images, one at a time."""

    def __init__(self, images: np.ndarray, name: str):
        self.items = iter([{name: images[i : i + 1]} for i in range(len(images))])

    def get_next(self):
        return next(self.items, None)


def session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def agreement(reference: np.ndarray, other: np.ndarray) -> tuple[float, float, float]:
    cos = [
        float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
        for a, b in zip(reference.astype(np.float64), other.astype(np.float64))
    ]
    top1 = float(np.mean(reference.argmax(1) == other.argmax(1)))
    return float(np.mean(cos)), float(np.min(cos)), top1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", default="1:5,8:1", help="passes per round, per batch size")
    ap.add_argument("--pause", type=float, default=0.2,
                    help="seconds between two variants' runs (lets ORT's threads stop spinning)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/densenet-int8"))
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]
    iters_for = {int(k): int(v) for k, v in (p.split(":") for p in args.iters.split(","))}

    binary = build()
    subprocess.run([binary, "--export", args.workdir], check=True)
    fp32_onnx = args.workdir / "densenet121.onnx"
    pre = args.workdir / "densenet121.pre.onnx"
    int8_onnx = args.workdir / "densenet121.int8.onnx"
    # ONNX shape inference and ORT's graph optimisations (no sympy: the shapes are static
    # but for the batch).
    quant_pre_process(str(fp32_onnx), str(pre), skip_symbolic_shape=True)
    name = session(fp32_onnx, 1).get_inputs()[0].name
    calibration = read_images(args.workdir / "calibration.f32")
    quantize_static(
        str(pre),
        str(int8_onnx),
        Images(calibration, name),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    print(f"ORT {ort.__version__}: quantized {int8_onnx}", flush=True)

    server = subprocess.Popen(
        [binary, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    while server.stdout.readline().strip() != "ready":
        pass

    def ours(request: str) -> list[float]:
        server.stdin.write(request + "\n")
        server.stdin.flush()
        return [float(v) for v in server.stdout.readline().split()]

    # Accuracy: each int8 model against its own fp32 on the evaluation images.
    evals = read_images(args.workdir / "eval.f32")
    ours_fp32 = np.array(ours("logits fp32")).reshape(len(evals), -1)
    ours_int8 = np.array(ours("logits int8")).reshape(len(evals), -1)
    ort_fp32 = session(fp32_onnx, 2).run(None, {name: evals})[0]
    ort_int8 = session(int8_onnx, 2).run(None, {name: evals})[0]
    print("\n| int8 model | cosine to its fp32 (mean) | (min) | top-1 agreement |")
    print("|---|---|---|---|")
    for label, ref, low in [("ours", ours_fp32, ours_int8), ("ORT QDQ", ort_fp32, ort_int8)]:
        mean, low_cos, top1 = agreement(ref, low)
        print(f"| {label} | {mean:.5f} | {low_cos:.5f} | {100 * top1:.1f}% |")
    mean, _, top1 = agreement(ort_fp32, ours_fp32)
    print(f"(ours fp32 vs ORT fp32: cosine {mean:.7f}, top-1 {100 * top1:.0f}%)", flush=True)

    names = ["ours fp32", "ours bf16", "ours int8", "ORT fp32", "ORT int8"]
    rows = []
    for batch in batches:
        iters = iters_for.get(batch, 1)
        x = np.random.default_rng(batch).standard_normal((batch,) + SHAPE, dtype=np.float32)
        for threads in thread_counts:
            sessions = {"ORT fp32": session(fp32_onnx, threads), "ORT int8": session(int8_onnx, threads)}

            def run(variant: str) -> list[float]:
                if variant.startswith("ours"):
                    return ours(f"{variant.split()[1]} {batch} {threads} {iters}")
                s = sessions[variant]
                s.run(None, {name: x})
                times = []
                for _ in range(iters):
                    start = time.perf_counter()
                    s.run(None, {name: x})
                    times.append((time.perf_counter() - start) * 1e3)
                return times

            times = {n: [] for n in names}
            for r in range(args.rounds):
                for j in range(len(names)):
                    n = names[(j + r) % len(names)]
                    times[n].extend(run(n))
                    # A pause between variants: ORT's intra-op threads spin for a while
                    # after a run, and would take the CPU from whatever runs next.
                    time.sleep(args.pause)
            med = {n: statistics.median(t) for n, t in times.items()}
            rows.append((batch, threads, med))
            print(f"batch {batch}, {threads} thread(s): "
                  + ", ".join(f"{n} {m:.1f} ms" for n, m in med.items()), flush=True)
    server.stdin.close()
    server.wait()

    print(f"\n{args.rounds} rounds; medians of all timed passes (ms)\n")
    print("| batch | threads | ours fp32 | ours bf16 | ours int8 | ORT fp32 | ORT int8 "
          "| ours int8 / ORT int8 | ours int8 / ORT fp32 | ours int8 / ours fp32 | ours fp32 / ORT fp32 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for batch, threads, m in rows:
        print(f"| {batch} | {threads} | {m['ours fp32']:.1f} | {m['ours bf16']:.1f} | "
              f"{m['ours int8']:.1f} | {m['ORT fp32']:.1f} | {m['ORT int8']:.1f} | "
              f"{m['ours int8'] / m['ORT int8']:.2f} | {m['ours int8'] / m['ORT fp32']:.2f} | "
              f"{m['ours int8'] / m['ours fp32']:.2f} | {m['ours fp32'] / m['ORT fp32']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
