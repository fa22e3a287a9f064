"""A run's workdir as a model source: its checkpoint restored as a host params pytree,
and its backbone written once as a transformers folder (`export_backbone`, LoRA merged,
the task head left out by name) that the next run loads like any checkpoint.

`models.hub` knows checkpoint folders, not runs: importing `ftjax.training` hands it
`export_backbone` (`hub.use_run_exporter`, this module imported at the first run named
as a model), so `model.name = WORKDIR` works wherever a model name does.
"""

from __future__ import annotations

import json
from pathlib import Path

from ftjax import methods
from ftjax.interop.hf_classes import ExportError
from ftjax.models import load_tokenizer, save_pretrained, stacking
from ftjax.models.hub import is_run
from ftjax.training.loop import checkpoint_manager, chosen_step, restore_run, run_config
from ftjax.training.state import canonical_params

STAMP = "ftjax_export.json"

__all__ = ["STAMP", "export_backbone", "is_run", "refuse_unmergeable", "restore_params"]


def restore_params(workdir: Path, step: str):
    """(experiment, host params pytree, chosen step) of checkpoint `step`."""
    exp, state, _, chosen = restore_run(workdir, step)
    params = canonical_params(exp, state)
    exp.task.attach(stacking.unscanned(exp.task.model))  # exports speak per-layer paths
    return exp, params, chosen


def chosen_checkpoint(workdir: Path, step: str) -> int:
    mngr = checkpoint_manager(run_config(workdir), workdir)
    try:
        return chosen_step(mngr, step, workdir)
    finally:
        mngr.close()


def export_backbone(workdir: str | Path, step: str = "latest", out: str | Path | None = None):
    """Writes the backbone of checkpoint `step` (latest, best or a number) and returns the
    folder (default WORKDIR/export/step_<N>; reused when it is already there). The folder
    holds config.json + model.safetensors (LoRA merged; an MLM or LM head the task trained
    included) and the run's tokenizer. A classification-style task head is not part of a
    backbone: it is left out by name (`drop`), and `export_run(..., "hf")` keeps it."""
    workdir = Path(workdir)
    config = run_config(workdir)
    refuse_unmergeable(config.method.name)
    chosen = chosen_checkpoint(workdir, step)
    out = Path(out) if out else workdir / "export" / f"step_{chosen}"
    if (out / STAMP).is_file():
        return out
    exp, params, _ = restore_params(workdir, str(chosen))
    model = exp.task.model
    if model.config.peft.lora_rank:
        model, params, _ = methods.merge_lora(model, params)
    save_pretrained(model, params, out, drop=(methods.HEAD_PATTERN,))
    load_tokenizer(config.model.name).save_pretrained(out)
    stamp = {"workdir": str(workdir.absolute()), "step": chosen, "source": config.model.name}
    (out / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
    return out


def refuse_unmergeable(method: str) -> None:
    if method in ("adapter", "prefix", "prompt"):
        raise ExportError(
            f"method {method} adds parameters a plain transformers checkpoint cannot hold; "
            "a run can start from a run that trained full, selective, BitFit, LayerNorm, "
            "top-k or LoRA (merged); `python -m ftjax.export --format ftjax` keeps the run"
        )
