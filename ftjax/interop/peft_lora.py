"""ftjax LoRA factors <-> PEFT's LoRA tensors, exactly.

ftjax adds `x @ lora_a @ lora_b * alpha / r` in each targeted `Dense` (kernels `(in,
out)`); PEFT adds `lora_B(lora_A(x)) * lora_alpha / r` in each targeted torch module,
with `lora_A.weight` `[r, in]` and `lora_B.weight` `[out, r]`. Where ftjax splits a fused
transformers module (GPT-2's `c_attn` holds query, key and value), the parts map to one
PEFT module:

- every part targeted with the same `lora_a` (what an import produces): one rank-r
  factor pair, `lora_B` the parts' `lora_b` stacked along the output;
- otherwise (ftjax trained query and value separately): a rank `k*r` pair, `lora_A` the
  parts' factors stacked, `lora_B` block-diagonal (zeros for the untargeted key), with
  `alpha` scaled by k too, so `alpha / r` (the scaling) is unchanged.

Both compute exactly what ftjax computes. Import splits a fused module's `lora_B` into
its parts and gives each part the shared `lora_A`, so PEFT -> ftjax -> PEFT returns the
same tensors bit for bit.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np

from ftjax.interop.hf_classes import ExportError, HfClass
from ftjax.models import hub
from ftjax.models.base import PeftConfig, TensorMap


@dataclasses.dataclass
class LoraModule:
    """One PEFT LoRA module: its name in the transformers class and its tensors."""

    name: str
    lora_a: np.ndarray  # [rank, in]
    lora_b: np.ndarray  # [out, rank]

    @property
    def rank(self) -> int:
        return self.lora_a.shape[0]


def _kernel_maps(model) -> dict[str, TensorMap]:
    """ftjax Dense path ("encoder/layer_0/attention/query") -> its kernel's TensorMap."""
    maps = hub.family_of(model).tensor_maps(model.config)
    return {m.path[: -len("/kernel")]: m for m in maps if m.path.endswith("/kernel")}


def to_peft(model, flat: Mapping[str, Any], cls: HfClass) -> list[LoraModule]:
    """ftjax's LoRA factors (flat params) as PEFT modules of the class `cls`."""
    kernels = _kernel_maps(model)
    fused: dict[str, list[tuple[int, int, np.ndarray, np.ndarray]]] = defaultdict(list)
    for path in sorted(p for p in flat if p.endswith("/lora_a")):
        dense = path[: -len("/lora_a")]
        a, b = np.asarray(flat[path]), np.asarray(flat[dense + "/lora_b"])
        m = kernels[dense]
        name = cls.name(m.hf_name)
        if name is None:  # a module the class lacks (T5's decoder in an encoder class)
            if np.any(b != 0):
                raise ExportError(
                    f"LoRA factors of {dense} trained, but {cls.architecture} has no "
                    f"{m.hf_name}; choose --format ftjax"
                )
            continue
        index, parts = m.part or (0, 1)
        fused[name[: -len(".weight")]].append((index, parts, a, b))
    return [_join(name, pieces) for name, pieces in fused.items()]


def _join(name: str, pieces: list[tuple[int, int, np.ndarray, np.ndarray]]) -> LoraModule:
    pieces = sorted(pieces, key=lambda p: p[0])
    parts = pieces[0][1]
    if parts == 1:
        _, _, a, b = pieces[0]
        return LoraModule(name, np.ascontiguousarray(a.T), np.ascontiguousarray(b.T))
    if len(pieces) == parts and all(np.array_equal(p[2], pieces[0][2]) for p in pieces):
        b = np.concatenate([p[3].T for p in pieces], axis=0)
        return LoraModule(name, np.ascontiguousarray(pieces[0][2].T), np.ascontiguousarray(b))
    rank, width = pieces[0][3].shape
    a = np.concatenate([p[2].T for p in pieces], axis=0)
    b = np.zeros((parts * width, len(pieces) * rank), np.float32)
    for slot, (index, _, _, part_b) in enumerate(pieces):
        b[index * width : (index + 1) * width, slot * rank : (slot + 1) * rank] = part_b.T
    return LoraModule(name, np.ascontiguousarray(a), b)


def config_fields(model, modules: list[LoraModule]) -> dict[str, Any]:
    """adapter_config.json fields of these modules: the most common rank is `r`, the
    others go to rank_pattern / alpha_pattern with the alpha that keeps alpha / r."""
    peft = model.config.peft
    ranks = [m.rank for m in modules]
    r = max(set(ranks), key=ranks.count)
    scale = peft.lora_alpha / peft.lora_rank
    odd = {m.name: m.rank for m in modules if m.rank != r}
    return {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": _number(scale * r),
        "lora_dropout": peft.lora_dropout,
        "target_modules": sorted(m.name for m in modules),
        "rank_pattern": {re.escape(n): k for n, k in odd.items()},
        "alpha_pattern": {re.escape(n): _number(scale * k) for n, k in odd.items()},
        "fan_in_fan_out": hub.family_of(model).model_types[0] == "gpt2",  # Conv1D
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
    }


def _number(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


# ---------------------------------------------------------------------------- import

UNSUPPORTED = {  # adapter_config.json fields ftjax's LoRA cannot reproduce
    "use_dora": False,
    "use_rslora": False,
    "lora_bias": False,
    "layer_replication": None,
    "trainable_token_indices": None,
    "target_parameters": None,
}


def check_config(config: Mapping[str, Any], where: str) -> None:
    for field, plain in UNSUPPORTED.items():
        if config.get(field, plain) not in (plain, [], {}):
            raise ExportError(
                f"{where}: {field}={config[field]!r}; ftjax's LoRA is plain LoRA "
                f"({field}={plain!r}) and would compute something else"
            )
    if config.get("bias", "none") != "none":
        raise ExportError(f"{where}: bias={config['bias']!r}: ftjax's LoRA trains no biases")


def _alpha(config: Mapping[str, Any], module: str) -> float:
    for key, alpha in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return float(alpha)
    return float(config["lora_alpha"])


def from_peft(
    model, tensors: Mapping[str, np.ndarray], config: Mapping[str, Any], where: str
) -> tuple[PeftConfig, dict[str, np.ndarray]]:
    """PEFT's LoRA tensors (the `base_model.model.` prefix removed) -> ftjax's PeftConfig
    and flat LoRA params; refuses what plain, uniform-rank ftjax LoRA cannot hold."""
    check_config(config, where)
    by_name = _names_to_paths(model)
    modules = sorted({k[: -len(".lora_A.weight")] for k in tensors if k.endswith(".lora_A.weight")})
    if not modules:
        raise ExportError(f"{where}: no lora_A tensors")
    flat: dict[str, np.ndarray] = {}
    settings = set()
    for module in modules:
        a, b = tensors[module + ".lora_A.weight"], tensors.get(module + ".lora_B.weight")
        if b is None:
            raise ExportError(f"{where}: {module}.lora_A.weight has no lora_B.weight")
        maps = _lookup(by_name, module)
        if not maps:
            raise ExportError(
                f"{where}: LoRA module {module} is not a dense layer of "
                f"{type(model).__name__} (ftjax reads attention and MLP projections)"
            )
        parts = maps[0].part[1] if maps[0].part else 1
        if b.shape[0] % parts:
            raise ExportError(f"{where}: {module}.lora_B.weight {b.shape} is not {parts} parts")
        for m in maps:
            index = m.part[0] if m.part else 0
            dense = m.path[: -len("/kernel")]
            flat[dense + "/lora_a"] = np.ascontiguousarray(a.T)
            flat[dense + "/lora_b"] = np.ascontiguousarray(np.split(b, parts, axis=0)[index].T)
        settings.add((a.shape[0], _alpha(config, module)))
    if len(settings) > 1:
        raise ExportError(
            f"{where}: modules differ in (rank, alpha) {sorted(settings)}; ftjax's LoRA has "
            "one rank and alpha for every targeted layer"
        )
    ((rank, alpha),) = settings
    paths = sorted({p[: -len("/lora_a")] for p in flat if p.endswith("/lora_a")})
    peft = PeftConfig(
        lora_rank=rank,
        lora_alpha=alpha,
        lora_dropout=float(config.get("lora_dropout", 0.0)),
        lora_targets="|".join(re.escape(p) for p in paths),
    )
    return peft, flat


def _names_to_paths(model) -> dict[str, list[TensorMap]]:
    """A transformers module name (without base-model prefixes) -> the kernel maps it fills."""
    table: dict[str, list[TensorMap]] = defaultdict(list)
    for m in _kernel_maps(model).values():
        name = m.hf_name[: -len(".weight")]
        table[name].append(m)
        if name.startswith("model."):  # Llama classes that keep the base under another name
            table[name[len("model.") :]].append(m)
    return table


def _lookup(table: Mapping[str, list[TensorMap]], module: str) -> list[TensorMap]:
    """The maps of the longest known suffix of `module` ("bert.encoder.layer.0..." ->
    "encoder.layer.0...")."""
    parts = module.split(".")
    for i in range(len(parts)):
        hit = table.get(".".join(parts[i:]))
        if hit:
            return sorted(hit, key=lambda m: m.part or (0, 1))
    return []
