"""A trained sequence classifier exported with `--format hf`, loaded by transformers'
AutoModelForSequenceClassification, against ftjax's own logits on a few sentences
(padded batch): the export computes what the run computes.

    python -m ftjax.export --workdir W --format hf --out W/export/hf
    python experiments/export_parity.py W W/export/hf
"""

from __future__ import annotations

import sys

import numpy as np
import torch
import transformers

from ftjax.training import loop
from ftjax.training.state import canonical_params

TEXTS = [
    "A fine, moving film.",
    "Dull and far too long.",
    "not bad at all",
    "the worst acting I have seen this year, and a plot to match",
]


def main(workdir: str, exported: str) -> None:
    exp, state, _, _ = loop.restore_run(workdir)
    params = canonical_params(exp, state)
    encoded = exp.task.tokenizer(TEXTS, padding=True, return_tensors="np")
    batch = {k: np.asarray(encoded[k]) for k in ("input_ids", "attention_mask")}
    ours = np.asarray(exp.task.outputs_of(params, batch))
    model = transformers.AutoModelForSequenceClassification.from_pretrained(exported).eval()
    with torch.no_grad():
        theirs = model(**{k: torch.tensor(v) for k, v in batch.items()}).logits.numpy()
    print(
        f"{type(model).__name__}: max |ftjax - transformers| {np.abs(ours - theirs).max():.2e} "
        f"over {len(TEXTS)} sentences (largest |logit| {np.abs(ours).max():.2f})"
    )


if __name__ == "__main__":
    main(*sys.argv[1:3])
