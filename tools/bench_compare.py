#!/usr/bin/env python3
"""Side-by-side DenseNet-121 inference timings: ours vs ONNX Runtime vs PyTorch eager
(and tract, when given its bench binary), on the same weights, in one run; with
``--train``, training-step timings: ours vs PyTorch eager; with ``--int8``, ours
fp32/bf16/int8 against ONNX Runtime fp32 and ONNX Runtime's own int8 model
(``tools/bench_int8.py``, which needs no torch: ``python tools/bench_compare.py --int8
[--rounds 9 --batches 1,8 --threads 1,2]``).

What it does:

1. builds torchvision's ``densenet121`` with random weights (fixed seeds; BatchNorm
   affine parameters and running statistics randomised as in ``make_fixtures.py``, so
   the parity check exercises them), saves them as safetensors (torchvision naming, what
   ``DenseNet121::load_safetensors`` reads) and exports ONNX (opset 17, one file per
   batch size, fixed shapes);
2. builds ``examples/bench_forward.rs`` in release (``cargo build --release --example
   bench_forward``; ``CARGO_TARGET_DIR`` is honoured) and starts it in ``--serve`` mode
   with ``RAYON_NUM_THREADS=T`` for each configuration;
3. for each configuration (batch x threads) checks that our logits match torch's on
   the same input (max |ours - torch| <= 1e-4 * max(1, max |torch|)), then times ours,
   ONNX Runtime (intra-op threads T, inter-op 1, ORT_ENABLE_ALL) and torch eager
   (``torch.set_num_threads(T)``, ``inference_mode``) *alternately*: several rounds,
   each running every framework for a few passes (after one untimed pass), with the
   order rotated from round to round, so that load from other processes on a shared
   machine hits all of them alike. Each round measures how much CPU time processes
   other than ours (this script and its benchmark servers) took meanwhile, from
   /proc/stat; a round where they took more than ``--max-foreign-load`` of the machine
   beyond the cores the config leaves free is discarded and run again (up to
   ``--max-extra-rounds`` times), and before each config the script waits (up to
   ``--wait-idle`` seconds) for the machine to quieten;
4. prints a markdown table of medians over all timed passes of the kept rounds, with the
   ratios, and writes every timing to ``WORKDIR/results.json``;
5. measures peak memory (peak RSS of a fresh process doing three batch-1 passes on one
   thread) of ours and of ONNX Runtime, with the Python baseline ORT carries
   (``--no-memory`` skips it; it needs batch 1 among ``--batches``).

Usage (any venv with the packages; /work/venv on the reference machine)::

    pip install torch torchvision safetensors numpy onnx onnxruntime
    python tools/bench_compare.py                       # ~5 minutes on 2 cores
    python tools/bench_compare.py --rounds 3 --batches 1 --threads 1,2   # quicker
    python tools/bench_compare.py --tract-bin /path/to/tract-bench        # add tract

Training mode (``--train``): one training step (forward with batch statistics,
cross-entropy loss, backward to every parameter's gradient; no optimiser update, as our
``loss_and_gradients_with``) of DenseNet-BC-100 (k = 12) at batch 64 on 32x32 images and
DenseNet-121 at batch 16 on 224x224, on one and two threads: ours
(``examples/bench_train.rs --serve``, built in release) and torch eager with the same
architecture built the paper's way (torchvision's ``DenseNet`` classes; for CIFAR a 3x3
stem convolution of 2k channels and no stem BN or pooling, as ``densenet!``'s ``stem:
cifar``), alternating rounds as above. Prints the medians, ours/torch, and the step's
FLOP rate (3x the forward multiply-adds, 2 FLOPs each)::

    python tools/bench_compare.py --train                 # ~15 minutes on 2 cores
    python tools/bench_compare.py --train --models bc100 --rounds 3

``--tract-bin`` takes a program speaking the same stdin protocol as ``bench_forward
--serve`` with arguments ``--onnx PATH --batch N --threads T --input PATH --output
PATH`` (BENCHMARKS.md shows the one used; it is not part of this repository).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

if "--int8" not in sys.argv[1:]:  # the int8 comparison needs no torch
    import torch
    import torchvision
    from safetensors.torch import save_file
    from torch import nn

REPO = Path(__file__).resolve().parent.parent
WEIGHT_SEED, BN_SEED, INPUT_SEED = 4, 104, 1004


def randomise_bn(model: nn.Module, seed: int) -> None:
    """Random BN affine params and running stats, and a random classifier bias
    (as tools/make_fixtures.py does)."""
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


def build_ours() -> Path:
    """`cargo build --release --example bench_forward`; the binary's path."""
    cmd = ["cargo", "build", "--release", "--example", "bench_forward",
           "--message-format=json-render-diagnostics"]
    print("$ " + " ".join(cmd[:5]), flush=True)
    out = subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.PIPE, text=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if (msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == "bench_forward"
                and msg.get("executable")):
            return Path(msg["executable"])
    raise SystemExit("cargo did not report the bench_forward executable")


class Server:
    """A benchmark subprocess speaking the `--serve` protocol: write `K`, read one JSON line."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str]):
        self.name = name
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)

    def run(self, iters: int) -> list[float]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"{iters}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name} exited (status {self.proc.wait()})")
        return json.loads(line)["times_ms"]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, in clock ticks (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def process_jiffies(pid: int) -> int:
    """CPU time (user + system, all threads) of one process, in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


class ForeignLoad:
    """The share of the machine's CPU time used by processes other than ours (this script
    and the benchmark servers) between `start()` and `stop()`: 0.0 is an otherwise idle
    machine, 0.5 is one of two cores busy elsewhere."""

    def __init__(self, pids):
        self.pids = pids  # a callable returning the pids that are ours

    def _sample(self):
        busy, total = machine_jiffies()
        own = sum(process_jiffies(p) for p in [os.getpid(), *self.pids()])
        return busy, total, own

    def start(self) -> None:
        self.begin = self._sample()

    def stop(self) -> float:
        busy, total, own = self._sample()
        b0, t0, o0 = self.begin
        if total <= t0:
            return 0.0
        return max(0.0, ((busy - b0) - (own - o0)) / (total - t0))


def wait_for_idle(threshold: float, timeout: float) -> float:
    """Waits (up to `timeout` s) until other processes use less than `threshold` of the
    machine over a 2-second window; returns the last measured share."""
    probe = ForeignLoad(lambda: [])
    deadline = time.monotonic() + timeout
    while True:
        probe.start()
        time.sleep(2.0)
        load = probe.stop()
        if load < threshold or time.monotonic() >= deadline:
            return load
        print(f"  waiting for the machine to quieten: other processes use {load:.0%} of it",
              flush=True)


def timed_calls(fn, iters: int) -> list[float]:
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def read_f32(path: Path, shape) -> np.ndarray:
    return np.fromfile(path, dtype="<f4").reshape(shape)


def parity(name: str, got: np.ndarray, ref: np.ndarray) -> tuple[float, float, bool]:
    diff = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))))
    tol = 1e-4 * max(1.0, float(np.max(np.abs(ref))))
    ok = diff <= tol
    print(f"  parity {name:<24} max|diff| = {diff:.3e}  (tolerance {tol:.3e})  "
          f"{'OK' if ok else 'FAIL'}", flush=True)
    return diff, tol, ok


def machine() -> dict[str, str]:
    info = {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "onnxruntime": ort.__version__}
    try:
        lscpu = subprocess.run(["lscpu"], stdout=subprocess.PIPE, text=True).stdout
        fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
        info["cpu"] = fields.get("Model name", "?").strip()
        info["cpus"] = fields.get("CPU(s)", "?").strip()
        info["avx512f"] = "yes" if "avx512f" in fields.get("Flags", "").split() else "no"
    except OSError:
        pass
    try:
        info["rustc"] = subprocess.run(["rustc", "--version"], stdout=subprocess.PIPE,
                                       text=True).stdout.strip()
    except OSError:
        pass
    return info


ORT_PEAK = """
import sys, numpy as np, onnxruntime as ort
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
opts.inter_op_num_threads = 1
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
x = np.fromfile(sys.argv[2], dtype="<f4").reshape(1, 3, 224, 224)
if sys.argv[1] != "baseline":
    sess = ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"])
    for _ in range(3):
        sess.run(None, {"input": x})
"""


def peak_rss_mib(cmd: list[str], env: dict[str, str]) -> float:
    """Peak resident set size of a fresh process running `cmd`, in MiB, as GNU time's
    `%M` reports it. (Not `wait4` from here: Linux carries a forked child's peak over
    `exec`, so a child of this torch-laden process would start at our own RSS.)"""
    out = subprocess.run(["/usr/bin/time", "-f", "maxrss_kb %M", *cmd], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         check=True).stderr
    kb = [line for line in out.splitlines() if line.startswith("maxrss_kb ")][-1]
    return int(kb.split()[1]) / 1024


def peak_memory(bench_bin: Path, weights: Path, onnx_path: Path, input_path: Path) -> dict:
    """Peak RSS of one process doing 3 forward passes at batch 1 on one thread: ours
    (weights loaded from the safetensors file, then `forward_into`) and ONNX Runtime
    (session from the ONNX file). ORT runs inside Python, so its figure includes the
    interpreter and the imported modules; the baseline process (same imports, same
    input, no session) says how much of it that is."""
    env = dict(os.environ, RAYON_NUM_THREADS="1", OMP_NUM_THREADS="1")
    ours = peak_rss_mib([str(bench_bin), "--model", "densenet121", "--batch", "1",
                         "--weights", str(weights), "--input", str(input_path),
                         "--iters", "3", "--warmup", "0"], env)
    ort_total = peak_rss_mib([sys.executable, "-c", ORT_PEAK, str(onnx_path),
                              str(input_path)], env)
    baseline = peak_rss_mib([sys.executable, "-c", ORT_PEAK, "baseline", str(input_path)], env)
    return {"ours_mib": ours, "ort_mib": ort_total, "python_baseline_mib": baseline,
            "weights_mib": weights.stat().st_size / 2**20}


def build_example(name: str) -> Path:
    """`cargo build --release --example NAME`; the binary's path."""
    cmd = ["cargo", "build", "--release", "--example", name,
           "--message-format=json-render-diagnostics"]
    print("$ " + " ".join(cmd[:5]), flush=True)
    out = subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.PIPE, text=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if (msg.get("reason") == "compiler-artifact" and msg["target"]["name"] == name
                and msg.get("executable")):
            return Path(msg["executable"])
    raise SystemExit(f"cargo did not report the {name} executable")


# Training mode: (our --model, batch, input size, macs per image from our plan).
TRAIN_MODELS = {
    "bc100": (64, 32),
    "121": (16, 224),
}


def torch_train_model(which: str) -> nn.Module:
    """The architecture `examples/bench_train.rs` builds, in torch."""
    from torchvision.models.densenet import DenseNet
    if which == "121":
        return torchvision.models.densenet121(weights=None)
    # DenseNet-BC (L = 100, k = 12): 3 blocks of 16 bottleneck layers, 2k = 24 stem
    # channels, compression 0.5 (torchvision's transitions halve), CIFAR stem.
    model = DenseNet(growth_rate=12, block_config=(16, 16, 16), num_init_features=24,
                     bn_size=4, drop_rate=0.0, num_classes=10)
    model.features.conv0 = nn.Conv2d(3, 24, kernel_size=3, stride=1, padding=1, bias=False)
    for name in ("norm0", "relu0", "pool0"):
        delattr(model.features, name)
    # torchvision's last block is followed by norm5 inside `features`, as ours.
    return model


def train_main(args) -> int:
    info = machine()
    info["load_average_start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(json.dumps(info, indent=1), flush=True)
    bench_bin = build_example("bench_train")
    torch.set_num_interop_threads(1)
    table, results, all_ok = [], {"machine": info, "configs": []}, True
    for which in args.models.split(","):
        batch, size = TRAIN_MODELS[which]
        torch.manual_seed(WEIGHT_SEED)
        model = torch_train_model(which).train()
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(INPUT_SEED))
        classes = model.classifier.out_features
        labels = torch.arange(batch) % classes
        # Multiply-adds per image of the convolutions and the classifier, from torch's
        # shapes (a forward hook per layer), for the FLOP rate.
        counted = []

        def count(module, inputs, output):
            if isinstance(module, nn.Conv2d):
                counted.append(output[0].numel() * module.in_channels
                               * module.kernel_size[0] * module.kernel_size[1])
            elif isinstance(module, nn.Linear):
                counted.append(module.in_features * module.out_features)
        hooks = [m.register_forward_hook(count) for m in model.modules()
                 if isinstance(m, (nn.Conv2d, nn.Linear))]
        with torch.no_grad():
            model(x[:1])
        for h in hooks:
            h.remove()
        macs = sum(counted)

        def torch_step():
            model.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(x), labels)
            loss.backward()

        torch_step()  # warm-up: torch's first steps allocate and pick kernels
        for threads in [int(t) for t in args.threads.split(",")]:
            print(f"\n== training step, {which} batch {batch} {size}x{size}, {threads} thread(s) ==",
                  flush=True)
            torch.set_num_threads(threads)
            env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
            ours = Server("ours", [str(bench_bin), "--model", which, "--batch", str(batch),
                                   "--serve"], env)
            torch_step()  # warm-up at this thread count
            runners = {"ours": ours.run, "torch": lambda k: timed_calls(torch_step, k)}
            names = list(runners)
            times = {n: [] for n in names}
            probe = ForeignLoad(lambda: [ours.proc.pid])
            cpus = os.cpu_count() or 1
            allowed = args.max_foreign_load + max(0, cpus - threads) / cpus
            wait_for_idle(allowed, args.wait_idle)
            kept = tried = 0
            while kept < args.rounds and tried < args.rounds + args.max_extra_rounds:
                order = names[tried % 2:] + names[:tried % 2]
                tried += 1
                probe.start()
                got = {}
                for n in order:  # steps of seconds: no untimed pass needed
                    got[n] = runners[n](args.train_iters)
                load = probe.stop()
                line = ", ".join(f"{n} {statistics.median(got[n]):.0f}" for n in names)
                if load > allowed:
                    print(f"  round {tried}: {line}  [discarded: other processes used {load:.0%}]",
                          flush=True)
                    continue
                kept += 1
                for n in names:
                    times[n].extend(got[n])
                print(f"  round {tried}: {line}  [other processes {load:.0%}]", flush=True)
            ours.close()
            if kept < args.rounds:
                all_ok = False
            if kept == 0:
                continue
            med = {n: statistics.median(t) for n, t in times.items()}
            gflops = {n: 3 * 2 * macs * batch / (med[n] / 1e3) / 1e9 for n in names}
            row = {"model": which, "batch": batch, "size": size, "threads": threads,
                   "macs_per_image": macs, "rounds_kept": kept, "rounds_run": tried,
                   "median_ms": med, "gflops": gflops, "times_ms": times}
            results["configs"].append(row)
            table.append(row)
    info["load_average_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "train_results.json").write_text(json.dumps(results, indent=1))
    print("\nTraining step (forward, loss, backward), median ms (ratio < 1: ours faster)\n")
    print("| config | ours ms | torch ms | ours/torch | ours GFLOP/s | torch GFLOP/s |")
    print("|---|---|---|---|---|---|")
    for r in table:
        m, g = r["median_ms"], r["gflops"]
        print(f"| {r['model']} batch {r['batch']} {r['size']}x{r['size']}, {r['threads']} thread"
              f"{'s' if r['threads'] > 1 else ''} | {m['ours']:.0f} | {m['torch']:.0f} | "
              f"{m['ours'] / m['torch']:.2f} | {g['ours']:.1f} | {g['torch']:.1f} |")
    print(f"load average start {info['load_average_start']}, end {info['load_average_end']}")
    return 0 if all_ok else 1


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--int8" in argv:
        # Ours fp32/bf16/int8 against ONNX Runtime fp32 and its own int8 model
        # (quantize_static, QDQ, per-channel, same calibration images): bench_int8.py,
        # which takes the remaining options (--batches, --threads, --rounds, ...).
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_int8

        return bench_int8.main([a for a in argv if a != "--int8"])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", action="store_true",
                    help="time training steps (ours vs torch) instead of inference")
    ap.add_argument("--models", default="bc100,121",
                    help="training mode: comma-separated models (bc100, 121)")
    ap.add_argument("--train-iters", type=int, default=2,
                    help="training mode: steps per framework per round (torch's eager "
                         "steps spread 1.4-2.5 s within one run on a shared host: one step "
                         "a round left its median at the mercy of a few rounds)")
    ap.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--rounds", type=int, default=7, help="alternation rounds per config")
    ap.add_argument("--iters", default="1:15,8:3",
                    help="timed passes per framework per round, as batch:iters pairs "
                         "(other batches: max(1, 15 // batch))")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/densenet-bench"),
                    help="weights, ONNX files, inputs, outputs and results.json go here")
    ap.add_argument("--tract-bin", type=Path, help="also time tract with this program")
    ap.add_argument("--no-torch", action="store_true", help="skip torch eager timings")
    ap.add_argument("--no-memory", action="store_true",
                    help="skip the peak-memory comparison (batch 1, one thread)")
    ap.add_argument("--max-foreign-load", type=float, default=0.10,
                    help="a round during which other processes used more than this share "
                         "of the machine's CPU time (beyond the cores the config leaves "
                         "free: with T threads on C cores, (C - T) / C more) is discarded "
                         "and run again")
    ap.add_argument("--max-extra-rounds", type=int, default=7,
                    help="per config, at most this many rounds are rerun")
    ap.add_argument("--wait-idle", type=float, default=120,
                    help="before each config, wait up to this many seconds for other "
                         "processes to use less than --max-foreign-load of the machine")
    args = ap.parse_args(argv)
    if args.train:
        return train_main(args)

    batches = [int(b) for b in args.batches.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]
    iters_for = {int(k): int(v) for k, v in (p.split(":") for p in args.iters.split(","))}
    args.workdir.mkdir(parents=True, exist_ok=True)
    info = machine()
    info["load_average_start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(json.dumps(info, indent=1), flush=True)

    torch.set_num_interop_threads(1)
    torch.manual_seed(WEIGHT_SEED)
    model = torchvision.models.densenet121(weights=None)
    randomise_bn(model, BN_SEED)
    model.eval()
    weights = args.workdir / "densenet121.safetensors"
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(weights))

    bench_bin = build_ours()
    print(f"ours: {bench_bin}", flush=True)

    results = {"machine": info, "configs": []}
    table = []
    all_ok = True
    for batch in batches:
        iters = iters_for.get(batch, max(1, 15 // batch))
        x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(INPUT_SEED))
        x_np = x.numpy()
        input_path = args.workdir / f"input_b{batch}.f32"
        x_np.astype("<f4").tofile(input_path)
        onnx_path = args.workdir / f"densenet121_b{batch}.onnx"
        if not onnx_path.exists():
            torch.onnx.export(model, (x,), str(onnx_path), opset_version=17, dynamo=False,
                              input_names=["input"], output_names=["logits"])
        with torch.inference_mode():
            ref = model(x).numpy()

        for threads in thread_counts:
            cfg = f"b{batch} t{threads}"
            print(f"\n== DenseNet-121 224x224, batch {batch}, {threads} thread(s): "
                  f"{args.rounds} rounds x {iters} passes ==", flush=True)
            torch.set_num_threads(threads)
            env = dict(os.environ, RAYON_NUM_THREADS=str(threads))

            ours_out = args.workdir / f"ours_b{batch}_t{threads}.f32"
            ours = Server("ours", [str(bench_bin), "--model", "densenet121",
                                   "--batch", str(batch), "--weights", str(weights),
                                   "--input", str(input_path), "--output", str(ours_out),
                                   "--warmup", "2", "--serve"], env)
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
            feed = {"input": x_np}

            runners = {}
            runners["ours"] = ours.run
            runners["ort"] = lambda k: timed_calls(lambda: sess.run(None, feed), k)
            if not args.no_torch:
                def torch_run(k):
                    with torch.inference_mode():
                        return timed_calls(lambda: model(x), k)
                runners["torch"] = torch_run
            tract = None
            if args.tract_bin:
                tract_out = args.workdir / f"tract_b{batch}_t{threads}.f32"
                tract = Server("tract", [str(args.tract_bin), "--onnx", str(onnx_path),
                                         "--batch", str(batch), "--threads", str(threads),
                                         "--input", str(input_path),
                                         "--output", str(tract_out)], env)
                runners["tract"] = tract.run

            # Parity on the same input, before timing (ours wrote its first pass's logits).
            runners["ours"](1)  # returns once the server is up, so the file is complete
            checks = {"ours": parity(f"ours vs torch ({cfg})", read_f32(ours_out, ref.shape), ref)}
            all_ok &= checks["ours"][2]
            checks["ort"] = parity(f"ORT vs torch ({cfg})", sess.run(None, feed)[0], ref)
            if tract:
                runners["tract"](1)
                checks["tract"] = parity(f"tract vs torch ({cfg})",
                                         read_f32(tract_out, ref.shape), ref)

            names = list(runners)
            times = {n: [] for n in names}
            servers = [s for s in (ours, tract) if s]
            probe = ForeignLoad(lambda: [s.proc.pid for s in servers])
            cpus = os.cpu_count() or 1
            allowed = args.max_foreign_load + max(0, cpus - threads) / cpus
            idle = wait_for_idle(allowed, args.wait_idle)
            if idle >= allowed:
                print(f"  WARNING: the machine is busy ({idle:.0%} used by other processes)")
            kept, tried, loads = 0, 0, []
            while kept < args.rounds and tried < args.rounds + args.max_extra_rounds:
                order = names[tried % len(names):] + names[:tried % len(names)]
                tried += 1
                probe.start()
                got = {}
                for n in order:
                    runners[n](1)  # untimed: wakes the thread pool after the others ran
                    got[n] = runners[n](iters)
                load = probe.stop()
                line = ", ".join(f"{n} {statistics.median(got[n]):.1f}" for n in names)
                if load > allowed:
                    print(f"  round {tried}: {line}  [discarded: other processes used "
                          f"{load:.0%} of the CPU]", flush=True)
                    continue
                kept += 1
                loads.append(load)
                for n in names:
                    times[n].extend(got[n])
                print(f"  round {tried}: {line}  [other processes {load:.0%}]", flush=True)
            if kept < args.rounds:
                print(f"  WARNING: only {kept} of {args.rounds} rounds ran on a quiet machine",
                      flush=True)
                all_ok = False
            if kept == 0:
                ours.close()
                if tract:
                    tract.close()
                continue
            ours.close()
            if tract:
                tract.close()
            del sess

            med = {n: statistics.median(t) for n, t in times.items()}
            row = {"batch": batch, "threads": threads, "iters": len(times["ours"]),
                   "rounds_kept": kept, "rounds_run": tried,
                   "foreign_load_max": max(loads),
                   "median_ms": med, "times_ms": times,
                   "parity_max_abs_diff": {n: c[0] for n, c in checks.items()},
                   "parity_tolerance": checks["ours"][1]}
            results["configs"].append(row)
            table.append(row)

    memory = None
    if not args.no_memory:
        input_path = args.workdir / "input_b1.f32"
        onnx_path = args.workdir / "densenet121_b1.onnx"
        if input_path.exists() and onnx_path.exists():
            memory = peak_memory(bench_bin, weights, onnx_path, input_path)
            results["peak_memory"] = memory

    info["load_average_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    (args.workdir / "results.json").write_text(json.dumps(results, indent=1))

    cols = ["ours", "ort"] + (["torch"] if not args.no_torch else []) + (
        ["tract"] if args.tract_bin else [])
    label = {"ours": "ours ms", "ort": "ORT ms", "torch": "torch ms", "tract": "tract ms"}
    head = ["config"] + [label[c] for c in cols] + [f"ours/{label[c].split()[0]}"
                                                    for c in cols[1:]]
    print("\nDenseNet-121 224x224 f32, median ms per forward pass (lower is better; "
          "ratio > 1 means ours is slower)\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in table:
        m = row["median_ms"]
        cells = [f"batch {row['batch']}, {row['threads']} thread{'s' if row['threads'] > 1 else ''}"]
        cells += [f"{m[c]:.1f}" for c in cols]
        cells += [f"{m['ours'] / m[c]:.2f}" for c in cols[1:]]
        print("| " + " | ".join(cells) + " |")
    print("\n" + "; ".join(f"b{r['batch']} t{r['threads']}: {r['rounds_kept']}/{r['rounds_run']} "
                           f"rounds kept, {r['iters']} passes each"
                           for r in table))
    if table:
        print(f"parity (max |ours - torch| over all configs): "
              f"{max(r['parity_max_abs_diff']['ours'] for r in table):.3e}")
    if memory:
        m = memory
        print(f"\npeak RSS, DenseNet-121 batch 1, 1 thread (weights file {m['weights_mib']:.1f} MiB): "
              f"ours {m['ours_mib']:.1f} MiB; ORT {m['ort_mib']:.1f} MiB, of which "
              f"{m['python_baseline_mib']:.1f} MiB is Python + numpy + onnxruntime imported "
              f"(ORT minus that: {m['ort_mib'] - m['python_baseline_mib']:.1f} MiB); "
              f"ours/(ORT minus baseline) = "
              f"{m['ours_mib'] / (m['ort_mib'] - m['python_baseline_mib']):.2f}")
    print(f"load average start {info['load_average_start']}, end {info['load_average_end']}")
    print(f"raw timings: {args.workdir / 'results.json'}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
