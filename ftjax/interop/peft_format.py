"""PEFT adapter folders (`adapter_config.json` + `adapter_model.safetensors`) <-> ftjax.

    write_adapter(model, params, cls, "out/")        # ftjax -> PEFT
    model, params = read_adapter("adapter/", model, params)   # PEFT (+ its base) -> ftjax

Keys carry PEFT's `base_model.model.` prefix followed by the module's name in the
transformers class `cls` (`ftjax.interop.hf_classes`): without the prefix PEFT only warns and
leaves lora_B at zero. A task head goes under `modules_to_save` (PEFT's key for it is
`base_model.model.<head>.weight`).

What is written computes what ftjax computes, or nothing is written:
- LoRA: every family (`ftjax.interop.peft_lora`).
- Prefix tuning: BERT / RoBERTa, GPT-2, Llama. PEFT's prefix is a key/value cache
  `prompt_embeddings` [P, layers * 2 * kv_heads * head_dim]; the real tokens' positions
  start at P, as ftjax's do (`layers.virtual_tokens`). T5 is refused
  (`T5_PREFIX_DIFFERS`).
- Prompt tuning: every family. PEFT prepends the prompt to the input embeddings (T5:
  the encoder's only, `num_transformer_submodules=1`), so it takes positions 0..P-1 as
  in ftjax; classes whose outputs would then differ from ftjax's are refused
  (`_refuse_prompt_class`).
Refusals name the reason, measured against PEFT 0.21 / transformers 5.23.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ftjax import methods
from ftjax.core import partition
from ftjax.interop import peft_lora
from ftjax.interop.hf_classes import ExportError, HfClass, head_tensors
from ftjax.models import hub
from ftjax.models.base import PeftConfig

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
KEY_PREFIX = "base_model.model."
# A prefix or prompt adapter's PeftModel holds the transformers model itself as
# `base_model` (no tuner wrapper), so its head's keys carry one level less.
PROMPT_HEAD_PREFIX = "base_model."
PROMPT_KEY = "prompt_embeddings"
PEFT_VERSION = "0.21.2"  # the version whose layout this follows (setup.py's test extra)

T5_PREFIX_DIFFERS = (
    "PEFT 0.21's prefix on T5 reaches only the decoder's self-attention (the encoder gets "
    "none, and the cross-attention half of its cache is replaced by an empty one), with T5's "
    "relative position bias on the prefix keys; ftjax's T5 prefix also enters the encoder's "
    "self-attention and the decoder's cross-attention, without bias"
)
# transformers classes whose outputs under PEFT's prompt are ftjax's after the P prompt
# rows PEFT keeps first: LM logits, encoder features (BERT's pooler classifier, over the
# prompt's first slot, is allowed apart).
PROMPT_CLASSES = ("ForCausalLM", "LMHeadModel", "BertModel", "RobertaModel")
ALLOWED_KINDS = ("lora", "prompt", "head")


def _model_type(model) -> str:
    return getattr(model.config, "model_type", hub.family_of(model).model_types[0])


# ---------------------------------------------------------------------------- export


def write_adapter(
    model,
    params: Mapping[str, Any],
    cls: HfClass,
    out: str | Path,
    trained: Collection[str] | None = None,
    base_model: str | None = None,
) -> Path:
    """Writes params' method parameters (and task head) as a PEFT adapter folder for the
    transformers class `cls` on `base_model`. `trained`: the paths that trained (the run's
    mask); a trained base weight has no place in an adapter and is refused by name."""
    return write_files(out, *adapter_files(model, params, cls, trained, base_model))


def adapter_files(
    model,
    params: Mapping[str, Any],
    cls: HfClass,
    trained: Collection[str] | None = None,
    base_model: str | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(adapter_config.json dict, adapter tensors) of `write_adapter`; raises
    `ExportError` naming what PEFT cannot hold."""
    flat = {p: np.asarray(v, np.float32) for p, v in partition.flatten(params).items()}
    kinds = {methods.kind_of(p) for p in flat} & {"lora", "adapter", "prefix", "prompt"}
    _refuse_base_weights(flat, trained)
    if "adapter" in kinds:
        raise ExportError(
            "method adapter: PEFT has no Houlsby bottleneck adapter that computes ftjax's; "
            "choose --format ftjax"
        )
    if len(kinds) != 1:
        raise ExportError(
            "--format peft writes one method's parameters (a run of method lora, prefix or "
            f"prompt); these params hold {sorted(kinds) or 'none'}; choose --format hf or ftjax"
        )
    (kind,) = kinds
    config: dict[str, Any] = {
        "base_model_name_or_path": base_model,
        "task_type": cls.peft_task,
        "inference_mode": True,
        "revision": None,
        "peft_version": PEFT_VERSION,
    }
    if kind == "lora":
        modules = peft_lora.to_peft(model, flat, cls)
        config.update(peft_lora.config_fields(model, modules))
        tensors = {}
        for m in modules:
            tensors[f"{KEY_PREFIX}{m.name}.lora_A.weight"] = m.lora_a
            tensors[f"{KEY_PREFIX}{m.name}.lora_B.weight"] = m.lora_b
    else:
        tensors, fields = _prompt_tensors(model, flat, kind, cls)
        config.update(fields)
    head = head_tensors(flat, cls)
    config["modules_to_save"] = [cls.head] if head else None
    head_prefix = KEY_PREFIX if kind == "lora" else PROMPT_HEAD_PREFIX
    tensors.update({head_prefix + k: v for k, v in head.items()})
    return config, tensors


def _refuse_base_weights(flat: Mapping[str, Any], trained: Collection[str] | None) -> None:
    if trained is None:
        return
    base = sorted(p for p in trained if methods.kind_of(p) not in (*ALLOWED_KINDS, "prefix"))
    if base:
        raise ExportError(
            f"--format peft: the run also trained base weights ({', '.join(base[:3])}"
            f"{', ...' if len(base) > 3 else ''}; method.extra_trainable or "
            "train_embeddings), which a PEFT adapter cannot hold; choose --format hf "
            "(LoRA merged) or ftjax"
        )


def _prompt_tensors(model, flat, kind: str, cls: HfClass) -> tuple[dict, dict]:
    model_type, cfg = _model_type(model), model.config
    if cls.peft_task is None:
        raise ExportError(
            f"method {kind} with {cls.architecture}: PEFT has no task type for that class, "
            f"and a PeftModel without one runs the base model without the {kind}; choose "
            "--format ftjax"
        )
    if kind == "prefix":
        return _prefix_tensors(model, model_type, flat)
    _refuse_prompt_class(model_type, cls)
    (path,) = [p for p in flat if methods.kind_of(p) == "prompt"]
    fields = {
        "peft_type": "PROMPT_TUNING",
        "num_virtual_tokens": cfg.peft.prompt_length,
        "token_dim": cfg.hidden_size,
        "num_transformer_submodules": 1,  # T5: the encoder only, as ftjax
        "num_attention_heads": cfg.num_heads,
        "num_layers": cfg.num_layers,
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
        "tokenizer_kwargs": None,
    }
    return {PROMPT_KEY: np.ascontiguousarray(flat[path])}, fields


def _refuse_prompt_class(model_type: str, cls: HfClass) -> None:
    """PEFT's prompt is P extra input embeddings, and every class keeps their rows."""
    where = f"method prompt on {model_type} with {cls.architecture}"
    if model_type == "t5":
        if cls.architecture != "T5ForConditionalGeneration":
            raise ExportError(
                f"{where}: PEFT's prompt positions would stay in that class's outputs; only "
                "T5ForConditionalGeneration tasks export; choose --format ftjax"
            )
        return
    if cls.architecture.endswith("ForSequenceClassification"):
        if cls.architecture != "BertForSequenceClassification":
            raise ExportError(
                f"{where}: the class finds each row's last real token by the pad id in "
                "input_ids, which PEFT replaces by embeddings, so it reads the last position "
                "of every row; choose --format ftjax"
            )
        return
    if not cls.architecture.endswith(PROMPT_CLASSES):
        raise ExportError(
            f"{where}: under PEFT that class's per-token outputs gain the P prompt rows before "
            "the tokens' (ftjax's align with the tokens); choose --format ftjax"
        )


def _prefix_tensors(model, model_type: str, flat) -> tuple[dict, dict]:
    """ftjax's per-layer prefixes [layers, 2, P, kv_heads, head_dim] as PEFT's
    `prompt_embeddings` [P, layers * 2 * kv_heads * head_dim] (its key/value cache, folded
    from the MLP where one trained, as PEFT saves it)."""
    if model_type == "t5":
        raise ExportError(f"method prefix on t5: {T5_PREFIX_DIFFERS}; choose --format ftjax")
    if model.config.peft.prefix_hidden:
        model, folded = methods.fold_prefix(model, partition.unflatten(dict(flat)))
        flat = {p: np.asarray(v, np.float32) for p, v in partition.flatten(folded).items()}
    cfg = model.config
    (path,) = [p for p in flat if p.endswith("prefix/key_value")]
    key_value = flat[path]
    length = key_value.shape[2]
    fields = {
        "peft_type": "PREFIX_TUNING",
        "num_virtual_tokens": length,
        "token_dim": cfg.num_kv_heads * cfg.head_dim,
        "num_attention_heads": cfg.num_kv_heads,
        "num_layers": cfg.num_layers,
        "num_transformer_submodules": 1,
        "encoder_hidden_size": cfg.num_kv_heads * cfg.head_dim,
        "prefix_projection": False,
    }
    table = key_value.transpose(2, 0, 1, 3, 4).reshape(length, -1)
    return {PROMPT_KEY: np.ascontiguousarray(table)}, fields


def write_files(out: str | Path, config: dict[str, Any], tensors: dict[str, np.ndarray]) -> Path:
    from safetensors.numpy import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # safetensors writes the buffer as it lies: every tensor C-ordered first.
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    save_file(tensors, out / WEIGHTS_FILE, metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out


# ---------------------------------------------------------------------------- import


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def read_config(adapter_dir: str | Path) -> dict[str, Any]:
    where = Path(adapter_dir) / CONFIG_FILE
    if not where.is_file():
        raise ExportError(f"{adapter_dir} has no {CONFIG_FILE}: not a PEFT adapter folder")
    return json.loads(where.read_text())


def read_adapter(adapter_dir: str | Path, model, params: Mapping[str, Any]) -> tuple[Any, dict]:
    """(model with the adapter's hooks on, params: `params` + the adapter's parameters and,
    from modules_to_save, the task head as {"head": {"dense": ...}}) for the base `model`."""
    from safetensors.numpy import load_file

    config = read_config(adapter_dir)
    where = str(Path(adapter_dir) / CONFIG_FILE)
    raw = load_file(Path(adapter_dir) / WEIGHTS_FILE)
    tensors = {_unprefixed(k): hub._as_float32(v) for k, v in raw.items()}
    kind = config.get("peft_type")
    if kind == "LORA":
        peft, flat = peft_lora.from_peft(model, tensors, config, where)
        used = {k for k in tensors if ".lora_A." in k or ".lora_B." in k}
    elif kind == "PROMPT_TUNING":
        peft, flat = _prompt_from_peft(model, tensors, config, where)
        used = {PROMPT_KEY}
    elif kind == "PREFIX_TUNING":
        peft, flat = _prefix_from_peft(model, tensors, config, where)
        used = {PROMPT_KEY}
    else:
        raise ExportError(
            f"{where}: peft_type={kind!r}; ftjax reads LORA, PREFIX_TUNING and PROMPT_TUNING"
        )
    flat.update(_head_from_peft(tensors, set(tensors) - used, config, where))
    new_model = type(model)(dataclasses.replace(model.config, peft=peft))
    merged = {**partition.flatten(params), **flat}
    expected = partition.flatten(hub.abstract_params(new_model, hub.family_of(new_model)))
    missing = sorted(p for p in expected if p not in merged)
    if missing:
        raise ExportError(f"{where}: the adapter leaves {missing[:3]} of ftjax's model unset")
    unplaced = sorted(p for p in flat if p not in expected and not p.startswith("head/"))
    if unplaced:  # e.g. LoRA on BERT's pooler: ftjax's pooler has no LoRA hook
        raise ExportError(
            f"{where}: ftjax's {type(model).__name__} has no place for {unplaced[:3]} "
            "(a layer without ftjax's LoRA hook); ftjax would compute something else"
        )
    for path, leaf in expected.items():
        shape = getattr(leaf, "value", leaf).shape
        if np.shape(merged[path]) != shape:
            raise ExportError(
                f"{where}: {path} has shape {np.shape(merged[path])}, the base model needs {shape}"
            )
    return new_model, partition.unflatten(merged)


def _unprefixed(key: str) -> str:
    for prefix in (KEY_PREFIX, PROMPT_HEAD_PREFIX):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _one_submodule(config, where: str, what: str) -> None:
    if config.get("num_transformer_submodules", 1) != 1:
        raise ExportError(
            f"{where}: num_transformer_submodules={config['num_transformer_submodules']}: "
            f"the {what} also enters T5's decoder, ftjax's only the encoder"
        )


def _prompt_from_peft(model, tensors, config, where) -> tuple[PeftConfig, dict]:
    _one_submodule(config, where, "prompt")
    table = tensors[PROMPT_KEY]
    if table.shape[1] != model.config.hidden_size:
        raise ExportError(
            f"{where}: {PROMPT_KEY} has width {table.shape[1]}, the base model's hidden size "
            f"is {model.config.hidden_size}"
        )
    return PeftConfig(prompt_length=table.shape[0]), {"prompt/embedding": table}


def _prefix_from_peft(model, tensors, config, where) -> tuple[PeftConfig, dict]:
    """PEFT's `prompt_embeddings` [P, layers * 2 * kv_heads * head_dim] (its key/value
    cache, layer-major, key before value) as ftjax's prefixes of the layer stack."""
    model_type, cfg = _model_type(model), model.config
    if model_type == "t5":
        raise ExportError(
            f"{where}: prefix tuning on t5: {T5_PREFIX_DIFFERS}; ftjax cannot compute what "
            "this adapter computes"
        )
    _one_submodule(config, where, "prefix")
    table = tensors[PROMPT_KEY]
    shape = (table.shape[0], cfg.num_layers, 2, cfg.num_kv_heads, cfg.head_dim)
    if table.shape[1] != int(np.prod(shape[1:])):
        raise ExportError(
            f"{where}: {PROMPT_KEY} has width {table.shape[1]}, the base model's key/value "
            f"cache needs layers x 2 x kv_heads x head_dim = {int(np.prod(shape[1:]))}"
        )
    (stack, _), *_ = hub.family_of(model).stacks(cfg)
    key_value = np.ascontiguousarray(table.reshape(shape).transpose(1, 2, 0, 3, 4))
    return PeftConfig(prefix_length=shape[0]), {f"{stack}/prefix/key_value": key_value}


def _head_from_peft(tensors, rest: set[str], config, where) -> dict[str, np.ndarray]:
    if not rest:
        return {}
    saved = config.get("modules_to_save") or []
    heads = sorted({k.rsplit(".", 1)[0] for k in rest})
    if len(heads) != 1 or heads[0].split(".")[-1] not in saved:
        raise ExportError(
            f"{where}: tensors {sorted(rest)[:4]} are not one task head under "
            "modules_to_save; ftjax's task head is one dense layer"
        )
    out = {"head/dense/kernel": np.ascontiguousarray(tensors[f"{heads[0]}.weight"].T)}
    if f"{heads[0]}.bias" in tensors:  # GPT-2's and Llama's `score` has none
        out["head/dense/bias"] = tensors[f"{heads[0]}.bias"]
    return out


METHOD_OF = {"LORA": "lora", "PROMPT_TUNING": "prompt", "PREFIX_TUNING": "prefix"}


def start_from_adapter(method, model, params: Mapping[str, Any]) -> tuple[Any, dict]:
    """`methods.apply` for `method.init_from=ADAPTER_DIR`: the adapter's parameters (its
    rank, alpha, targets or prompt length) on the base `model`, to evaluate or train on.
    A task head under the adapter's `modules_to_save` comes along: the run keeps it when
    it has the task head's shapes (`experiment.with_head`)."""
    where = f"method.init_from={method.init_from!r}"
    config = read_config(method.init_from)
    kind = METHOD_OF.get(config.get("peft_type"), config.get("peft_type"))
    if kind != method.name:
        raise ExportError(f"{where} is a {kind} adapter; set method={kind}")
    new_model, new_params = read_adapter(method.init_from, model, params)
    return new_model, new_params
