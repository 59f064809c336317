#!/usr/bin/env python3
"""Reference learning rates for ``densenet_runtime::train::Schedule``.

Writes ``fixtures/schedules/keras_schedules.json``, read by ``tests/schedules.rs``.

* ``cosine``: Keras's ``keras.optimizers.schedules.CosineDecay`` evaluated at every
  optimiser step of a few runs. Each case is described in our terms (base rate, epochs,
  steps per epoch, ``CosineConfig { warmup_epochs, warmup_start, alpha }``) and mapped to
  Keras's arguments as ``Schedule::Cosine`` documents it:
  ``warmup_steps = warmup_epochs * steps``, ``decay_steps = epochs * steps -
  warmup_steps``, ``alpha = alpha``; without warmup ``initial_learning_rate = base``
  and ``warmup_target = None``; with warmup ``initial_learning_rate = warmup_start *
  base`` and ``warmup_target = base``. The rate of step ``s`` (0-based, counted over the
  whole run) is ``schedule(s)``: Keras's optimiser calls it with its ``iterations``
  before incrementing them.
* ``plateau``: Keras's ``keras.callbacks.ReduceLROnPlateau`` driven directly: a tiny
  compiled model (one Dense unit, SGD at the base rate, ``metrics=["accuracy"]``, built
  by one ``evaluate`` so that ``mode="auto"`` can read the metric's direction), then
  ``on_train_begin()`` and ``on_epoch_end(epoch, {monitor: value})`` for each value of a
  fixed sequence, exactly as ``fit`` calls it. ``lrs[e]`` is the optimiser's rate
  during epoch ``e`` (before that epoch's ``on_epoch_end``); ``lrs`` has one more entry
  than ``values``: the rate after the last epoch. The values are float32 numbers, as
  ``EpochStats`` holds them.

Usage (a venv with the pinned keras and jax of tools/requirements.txt, see tools/README.md):

    /work/venv/bin/python tools/make_schedule_fixtures.py   # KERAS_BACKEND=jax is set here
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fixtures", "schedules", "keras_schedules.json")

COSINE = [
    # name, base, epochs, steps, warmup_epochs, warmup_start, alpha
    ("no_warmup", 0.1, 5, 4, 0, 0.0, 0.0),
    ("no_warmup_alpha", 0.05, 4, 3, 0, 0.0, 0.1),
    ("warmup_from_zero", 0.1, 6, 5, 2, 0.0, 0.0),
    ("warmup_alpha", 1e-3, 5, 7, 1, 0.1, 0.01),
    ("one_step_epochs", 0.4, 10, 1, 3, 0.0, 0.2),
]

# Metric sequences: patience, cooldown, the min_lr floor and min_delta each matter.
PLATEAU = [
    {
        "name": "val_loss_patience_2",
        "monitor": "val_loss", "factor": 0.5, "patience": 2, "min_delta": 1e-4,
        "cooldown": 0, "min_lr": 0.0, "base": 0.1,
        "values": [1.0, 0.9, 0.95, 0.92, 0.91, 0.85, 0.86, 0.87, 0.88, 0.80],
    },
    {
        "name": "val_loss_min_delta_and_cooldown",
        "monitor": "val_loss", "factor": 0.1, "patience": 1, "min_delta": 0.01,
        "cooldown": 2, "min_lr": 0.0, "base": 0.1,
        # Improvements smaller than min_delta do not count.
        "values": [2.0, 1.995, 1.99, 1.5, 1.498, 1.497, 1.496, 1.495, 1.2, 1.2, 1.2],
    },
    {
        "name": "val_accuracy_min_lr",
        "monitor": "val_accuracy", "factor": 0.2, "patience": 1, "min_delta": 0.0,
        "cooldown": 0, "min_lr": 0.001, "base": 0.1,
        # Equal values are no improvement (strict comparison); the floor holds.
        "values": [0.5, 0.5, 0.6, 0.6, 0.55, 0.6, 0.59, 0.58, 0.57, 0.56],
    },
    {
        "name": "accuracy_keras_defaults",
        "monitor": "accuracy", "factor": 0.1, "patience": 10, "min_delta": 1e-4,
        "cooldown": 0, "min_lr": 0.0, "base": 0.01,
        "values": [0.1 + 0.01 * i for i in range(5)] + [0.15] * 14,
    },
    {
        "name": "loss_cooldown_1",
        "monitor": "loss", "factor": 0.5, "patience": 1, "min_delta": 0.0,
        "cooldown": 1, "min_lr": 0.0, "base": 1.0,
        "values": [3.0, 3.0, 3.0, 3.0, 2.0, 2.5, 2.5, 2.5, 1.0, 1.0],
    },
]


def f32(x: float) -> float:
    return float(np.float32(x))


def cosine_cases() -> list[dict]:
    cases = []
    for name, base, epochs, steps, warmup_epochs, warmup_start, alpha in COSINE:
        base, warmup_start, alpha = f32(base), f32(warmup_start), f32(alpha)
        warmup_steps = warmup_epochs * steps
        total = epochs * steps
        if warmup_steps == 0:
            schedule = keras.optimizers.schedules.CosineDecay(
                initial_learning_rate=base, decay_steps=total, alpha=alpha
            )
        else:
            schedule = keras.optimizers.schedules.CosineDecay(
                initial_learning_rate=f32(warmup_start * base),
                decay_steps=total - warmup_steps,
                alpha=alpha,
                warmup_target=base,
                warmup_steps=warmup_steps,
            )
        lrs = [float(np.asarray(schedule(s))) for s in range(total)]
        cases.append({
            "name": name, "base": base, "epochs": epochs, "steps": steps,
            "warmup_epochs": warmup_epochs, "warmup_start": warmup_start,
            "alpha": alpha, "lrs": lrs,
        })
    return cases


def plateau_case(case: dict) -> dict:
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(2)])
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=case["base"]),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    # Builds the compiled metrics, whose direction mode="auto" reads.
    model.evaluate(np.zeros((2, 1), "float32"), np.zeros(2, "int32"), verbose=0)
    callback = keras.callbacks.ReduceLROnPlateau(
        monitor=case["monitor"], factor=case["factor"], patience=case["patience"],
        min_delta=case["min_delta"], cooldown=case["cooldown"], min_lr=case["min_lr"],
        mode="auto",
    )
    callback.set_model(model)
    callback.on_train_begin()
    values = [f32(v) for v in case["values"]]
    lrs = []
    for epoch, value in enumerate(values):
        lrs.append(float(np.asarray(model.optimizer.learning_rate)))
        callback.on_epoch_end(epoch, {case["monitor"]: value})
    lrs.append(float(np.asarray(model.optimizer.learning_rate)))
    out = dict(case)
    out["values"] = values
    for key in ("factor", "min_delta", "min_lr", "base"):
        out[key] = f32(case[key])
    out["lrs"] = lrs
    return out


def main() -> int:
    fixture = {
        "generator": "tools/make_schedule_fixtures.py",
        "keras": keras.__version__,
        "backend": keras.backend.backend(),
        "cosine": cosine_cases(),
        "plateau": [plateau_case(c) for c in PLATEAU],
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")
    for case in fixture["plateau"]:
        print(case["name"], case["lrs"])
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
