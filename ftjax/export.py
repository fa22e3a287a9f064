"""A run's trained parameters, exported for PyTorch users or for another run.

    python -m ftjax.export --workdir W --format peft|hf|ftjax --out DIR [--step latest|best|N]

- `peft`: `adapter_config.json` + `adapter_model.safetensors` that
  `peft.PeftModel.from_pretrained` loads onto the transformers class matching the task
  (`ftjax.interop.peft_format`): LoRA, prefix (not T5) and prompt tuning, the head under
  `modules_to_save`. A pooled sentence head no transformers class computes (the
  default's mean pooling on BERT) goes beside an `AutoModel` adapter, with the loader
  code in the folder's README (`ftjax.interop.pooled_head`).
- `hf`: a transformers checkpoint folder, LoRA merged, the head included, config.json
  naming the `*For<Task>` / LM class (`ftjax.interop.hf_format`), with the tokenizer.
- `ftjax`: every parameter as ftjax runs it (`ftjax.interop.native_format`), for what neither
  can represent; the reasons the other two refused are printed and stored.

A refusal names the method or field and the format that would work; nothing is written
that loads and computes something else. `export_backbone` is the run-as-model-source
route (`model.name = WORKDIR`): the backbone only, the task head left out by name.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ftjax.interop import hf_classes, hf_format, native_format, peft_format, pooled_head
from ftjax.interop.hf_classes import ExportError
from ftjax.models import load_tokenizer
from ftjax.training.backbone import (
    export_backbone,
    is_run,
    restore_params,
)

log = logging.getLogger("ftjax")
FORMATS = ("peft", "hf", "ftjax")

__all__ = ["ExportError", "export_backbone", "export_run", "is_run", "main"]


def export_run(
    workdir: str | Path, fmt: str, out: str | Path | None = None, step: str = "latest"
) -> Path:
    """Writes checkpoint `step` of the run in `fmt` (peft, hf or ftjax) to `out` (default
    WORKDIR/export/<fmt>_step_<N>) with the run's tokenizer; returns the folder."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}; choose {', '.join(FORMATS)}")
    workdir = Path(workdir)
    exp, params, chosen = restore_params(workdir, step)
    out = Path(out) if out else workdir / "export" / f"{fmt}_step_{chosen}"
    model, source = exp.task.model, exp.config.model.name
    trained = {p for p, on in exp.mask.items() if on}
    if fmt == "peft" and pooled_head.supports(exp.task):  # e.g. the default's mean pooling
        pooled_head.write(exp.task, params, out, trained, source)
    elif fmt == "peft":
        cls = hf_classes.task_class(exp.task, params)
        peft_format.write_adapter(model, params, cls, out, trained, source)
    elif fmt == "hf":
        hf_format.write_hf(model, params, hf_classes.task_class(exp.task, params), out)
    else:
        why = native_reasons(exp, params, trained)
        native_format.write(out, model, params, why, json.loads(exp.config.to_json_best_effort()))
        log.warning("export: ftjax format: %s", why)
    load_tokenizer(source).save_pretrained(out)
    return out


def native_reasons(exp, params, trained) -> str:
    """Why the run needs the ftjax format: what `peft` and `hf` each refuse."""
    reasons = []
    for fmt, files in (
        ("peft", lambda: _peft_files(exp.task, params, trained)),
        ("hf", lambda: hf_format.checkpoint_files(
            exp.task.model, params, hf_classes.task_class(exp.task, params)
        )),
    ):  # fmt: skip
        try:
            files()
        except ExportError as err:
            reasons.append(f"--format {fmt} refuses: {err}")
    return "; ".join(reasons) or "written as asked (--format peft and hf would hold it too)"


def _peft_files(task, params, trained):
    if pooled_head.supports(task):
        return pooled_head.adapter_files(task, params, trained)
    return peft_format.adapter_files(
        task.model, params, hf_classes.task_class(task, params), trained
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ftjax.export", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workdir", required=True, help="the run's workdir")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", help="output folder (default WORKDIR/export/<format>_step_<N>)")
    parser.add_argument("--step", default="latest", help="latest, best or a step number")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        out = export_run(args.workdir, args.format, args.out, args.step)
    except ExportError as err:
        print(f"ftjax.export: refused: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
