"""Experiment configs: the defaults every `configs/*.py` starts from, and their checks.

A config file's `get_config(arg)` takes "key=value,..." (e.g. "model=minilm,method=lora")
and returns a locked `ml_collections.ConfigDict`, so a misspelt field given on the shell
(`--config.method.rnak=16`) is an error naming it. `validate` checks what a config can
only get wrong in combination (before anything compiles).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import jax
import ml_collections

from ftjax import methods, tasks
from ftjax.core.errors import ConfigError

# Learning rates that work for each method on MiniLM-sized models (experiments/RESULTS.md).
METHOD_LEARNING_RATES = {
    "none": 0.0,  # evaluation only
    "probe": 1e-2,
    "full": 1e-4,
    "top_k": 2e-4,
    "layernorm": 5e-3,
    "bitfit": 5e-3,
    "selective": 1e-3,
    "lora": 1e-3,
    "adapter": 1e-3,
    "prefix": 1e-2,
    "prompt": 3e-2,
}


def parse_arg(arg: str | None) -> dict[str, str]:
    """ "model=minilm,method=lora" -> {"model": "minilm", "method": "lora"}."""
    out = {}
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"config argument {item!r} is not key=value")
        out[key.strip()] = value.strip()
    return out


def method_config(name: str) -> ml_collections.ConfigDict:
    """The method's name and every option with its default (from ftjax.methods)."""
    if name not in methods.METHODS:
        raise ValueError(f"method={name!r}; known: {', '.join(methods.METHODS)}")
    options: dict[str, Any] = {"name": name}
    for param in list(inspect.signature(methods.METHODS[name]).parameters.values())[2:]:
        default = param.default
        options[param.name] = "" if default is None else default
    options.update(extra_trainable=(), train_embeddings=False, train_head=True)
    return ml_collections.ConfigDict(options)


def best_metric(config: ml_collections.ConfigDict) -> tuple[str, bool]:
    """(metric that picks the best checkpoint, whether higher is better)."""
    task = tasks.task_class(config.task.name)
    name = config.train.best_metric or task.metrics[0]
    return name, name not in task.lower_is_better


def method_options(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The options to pass to `methods.resolve` ("" meaning the family default)."""
    options = {k: v for k, v in cfg.items() if k != "name"}
    return {k: (None if v == "" and k == "targets" else v) for k, v in options.items()}


def base_config(
    arg: str | None,
    *,
    data: str,
    task: str = "classification",
    default_method: str = "lora",
    **data_fields: Any,
) -> ml_collections.ConfigDict:
    """The defaults every config file starts from: `task` picks the task kind (its
    `config.task` fields and data columns come from the task class), `data` the dataset,
    `default_method` the method when `arg` names none, and `data_fields` override data
    defaults (e.g. num_labels=5)."""
    args = parse_arg(arg)
    unknown = set(args) - {"model", "method", "dtype"}
    if unknown:
        raise ValueError(f"config argument(s) {sorted(unknown)}: use model=, method=, dtype=")
    task_cls = tasks.task_class(task)
    method = args.get("method", default_method)
    c = ml_collections.ConfigDict()
    c.model = ml_collections.ConfigDict(
        {
            "name": args.get("model", "minilm"),
            "dtype": args.get("dtype", "float32"),  # bf16 is slower on CPU here (RESULTS.md)
            # "bfloat16": dense matmuls take bf16 inputs (f32 accumulation, activations
            # and params) in both passes, as TPUs do by default; "" = the backend's
            # default (exact float32 on CPU and in the parity tests). Faster only where
            # the hardware multiplies bf16 natively (TPU, GPU, AVX512-BF16 CPUs: 1.4x a
            # default run); slower on an AVX2-only CPU (0.84x a step, benchmarks/RESULTS.md).
            "matmul_precision": "",
            "dropout": -1.0,  # >= 0 overrides every dropout rate of the checkpoint's config
            # Storage of the frozen params (bfloat16 halves a LoRA run's weights); trainable
            # params stay float32 master weights whatever the compute dtype.
            "param_dtype": "float32",
            # Per-layer rematerialisation in training: none, full, dots, dots_no_batch
            # (what a layer keeps for the backward pass; models.layers.REMAT_POLICIES).
            "remat": "none",
            # One nn.scan over each layer stack: compile time flat in depth; params keep
            # their per-layer paths everywhere outside the compiled steps.
            "scan_layers": False,
        }
    )
    c.method = method_config(method)
    c.task = ml_collections.ConfigDict({"name": task, **task_cls.task_defaults})
    data_config = {
        "name": data,
        **task_cls.data_defaults,
        "max_length": 64,
        "batch_size": 32,
        "eval_batch_size": 64,
        "bucket_step": 16,
        # > 0: training batches pack several examples per row of this many tokens
        # (segment ids keep them apart; same examples per step), >= max_length; 0: off
        # (rows bucketed by length); -1: max_length wherever task, model and method
        # allow packing, else off.
        "pack_length": -1,
        "train_split": "train",
        "eval_split": "validation",
        # > 0: a class-stratified draw of N training rows (0: all), seeded by sample_seed
        # (-1: train.seed, so each seed of a study draws its own rows)
        "train_examples": 0,
        "sample_seed": -1,
        # > 0: N rows of the split, drawn with a fixed seed (the same in every run)
        "eval_examples": 0,  # validation during training
        "test_examples": 0,  # the test split (quick or costly evaluations)
        "test_split": "test",
        "on_bad_row": "error",  # or "drop": bad rows dropped and counted per reason
    }
    unknown = set(data_fields) - set(data_config)
    if unknown:
        raise ValueError(f"task {task}: unknown data field(s) {sorted(unknown)}")
    c.data = ml_collections.ConfigDict({**data_config, **data_fields})
    c.optimizer = ml_collections.ConfigDict(
        {
            "name": "adamw",
            "learning_rate": METHOD_LEARNING_RATES[method],
            "weight_decay": 0.01,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "momentum": 0.9,
            "schedule": "linear",
            "warmup_ratio": 0.06,
            "warmup_steps": 0,
            "grad_clip": 1.0,
            "grad_accum": 1,
            "state_dtype": "float32",  # optimizer moments (bfloat16 halves their memory)
        }
    )
    c.train = ml_collections.ConfigDict(
        {
            "epochs": 2,
            "seed": 0,
            "log_every": 50,
            "eval_every": 0,  # steps between validations; 0: `evaluations` over the run
            "evaluations": 2,  # validations per run, evenly spaced (the last at the end)
            "checkpoint_every": 0,
            "keep": 2,
            "best_metric": "",  # any metric the task reports; "" = the task's first
            "peak_flops": 0.0,
            "max_steps": 0,
            "prng_impl": "threefry2x32",
            # XLA options for compiling the train and eval steps, "name=value,...", e.g.
            # "xla_backend_optimization_level=0" (faster compiles, slower steps).
            "xla_options": "",
        }
    )
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.lock()
    return c


def matmul_precision(config: ml_collections.ConfigDict) -> contextlib.AbstractContextManager:
    """`config.model.matmul_precision` for what is traced inside (a run's build, steps,
    evaluation and generation: `models.layers.matmul` reads it); a run from before the
    field had the backend's default."""
    return jax.default_matmul_precision(config.model.get("matmul_precision", "") or None)


def compiler_options(config: ml_collections.ConfigDict) -> dict[str, bool | int | float | str]:
    """config.train.xla_options ("name=value,...") as XLA compiler options."""
    return parse_xla_options(config.train.xla_options)


def parse_xla_options(text: str) -> dict[str, bool | int | float | str]:
    """ "name=value,..." (the form of config.train.xla_options) as XLA compiler options."""
    options: dict[str, bool | int | float | str] = {}
    text = text.strip()
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, equals, value = item.partition("=")
        if not equals or not name.startswith("xla_") or not value:
            raise ConfigError(
                f"config.train.xla_options={text!r}: {item!r} is not 'xla_<option>=<value>'"
            )
        options[name] = _option_value(value)
    return options


def _option_value(text: str) -> bool | int | float | str:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def validate(config: ml_collections.ConfigDict, mesh_batch_divisor: int) -> None:
    """Checks that need several fields at once; runs before anything compiles."""
    d, o, t = config.data, config.optimizer, config.train
    for field, value in (
        ("data.batch_size", d.batch_size),
        ("data.max_length", d.max_length),
        ("optimizer.grad_accum", o.grad_accum),
        ("train.epochs", t.epochs),
    ):
        if value < 1:
            raise ConfigError(f"config.{field}={value} must be >= 1")
    if d.batch_size % o.grad_accum:
        raise ConfigError(
            f"config.data.batch_size={d.batch_size} is not divisible by "
            f"config.optimizer.grad_accum={o.grad_accum}"
        )
    micro = d.batch_size // o.grad_accum
    for field, size in (
        ("data.batch_size / optimizer.grad_accum", micro),
        ("data.eval_batch_size", d.eval_batch_size),
    ):
        if size % mesh_batch_divisor:
            raise ConfigError(
                f"config.{field}={size} is not divisible by the mesh's batch axes "
                f"(data x fsdp = {mesh_batch_divisor})"
            )
    if o.learning_rate <= 0 and config.method.name != "none":  # none: evaluation only
        raise ConfigError(f"config.optimizer.learning_rate={o.learning_rate} must be > 0")
    for field in ("train_examples", "eval_examples", "test_examples"):
        if d[field] < 0:
            raise ConfigError(f"config.data.{field}={d[field]} must be >= 0 (0: all)")
    if "num_labels" in d and d.num_labels < 1:
        raise ConfigError(f"config.data.num_labels={d.num_labels} must be >= 1")
    task = tasks.task_class(config.task.name)
    if t.best_metric and t.best_metric not in (*task.metrics, "loss"):
        raise ConfigError(
            f"config.train.best_metric={t.best_metric!r}: task {task.name} reports "
            f"{', '.join((*task.metrics, 'loss'))}"
        )
    compiler_options(config)
    if d.on_bad_row not in ("error", "drop"):
        raise ConfigError(f"config.data.on_bad_row={d.on_bad_row!r}: error or drop")
    for field in ("model.dtype", "model.param_dtype", "optimizer.state_dtype"):
        section, name = field.split(".")
        if config[section].get(name, "float32") not in ("float32", "bfloat16"):
            raise ConfigError(f"config.{field}={config[section][name]!r}: float32 or bfloat16")
    _check_choices(config)
    _check_ranges(config)


CHOICES = {
    "model.remat": ("none", "full", "dots", "dots_no_batch"),  # models.layers.REMAT_POLICIES
    "model.matmul_precision": ("", "bfloat16"),
    "optimizer.name": ("adamw", "adafactor", "sgd"),
    "optimizer.schedule": ("linear", "cosine", "constant"),
}


def _check_choices(config: ml_collections.ConfigDict) -> None:
    for field, choices in CHOICES.items():
        section, name = field.split(".")
        value = config[section].get(name, choices[0])  # a run from before the field: default
        if value not in choices:
            raise ConfigError(f"config.{field}={value!r}; choose from {', '.join(choices)}")


def _check_ranges(config: ml_collections.ConfigDict) -> None:
    """Numbers whose range a typo leaves (a rate of 2, a keep of 0)."""
    rates = {
        "model.dropout": config.model.dropout,
        "optimizer.warmup_ratio": config.optimizer.warmup_ratio,
    }
    rates.update({f"task.{k}": v for k, v in config.task.items() if k.endswith("dropout")})
    for field, value in rates.items():
        lowest = -1.0 if field == "model.dropout" else 0.0  # -1: the checkpoint's rates
        if not (value == lowest or 0.0 <= value < 1.0):
            also = " (or -1: the checkpoint's rates)" if lowest < 0 else ""
            raise ConfigError(f"config.{field}={value} must be in [0, 1){also}")
    for field in ("train.keep", "train.evaluations", "data.bucket_step"):
        section, name = field.split(".")
        if config[section][name] < 1:
            raise ConfigError(f"config.{field}={config[section][name]} must be >= 1")


def standalone_task(name: str, model, tokenizer=None, **fields) -> tasks.Task:
    """A task bound to `model` outside a run (tests, notebooks, benchmarks); `fields`
    set `config.task.X` or `config.data.X` by name, e.g. num_labels=3, pooling="cls"."""
    config = base_config(None, task=name, data="")
    config.unlock()
    for key, value in fields.items():
        section = next((s for s in ("task", "data") if key in config[s]), None)
        if section is None:
            raise tasks.TaskError(f"task {name}: no config.task or config.data field {key!r}")
        config[section][key] = value
    task = tasks.make(config, tokenizer)
    task.attach(task.prepare_model(model))
    return task
