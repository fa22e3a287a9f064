"""A run's train step from shapes alone: what it holds per device, planned and checked.

`build(config)` assembles what `experiment.build` would (the family config from a
config.json, the task, the method's hooks, the head, the trainable mask, the optimizer,
the mesh) without weights or data: every parameter is a `jax.ShapeDtypeStruct`
(`jax.eval_shape` of the model's init) in the layout a run's state holds
(`state.stored_params`: stacked when scanned, frozen ones as `model.param_dtype`),
placed by the real sharding rules (`state.state_shardings`). `lower` jits the real
`train.make_train_step` over the task's real loss with the in/out shardings and donation
`steps.Steps.compile_train` uses, on an abstract batch, so `compile(...).memory_analysis()`
is XLA's own account of what a run would compile, and nothing is ever materialised.

Two things a run takes from data are stood in for here (and only here):
- the batch: `abstract_batch` lays out the arrays the task's loader yields
  (`batching.pad_batch`: each length group's token fields and its mask padded to the
  group's longest bucket, the per-example fields, `example_mask`);
- the tokenizer: only the masked-LM loss reads one (its special and [MASK] ids), and
  `ShapeTokenizer` gives it the pad id for both; shapes and FLOPs do not depend on them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ftjax import methods, tasks
from ftjax.core import partition
from ftjax.data.batching import GROUP_MASKS
from ftjax.data.splits import dataset_info
from ftjax.models import hub, stacking
from ftjax.models.base import Family, frozen_dtype
from ftjax.training import sharding
from ftjax.training.config import ConfigError, compiler_options, method_options, validate
from ftjax.training.experiment import (
    check_positions,
    model_overrides,
    run_key,
    unreached_params,
    with_dropout,
)
from ftjax.training.optim import make_optimizer
from ftjax.training.state import state_shardings
from ftjax.training.train import TrainState, make_train_step

SHAPES_DIR = Path(__file__).parent / "model_shapes"
SHAPE_SUFFIX = "-shape"  # model=llama2-7b-shape: ftjax/planning/model_shapes/llama2-7b/config.json
PLAN_STEPS = 1000  # the schedule's length changes no shape


class PlanError(ConfigError):
    """A config the planner cannot lay out without data; the message names the field."""


# ---------------------------------------------------------------------------- model


def shape_names() -> list[str]:
    """The bundled config.json files, as `model=` names."""
    return sorted(p.parent.name + SHAPE_SUFFIX for p in SHAPES_DIR.glob("*/config.json"))


def read_model_config(name: str) -> tuple[Family, Any]:
    """Family and config from a bundled shape (`llama2-7b-shape`), a config.json file, or
    any model source `ftjax.main` takes (only its config.json is read)."""
    if name.endswith(SHAPE_SUFFIX):
        where = SHAPES_DIR / name[: -len(SHAPE_SUFFIX)] / "config.json"
        if not where.is_file():
            raise PlanError(f"config.model.name={name!r}: bundled shapes are {shape_names()}")
    elif name.endswith(".json"):
        where = Path(name).expanduser()
    else:
        where = hub.resolve_checkpoint_dir(name) / "config.json"
    if not where.is_file():
        raise PlanError(f"config.model.name={name!r}: {where} is not a file")
    hf = json.loads(where.read_text())
    family, config = hub.family_config(hf, str(where))
    return family, settled_without_tensors(config, hf)


def settled_without_tensors(config: Any, hf: dict[str, Any]) -> Any:
    """The fields a checkpoint's tensors settle (`Family.fit_to_checkpoint`), from its
    config.json instead: T5's LM head is tied unless `tie_word_embeddings` is false, and
    a BERT checkpoint saved by a pre-training or masked-LM class carries the MLM head."""
    fields = {f.name for f in dataclasses.fields(config)}
    changes: dict[str, Any] = {}
    if hf.get("model_type") == "t5":
        changes["tie_word_embeddings"] = hf.get("tie_word_embeddings", True) is not False
    if "with_mlm_head" in fields:
        heads = ("ForMaskedLM", "ForPreTraining")
        changes["with_mlm_head"] = any(a.endswith(heads) for a in hf.get("architectures", []))
    return dataclasses.replace(config, **changes)


@dataclasses.dataclass(frozen=True)
class ShapeTokenizer:
    """The tokenizer facts a loss may read (the masked LM's), without a vocabulary."""

    pad_token_id: int

    @property
    def all_special_ids(self) -> list[int]:
        return [self.pad_token_id]

    @property
    def mask_token_id(self) -> int:
        return self.pad_token_id


# ---------------------------------------------------------------------------- setup


@dataclasses.dataclass
class Setup:
    """What the train step compiles, all abstract. It has the fields of an `Experiment`
    that `state.state_shardings` reads (task, mesh, tx)."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    method: methods.Method
    task: tasks.Task
    tx: optax.GradientTransformation
    trainable: dict[str, jax.ShapeDtypeStruct]  # flat, unsharded, as the state holds them
    frozen: dict[str, jax.ShapeDtypeStruct]
    layer_masks: dict[str, Any]  # stacked leaves of which only some layers train
    overrides: dict[str, Any]  # family config fields set beyond the config's (`build`)

    @property
    def model(self) -> nn.Module:
        return self.task.model

    @property
    def accumulate(self) -> int:
        return self.config.optimizer.grad_accum


def build(
    config: ml_collections.ConfigDict, devices=None, overrides: dict[str, Any] | None = None
) -> Setup:
    """The run `config` describes, as `experiment.build` assembles it, without weights;
    `overrides` set fields of the family config (e.g. num_layers=2)."""
    mesh = sharding.make_mesh(config.mesh, devices)
    validate(config, sharding.batch_divisor(mesh))
    if config.data.pack_length > 0:
        raise PlanError("config.data.pack_length: packed batches depend on the data; plan with 0")
    # Auto packing (-1): a packed batch holds at most batch_size rows of max_length
    # tokens, the unpacked batch the plan is drawn for.
    config.data.pack_length = 0
    family, model_config = read_model_config(config.model.name)
    fields = {**model_overrides(config), **(overrides or {})}
    model = family.module(hub.override_config(model_config, **fields))
    model = with_dropout(model, config.model.dropout)
    pad = getattr(model.config, "pad_token_id", None) or 0
    task = tasks.make(config, ShapeTokenizer(pad), _info(config))
    model = task.prepare_model(model)
    method = methods.resolve(config.method.name, model, method_options(config.method))
    if method.init_from:
        raise PlanError(
            f"config.method.init_from={method.init_from!r}: the adapter folder sets the "
            "method's shapes; plan with the same options instead (rank, targets, length)"
        )
    # What methods.apply switches on; its new parameters appear in the abstract init.
    model = type(model)(dataclasses.replace(model.config, peft=method.peft))
    task.attach(model)
    check_positions(config, task)
    # The mask is the method's over canonical per-layer paths, as a run computes it.
    head = jax.eval_shape(task.init_head, jax.random.key(0))
    canonical = {**nn.unbox(hub.abstract_params(model, family)), **head}
    mask = methods.trainable_mask(method, canonical, unreached_params(task, canonical))
    params, mask, layer_masks = stored_params(model, family, head, mask)
    trainable, frozen = partition.split(params, mask)
    frozen = {
        p: jax.ShapeDtypeStruct(v.shape, frozen_dtype(model.config, v.dtype))
        for p, v in frozen.items()
    }
    tx, _ = make_optimizer(config.optimizer, config.train.max_steps or PLAN_STEPS)
    return Setup(
        config, mesh, method, task, tx, trainable, frozen, layer_masks, dict(overrides or {})
    )


def stored_params(
    model: nn.Module, family: Family, head: dict, mask: dict[str, bool]
) -> tuple[dict, dict[str, bool], dict[str, Any]]:
    """`state.stored_params` on shapes: the abstract params in the model's own layout
    (a scanned model's layers stacked, `models.stacking`), their mask, and the per-layer
    masks of stacked leaves of which only some layers train."""
    if not stacking.is_scanned(model):
        return {**nn.unbox(hub.abstract_params(model, family)), **head}, mask, {}
    dummy = family.dummy_inputs(model.config)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), **dummy))
    leaf_mask, layer_masks = stacking.layer_masks(model, hub.stack_depths(model), mask)
    return {**nn.unbox(variables["params"]), **head}, leaf_mask, layer_masks


def _info(config: ml_collections.ConfigDict) -> dict:
    """The dataset's info.json where there is one (label names: a text target's words)."""
    try:
        return dataset_info(config.data.name)
    except Exception:  # noqa: BLE001 - no data needed to plan; a task that needs it says so
        return {}


# ---------------------------------------------------------------------------- abstract state


def _placed(value: Any, where: jax.sharding.Sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=where)


def abstract_state(setup: Setup) -> tuple[TrainState, TrainState]:
    """(state of ShapeDtypeStructs carrying their shardings, the shardings)."""
    shardings = state_shardings(setup, setup.trainable, setup.frozen)
    opt = jax.eval_shape(setup.tx.init, setup.trainable)
    state = TrainState(
        step=jax.ShapeDtypeStruct((), jnp.int32, sharding=shardings.step),
        trainable={p: _placed(v, shardings.trainable[p]) for p, v in setup.trainable.items()},
        frozen={p: _placed(v, shardings.frozen[p]) for p, v in setup.frozen.items()},
        opt_state=jax.tree.map(_placed, opt, shardings.opt_state),
    )
    return state, shardings


def batch_layout(task: tasks.Task) -> tuple[dict[str, tuple[str, ...]], dict[str, Any]]:
    """({length group: its token fields}, {per-example field: dtype}) of a training batch
    of this task, as its `encode` lays the examples out (see the module docstring)."""
    name, limits = task.name, task.group_limits()
    if name in ("classification", "regression"):
        label = jnp.float32 if name == "regression" else jnp.int32
        groups, fixed = {"source": ("input_ids",)}, {"labels": label}
    elif "target" in limits:  # T5: seq2seq or span corruption
        groups, fixed = {"source": ("input_ids",), "target": ("decoder_input_ids", "labels")}, {}
    elif name == "seq2seq":  # decoder-only: prompt + target, and the prompt for generation
        groups, fixed = {"source": ("input_ids", "labels"), "prompt": ("prompt",)}, {}
    elif name == "language_modeling":
        whole_words = task.config.task.whole_word_mask and task.objective() == "masked"
        groups = {"source": ("input_ids", "word_head") if whole_words else ("input_ids",)}
        fixed = {}
    else:
        raise PlanError(
            f"config.task.name={name!r}: the planner lays out batches of classification, "
            "regression, language_modeling and seq2seq"
        )
    return groups, fixed


def abstract_batch(setup: Setup) -> dict[str, jax.ShapeDtypeStruct]:
    """The longest training batch the loader can yield, sharded as `steps.to_global` does."""
    groups, fixed = batch_layout(setup.task)
    limits = setup.task.group_limits()
    rows, acc = setup.config.data.batch_size, setup.accumulate
    lead = (acc, rows // acc) if acc > 1 else (rows,)
    shapes: dict[str, tuple[tuple[int, ...], Any]] = {}
    for group, fields in groups.items():
        for field in (*fields, GROUP_MASKS[group]):
            shapes[field] = ((*lead, limits[group]), jnp.int32)
    shapes.update({f: (lead, dtype) for f, dtype in fixed.items()})
    shapes["example_mask"] = (lead, jnp.float32)
    return {
        field: jax.ShapeDtypeStruct(
            shape, dtype, sharding=sharding.batch_sharding(setup.mesh, len(shape), acc > 1)
        )
        for field, (shape, dtype) in shapes.items()
    }


def abstract_rng(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh
) -> jax.ShapeDtypeStruct:
    key = jax.eval_shape(lambda: run_key(config))
    return jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=sharding.replicated(mesh))


# ---------------------------------------------------------------------------- XLA


def lower(setup: Setup) -> jax.stages.Lowered:
    """The train step jitted as `Steps.compile_train` jits it, lowered on abstract inputs."""
    state, shardings = abstract_state(setup)
    batch = abstract_batch(setup)
    replicated = sharding.replicated(setup.mesh)
    fn = jax.jit(
        make_train_step(setup.task.loss, setup.tx, setup.accumulate, setup.layer_masks),
        in_shardings=(shardings, {k: v.sharding for k, v in batch.items()}, replicated),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )
    with jax.set_mesh(setup.mesh):  # where the model's activation constraints find it
        return fn.lower(state, batch, abstract_rng(setup.config, setup.mesh))


def compile_step(setup: Setup) -> jax.stages.Compiled:
    return lower(setup).compile(compiler_options(setup.config))


XLA_FIELDS = {
    "argument": "argument_size_in_bytes",
    "output": "output_size_in_bytes",
    "alias": "alias_size_in_bytes",
    "temp": "temp_size_in_bytes",
    "code": "generated_code_size_in_bytes",
}


def xla_memory(compiled: jax.stages.Compiled) -> dict[str, int]:
    """XLA's per-device bytes of the compiled step; `total` = arguments + outputs not
    aliased to a donated argument + temporaries (what one device holds at its peak)."""
    stats = compiled.memory_analysis()
    out = {name: int(getattr(stats, field)) for name, field in XLA_FIELDS.items()}
    out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def xla_flops(setup: Setup) -> float:
    """FLOPs of the whole step from XLA's cost analysis of the step lowered without mesh
    or micro-batches (as `Steps.step_flops`), nothing compiled. A loop's body counts
    once there, so a scanned model is counted through its unrolled twin (the same
    arithmetic)."""
    if stacking.is_scanned(setup.model):
        devices = list(setup.mesh.devices.flat)
        setup = build(setup.config, devices, {**setup.overrides, "scan_layers": False})
    state, _ = abstract_state(setup)
    unplaced = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    skip = 2 if setup.accumulate > 1 else 1  # the micro-batch axes, merged
    rows = setup.config.data.batch_size
    batch = {
        k: jax.ShapeDtypeStruct((rows, *v.shape[skip:]), v.dtype)
        for k, v in abstract_batch(setup).items()
    }
    rng = jax.eval_shape(lambda: run_key(setup.config))
    step = make_train_step(setup.task.loss, setup.tx, 1, setup.layer_masks)
    cost = jax.jit(step).lower(unplaced, batch, rng).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float((cost or {}).get("flops", 0.0))
