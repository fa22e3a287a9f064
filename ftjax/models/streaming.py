"""Checkpoints read tensor by tensor straight into their shardings; params born sharded.

`from_pretrained(name, shardings)` (below) lands here. Every parameter the family's tensor
table names becomes a global array through `jax.make_array_from_callback`: for each of
this process's devices the callback reads only the slice of the checkpoint tensor that
the device's shard holds (safetensors' `get_slice`; a GGUF file's memory-mapped rows,
dequantised and un-permuted row by row), transposed and cut out of fused tensors by the
same `TensorMap` arithmetic as the host path (`hub.param_slice`). One parameter is placed
at a time, so host memory peaks near one tensor (the distinct shards of the one being
placed), never the whole model. The parameters the table does not name (a task head,
LoRA factors, every param of a random model) come out of one jit whose out_shardings are
theirs (`hub.complete_params` with shardings): no device holds a full replica of them
either.

`pytorch_model.bin` is a pickle without random access: it is read whole (a log line says
so) and then placed the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util
from safetensors import safe_open

from ftjax.models import gguf, hub
from ftjax.models.base import Family, TensorMap

log = logging.getLogger("ftjax.models")

Index = tuple[slice, ...]


class Tensors(Mapping[str, np.ndarray]):
    """A checkpoint's tensors by name, read only when asked: `read(name, index)` gives a
    slice, `tensors[name]` a whole tensor (what `Family.fit_to_checkpoint` may look at).
    Values are float32 (or the stored integer type), as `hub.read_tensors` gives them."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        self._shapes = shapes
        self._stored = {name: name for name in shapes}  # name -> the file's own name

    def _read(self, stored: str, index: Index) -> np.ndarray:
        raise NotImplementedError

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[self._stored[name]]

    def read(self, name: str, index: Index) -> np.ndarray:
        return hub._as_float32(self._read(self._stored[name], tuple(index)))

    def strip_prefix(self, family: Family, maps: list[TensorMap]) -> None:
        """Names without the prefix the base model is stored under (`hub._strip_prefix`)."""
        self._stored = hub._strip_prefix(self._stored, family, maps)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._stored:
            raise KeyError(name)
        return self.read(name, (slice(None),) * len(self.shape(name)))

    def __contains__(self, name: object) -> bool:  # Mapping's default would read it
        return name in self._stored

    def __iter__(self) -> Iterator[str]:
        return iter(self._stored)

    def __len__(self) -> int:
        return len(self._stored)


class SafetensorsTensors(Tensors):
    """The tensors of one or several .safetensors files (a sharded checkpoint)."""

    def __init__(self, files: Sequence[Path]):
        self._files: dict[str, Path] = {}
        shapes = {}
        for file in files:
            with safe_open(file, framework="numpy") as f:
                for name in f.keys():
                    self._files[name] = file
                    shapes[name] = tuple(f.get_slice(name).get_shape())
        super().__init__(shapes)

    def _read(self, stored: str, index: Index) -> np.ndarray:
        # Opened per read: the file's memory map closes with it, so the pages a slice
        # touched do not stay resident in this process for the rest of the load.
        with safe_open(self._files[stored], framework="numpy") as f:
            return f.get_slice(stored)[index]


class GGUFTensors(Tensors):
    """The tensors of a GGUF file under transformers' names (`gguf.tensor_table`)."""

    def __init__(self, path: Path, hf: dict[str, Any], table: dict[str, Any]):
        self._path, self._hf, self._table = path, hf, table
        super().__init__({name: gguf.shape(tensor) for name, tensor in table.items()})

    def _read(self, stored: str, index: Index) -> np.ndarray:
        tensor = self._table[stored]
        rows = gguf.read_tensor(self._path, self._hf, stored, tensor, index[0])
        gguf.drop_pages(tensor)
        return rows[(slice(None), *index[1:])]


class HostTensors(Tensors):
    """Tensors already in host memory (a PyTorch pickle, which has no random access)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self._arrays = arrays
        super().__init__({name: tuple(array.shape) for name, array in arrays.items()})

    def _read(self, stored: str, index: Index) -> np.ndarray:
        return self._arrays[stored][index]


def folder_tensors(checkpoint_dir: Path) -> Tensors:
    """The tensors of a checkpoint folder, unread (`hub.read_tensors` reads them all)."""
    single = checkpoint_dir / "model.safetensors"
    index = checkpoint_dir / "model.safetensors.index.json"
    if single.is_file():
        return SafetensorsTensors([single])
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return SafetensorsTensors([checkpoint_dir / shard for shard in shards])
    if (checkpoint_dir / "pytorch_model.bin").is_file():
        log.info(
            "%s: pytorch_model.bin has no random access: reading it whole into host memory, "
            "then placing it tensor by tensor (convert it to model.safetensors to stream it)",
            checkpoint_dir,
        )
    return HostTensors(hub.read_tensors(checkpoint_dir))  # raises when there is nothing


def open_checkpoint(source: Path) -> tuple[Family, Any, Tensors]:
    """Family, config and the unread tensors of a checkpoint folder or GGUF file (the
    lazy counterpart of `hub.read_checkpoint`)."""
    gguf_file = gguf.find(source)
    if gguf_file is not None:
        hf, table = gguf.tensor_table(gguf_file)
        family, config = hub.family_config(hf, str(gguf_file))
        tensors: Tensors = GGUFTensors(gguf_file, hf, table)
    else:
        family, config = hub.read_config(source)
        tensors = folder_tensors(source)
    tensors.strip_prefix(family, family.tensor_maps(config))
    return family, config, tensors


def _abstract(model: nn.Module) -> dict[str, jax.ShapeDtypeStruct]:
    abstract = hub.abstract_params(model, hub.family_of(model))
    return traverse_util.flatten_dict(nn.unbox(abstract), sep="/")


def load_params(
    model: nn.Module,
    tensors: Tensors,
    shardings: Mapping[str, jax.sharding.Sharding],
    source: str,
    rng: int | jax.Array = 0,
) -> dict[str, jax.Array]:
    """{flat param path: global array in `shardings[path]`} for every param of `model`:
    the checkpoint's tensors read shard by shard, one parameter at a time; the params the
    tensor table does not name initialised sharded (`hub.complete_params`). A missing or
    misshapen tensor is refused, naming it and the param, before any tensor is read."""
    expected = _abstract(model)
    lacking = sorted(set(expected) - set(shardings))
    if lacking:
        raise ValueError(f"no sharding given for param(s) {hub._summarise(lacking)}")
    maps = {m.path: m for m in hub.family_of(model).tensor_maps(model.config)}
    strangers = sorted(set(maps) - set(expected))
    if strangers:  # else their tensors' params would be initialised at random instead
        raise hub.CheckpointError(
            f"{source}: the tensor table names params {type(model).__name__} does not have "
            f"({hub._summarise(strangers, 3)}): a scanned layer stack (model.scan_layers) "
            "is not loaded shard by shard yet; load it unscanned"
        )
    mapped = {path: maps[path] for path in expected if path in maps}
    for path, m in mapped.items():
        if m.hf_name not in tensors:
            raise hub.missing_tensor(source, m)
        hub.check_tensor_shape(source, model, m, tensors.shape(m.hf_name), expected[path].shape)
    # The parts of a fused tensor (GPT-2's c_attn) one after the other: its file pages
    # are touched once, and a spy sees each tensor read in one stretch.
    order: dict[str, int] = {}
    for m in mapped.values():
        order.setdefault(m.hf_name, len(order))
    loaded = {
        path: _place(tensors, m, expected[path], shardings[path])
        for path, m in sorted(mapped.items(), key=lambda item: order[item[1].hf_name])
    }
    hub.log_unused(source, model, tensors, {m.hf_name for m in mapped.values()})
    nested = traverse_util.unflatten_dict(loaded, sep="/")
    flat = traverse_util.flatten_dict(hub.complete_params(model, nested, rng, shardings), sep="/")
    return {path: flat[path] for path in expected}


def _place(
    tensors: Tensors, m: TensorMap, aval: jax.ShapeDtypeStruct, sharding: jax.sharding.Sharding
) -> jax.Array:
    hf_shape = tensors.shape(m.hf_name)
    shards: dict[tuple, np.ndarray] = {}  # devices that hold the same slice share one read

    def shard(index: Index) -> np.ndarray:
        key = tuple(s.indices(d) for s, d in zip(index, aval.shape, strict=True))
        if key not in shards:
            read = lambda wanted: tensors.read(m.hf_name, wanted)  # noqa: E731
            shards[key] = hub.param_slice(m, read, hf_shape, index, aval.dtype)
        return shards[key]

    return jax.make_array_from_callback(aval.shape, sharding, shard)


# Where each param of a model goes: {path: sharding}, or a function of the model that
# says so (the model exists only once the checkpoint's config is read).
Shardings = Mapping[str, jax.sharding.Sharding] | Callable[[nn.Module], Mapping[str, Any]]


def from_pretrained(
    name_or_path: str | Path,
    shardings: Shardings,
    *,
    dtype: str = "float32",
    **config_overrides: Any,
) -> tuple[nn.Module, dict]:
    """`hub.from_pretrained` with params as global arrays in `shardings` ({flat param
    path: sharding}, or a function of the model giving them), read tensor by tensor and
    shard by shard (new ones initialised sharded): the host never holds the whole model."""
    checkpoint_dir = hub.resolve_checkpoint_dir(name_or_path)
    family, config, tensors = open_checkpoint(checkpoint_dir)
    model = hub.checkpoint_model(family, config, tensors, dtype=dtype, **config_overrides)
    wanted = shardings(model) if callable(shardings) else shardings
    flat = load_params(model, tensors, wanted, str(checkpoint_dir))
    return model, traverse_util.unflatten_dict(flat, sep="/")
