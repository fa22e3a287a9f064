"""Device meshes and how params and batches are laid out on them.

Mesh axes: `data` (batch), `fsdp` (batch, and params sharded ZeRO-3 style over their
`embed` axis), `tensor` (heads / mlp / vocab: Megatron-style tensor parallelism). Every
parameter carries logical axis names (ftjax.models.layers); `RULES` maps them to mesh
axes. A dimension that a mesh axis does not divide, or a mesh axis already used by an
earlier dimension of the same parameter, stays replicated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ftjax.models import hub, stacking
from ftjax.models.layers import BATCH_MESH_AXES

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = BATCH_MESH_AXES  # the models constrain activations to them

# logical axis -> mesh axis; names not listed (norm, position, lora, prefix, ...) replicate.
RULES: dict[str, str] = {
    "embed": "fsdp",
    "vocab": "tensor",
    "joined_heads": "tensor",
    "heads": "tensor",
    "mlp": "tensor",
}


class MeshError(ValueError):
    """A mesh shape that the devices or the batch cannot satisfy."""


def mesh_shape(requested: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Sizes for (data, fsdp, tensor); one -1 takes whatever the others leave."""
    sizes = {axis: int(requested.get(axis, 1)) for axis in MESH_AXES}
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        raise MeshError(f"config.mesh: only one axis may be -1, got {free}")
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if any(s == 0 or s < -1 for s in sizes.values()) or num_devices % fixed:
        raise MeshError(f"config.mesh {sizes} does not fit {num_devices} devices")
    if free:
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes.values()) != num_devices:
        raise MeshError(
            f"config.mesh {sizes} uses {math.prod(sizes.values())} devices; there are "
            f"{num_devices} (set one axis to -1 to fill)"
        )
    return sizes


def make_mesh(requested: Mapping[str, int], devices: Sequence | None = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_shape(requested, len(devices))
    grid = np.asarray(devices).reshape(tuple(sizes[a] for a in MESH_AXES))
    return Mesh(grid, MESH_AXES)


def spec_for(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    used: set[str] = set()
    out = []
    for name, dim in zip(axes, shape, strict=True):
        target = RULES.get(name) if name else None
        if (
            target
            and target not in used
            and dim % mesh.shape[target] == 0
            and (mesh.shape[target] > 1)
        ):
            used.add(target)
            out.append(target)
        else:
            out.append(None)
    return PartitionSpec(*out)


def param_shardings(
    axes: Mapping[str, Sequence[str]], shapes: Mapping[str, tuple], mesh: Mesh
) -> dict[str, NamedSharding]:
    """{path: NamedSharding} for flat params, from their logical axes and shapes."""
    return {path: NamedSharding(mesh, spec_for(axes[path], shapes[path], mesh)) for path in shapes}


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, ndim: int, micro_batches: bool = False) -> NamedSharding:
    """Example axis over data x fsdp (after the micro-batch axis, when accumulating
    gradients), the rest replicated."""
    lead = (None,) if micro_batches else ()
    return NamedSharding(mesh, PartitionSpec(*lead, BATCH_AXES, *([None] * (ndim - 1 - len(lead)))))


def batch_divisor(mesh: Mesh) -> int:
    return mesh.shape["data"] * mesh.shape["fsdp"]


def global_batch(
    host: Mapping[str, np.ndarray], mesh: Mesh, micro_batches: bool = False
) -> dict[str, jax.Array]:
    """The whole batch, as every process holds it, placed by its batch sharding.

    Every process passes the same host batch (the loader is deterministic); each cuts
    from it the rows its own devices' shards need. Which rows those are follows from the
    sharding alone, so this is right however the mesh's batch axes fall across processes:
    with tensor parallelism across hosts, every process supplies every row.
    """
    return {
        key: place(value, batch_sharding(mesh, value.ndim, micro_batches))
        for key, value in host.items()
    }


def place(host: np.ndarray, target: NamedSharding) -> jax.Array:
    """A host array (the same on every process) as a global array laid out as `target`:
    each process hands over only the slices its own devices hold."""
    host = np.asarray(host)
    return jax.make_array_from_callback(host.shape, target, lambda index: host[index])


def model_shardings(mesh: Mesh) -> Callable[[Any], dict[str, NamedSharding]]:
    """model -> {flat path: NamedSharding} of its params by the rules: what
    `models.streaming.from_pretrained(name, shardings)` takes (the model exists only once the
    checkpoint's config is read)."""

    def shardings(model: Any) -> dict[str, NamedSharding]:
        flat = lambda tree: traverse_util.flatten_dict(tree, sep="/")  # noqa: E731
        shapes = flat(nn.unbox(hub.abstract_params(model, hub.family_of(model))))
        # The loader fills canonical (per-layer) params, whatever layout the steps use.
        canonical = stacking.unscanned(model)
        axes = {path: tuple(spec) for path, spec in flat(hub.param_axes(canonical)).items()}
        return param_shardings(axes, {p: s.shape for p, s in shapes.items()}, mesh)

    return shardings
