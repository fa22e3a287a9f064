"""A run: build the experiment, train (resuming from the workdir), evaluate, test.

The loop knows neither the method nor the task: it feeds the loader's batches to the
compiled steps, writes metric rows, evaluates and checkpoints on schedule, stops cleanly
on SIGTERM / SIGINT and on a non-finite loss, and writes the results at the end.
"""

from __future__ import annotations

import json
import math
import resource
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from ftjax.training import checkpoints, fingerprint
from ftjax.training.config import best_metric, matmul_precision
from ftjax.training.experiment import Experiment, build, run_key
from ftjax.training.metrics import MetricWriter, Progress
from ftjax.training.state import initial_state
from ftjax.training.steps import Steps, shape_key


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class StopFlag:
    """SIGTERM / SIGINT ask the loop to finish its step, save and exit cleanly.

    A signal may reach one host only; the save that follows is collective, so every
    process must stop at the same step (`agreed`), or the others train on and deadlock.
    """

    def __init__(self):
        self.signal: int | None = None
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        self.signal = signum

    def agreed(self) -> int | None:
        """The signal any process has seen (the highest), else None. A collective when
        there are several processes: every process calls it at every step."""
        seen = self.signal or 0  # read once: a signal arriving later counts next step
        if jax.process_count() > 1:
            seen = int(np.max(multihost_utils.process_allgather(np.int32(seen))))
        return seen or None

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def checkpoint_manager(config: ml_collections.ConfigDict, workdir: Path):
    metric, higher_is_better = best_metric(config)
    return checkpoints.manager(workdir / "checkpoints", config.train.keep, metric, higher_is_better)


def run_config(workdir: str | Path) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(json.loads((Path(workdir) / "config.json").read_text()))


def chosen_step(mngr, step: str, workdir: Path) -> int:
    """The checkpoint `step` names: latest, best or a number."""
    chosen = {"latest": mngr.latest_step(), "best": mngr.best_step()}.get(step)
    chosen = int(step) if chosen is None and str(step).isdigit() else chosen
    if chosen is None:
        raise checkpoints.ResumeError(f"{workdir}: no checkpoint for step={step}")
    return chosen


def restore_run(workdir: str | Path, step: str = "latest", data: str | None = None):
    """(experiment, restored state, state shardings, step) of a workdir's checkpoint
    `step` (latest, best or a number), its frozen params checked against training's."""
    workdir = Path(workdir)
    config = run_config(workdir)
    exp = build(config, data_override=data)
    initial, shardings = initial_state(exp)
    mngr = checkpoint_manager(config, workdir)
    try:
        chosen = chosen_step(mngr, step, workdir)
        restored, meta = checkpoints.restore(mngr, initial, chosen)
    finally:
        mngr.close()
    if meta["frozen_hash"] != exp.frozen_hash:
        raise checkpoints.ResumeError(f"{workdir}: the frozen params differ from training's")
    return exp, restored, shardings, chosen


def save_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")


def run(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Trains (resuming from the workdir's latest checkpoint), then tests; returns results."""
    with matmul_precision(config):
        return _run(config, Path(workdir))


def _run(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    exp = build(config)
    print(f"{'method':<10} {'trainable':>12} {'% total':>10}  per group\n{exp.table}", flush=True)
    state, shardings = initial_state(exp)
    steps = Steps(exp, shardings)
    mngr = checkpoint_manager(config, workdir)
    try:  # the manager is closed (its pending save finished) on every way out
        state, epoch, start = _start_or_resume(exp, state, mngr, workdir)
        writer = MetricWriter(workdir)
        try:
            return _train_loop(exp, state, steps, mngr, writer, epoch, start)
        finally:
            writer.close()
    finally:
        mngr.wait_until_finished()
        mngr.close()


def _start_or_resume(exp: Experiment, state, mngr, workdir: Path):
    """(state, epoch, batch) to train from: a new run records its config; a resumed one
    must be the same run (config fingerprint and frozen params) and keeps its record."""
    if mngr.latest_step() is None:
        if jax.process_index() == 0:
            save_config(exp.config, workdir)  # after build: holds what the task resolved
        return state, 0, 0
    _refuse_another_run(exp.config, workdir)
    state, meta = checkpoints.restore(mngr, state)
    now = fingerprint.fingerprint(exp.config)
    if meta.get("fingerprint", now) != now:  # checkpoints from before fingerprints: no check
        raise checkpoints.ResumeError(
            f"{workdir}: the config differs from the one its checkpoint was trained with "
            "(config.json was edited?); use a new --workdir"
        )
    if meta["frozen_hash"] != exp.frozen_hash:
        raise checkpoints.ResumeError(
            f"{workdir}: the frozen params differ from those the checkpoint was trained "
            "with (backbone or method changed); use a new --workdir"
        )
    epoch, batch = meta["epoch"], meta["batch"]
    if int(state.step) >= exp.total_steps:
        print(
            f"{workdir} holds a finished run (step {int(state.step)}): testing its last "
            "checkpoint again. To train anew, give another --workdir.",
            flush=True,
        )
    else:
        print(f"resumed from step {int(state.step)} (epoch {epoch}, batch {batch})", flush=True)
    return state, epoch, batch


def _refuse_another_run(config: ml_collections.ConfigDict, workdir: Path) -> None:
    if not (workdir / "config.json").is_file():
        return  # the checkpoint's fingerprint still decides
    changed = fingerprint.differences(run_config(workdir), config)
    if changed:
        allowed = ", ".join(f.rstrip(".") for f in fingerprint.MAY_CHANGE)
        raise checkpoints.ResumeError(
            f"{workdir} holds a run with another config; resuming it with this one would "
            "train a different run. Changed: " + "; ".join(changed) + ". Use a new --workdir, "
            f"or change only what may differ on resume ({allowed})."
        )


def _meta(exp: Experiment, epoch: int, batch: int) -> dict:
    return {
        "epoch": epoch,
        "batch": batch,
        "seed": exp.config.train.seed,
        "frozen_hash": exp.frozen_hash,
        "fingerprint": fingerprint.fingerprint(exp.config),
    }


def numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def validation_interval(total_steps: int, evaluations: int) -> int:
    """Steps between validations when `train.eval_every` is 0: `evaluations` per run,
    however long an epoch is (a 100-row run on a step budget is not validated at every
    one of its short epochs); the last step is always validated."""
    return max(1, math.ceil(total_steps / evaluations))


def _train_loop(exp, state, steps, mngr, writer, epoch, start) -> dict[str, Any]:
    cfg = exp.config.train
    per_epoch = exp.steps_per_epoch
    progress = Progress(exp.total_steps, int(state.step), cfg.log_every)
    stop = StopFlag()
    base_rng = run_key(exp.config)
    eval_every = cfg.eval_every or validation_interval(exp.total_steps, cfg.evaluations)
    checkpoint_every = cfg.checkpoint_every or eval_every
    step = int(state.step)
    step_times: list[float] = []
    tokens = np.zeros(2)  # real, computed: this process's steps (since a resume)
    evaluated = None
    try:
        while step < exp.total_steps:
            for index, batch in enumerate(exp.loader.train_batches(epoch, start), start):
                rng = jax.random.fold_in(base_rng, step)
                if cfg.peak_flops:  # before the step: it donates the state
                    steps.step_flops(state, batch, rng)
                compile_seconds = steps.compile_train(state, batch, rng)  # not the step's time
                tic = time.perf_counter()
                state, metrics = steps.train(state, batch, rng)
                loss = float(metrics["loss"])  # also waits for the step to finish
                seconds = time.perf_counter() - tic
                step_times.append(seconds)
                tokens += token_counts(batch)
                step += 1
                if not math.isfinite(loss):
                    raise TrainingDiverged(
                        f"loss is {loss} at step {step} (epoch {epoch}, batch {index}); stopped "
                        f"without saving. The last good checkpoint is step "
                        f"{mngr.latest_step()}. Try a lower config.optimizer.learning_rate."
                    )
                row = _step_metrics(exp, steps, batch, metrics, loss, seconds, step)
                if compile_seconds:
                    row["compile_seconds"] = compile_seconds
                progress.update(step, {"loss": loss, "lr": row["learning_rate"]})
                if step % cfg.log_every == 0:
                    writer.write(step, "train", row)
                position = (epoch, index + 1) if index + 1 < per_epoch else (epoch + 1, 0)
                evaluated = None
                if step % eval_every == 0 or step == exp.total_steps:
                    evaluated = steps.evaluate(state, "validation")
                    writer.write(step, "eval", numeric(evaluated))
                    print(f"\nstep {step}: validation " + format_metrics(evaluated), flush=True)
                stopping = stop.agreed()
                if evaluated or step % checkpoint_every == 0 or stopping:
                    checkpoints.save(
                        mngr, state, _meta(exp, *position), evaluated and numeric(evaluated)
                    )
                if stopping:
                    mngr.wait_until_finished()
                    print(
                        f"\nstopped by signal {stopping} after step {step}; checkpoint "
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
    writer.write(step, "test", numeric(test))
    summary = {
        "step": step,
        "test": test,
        # of the state tested, so a study can choose among runs on validation alone
        "validation": evaluated or _final_validation(steps, state, writer, step),
        "params": exp.param_counts,
        "task": exp.task.name,
        "method": exp.method.name,
        "model": exp.config.model.name,
        "trainable": exp.table,
        "data": exp.data_report,
        **_training_figures(step_times, tokens, mngr.directory.parent / "results.json"),
    }
    if jax.process_index() == 0:
        (mngr.directory.parent / "results.json").write_text(
            json.dumps(summary, indent=2, default=to_plain) + "\n"
        )
    print(
        f"final test {format_metrics(test)} (step {step}, task {exp.task.name}, method "
        f"{exp.method.name}, model {exp.config.model.name})",
        flush=True,
    )
    return summary


def _final_validation(steps: Steps, state, writer: MetricWriter, step: int) -> dict:
    """A finished run tested again evaluated nothing this time: evaluate it now."""
    evaluated = steps.evaluate(state, "validation")
    writer.write(step, "eval", numeric(evaluated))
    return evaluated


TRAINING_FIGURES = ("median_step_seconds", "peak_rss_mb", "train_tokens")


def _training_figures(step_times: list[float], tokens, results: Path) -> dict[str, Any]:
    """Median step time, peak memory and the real and computed (padded) tokens of this
    run's training; a finished run tested again trained nothing now, so its results
    keep the figures of the training."""
    if not step_times and results.is_file():
        earlier = json.loads(results.read_text())
        return {k: earlier.get(k) for k in TRAINING_FIGURES}
    real, computed = (float(t) for t in tokens)
    return {
        "median_step_seconds": statistics.median(step_times) if step_times else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_tokens": {
            "real": real,
            "computed": computed,
            "real_share": real / computed if computed else None,
        },
    }


def to_plain(value: Any) -> Any:
    return np.asarray(value).tolist()


def token_counts(batch: dict) -> tuple[float, float]:
    """(real, computed) tokens of a batch, over its length groups' masks: padded rows
    and positions are computed too, whether bucketed or packed."""
    masks = [v for k, v in batch.items() if k.endswith("attention_mask")]
    return float(sum(np.sum(m) for m in masks)), float(sum(np.size(m) for m in masks))


def _step_metrics(exp, steps, batch, metrics, loss, seconds, step) -> dict[str, float]:
    real, padded = token_counts(batch)
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
    flops = steps.flops.get(shape_key(batch), 0.0)
    if peak and flops:
        row["mfu"] = flops / seconds / (peak * jax.device_count())
    return row


def format_metrics(metrics: dict) -> str:
    return " ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
        for k, v in metrics.items()
        if isinstance(v, (int, float))
    )
