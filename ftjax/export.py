"""A run's trained backbone as a transformers checkpoint folder, so that a run can start
from another: continued pre-training, then fine-tuning with `model.name = WORKDIR`.

    from ftjax.export import export_backbone
    folder = export_backbone("runs/mlm")          # runs/mlm/export/step_<N>/

The folder holds config.json + model.safetensors (LoRA merged into the kernels; an MLM or
LM head the task trained included) and the run's tokenizer. The task head of a
classification-style run is not part of a backbone and is left out (logged). Methods
whose parameters a plain checkpoint cannot hold (adapters, prefixes, soft prompts) are
refused by name rather than dropped.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import numpy as np

from ftjax import methods, partition
from ftjax.models import load_tokenizer, save_pretrained

log = logging.getLogger("ftjax")
STAMP = "ftjax_export.json"


class ExportError(ValueError):
    """A run whose trained parameters a plain checkpoint cannot hold."""


def is_run(path: str | Path) -> bool:
    """Whether `path` is an ftjax workdir (its run config and checkpoints)."""
    path = Path(path)
    config = path / "config.json"
    if not (config.is_file() and (path / "checkpoints").is_dir()):
        return False
    return {"model", "method", "task"} <= set(json.loads(config.read_text()))


def export_backbone(workdir: str | Path, step: str = "latest", out: str | Path | None = None):
    """Writes the backbone of checkpoint `step` (latest, best or a number) and returns the
    folder (default WORKDIR/export/step_<N>; reused when it is already there)."""
    from ftjax.loop import checkpoint_manager, chosen_step, restore_run, run_config

    workdir = Path(workdir)
    config = run_config(workdir)
    refuse_unmergeable(config.method.name)
    mngr = checkpoint_manager(config, workdir)
    try:
        chosen = chosen_step(mngr, step, workdir)
    finally:
        mngr.close()
    out = Path(out) if out else workdir / "export" / f"step_{chosen}"
    if (out / STAMP).is_file():
        return out
    exp, state, _, _ = restore_run(workdir, str(chosen))
    every = {**state.trainable, **state.frozen}
    flat = {p: np.asarray(jax.device_get(v)) for p, v in every.items()}
    tree = partition.unflatten(flat)
    params = exp.task.backbone_params(tree)
    if len(params) != len(tree):
        log.info("export: %s's task head is not part of the backbone; left out", workdir)
    model = exp.task.model
    if model.config.peft.lora_rank:
        model, params, _ = methods.merge_lora(model, params)
    save_pretrained(model, params, out)
    load_tokenizer(config.model.name).save_pretrained(out)
    stamp = {"workdir": str(workdir.absolute()), "step": chosen, "source": config.model.name}
    (out / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    return out


def refuse_unmergeable(method: str) -> None:
    if method in ("adapter", "prefix", "prompt"):
        raise ExportError(
            f"method {method} adds parameters a plain transformers checkpoint cannot hold; "
            "a run can start from a run that trained full, selective, BitFit, LayerNorm, "
            "top-k or LoRA (merged)"
        )
