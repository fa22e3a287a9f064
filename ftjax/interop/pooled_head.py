"""A sentence head that no transformers class computes, as PEFT + transformers load it.

transformers' `BertForSequenceClassification` classifies the tanh pooler over [CLS];
ftjax's default sentiment run pools the mean of the last layer's real tokens (other
runs: [CLS], the last token, an inner layer, a mix of layers) into one dense layer. No
transformers class reads those features, so `--format peft` writes, for such a head:

- a PEFT adapter for the base model's feature-extraction class (`AutoModel`:
  `BertModel`, `RobertaModel`), which PEFT loads as for any adapter;
- `ftjax_head.safetensors` (`weight` [outputs, width], `bias` [outputs]) and
  `ftjax_head.json` (which layers, which pooling, the labels, the base checkpoint);
- `README.md` holding the loader: twenty lines of PyTorch that run the adapted model,
  pool its states as ftjax does and apply the head. The tests run that code as written
  and compare its logits with ftjax's.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ftjax.core import partition
from ftjax.interop import peft_format
from ftjax.interop.hf_classes import ExportError, HfClass
from ftjax.models import hub

HEAD_FILE = "ftjax_head.safetensors"
RECIPE_FILE = "ftjax_head.json"
FEATURE_CLASSES = {"bert": "BertModel", "roberta": "RobertaModel"}
POOLINGS = ("mean", "cls", "last")

LOADER = """\
import json
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

folder = Path({folder!r})
recipe = json.loads((folder / "ftjax_head.json").read_text())
model = PeftModel.from_pretrained(AutoModel.from_pretrained(recipe["base_checkpoint"]), folder)
model.eval()
tokenizer = AutoTokenizer.from_pretrained(folder)
head = load_file(folder / "ftjax_head.safetensors")


def logits(texts, pairs=None):
    batch = tokenizer(texts, pairs, padding=True, truncation=True,
                      max_length=recipe["max_length"], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states
    layers = recipe["layers"]  # which hidden states (0 = embeddings)
    if layers == "last":
        states = hidden[-1]
    elif layers == "mean_all":
        states = torch.stack(hidden[1:]).mean(0)
    elif layers == "mean_last4":
        states = torch.stack(hidden[-4:]).mean(0)
    elif layers == "concat_last4":
        states = torch.cat(hidden[-4:], dim=-1)
    else:
        states = hidden[int(layers)]
    mask = batch["attention_mask"]  # padding on the right
    if recipe["pooling"] == "mean":
        weights = mask.unsqueeze(-1).to(states.dtype)
        features = (states * weights).sum(1) / weights.sum(1).clamp(min=1)
    elif recipe["pooling"] == "cls":
        features = states[:, 0]
    else:  # "last": the last real token
        features = states[torch.arange(len(states)), mask.sum(1) - 1]
    return features @ head["weight"].T + head["bias"]
"""

README = """# An ftjax run's adapter and sentence head

Written by `python -m ftjax.export --format peft` for a run whose head reads
{what}: no transformers class computes that, so the adapter is for the base model's
`AutoModel` class, and the head ({outputs} outputs{labels}) sits beside it in
`{head}`. This code computes the run's logits (`logits(["a sentence", ...])`).
`ftjax_head.json`'s `base_checkpoint` is the base model's folder where the run was
exported (`base_model`: its name there); elsewhere, point it at the same checkpoint.

```python
{loader}```
"""


def supports(task) -> bool:
    """Whether the task's head is one this export writes: a pooled sentence head (not
    BERT's pooler, which `BertForSequenceClassification` computes) on BERT or RoBERTa."""
    spec = getattr(task, "spec", None)
    model_type = getattr(task.model.config, "model_type", "")
    return (
        task.name in ("classification", "regression")
        and spec is not None
        and spec.pooling in POOLINGS
        and model_type in FEATURE_CLASSES
    )


def adapter_files(
    task,
    params: Mapping[str, Any],
    trained: Collection[str] | None = None,
    base_model: str | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The backbone's adapter (`peft_format.adapter_files` for the `AutoModel` class);
    raises `ExportError` for what the loader cannot compute."""
    if not supports(task):
        raise ExportError(f"task {task.name}: not a pooled sentence head on BERT or RoBERTa")
    backbone = {k: v for k, v in params.items() if k != "head"}
    virtual = {partition.kind_of(p) for p in partition.flatten(backbone)} & {"prefix", "prompt"}
    if virtual:
        raise ExportError(
            f"method {virtual.pop()}: PEFT's virtual tokens change the hidden states this "
            "head's pooling reads (prompt rows, shifted positions); choose --format ftjax"
        )
    cls = HfClass(FEATURE_CLASSES[task.model.config.model_type], "FEATURE_EXTRACTION")
    return peft_format.adapter_files(task.model, backbone, cls, trained, base_model)


def write(
    task,
    params: Mapping[str, Any],
    out: str | Path,
    trained: Collection[str] | None,
    base_model: str,
) -> Path:
    """The adapter, the head, its recipe and the loader README in `out`."""
    out = peft_format.write_files(out, *adapter_files(task, params, trained, base_model))
    head = {k: np.asarray(v, np.float32) for k, v in partition.flatten(params["head"]).items()}
    weight = np.ascontiguousarray(head["dense/kernel"].T)
    bias = head.get("dense/bias", np.zeros(weight.shape[0], np.float32))
    from safetensors.numpy import save_file

    save_file({"weight": weight, "bias": np.ascontiguousarray(bias)}, str(out / HEAD_FILE))
    spec, data = task.spec, task.config.data
    labels = list(data.get("label_names", ()) or task.info.get("label_names", ()) or ())
    recipe = {
        "task": task.name,
        "layers": spec.layers,
        "pooling": spec.pooling,
        "outputs": int(weight.shape[0]),
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "max_length": int(data.max_length),
        "base_model": base_model,
        "base_checkpoint": str(hub.resolve_checkpoint_dir(base_model).absolute()),
    }
    (out / RECIPE_FILE).write_text(json.dumps(recipe, indent=2) + "\n")
    what = f"the {spec.pooling} pooling of {_layers_text(spec.layers)}"
    (out / "README.md").write_text(
        README.format(
            what=what,
            outputs=recipe["outputs"],
            labels=f": {', '.join(labels)}" if labels else "",
            head=HEAD_FILE,
            loader=LOADER.format(folder=str(out.absolute())),
        )
    )
    return out


def loader_code(folder: str | Path) -> str:
    """The Python block of an export's README (what a user copies)."""
    text = (Path(folder) / "README.md").read_text()
    return text.split("```python\n", 1)[1].split("```", 1)[0]


def _layers_text(layers: str) -> str:
    if layers == "last":
        return "the last layer's tokens"
    if layers in ("mean_all", "mean_last4", "concat_last4"):
        return f"the layers' {layers.replace('_', ' ')}"
    return f"hidden state {layers}"
