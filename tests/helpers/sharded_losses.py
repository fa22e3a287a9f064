"""Runs a few train steps of the tiny model on several meshes; prints losses, parameter
shardings and the first step's FLOPs (as counted for MFU) as JSON.

Run with XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/test_trainer.py does).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax

from ftjax.training.experiment import build
from ftjax.training.state import initial_state
from ftjax.training.steps import Steps
from tests.helpers.tiny import tiny_config

MESHES = {"1": {"data": 1}, "data8": {"data": 8}, "2x2x2": {"data": 2, "fsdp": 2, "tensor": 2}}


def losses(model_dir, data_dir, method, mesh_name, steps=3):
    config = tiny_config(Path(model_dir), Path(data_dir), method)
    config.mesh.update(data=1, fsdp=1, tensor=1)
    config.mesh.update(**MESHES[mesh_name])
    devices = jax.devices()[: 1 if mesh_name == "1" else 8]
    exp = build(config, devices=devices)
    state, shardings = initial_state(exp)
    train = Steps(exp, shardings)
    out = []
    for i, batch in enumerate(exp.loader.train_batches(0, 0)):
        if i == steps:
            break
        rng = jax.random.fold_in(jax.random.PRNGKey(0), i)
        if i == 0:  # before the step: it donates the state
            flops = train.step_flops(state, batch, rng)
        state, metrics = train.train(state, batch, rng)
        out.append(float(metrics["loss"]))
    specs = {
        p: list(a.sharding.spec) + [None] * (a.ndim - len(a.sharding.spec))
        for p, a in {**state.trainable, **state.frozen}.items()
    }
    return {"losses": out, "specs": specs, "flops": flops}


if __name__ == "__main__":
    model_dir, data_dir, method, *meshes = sys.argv[1:]
    print(json.dumps({m: losses(model_dir, data_dir, method, m) for m in meshes or MESHES}))
