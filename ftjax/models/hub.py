"""Hugging Face checkpoints <-> (ftjax module, params).

`from_pretrained` takes a bundled asset name ("minilm"), a local checkpoint folder
(config.json + model.safetensors, sharded safetensors, or pytorch_model.bin read with
`weights_only=True`) or a hub id, and returns `(model, params)`. `save_pretrained`
writes the same layout back, so transformers' PyTorch classes load what ftjax saved; it
refuses params that layout cannot hold (LoRA factors, adapters, prefixes, a soft prompt,
a task head) unless the caller names them in `drop` (`ftjax.export` keeps them).

Every ftjax parameter that the family's tensor table names must come from the
checkpoint (a missing or misshapen tensor is an error naming it). Parameters the table
does not name are new by design (a task head, LoRA factors, ...): they are initialised
at random and listed in a log line.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from ftjax.core import partition
from ftjax.data import sources
from ftjax.models import bert, gguf, gguf_tokenizer, gpt2, llama, stacking, t5
from ftjax.models.base import Family, TensorMap

log = logging.getLogger("ftjax.models")

FAMILIES: dict[str, Family] = {
    model_type: family
    for family in (bert.FAMILY, gpt2.FAMILY, llama.FAMILY, t5.FAMILY)
    for model_type in family.model_types
}
Params = dict[str, Any]


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model; the message names the tensor or field."""


# ---------------------------------------------------------------------------- sources


def _model_asset_names() -> frozenset[str]:
    from ftjax.data import assets

    return assets.asset_names("model")


# Exports a run's backbone and returns the folder: set by `ftjax.training.backbone`,
# which sits above the models and knows how to restore a run.
_RUN_EXPORTER: list[Callable[[Path], Path]] = []


def use_run_exporter(export: Callable[[Path], Path]) -> None:
    """Lets a run's workdir stand for a model: `export(path)` gives its backbone folder."""
    _RUN_EXPORTER[:] = [export]


def is_run(path: str | os.PathLike) -> bool:
    """Whether `path` is an ftjax workdir (its run config and checkpoints)."""
    path = Path(path)
    config = path / "config.json"
    if not (config.is_file() and (path / "checkpoints").is_dir()):
        return False
    return {"model", "method", "task"} <= set(json.loads(config.read_text()))


def resolve_checkpoint_dir(name_or_path: str | os.PathLike) -> Path:
    """The local folder holding a checkpoint named by asset name, path or hub id (or the
    path of a .gguf file); an ftjax workdir gives its latest checkpoint's backbone
    (`ftjax.training.backbone`)."""
    name = os.fspath(name_or_path)
    kind = sources.classify_source(name, _model_asset_names)
    if kind == "path":
        path = Path(name).expanduser()
        if is_run(path):  # a workdir: its backbone, exported once
            if not _RUN_EXPORTER:
                raise CheckpointError(
                    f"{path} is an ftjax run's workdir: its backbone is exported by "
                    "ftjax.training (import it first), or name its export folder "
                    "(python -m ftjax.export --workdir ... --format hf)"
                )
            return _RUN_EXPORTER[0](path)
        if not (path / "config.json").is_file() and gguf.find(path) is None:
            raise CheckpointError(
                f"{path} has no config.json (nor one .gguf file): not a checkpoint folder"
            )
        return path
    if kind == "asset":
        from ftjax.data import assets

        return Path(assets.fetch(name))
    sources.require_hub(name, "model")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                name,
                allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "pytorch_model.bin"],
            )
        )
    except Exception as err:  # noqa: BLE001 - every hub failure gets the same advice
        raise sources.SourceError(
            f"could not download model {name!r} from the Hugging Face hub ({err}). Use a "
            "bundled asset name or a local checkpoint folder on machines without the hub."
        ) from err


def read_config(checkpoint_dir: Path) -> tuple[Family, Any]:
    where = checkpoint_dir / "config.json"
    return family_config(json.loads(where.read_text()), str(where))


def family_config(hf: dict[str, Any], where: str) -> tuple[Family, Any]:
    """The family and its config for a config.json dict read from `where`."""
    model_type = hf.get("model_type")
    if model_type not in FAMILIES:
        raise CheckpointError(
            f"{where}: model_type={model_type!r} is not supported; supported: {sorted(FAMILIES)}"
        )
    family = FAMILIES[model_type]
    try:
        return family, family.config_from_hf(hf)
    except KeyError as err:
        raise CheckpointError(
            f"{where} lacks field {err.args[0]!r} needed for model_type={model_type!r}"
        ) from err


def read_checkpoint(source: Path) -> tuple[Family, Any, dict[str, np.ndarray]]:
    """Family, config and float32 tensors of a checkpoint folder or GGUF file."""
    gguf_file = gguf.find(source)
    if gguf_file is not None:
        hf, tensors = gguf.read(gguf_file)
        family, config = family_config(hf, str(gguf_file))
    else:
        family, config = read_config(source)
        tensors = read_tensors(source)
    return family, config, _strip_prefix(tensors, family, family.tensor_maps(config))


def read_tensors(checkpoint_dir: Path) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint folder as float32/int numpy arrays, by HF name."""
    from safetensors.numpy import load_file

    single = checkpoint_dir / "model.safetensors"
    index = checkpoint_dir / "model.safetensors.index.json"
    if single.is_file():
        tensors = load_file(single)
    elif index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        tensors = {k: v for shard in shards for k, v in load_file(checkpoint_dir / shard).items()}
    elif (checkpoint_dir / "pytorch_model.bin").is_file():
        tensors = _read_torch_bin(checkpoint_dir / "pytorch_model.bin")
    else:
        raise CheckpointError(
            f"{checkpoint_dir} holds no model.safetensors, model.safetensors.index.json "
            "or pytorch_model.bin"
        )
    return {name: _as_float32(array) for name, array in tensors.items()}


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as err:
        raise CheckpointError(
            f"{path} is a PyTorch pickle; install torch to read it, or convert the "
            "checkpoint to model.safetensors"
        ) from err
    state = torch.load(path, map_location="cpu", weights_only=True)  # never a free pickle
    return {
        name: tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
        for name, tensor in state.items()
    }


def _as_float32(array: np.ndarray) -> np.ndarray:
    return (
        array.astype(np.float32)
        if np.issubdtype(array.dtype, np.floating) or str(array.dtype) == "bfloat16"
        else array
    )


def _strip_prefix(tensors: dict[str, np.ndarray], family: Family, maps: list[TensorMap]):
    """Picks the prefix ("", "bert.", "transformer.") under which the checkpoint stores
    the base model, and returns the tensors renamed without it."""
    wanted = {m.hf_name for m in maps}

    def hits(prefix: str) -> int:
        return sum(name[len(prefix) :] in wanted for name in tensors if name.startswith(prefix))

    prefix = max(family.hf_prefixes, key=hits)
    return {
        name[len(prefix) :] if name.startswith(prefix) else name: array
        for name, array in tensors.items()
    }


# ---------------------------------------------------------------------------- params


def abstract_params(model: nn.Module, family: Family) -> Params:
    """Shapes and logical axes of every param, without allocating them, at their
    canonical per-layer paths (a scanned model's unrolled twin: `stacking`)."""
    return _abstract(stacking.unscanned(model), family)


def _abstract(model: nn.Module, family: Family) -> Params:
    if not _known_by_config(model):
        return _trace(model, family)
    # Fresh containers around the shared (immutable) leaves: a caller may edit its tree.
    return jax.tree.map(lambda leaf: leaf, _traced(type(model), model.config, family))


def _known_by_config(model: nn.Module) -> bool:
    """Whether the module's class and its hashable config alone define it (every family's
    model does; a module with other fields is traced each time)."""
    if {f.name for f in dataclasses.fields(model)} - {"parent", "name"} != {"config"}:
        return False
    try:
        hash(model.config)
    except TypeError:
        return False
    return True


# A run asks for the same model's shapes ~9 times (the method's mask, the loader, the
# shardings, the optimizer state...); each trace of `init` costs ~65 ms on a tiny model
# and seconds on a 7B one. Configs are frozen dataclasses, and so are families.
@functools.lru_cache(maxsize=32)
def _traced(module: type[nn.Module], config: Any, family: Family) -> Params:
    return _trace(module(config), family)


def _trace(model: nn.Module, family: Family) -> Params:
    variables = jax.eval_shape(
        lambda: model.init(jax.random.key(0), **family.dummy_inputs(model.config))
    )
    return variables["params"]


def init_params(model: nn.Module, rng: jax.Array | int = 0) -> Params:
    """Random canonical params for `model` (tiny test configs, or new parts); plain arrays."""
    family, model = family_of(model), stacking.unscanned(model)
    rng = jax.random.key(rng) if isinstance(rng, int) else rng
    variables = jax.jit(lambda key: model.init(key, **family.dummy_inputs(model.config)))(rng)
    return nn.unbox(variables["params"])


def param_axes(model: nn.Module) -> Params:
    """The logical axis names of every parameter `model` applies (stacked ones with a
    leading "layers" axis when scanned), as a pytree of PartitionSpecs."""
    return nn.get_partition_spec(_abstract(model, family_of(model)))


def stack_depths(model: nn.Module) -> dict[str, int]:
    """{stack path: depth} of the model's layer stacks ("encoder": 12, ...)."""
    return dict(family_of(model).stacks(model.config))


def family_of(model: nn.Module) -> Family:
    for family in FAMILIES.values():
        if isinstance(model, family.module):
            return family
    raise TypeError(f"{type(model).__name__} is not an ftjax model")


def missing_tensor(source: str, m: TensorMap) -> CheckpointError:
    return CheckpointError(f"{source}: tensor {m.hf_name!r} (for ftjax param {m.path}) is missing")


def check_tensor_shape(
    source: str, model: nn.Module, m: TensorMap, hf_shape: tuple[int, ...], shape: tuple
) -> None:
    """Refuses a checkpoint tensor of `hf_shape` that does not make param `m.path`'s
    `shape` once its part is cut and it is transposed."""
    got = tuple(hf_shape)
    if m.part is not None:
        parts = m.part[1]
        got = (*got[:-1], got[-1] // parts) if got and got[-1] % parts == 0 else None
    if got is not None and m.transpose:
        got = got[::-1]
    if got != tuple(shape):
        raise CheckpointError(
            f"{source}: tensor {m.hf_name!r} has shape {tuple(hf_shape)}; "
            f"ftjax param {m.path} needs {tuple(shape)}"
            + (" after transposing" if m.transpose else "")
            + f" (config: {model.config})"
        )


def param_slice(
    m: TensorMap,
    read: Callable[[tuple[slice, ...]], np.ndarray],
    hf_shape: tuple[int, ...],
    index: tuple[slice, ...],
    dtype: Any,
) -> np.ndarray:
    """`index` of the param `m` fills, as a contiguous `dtype` array: `read` is asked for
    the slice of the checkpoint tensor (shape `hf_shape`) that holds it, i.e. the index
    reversed when `m` transposes, moved into `m`'s part of a fused tensor."""
    wanted = tuple(index)[::-1] if m.transpose else tuple(index)
    if m.part is not None:
        width = hf_shape[-1] // m.part[1]
        start, stop, _ = wanted[-1].indices(width)
        offset = m.part[0] * width
        wanted = (*wanted[:-1], slice(offset + start, offset + stop))
    array = read(wanted)
    return np.ascontiguousarray(array.T if m.transpose else array, dtype=dtype)


def log_unused(source: str, model: nn.Module, names: Collection[str], used: set[str]) -> None:
    unused = sorted(set(names) - used)
    if unused:
        log.info(
            "%s: %d checkpoint tensors not used by %s: %s",
            source,
            len(unused),
            type(model).__name__,
            _summarise(unused),
        )


def params_from_tensors(
    model: nn.Module, tensors: dict[str, np.ndarray], source: str, rng: int = 0
) -> Params:
    family = family_of(model)
    maps = {m.path: m for m in family.tensor_maps(model.config)}
    expected = traverse_util.flatten_dict(nn.unbox(abstract_params(model, family)), sep="/")
    loaded = {}
    for path, shape in expected.items():
        if path not in maps:
            continue  # new by design: complete_params fills it in
        m = maps[path]
        if m.hf_name not in tensors:
            raise missing_tensor(source, m)
        array = tensors[m.hf_name]
        check_tensor_shape(source, model, m, array.shape, shape.shape)
        whole = (slice(None),) * len(shape.shape)
        loaded[path] = param_slice(m, array.__getitem__, array.shape, whole, shape.dtype)
    log_unused(source, model, tensors, {maps[p].hf_name for p in loaded})
    params = traverse_util.unflatten_dict(
        {k: jax.numpy.asarray(v) for k, v in loaded.items()}, sep="/"
    )
    return complete_params(model, params, rng)


def initialiser(
    model: nn.Module, have: Collection[str], shardings: Mapping[str, Any] | None = None
) -> tuple[list[str], Callable[[dict[str, jax.Array], jax.Array], dict[str, jax.Array]]]:
    """(the canonical paths of `model`'s params not in `have`, a jit (flat params, key) ->
    {path: random value} for just those). Applying with a mutable "params" collection
    creates only the missing params (their values depend on the key and their path alone),
    so XLA compiles no random-number code for the pretrained ones and copies none of them;
    with `shardings` ({path: sharding}) the new ones are born in theirs, no device holding
    a full replica."""
    family = family_of(model)
    new = [
        path
        for path in traverse_util.flatten_dict(nn.unbox(abstract_params(model, family)), sep="/")
        if path not in have
    ]
    dummy = family.dummy_inputs(model.config)
    canonical = stacking.unscanned(model)

    def fill(params: dict[str, jax.Array], key: jax.Array) -> dict[str, jax.Array]:
        _, variables = canonical.apply(
            {"params": traverse_util.unflatten_dict(params, sep="/")},
            **dummy,
            mutable=["params"],
            rngs={"params": key},
        )
        created = traverse_util.flatten_dict(nn.unbox(variables["params"]), sep="/")
        return {path: created[path] for path in new}

    if shardings is None:
        return new, jax.jit(fill)
    return new, jax.jit(fill, out_shardings={path: shardings[path] for path in new})


def complete_params(
    model: nn.Module,
    params: Params,
    rng: int | jax.Array = 0,
    shardings: Mapping[str, Any] | None = None,
) -> Params:
    """`params` plus random values for every parameter of `model` they lack (a task head,
    method parameters), listed in a log line: nothing is initialised silently. With
    `shardings` ({flat path: sharding}) the new ones are born sharded (`initialiser`)."""
    flat = traverse_util.flatten_dict(dict(params), sep="/")
    new, fill = initialiser(model, flat, shardings)
    if not new:
        return params
    log.info(
        "initialised at random%s (new by design, not in the checkpoint): %s",
        ", sharded" if shardings is not None else "",
        _summarise(new),
    )
    key = jax.random.key(rng) if isinstance(rng, int) else rng
    return traverse_util.unflatten_dict({**flat, **fill(flat, key)}, sep="/")


def _summarise(names: list[str], limit: int = 12) -> str:
    head = ", ".join(names[:limit])
    return head + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def from_pretrained(
    name_or_path: str | os.PathLike, *, dtype: str = "float32", **config_overrides: Any
) -> tuple[nn.Module, Params]:
    """Loads a supported checkpoint: `model, params = from_pretrained("minilm")`.

    `dtype` is the compute dtype (params stay float32); other keyword arguments override
    fields of the family's config (e.g. `hidden_dropout=0.0`). `streaming.from_pretrained`
    loads the same straight into shardings, tensor by tensor.
    """
    checkpoint_dir = resolve_checkpoint_dir(name_or_path)
    family, config, tensors = read_checkpoint(checkpoint_dir)
    model = checkpoint_model(family, config, tensors, dtype=dtype, **config_overrides)
    return model, params_from_tensors(model, tensors, str(checkpoint_dir))


def checkpoint_model(
    family: Family, config: Any, tensors: Mapping[str, Any], **overrides: Any
) -> nn.Module:
    """The module a checkpoint's config and tensors describe, with config `overrides`."""
    config = family.fit_to_checkpoint(config, tensors)
    return family.module(override_config(config, **overrides))


def override_config(config: Any, **overrides: Any) -> Any:
    fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"unknown {type(config).__name__} field(s) {unknown}; known: {sorted(fields)}"
        )
    return dataclasses.replace(config, **overrides)


# ---------------------------------------------------------------------------- saving


class UnsavedParamsError(CheckpointError):
    """Params a transformers checkpoint has no tensor for; the message names them and the
    export that keeps them."""


# What each kind of unmapped parameter is, and the export that keeps it (`partition.kind_of`).
KEEPS = {
    "lora": "unmerged LoRA factors: merge them first (ftjax.methods.merge_lora), or keep "
    "them as an adapter with `python -m ftjax.export --workdir W --format peft` (or "
    "`--format hf`, which merges them)",
    "head": "the task head: `python -m ftjax.export --workdir W --format hf` writes it as "
    "the matching *For<Task> class, `--format peft` under modules_to_save",
    "adapter": "bottleneck adapters: no transformers or PEFT equivalent; `python -m "
    "ftjax.export --workdir W --format ftjax`",
    "prefix": "prefix key/values: `python -m ftjax.export --workdir W --format peft` "
    "where PEFT's prefix tuning computes the same, else `--format ftjax`",
    "prompt": "a soft prompt: `python -m ftjax.export --workdir W --format peft` where "
    "PEFT's prompt tuning computes the same, else `--format ftjax`",
}


def unsaved_message(paths: list[str]) -> str:
    """Names each kind of parameter a plain checkpoint would lose and how to keep it."""
    kinds: dict[str, list[str]] = defaultdict(list)
    for path in paths:
        kinds[partition.kind_of(path)].append(path)
    lines = [
        f"- {KEEPS.get(kind, 'parameters with no Hugging Face tensor')} ({_summarise(found, 3)})"
        for kind, found in kinds.items()
    ]
    return (
        f"save_pretrained would silently drop {len(paths)} trained parameter(s):\n"
        + "\n".join(lines)
        + "\nTo leave them out on purpose, pass drop=(regex, ...) naming them "
        "(e.g. drop=('head/.*',) for the backbone alone)."
    )


def params_to_tensors(
    model: nn.Module, params: Params, drop: Collection[str] = ()
) -> dict[str, np.ndarray]:
    """ftjax params -> HF-named numpy tensors (fused tensors reassembled).

    A param the family's tensor table does not name (LoRA factors, adapters, prefixes, a
    soft prompt, a task head) is an `UnsavedParamsError`, unless one of the regexes in
    `drop` fully matches its path: a caller leaves params out only by naming them."""
    family = family_of(model)
    flat = traverse_util.flatten_dict(nn.unbox(params), sep="/")
    pieces: dict[str, list[tuple[int, np.ndarray]]] = defaultdict(list)
    mapped = set()
    for m in family.tensor_maps(model.config):
        if m.path not in flat:
            raise CheckpointError(f"param {m.path} is missing from the params being saved")
        array = np.asarray(flat[m.path], dtype=np.float32)
        mapped.add(m.path)
        pieces[m.hf_name].append((m.part[0] if m.part else 0, array))
    extra = sorted(set(flat) - mapped)
    dropped = [p for p in extra if any(re.fullmatch(d, p) for d in drop)]
    lost = [p for p in extra if p not in dropped]
    if lost:
        raise UnsavedParamsError(unsaved_message(lost))
    if dropped:
        log.info("left out as the caller asked (drop=%s): %s", list(drop), _summarise(dropped))
    tensors = {}
    for m in family.tensor_maps(model.config):
        if m.hf_name in tensors:
            continue
        parts = [array for _, array in sorted(pieces[m.hf_name], key=lambda p: p[0])]
        array = np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]
        tensors[m.hf_name] = np.ascontiguousarray(array.T if m.transpose else array)
    return tensors


def save_pretrained(
    model: nn.Module, params: Params, out_dir: str | os.PathLike, drop: Collection[str] = ()
) -> Path:
    """Writes config.json + model.safetensors in the Hugging Face layout; refuses params
    it has no tensor for unless `drop` names them (see `params_to_tensors`)."""
    from safetensors.numpy import save_file

    family = family_of(model)
    tensors = params_to_tensors(model, params, drop)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {family.save_prefix + k: v for k, v in tensors.items()},
        out / "model.safetensors",
        metadata={"format": "pt"},
    )
    (out / "config.json").write_text(json.dumps(model.config.to_hf(), indent=2) + "\n")
    return out


def _named_tokenizer_class(source: Path):
    """The class a local checkpoint's tokenizer_config.json names, when transformers has
    it; else None (AutoTokenizer decides). AutoTokenizer's own lookup imports the model
    configurations, and with them torch wherever it is installed: ~2 s per process."""
    import transformers

    path = Path(source) / "tokenizer_config.json"
    if not path.is_file():
        return None
    name = json.loads(path.read_text()).get("tokenizer_class")
    return getattr(transformers, name, None) if isinstance(name, str) else None


def load_tokenizer(name_or_path: str | os.PathLike):
    """The tokenizer stored with a checkpoint (asset name, folder or hub id); a GGUF
    file's is converted once and then read from the cache (`gguf_tokenizer`)."""
    source = resolve_checkpoint_dir(name_or_path)
    gguf_file = gguf.find(source)
    if gguf_file is None:
        tokenizer = _folder_tokenizer(source)
    elif (converted := gguf_tokenizer.cache_folder(gguf_file)).is_dir():
        tokenizer = _folder_tokenizer(converted)
    else:
        tokenizer = gguf_tokenizer.convert(gguf_file)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # GPT-2 ships without a pad token; padded positions are masked anyway.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _folder_tokenizer(folder: Path):
    named = _named_tokenizer_class(folder)
    if named is not None:
        return named.from_pretrained(str(folder))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))
