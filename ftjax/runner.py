"""A run from a config: build model, method, task, data and sharded state; train; test.

The data path is straight: config -> model + params (hub) -> method (hooks + trainable
mask) -> task (classification head) -> batches -> sharded state -> jit steps ->
metrics / checkpoints. `Experiment` holds everything a run needs and is what
`ftjax.evaluate` rebuilds from a workdir.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import resource
import signal
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ftjax import batching, checkpoints, methods, partition, probe, sharding
from ftjax.config import ConfigError, method_options, validate
from ftjax.data import load_splits
from ftjax.metrics import MetricWriter, Progress
from ftjax.models import from_pretrained, load_tokenizer, param_axes
from ftjax.optim import make_optimizer
from ftjax.tasks.classification import HEAD, Classifier
from ftjax.tasks.features import FeatureSpec
from ftjax.train import TrainState, make_train_step

log = logging.getLogger("ftjax")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


# ----------------------------------------------------------------------------- data


@dataclasses.dataclass
class TokenSource:
    """Tokenized splits -> bucketed batches (train: shuffled per epoch; eval: in order)."""

    splits: dict[str, batching.Encoded]
    batch_size: int
    eval_batch_size: int
    max_length: int
    pad_id: int
    seed: int
    bucket_step: int

    def num_batches(self, split: str = "train") -> int:
        return batching.num_batches(self.splits[split], self.batch_size)

    def train_batches(self, epoch: int, start: int) -> Iterator[dict]:
        return batching.batches(
            self.splits["train"],
            self.batch_size,
            self.max_length,
            self.pad_id,
            seed=self.seed,
            epoch=epoch,
            start=start,
            bucket_step=self.bucket_step,
        )

    def eval_batches(self, split: str) -> Iterator[dict]:
        return batching.batches(
            self.splits[split],
            self.eval_batch_size,
            self.max_length,
            self.pad_id,
            shuffle=False,
            bucket_step=self.bucket_step,
        )


@dataclasses.dataclass
class FeatureSource:
    """A probe's cached features: the backbone ran once; batches hold features."""

    features: dict[str, tuple[np.ndarray, np.ndarray]]
    batch_size: int
    eval_batch_size: int
    seed: int

    def num_batches(self, split: str = "train") -> int:
        return -(-len(self.features[split][1]) // self.batch_size)

    def train_batches(self, epoch: int, start: int) -> Iterator[dict]:
        feats, labels = self.features["train"]
        batches = probe.feature_batches(feats, labels, self.batch_size, self.seed * 1000 + epoch)
        for i, batch in enumerate(batches):
            if i >= start:
                yield batch

    def eval_batches(self, split: str) -> Iterator[dict]:
        feats, labels = self.features[split]
        for start in range(0, len(labels), self.eval_batch_size):
            n = min(self.eval_batch_size, len(labels) - start)
            pad = self.eval_batch_size - n
            yield {
                "features": np.pad(feats[start : start + n], ((0, pad), (0, 0))),
                "labels": np.pad(labels[start : start + n], (0, pad)),
                "example_mask": np.pad(np.ones(n, np.float32), (0, pad)),
            }


# ----------------------------------------------------------------------------- experiment


@dataclasses.dataclass
class Experiment:
    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    method: methods.Method
    task: Classifier
    params: dict  # host params, backbone + head
    mask: dict[str, bool]
    source: Any  # TokenSource | FeatureSource
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    total_steps: int
    frozen_hash: str
    table: str

    @property
    def steps_per_epoch(self) -> int:
        return self.source.num_batches("train")


DROPOUT_FIELDS = ("hidden_dropout", "attention_dropout", "embedding_dropout", "dropout")


def build(
    config: ml_collections.ConfigDict, data_override: str | None = None, devices=None
) -> Experiment:
    """Everything a run needs, checked before anything compiles."""
    jax.config.update("jax_default_prng_impl", config.train.prng_impl)
    mesh = sharding.make_mesh(config.mesh, devices)
    validate(config, sharding.batch_divisor(mesh))
    model, params = from_pretrained(config.model.name, dtype=config.model.dtype)
    if config.model.dropout >= 0:  # one rate for every dropout the family has
        fields = {f.name for f in dataclasses.fields(model.config)} & set(DROPOUT_FIELDS)
        model = type(model)(
            dataclasses.replace(model.config, **dict.fromkeys(fields, config.model.dropout))
        )
    tokenizer = load_tokenizer(config.model.name)
    method = methods.resolve(config.method.name, model, method_options(config.method))
    spec = FeatureSpec(pooling=config.task.pooling, layers=config.task.layers)
    if spec.pooling == "pooler" and params.get("pooler") is None:
        raise ConfigError(f"config.task.pooling='pooler': {config.model.name} has no pooler")
    model, params = methods.apply(method, model, params, rng=config.train.seed, tokenizer=tokenizer)
    task = Classifier(model, config.data.num_labels, spec, config.task.head_dropout)
    params = {**params, **task.init_head(jax.random.PRNGKey(config.train.seed))}
    mask = methods.trainable_mask(method, params)
    frozen = {p: v for p, v in partition.flatten(params).items() if not mask[p]}
    table = methods.method_row(method, params, mask)

    source = _data_source(config, task, params, tokenizer, data_override)
    per_epoch = source.num_batches("train") if "train" in _roles(source) else 0
    total = config.train.max_steps or config.train.epochs * per_epoch
    tx, lr = make_optimizer(config.optimizer, total)
    return Experiment(
        config,
        mesh,
        method,
        task,
        params,
        mask,
        source,
        tx,
        lr,
        total,
        checkpoints.frozen_hash(frozen),
        table,
    )


def _data_source(config, task, params, tokenizer, data_override):
    d = config.data
    splits = load_splits(data_override or d.name)
    wanted = {"train": d.train_split, "validation": d.eval_split, "test": d.test_split}
    if data_override:  # evaluation on another dataset of the same task
        name = d.test_split if d.test_split in splits else next(iter(splits))
        wanted = {"test": name}
    missing = [f"{k}={v!r}" for k, v in wanted.items() if v not in splits]
    if missing:
        raise ConfigError(
            f"config.data: split(s) {missing} not in {data_override or d.name} "
            f"(it has {list(splits)})"
        )
    encoded = {
        role: batching.encode(
            splits[name], tokenizer, d.max_length, d.text_column, d.label_column, d.num_labels
        )
        for role, name in wanted.items()
    }
    tokens = TokenSource(
        encoded,
        d.batch_size,
        d.eval_batch_size,
        d.max_length,
        tokenizer.pad_token_id,
        config.train.seed,
        d.bucket_step,
    )
    if not methods_cache_features(config):
        return tokens
    start = time.perf_counter()
    features = {
        role: probe.extract_features(task, params, tokens.eval_batches(role)) for role in encoded
    }
    log.info(
        "probe: cached features of %s in %.1fs (the backbone runs once)",
        {k: len(v[1]) for k, v in features.items()},
        time.perf_counter() - start,
    )
    return FeatureSource(features, d.batch_size, d.eval_batch_size, config.train.seed)


def _roles(source) -> set[str]:
    return set(source.splits if isinstance(source, TokenSource) else source.features)


def methods_cache_features(config) -> bool:
    return config.method.name == "probe" and config.method.get("cache_features", False)


# ----------------------------------------------------------------------------- state


def param_specs(exp: Experiment) -> dict[str, tuple]:
    """Logical axes of every param (backbone and head), flat."""
    backbone = partition.flatten(param_axes(exp.task.backbone))
    head = partition.flatten(
        {
            HEAD: nn.get_partition_spec(
                jax.eval_shape(
                    exp.task.head.init,
                    jax.random.PRNGKey(0),
                    jnp.zeros((1, exp.task.feature_width)),
                )
            )["params"]
        }
    )
    return {path: tuple(spec) for path, spec in {**backbone, **head}.items()}


def _put(array: np.ndarray, target: jax.sharding.NamedSharding) -> jax.Array:
    """Host array (the same on every process) -> a global array laid out as `target`."""
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, target, lambda index: array[index])


def state_shardings(exp: Experiment, trainable: dict, frozen: dict):
    specs = param_specs(exp)
    shapes = {p: np.shape(v) for p, v in {**trainable, **frozen}.items()}
    shard = sharding.param_shardings(specs, shapes, exp.mesh)
    repl = sharding.replicated(exp.mesh)
    abstract_opt = jax.eval_shape(exp.tx.init, trainable)

    def opt_leaf(state_leaf, param_sharding, shape):
        # Adam moments mirror their param; Adafactor's factored rows/cols do not.
        return param_sharding if state_leaf.shape == shape else repl

    trainable_shard = {p: shard[p] for p in trainable}
    opt_shard = optax.tree_map_params(
        exp.tx,
        opt_leaf,
        abstract_opt,
        trainable_shard,
        {p: shapes[p] for p in trainable},
        transform_non_params=lambda _: repl,
    )
    return TrainState(
        step=repl,
        trainable=trainable_shard,
        frozen={p: shard[p] for p in frozen},
        opt_state=opt_shard,
    )


def initial_state(exp: Experiment) -> tuple[TrainState, TrainState]:
    """(state, its shardings): params placed by the rules, optimizer state beside them."""
    trainable, frozen = partition.split(exp.params, exp.mask)
    shardings = state_shardings(exp, trainable, frozen)
    trainable = {p: _put(v, shardings.trainable[p]) for p, v in trainable.items()}
    frozen = {p: _put(v, shardings.frozen[p]) for p, v in frozen.items()}
    opt_state = jax.jit(exp.tx.init, out_shardings=shardings.opt_state)(trainable)
    step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
    return TrainState(step, trainable, frozen, opt_state), shardings


# ----------------------------------------------------------------------------- steps


def local_rows(batch: dict, accumulate: int) -> dict:
    """This process's share of a global batch, split into micro-batches if accumulating."""
    count, index = jax.process_count(), jax.process_index()
    out = {}
    for key, value in batch.items():
        rows = len(value) // count
        mine = value[index * rows : (index + 1) * rows]
        out[key] = mine.reshape(accumulate, -1, *mine.shape[1:]) if accumulate > 1 else mine
    return out


def to_global(exp: Experiment, batch: dict, accumulate: int = 1) -> dict:
    return sharding.global_batch(local_rows(batch, accumulate), exp.mesh, accumulate > 1)


class Steps:
    """Compiled train/eval steps, one executable per batch shape (few: lengths are bucketed)."""

    def __init__(self, exp: Experiment, shardings: TrainState):
        self.exp, self.shardings = exp, shardings
        self.accumulate = exp.config.optimizer.grad_accum
        self.eval_fn = jax.jit(self._eval_sums)
        self.compiled: dict[tuple, Any] = {}
        self.flops: dict[tuple, float] = {}

    def _eval_sums(self, state: TrainState, batch: dict) -> dict:
        params = partition.merge(state.trainable, state.frozen)
        logits = self.exp.task.logits(params, batch)
        weights = batch["example_mask"]
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
        correct = (jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)
        return {
            "loss_sum": (losses * weights).sum(),
            "correct": (correct * weights).sum(),
            "count": weights.sum(),
        }

    def train(self, state: TrainState, batch: dict, rng: jax.Array):
        key = tuple(np.shape(v) for v in batch.values())
        if key not in self.compiled:
            global_batch = to_global(self.exp, batch, self.accumulate)
            in_shardings = (
                self.shardings,
                {k: v.sharding for k, v in global_batch.items()},
                sharding.replicated(self.exp.mesh),
            )
            fn = jax.jit(
                make_train_step(self.exp.task.loss, self.exp.tx, self.accumulate),
                in_shardings=in_shardings,
                out_shardings=(self.shardings, sharding.replicated(self.exp.mesh)),
                donate_argnums=0,
            )
            compiled = fn.lower(state, global_batch, rng).compile()
            self.compiled[key] = compiled
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            self.flops[key] = float((cost or {}).get("flops", 0.0))
        return self.compiled[key](state, to_global(self.exp, batch, self.accumulate), rng)

    def evaluate(self, state: TrainState, split: str) -> dict[str, float]:
        totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
        for batch in self.exp.source.eval_batches(split):
            sums = self.eval_fn(state, to_global(self.exp, batch))
            for k in totals:
                totals[k] += float(sums[k])
        count = max(totals["count"], 1.0)
        return {
            "accuracy": totals["correct"] / count,
            "loss": totals["loss_sum"] / count,
            "examples": int(totals["count"]),
        }


# ----------------------------------------------------------------------------- loop


class StopFlag:
    """SIGTERM / SIGINT ask the loop to finish its step, save and exit cleanly."""

    def __init__(self):
        self.signal: int | None = None
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        self.signal = signum

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def save_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains (resuming from the workdir's latest checkpoint), then tests; returns results."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    exp = build(config)
    log.info("method %s", exp.table)
    print(f"{'method':<10} {'trainable':>12} {'% total':>10}  per group\n{exp.table}", flush=True)
    if jax.process_index() == 0:
        save_config(config, workdir)
    state, shardings = initial_state(exp)
    steps = Steps(exp, shardings)
    mngr = checkpoints.manager(workdir / "checkpoints", config.train.keep, config.train.best_metric)
    epoch, start = 0, 0
    if mngr.latest_step() is not None:
        state, meta = checkpoints.restore(mngr, state)
        if meta["frozen_hash"] != exp.frozen_hash:
            raise checkpoints.ResumeError(
                f"{workdir}: the frozen params differ from those the checkpoint was trained "
                "with (backbone or method changed); use a new --workdir"
            )
        epoch, start = meta["epoch"], meta["batch"]
        print(f"resumed from step {int(state.step)} (epoch {epoch}, batch {start})", flush=True)

    writer = MetricWriter(workdir)
    results = _train_loop(exp, state, steps, mngr, writer, epoch, start)
    writer.close()
    mngr.wait_until_finished()
    mngr.close()
    return results


def _meta(exp: Experiment, epoch: int, batch: int) -> dict:
    return {
        "epoch": epoch,
        "batch": batch,
        "seed": exp.config.train.seed,
        "frozen_hash": exp.frozen_hash,
    }


def _train_loop(exp, state, steps, mngr, writer, epoch, start) -> dict[str, Any]:
    cfg = exp.config.train
    per_epoch = exp.steps_per_epoch
    progress = Progress(exp.total_steps, int(state.step), cfg.log_every)
    stop = StopFlag()
    base_rng = jax.random.PRNGKey(cfg.seed)
    eval_every = cfg.eval_every or per_epoch
    checkpoint_every = cfg.checkpoint_every or eval_every
    step = int(state.step)
    step_times: list[float] = []
    try:
        while step < exp.total_steps:
            for index, batch in enumerate(exp.source.train_batches(epoch, start), start):
                tic = time.perf_counter()
                state, metrics = steps.train(state, batch, jax.random.fold_in(base_rng, step))
                loss = float(metrics["loss"])  # also waits for the step to finish
                seconds = time.perf_counter() - tic
                step_times.append(seconds)
                step += 1
                if not math.isfinite(loss):
                    raise TrainingDiverged(
                        f"loss is {loss} at step {step} (epoch {epoch}, batch {index}); stopped "
                        f"without saving. The last good checkpoint is step "
                        f"{mngr.latest_step()}. Try a lower config.optimizer.learning_rate."
                    )
                row = _step_metrics(exp, steps, batch, metrics, loss, seconds, step)
                progress.update(step, {"loss": loss, "lr": row["learning_rate"]})
                if step % cfg.log_every == 0:
                    writer.write(step, "train", row)
                position = (epoch, index + 1) if index + 1 < per_epoch else (epoch + 1, 0)
                evaluated = None
                if step % eval_every == 0 or step == exp.total_steps:
                    evaluated = steps.evaluate(state, "validation")
                    writer.write(step, "eval", evaluated)
                    print(f"\nstep {step}: validation " + _fmt(evaluated), flush=True)
                if evaluated or step % checkpoint_every == 0 or stop.signal:
                    checkpoints.save(
                        mngr,
                        state,
                        _meta(exp, *position),
                        evaluated and {k: evaluated[k] for k in ("accuracy", "loss")},
                    )
                if stop.signal:
                    mngr.wait_until_finished()
                    print(
                        f"\nstopped by signal {stop.signal} after step {step}; checkpoint "
                        "saved, rerun the same command to resume",
                        flush=True,
                    )
                    return {"stopped": True, "step": step}
                if step >= exp.total_steps:
                    break
            epoch, start = epoch + 1, 0
    finally:
        progress.close()
        stop.restore()
    test = steps.evaluate(state, "test")
    writer.write(step, "test", test)
    summary = {
        "step": step,
        "test": test,
        "method": exp.method.name,
        "model": exp.config.model.name,
        "trainable": exp.table,
        "median_step_seconds": statistics.median(step_times) if step_times else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if jax.process_index() == 0:
        (mngr.directory.parent / "results.json").write_text(json.dumps(summary, indent=2))
    print(
        f"final test {_fmt(test)} (step {step}, method {exp.method.name}, model "
        f"{exp.config.model.name})",
        flush=True,
    )
    return summary


def _step_metrics(exp, steps, batch, metrics, loss, seconds, step) -> dict[str, float]:
    real = float(np.sum(batch["attention_mask"])) if "attention_mask" in batch else 0.0
    padded = float(np.size(batch["attention_mask"])) if "attention_mask" in batch else 0.0
    row = {
        "loss": loss,
        "learning_rate": float(exp.schedule(step - 1)),
        "grad_norm": float(metrics["grad_norm"]),
        "step_seconds": seconds,
        "tokens_per_second": real / seconds,
        "padded_tokens_per_second": padded / seconds,
        "examples_per_second": float(np.sum(batch["example_mask"])) / seconds,
    }
    peak = exp.config.train.peak_flops
    flops = steps.flops.get(tuple(np.shape(v) for v in batch.values()), 0.0)
    if peak and flops:
        row["mfu"] = flops / seconds / (peak * jax.device_count())
    return row


def _fmt(metrics: dict) -> str:
    return " ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
    )
