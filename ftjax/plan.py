"""What a train step needs per device, from shapes alone (no weights, no data).

    python -m ftjax.plan --config configs/lm.py:model=llama2-7b-shape,method=lora \\
        --mesh fsdp=64 --remat full --scan_layers --config.data.batch_size=64 \\
        --config.data.max_length=2048 --config.model.dtype=bfloat16 [--check]

Prints per-device bytes (params trainable / frozen by dtype, optimizer state, gradients,
the batch, saved activations and the peak working set; `ftjax.planning.memory` says
how each is estimated) and the step's FLOPs, for any config.json (`model=` a bundled
shape: llama2-7b-shape, bert-large-uncased-shape, t5-v1_1-xl-shape; a config.json
file; or any model source). `--check` compiles the same step ahead of time on abstract
params over a simulated mesh of CPU devices and prints XLA's `memory_analysis()` next
to the plan. `--target tpu` / `gpu` plans for an accelerator (default: this backend).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from ftjax import cli, configs

DEFAULT_CONFIG = str(Path(configs.__file__).parent / "lm.py")
DEVICE_COUNT = "--xla_force_host_platform_device_count"
CONFIG = config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "experiment config file")
MESH = flags.DEFINE_string("mesh", "", "mesh axes, e.g. fsdp=64 or data=2,fsdp=4 (others 1)")
REMAT = flags.DEFINE_string("remat", None, "config.model.remat: none, full, dots, dots_no_batch")
SCAN = flags.DEFINE_boolean("scan_layers", None, "config.model.scan_layers")
PARAM_DTYPE = flags.DEFINE_string("param_dtype", None, "config.model.param_dtype")
TARGET = flags.DEFINE_enum("target", None, ["cpu", "tpu", "gpu"], "backend to plan for")
CHECK = flags.DEFINE_boolean("check", False, "compile on a simulated mesh, compare with XLA")
CHIPS = {"16 GiB (TPU v4 / v5e)": 16 * 2**30, "80 GiB (H100)": 80 * 2**30}


def mesh_axes(text: str) -> dict[str, int]:
    """ "fsdp=64" -> {"data": 1, "fsdp": 64, "tensor": 1}."""
    from ftjax.training.config import parse_arg
    from ftjax.training.sharding import MESH_AXES

    sizes = {axis: 1 for axis in MESH_AXES}
    for axis, value in parse_arg(text).items():
        if axis not in sizes or not value.isdigit() or int(value) < 1:
            raise ValueError(f"--mesh {text!r}: axes are {', '.join(MESH_AXES)}, sizes >= 1")
        sizes[axis] = int(value)
    return sizes


def set_config(config, mesh: dict[str, int] | None) -> None:
    """The flags' values into the config (a field this version lacks is an error)."""
    for field, value in (
        ("remat", REMAT.value),
        ("scan_layers", SCAN.value),
        ("param_dtype", PARAM_DTYPE.value),
    ):
        if value is None:
            continue
        if field not in config.model:
            raise ValueError(f"--{field}: config.model has no field {field!r} in this version")
        config.model[field] = value
    if mesh:
        config.mesh.update(mesh)


def report(command: str, setup, plan, xla=None, xla_flops=None) -> str:
    """The plan as text: the run, the per-device table, FLOPs, what fits."""
    from ftjax.planning import abstract
    from ftjax.planning.memory import gib

    cfg, mesh = setup.model.config, setup.mesh
    trainable = sum(math.prod(v.shape) for v in setup.trainable.values())
    frozen = sum(math.prod(v.shape) for v in setup.frozen.values())
    rows = setup.config.data.batch_size
    lengths = ", ".join(f"{group} {n}" for group, n in setup.task.group_limits().items())
    devices = math.prod(mesh.shape.values())
    lines = [
        f"plan: {command}",
        f"  {type(setup.model).__name__}, {trainable + frozen:,} params, {trainable:,} trainable "
        f"({setup.method.name}); task {setup.task.name}",
        f"  mesh {' '.join(f'{k}={v}' for k, v in mesh.shape.items())} ({devices} devices); "
        f"batch {rows} x ({lengths}); compute {cfg.dtype}, frozen params "
        f"{cfg.param_dtype}, remat {cfg.remat}, scan_layers {cfg.scan_layers}; "
        f"target {plan.target}",
        "",
        f"  {'per device':<36} {'planned':>13}" + (f" {'XLA':>13}" if xla else ""),
    ]
    for name, value in plan.parts.items():
        lines.append(f"  {name:<36} {gib(value):>13}")
    for name, value in sorted(plan.params_by_dtype.items()):
        lines.append(f"    {'params ' + name:<34} {gib(value):>13}")
    total = f"  {'total':<36} {gib(plan.total):>13}"
    if xla:
        total += f" {gib(xla['total']):>13}   planned / XLA {plan.total / xla['total']:.3f}"
        lines.append(total)
        lines.append(
            "  XLA memory_analysis: "
            + ", ".join(f"{k} {gib(xla[k])}" for k in abstract.XLA_FIELDS)
            + " (total = argument + output - alias + temp)"
        )
    else:
        lines.append(total)
    f = plan.flops
    lines += [
        "",
        f"  FLOPs per step (analytic, whole batch): forward {f['forward']:.3e}, backward "
        f"{f['backward']:.3e}, remat recompute {f['remat recompute']:.3e}, total {f['total']:.3e}",
    ]
    if xla_flops is not None:
        lines.append(f"  FLOPs per step (XLA cost analysis of the lowered step): {xla_flops:.3e}")
    fits = ", ".join(
        f"{chip}: {'fits' if plan.total <= bytes_ else 'does not fit'}"
        for chip, bytes_ in CHIPS.items()
    )
    lines += ["", f"  {fits} (planned total against the chip's memory)"]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    cli.set_up_logging()
    mesh = mesh_axes(MESH.value) if MESH.value else None
    devices = math.prod(mesh.values()) if mesh else 1
    # Simulated CPU devices for the mesh: set before JAX starts its CPU backend.
    xla_flags = os.environ.get("XLA_FLAGS", "")
    if DEVICE_COUNT not in xla_flags:
        os.environ["XLA_FLAGS"] = f"{xla_flags} {DEVICE_COUNT}={devices}".strip()
    import jax

    from ftjax.planning import abstract, memory

    def run() -> None:
        config = CONFIG.value
        set_config(config, mesh)
        cpu = jax.devices("cpu")
        if len(cpu) < devices:
            raise abstract.PlanError(
                f"--mesh {MESH.value}: {devices} devices, but this process has {len(cpu)} CPU "
                f"devices (XLA_FLAGS sets {DEVICE_COUNT}; unset it or raise it)"
            )
        setup = abstract.build(config, devices=cpu[:devices])
        backend = jax.default_backend()
        target = TARGET.value or (backend if backend in ("cpu", "tpu") else "gpu")
        plan = memory.estimate(setup, memory.TARGETS[target])
        xla = xla_flops = None
        if CHECK.value:
            xla = abstract.xla_memory(abstract.compile_step(setup))
            xla_flops = abstract.xla_flops(setup)
        print(report(" ".join(sys.argv[1:]), setup, plan, xla, xla_flops))

    cli.reporting_user_errors(run)


if __name__ == "__main__":
    app.run(main)
