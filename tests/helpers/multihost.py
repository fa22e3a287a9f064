"""One process of a two-process (multi-host) run on 127.0.0.1, two CPU devices each.

    python -m tests.helpers.multihost MODEL_DIR DATA_DIR PROCESS_ID PORT

Trains a few steps of the tiny model on each layout in `LAYOUTS`, then evaluates: data
parallel across the processes, and two with the tensor axis across them (there every
process must feed every row of every batch). Then each process runs one of the one-device
references on one of its own devices (the references differ only in grad_accum; the
two run in parallel). Prints JSON lines: {layout: {"losses", "eval_loss", "accuracy"}} (process 0)
and {"reference": {grad_accum: {...}}} (both).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax

# name -> (mesh, grad_accum, devices as (process, local device) in mesh order)
LAYOUTS = {
    # Data parallel across the processes: each feeds half the rows.
    "data2": ({"data": 2}, 1, [(0, 0), (1, 0)]),
    # One device per process, tensor parallel across them: both processes hold all rows.
    "tensor2": ({"data": 1, "tensor": 2}, 1, [(0, 0), (1, 0)]),
    # data=2 inside each process, tensor=2 across; micro-batches take the same path.
    "data2_tensor2_accum2": ({"data": 2, "tensor": 2}, 2, [(0, 0), (1, 0), (0, 1), (1, 1)]),
}
STEPS = 3


def train(config, devices) -> dict:
    from ftjax.training.experiment import build
    from ftjax.training.state import initial_state
    from ftjax.training.steps import Steps

    exp = build(config, devices=devices)
    state, shardings = initial_state(exp)
    steps = Steps(exp, shardings)
    losses = []
    for i, batch in enumerate(exp.loader.train_batches(0, 0)):
        if i == STEPS:
            break
        state, metrics = steps.train(state, batch, jax.random.fold_in(jax.random.PRNGKey(0), i))
        losses.append(float(metrics["loss"]))
    evaluated = steps.evaluate(state, "validation")
    return {"losses": losses, "eval_loss": evaluated["loss"], "accuracy": evaluated["accuracy"]}


def device_at(process: int, local: int):
    return [d for d in jax.devices() if d.process_index == process][local]


def layout_config(model_dir: str, data_dir: str, mesh: dict, accumulate: int):
    from tests.helpers.tiny import tiny_config

    # Full fine-tuning: trainable params and optimizer state shard over `tensor` too.
    # max_length 16: one bucketed length, so one compiled train step per layout.
    config = tiny_config(Path(model_dir), Path(data_dir), "full", prng_impl="rbg")
    config.data.max_length = 16
    config.optimizer.grad_accum = accumulate
    config.mesh.update(data=1, fsdp=1, tensor=1)
    config.mesh.update(mesh)
    return config


def main() -> None:
    model_dir, data_dir, process_id, port = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    out = {}
    for name, (mesh, accumulate, places) in LAYOUTS.items():
        config = layout_config(model_dir, data_dir, mesh, accumulate)
        out[name] = train(config, [device_at(*p) for p in places])
    if process_id == 0:
        print(json.dumps(out), flush=True)
    reference = {}
    for accumulate in sorted({a for _, a, _ in LAYOUTS.values()})[process_id::2]:
        config = layout_config(model_dir, data_dir, {}, accumulate)
        reference[accumulate] = train(config, jax.local_devices()[:1])
    print(json.dumps({"reference": reference}), flush=True)


if __name__ == "__main__":
    main()
