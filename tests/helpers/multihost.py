"""One process of a two-process (multi-host) run on 127.0.0.1, or the one-process reference.

    python -m tests.helpers.multihost MODEL_DIR DATA_DIR PROCESS_ID PORT   # PROCESS_ID -1: alone

Prints the losses of the first train steps as JSON (process 0 / the reference only).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax


def main() -> None:
    model_dir, data_dir, process_id, port = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    if process_id >= 0:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    from ftjax.experiment import build
    from ftjax.state import initial_state
    from ftjax.steps import Steps
    from tests.helpers.tiny import tiny_config

    config = tiny_config(Path(model_dir), Path(data_dir), "lora")
    config.mesh.update(data=-1, fsdp=1, tensor=1)
    exp = build(config)
    assert jax.device_count() == (2 if process_id >= 0 else 1)
    state, shardings = initial_state(exp)
    steps = Steps(exp, shardings)
    losses = []
    for i, batch in enumerate(exp.loader.train_batches(0, 0)):
        if i == 3:
            break
        state, metrics = steps.train(state, batch, jax.random.fold_in(jax.random.PRNGKey(0), i))
        losses.append(float(metrics["loss"]))
    accuracy = steps.evaluate(state, "validation")["accuracy"]
    if process_id <= 0:
        print(json.dumps({"losses": losses, "accuracy": accuracy}))


if __name__ == "__main__":
    main()
