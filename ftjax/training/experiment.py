"""Everything a run needs, assembled from its config and checked before anything compiles.

The data path is one straight line: config -> model + params (hub) -> task (what the
backbone must provide) -> method (hooks + trainable patterns) -> task head -> trainable
mask (the method's patterns within what the task's loss reaches) -> encoded splits ->
loader -> optimizer. `ftjax.evaluate` rebuilds the same `Experiment` from a workdir.
"""

from __future__ import annotations

import dataclasses
import logging
import re

import jax
import ml_collections
import numpy as np
import optax

from ftjax import methods, tasks
from ftjax.core import partition
from ftjax.data.batching import Examples
from ftjax.data.splits import dataset_info, load_splits, stratified_sample
from ftjax.interop import peft_format
from ftjax.models import load_tokenizer, stacking, streaming
from ftjax.models.base import frozen_dtype
from ftjax.models.hub import stack_depths
from ftjax.training import checkpoints, sharding
from ftjax.training.config import ConfigError, method_options, validate
from ftjax.training.loaders import FeatureLoader, TokenLoader
from ftjax.training.optim import make_optimizer

log = logging.getLogger("ftjax")
DROPOUT_FIELDS = ("hidden_dropout", "attention_dropout", "embedding_dropout", "dropout")
ROLES = ("train", "validation", "test")


@dataclasses.dataclass
class Experiment:
    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    method: methods.Method
    task: tasks.Task
    params: dict  # canonical params, backbone (global arrays, sharded) + head
    mask: dict[str, bool]  # trainable params
    loader: TokenLoader | FeatureLoader
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    total_steps: int
    frozen_hash: str
    table: str

    @property
    def steps_per_epoch(self) -> int:
        return self.loader.num_batches("train")

    @property
    def param_counts(self) -> dict[str, int]:
        """{"trainable": n, "total": n} parameters, head and method's included."""
        trainable, _ = partition.split(self.params, self.mask)
        return {"trainable": partition.count(trainable), "total": partition.count(self.params)}

    @property
    def data_report(self) -> dict:
        return {role: self.loader.examples(role).report for role in self.loader.roles}


def build(
    config: ml_collections.ConfigDict, data_override: str | None = None, devices=None
) -> Experiment:
    """The run `config` describes; `data_override` evaluates on another dataset's test split."""
    key = run_key(config)  # an unknown prng_impl fails here, before anything loads
    mesh = sharding.make_mesh(config.mesh, devices)
    validate(config, sharding.batch_divisor(mesh))
    # Read tensor by tensor into the params' shardings: no host holds the whole model.
    shardings = sharding.model_shardings(mesh)
    model, params = streaming.from_pretrained(
        config.model.name, shardings, **model_overrides(config)
    )
    model = with_dropout(model, config.model.dropout)
    tokenizer = load_tokenizer(config.model.name)
    source = data_override or config.data.name
    task = tasks.make(config, tokenizer, dataset_info(config.data.name))
    model = task.prepare_model(model)
    method = methods.resolve(config.method.name, model, method_options(config.method))
    if method.init_from:  # a PEFT adapter's parameters start the method
        model, params = peft_format.start_from_adapter(method, model, params)
    else:
        model, params = methods.apply(
            method, model, params, rng=key, tokenizer=tokenizer, shardings=shardings
        )
    task.attach(model)
    check_positions(config, task)
    # Encoded before the head exists: a task may take its label set from the data.
    encoded = encode_splits(config, task, source, evaluation_only=data_override is not None)
    params = with_head(params, task.init_head(key), config)
    unreached = unreached_params(task, params)
    mask = methods.trainable_mask(method, params, unreached, training=data_override is None)
    frozen = {p: v for p, v in partition.flatten(params).items() if not mask[p]}
    table = methods.method_row(method, params, mask, unreached)

    loader = make_loader(config, task, params, mask, encoded, sharding.batch_divisor(mesh))
    per_epoch = loader.num_batches("train") if "train" in loader.roles else 0
    total = config.train.max_steps or config.train.epochs * per_epoch
    tx, lr = make_optimizer(config.optimizer, total)
    table += "\n" + storage_line(task.model, params, mask, tx)
    frozen_hash = checkpoints.frozen_hash(frozen)
    return Experiment(
        config, mesh, method, task, params, mask, loader, tx, lr, total, frozen_hash, table
    )


# config.model fields that are fields of every family's config (how the model computes,
# not what it is); a run from before a field existed gets the field's default.
MODEL_FIELDS = {"dtype": "float32", "param_dtype": "float32", "remat": "none", "scan_layers": False}


def model_overrides(config: ml_collections.ConfigDict) -> dict:
    return {name: config.model.get(name, default) for name, default in MODEL_FIELDS.items()}


def storage_line(model, params: dict, mask: dict[str, bool], tx) -> str:
    """Bytes by dtype of the trainable params (float32 master weights), the frozen ones
    (`model.param_dtype`) and the optimizer state (`optimizer.state_dtype`)."""
    trainable, frozen = partition.split(params, mask)
    trainable = {p: jax.ShapeDtypeStruct(np.shape(v), np.float32) for p, v in trainable.items()}
    frozen = {
        p: jax.ShapeDtypeStruct(np.shape(v), frozen_dtype(model.config, v.dtype))
        for p, v in frozen.items()
    }
    return partition.storage_line(trainable, frozen, jax.eval_shape(tx.init, trainable))


def with_head(params: dict, new_head: dict, config: ml_collections.ConfigDict) -> dict:
    """The task's new head, unless the method brought a trained one (an imported adapter's
    `modules_to_save`), which must have the task head's exact paths and shapes."""
    if tasks.HEAD not in params:
        return {**params, **new_head}
    shapes = {
        p: np.shape(v) for p, v in partition.flatten({tasks.HEAD: params[tasks.HEAD]}).items()
    }
    wanted = {p: np.shape(v) for p, v in partition.flatten(new_head).items()}
    if shapes != wanted:
        raise ConfigError(
            f"method.init_from={config.method.get('init_from', '')!r} brings a task head "
            f"{shapes} that is not this task's {wanted}: check task and data.num_labels"
        )
    return params


def run_key(config: ml_collections.ConfigDict, seed: int | None = None) -> jax.Array:
    """A typed PRNG key of the run's implementation (`config.train.prng_impl`) from `seed`
    (default `train.seed`). Each key carries its implementation, so a run never changes
    JAX's process-wide default, and two runs in one process keep their own streams."""
    name = config.train.prng_impl
    try:
        return jax.random.key(config.train.seed if seed is None else seed, impl=name)
    except ValueError as err:  # JAX's message lists the implementations it knows
        raise ConfigError(f"config.train.prng_impl={name!r}: {err}") from err


def with_dropout(model, rate: float):
    """One dropout rate for every dropout the family has (rate < 0: the checkpoint's)."""
    if rate < 0:
        return model
    fields = {f.name for f in dataclasses.fields(model.config)} & set(DROPOUT_FIELDS)
    return type(model)(dataclasses.replace(model.config, **dict.fromkeys(fields, rate)))


def check_positions(config: ml_collections.ConfigDict, task: tasks.Task) -> None:
    """Refuses sequences longer than the model's position table: the embedding gather
    would read out of range, which JAX answers with NaN rather than an error."""
    limit = task.family.max_positions(task.model.config)
    lengths = task.group_limits()
    if limit is None:
        return
    from ftjax.models.layers import virtual_tokens

    # A prefix or prompt takes positions 0..P-1 before the real tokens (as in PEFT).
    taken = virtual_tokens(task.model.config.peft)
    if max(lengths.values()) <= limit - taken:
        return
    parts = ", ".join(f"{group} {n}" for group, n in lengths.items())
    method = f", {taken} of them taken by the method's prefix / prompt" if taken else ""
    raise ConfigError(
        f"config.data.max_length={config.data.max_length}: task {task.name} feeds the model "
        f"sequences of up to {max(lengths.values())} tokens ({parts}), beyond the "
        f"{limit - taken} positions of model {config.model.name} ({limit}{method}); lower "
        "config.data.max_length"
        + (" (or data.max_target_length)" if "max_target_length" in config.data else "")
    )


def unreached_params(task: tasks.Task, params: dict) -> set[str]:
    """Backbone parameter paths the task's loss never reaches."""
    patterns = [re.compile(p) for p in task.unreached()]
    return {
        path
        for path in partition.flatten(task.backbone_params(params))
        if any(p.fullmatch(path) for p in patterns)
    }


def encode_splits(config, task, source: str, evaluation_only: bool) -> dict[str, Examples]:
    """The task's examples of each role's split (train / validation / test)."""
    d = config.data
    splits = load_splits(source)
    wanted = {"train": d.train_split, "validation": d.eval_split, "test": d.test_split}
    if evaluation_only:  # another dataset of the same task: its test split, or its only one
        wanted = {"test": d.test_split if d.test_split in splits else next(iter(splits))}
    missing = [f"{role}={name!r}" for role, name in wanted.items() if name not in splits]
    if missing:
        raise ConfigError(
            f"config.data: split(s) {missing} not in {source} (it has {list(splits)})"
        )
    rows = {role: splits[name] for role, name in wanted.items()}
    if "train" in rows and d.train_examples:
        rows["train"] = training_subsample(config, task, rows["train"])
    # N rows drawn with a fixed seed, the same in every run (datasets are often sorted,
    # e.g. by label, so the first N would be a biased cut); kept in dataset order.
    for role, limit in (("validation", d.eval_examples), ("test", d.test_examples)):
        if role in rows and 0 < limit < len(rows[role]):
            rows[role] = rows[role].select(stratified_sample(None, len(rows[role]), limit, 0))
    task.prepare_data(splits)
    encoded = {role: task.encode(rows[role], name) for role, name in wanted.items()}
    empty = [wanted[role] for role, examples in encoded.items() if not len(examples)]
    if empty:
        raise ConfigError(f"config.data: split(s) {empty} of {source} hold no usable example")
    return encoded


def training_subsample(config: ml_collections.ConfigDict, task: tasks.Task, rows):
    """`data.train_examples` rows of the training split, drawn with `data.sample_seed`
    (-1: `train.seed`, so each seed of a study trains on its own draw), in the class
    proportions of the split when the task has classes (`Task.strata`)."""
    d = config.data
    if d.train_examples > len(rows):
        raise ConfigError(
            f"config.data.train_examples={d.train_examples}: the training split "
            f"{d.train_split!r} of {d.name} has {len(rows)} rows (0 takes them all)"
        )
    seed = config.train.seed if d.sample_seed < 0 else d.sample_seed
    chosen = stratified_sample(task.strata(rows), len(rows), d.train_examples, seed)
    return rows.select(chosen)


def make_loader(config, task, params, mask, encoded: dict[str, Examples], batch_divisor=1):
    d = config.data
    tokens = TokenLoader(
        encoded,
        d.batch_size,
        d.eval_batch_size,
        task.group_limits(),
        config.train.seed,
        d.bucket_step,
        d.pack_length,
        batch_divisor,  # a packed batch's rows split over the mesh's batch axes
        eval_widths=task.eval_widths(),
    )
    if "train" in tokens.roles:  # packed row counts bucketed over the batches it trains on
        per_epoch = tokens.num_batches("train")
        tokens = tokens.with_row_buckets(config.train.max_steps or config.train.epochs * per_epoch)
    if not config.method.get("cache_features", False):
        return tokens
    head_only = all(path.startswith(f"{tasks.HEAD}/") for path, t in mask.items() if t)
    if not task.caches_features or not head_only:
        why = "more than the head trains" if not head_only else f"{task.name} pools no features"
        log.warning("method.cache_features: not caching (%s); the backbone runs every step", why)
        return tokens
    stored = stacking.to_storage(task.model, stack_depths(task.model), partition.flatten(params))
    return FeatureLoader.cache(tokens, task, partition.unflatten(stored))
