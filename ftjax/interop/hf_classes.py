"""Which transformers class computes what an ftjax task computes, and where its tensors go.

An exported run is only useful if the class named in config.json runs the same function
ftjax trained: `BertForSequenceClassification` classifies the tanh pooler, GPT-2's and
Llama's sequence classifiers read the last real token through a bias-free `score` layer,
T5's classifiers run the decoder. `hf_class` returns the matching class with its tensor
layout, or raises `ExportError` saying what differs and which format keeps the run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ftjax.models import hub
from ftjax.tasks.features import FeatureSpec


class ExportError(ValueError):
    """A run that the requested format cannot hold exactly; the message says why."""


@dataclasses.dataclass(frozen=True)
class HfClass:
    """A transformers model class and how ftjax's tensor names map into it."""

    architecture: str  # "BertForSequenceClassification"
    peft_task: str | None  # PEFT task_type ("SEQ_CLS", ...); None: a plain PeftModel
    prefix: str = ""  # prepended to the family's base tensor names ("bert.")
    strip: str = ""  # removed first (LlamaForQuestionAnswering: "model." -> "transformer.")
    outside: tuple[str, ...] = ()  # names outside the base model, never prefixed (MLM head)
    only: tuple[str, ...] = ()  # encoder-only classes: the base names they hold
    head: str | None = None  # module of the task head ("classifier"), None without one
    head_bias: bool = True
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # config.json extras

    def name(self, hf_name: str) -> str | None:
        """The tensor's name in this class (None: the class has no such tensor)."""
        if hf_name.startswith(self.outside):
            return hf_name
        if self.only and not hf_name.startswith(self.only):
            return None
        return self.prefix + hf_name[len(self.strip) :]

    def holds(self, hf_name: str) -> bool:
        return self.name(hf_name) is not None


# transformers' base-model prefixes by model_type, for the task classes.
BASE_PREFIX = {"bert": "bert.", "roberta": "roberta.", "gpt2": "transformer.", "llama": ""}
NAME = {"bert": "Bert", "roberta": "Roberta", "gpt2": "GPT2", "llama": "Llama", "t5": "T5"}
MLM_OUTSIDE = ("cls.", "lm_head.")
KEEP = "choose --format ftjax, which keeps every parameter as ftjax runs it"


def hf_class(
    model,
    task: str,
    spec: FeatureSpec | None = None,
    outputs: int = 0,
    label_names: Sequence[str] = (),
    head: Mapping[str, np.ndarray] | None = None,
    pad_token_id: int | None = None,
) -> HfClass:
    """The transformers class for an ftjax `task` (its name) on `model`: `spec` the
    features the head reads, `outputs` its width, `head` its params {"dense/kernel": ...}."""
    model_type = getattr(model.config, "model_type", hub.family_of(model).model_types[0])
    if task in ("language_modeling", "seq2seq", "prompting"):
        return _lm_class(model, model_type)
    if task in ("classification", "regression"):
        return _sequence_class(
            model, model_type, task, spec, outputs, label_names, head, pad_token_id
        )
    if task in ("token_classification", "extractive_qa"):
        return _token_class(model_type, task, spec, outputs, label_names)
    raise ExportError(f"task {task!r} has no transformers class ftjax knows; {KEEP}")


def _lm_class(model, model_type: str) -> HfClass:
    if model_type in ("bert", "roberta"):
        if getattr(model.config, "with_mlm_head", False):
            return HfClass(
                f"{NAME[model_type]}ForMaskedLM", None, BASE_PREFIX[model_type], outside=MLM_OUTSIDE
            )
        return HfClass(f"{NAME[model_type]}Model", "FEATURE_EXTRACTION")
    if model_type == "gpt2":
        return HfClass("GPT2LMHeadModel", "CAUSAL_LM", "transformer.")
    if model_type == "llama":
        return HfClass("LlamaForCausalLM", "CAUSAL_LM")
    return HfClass("T5ForConditionalGeneration", "SEQ_2_SEQ_LM")


def _labels(outputs: int, label_names: Sequence[str], regression: bool) -> dict[str, Any]:
    names = list(label_names) or [f"LABEL_{i}" for i in range(outputs)]
    config: dict[str, Any] = {"num_labels": outputs}
    if regression:
        return {**config, "problem_type": "regression"}
    return {
        **config,
        "id2label": {str(i): n for i, n in enumerate(names)},
        "label2id": {n: i for i, n in enumerate(names)},
    }


def _sequence_class(model, model_type, task, spec, outputs, label_names, head, pad_token_id):
    spec = spec or FeatureSpec()
    regression = task == "regression"
    config = _labels(outputs, label_names, regression)
    where = f"task {task} with task.pooling={spec.pooling!r}, task.layers={spec.layers!r}"
    if spec.layers != "last":
        raise ExportError(f"{where}: transformers' classifiers read the last layer only; {KEEP}")
    if model_type == "bert":
        if spec.pooling != "pooler":
            raise ExportError(
                f"{where}: BertForSequenceClassification classifies the tanh pooler over "
                f"[CLS], not a {spec.pooling!r} pooling (train with task.pooling=pooler to "
                f"export it); {KEEP}"
            )
        return HfClass(
            "BertForSequenceClassification", "SEQ_CLS", "bert.", head="classifier", config=config
        )
    if model_type in ("gpt2", "llama"):
        if spec.pooling != "last":
            raise ExportError(
                f"{where}: {NAME[model_type]} classifiers read the last token; {KEEP}"
            )
        bias = None if head is None else head.get("dense/bias")
        if bias is not None and np.any(np.asarray(bias) != 0):
            raise ExportError(
                f"{where}: {NAME[model_type]}ForSequenceClassification's score layer has no "
                f"bias, and this run's head/dense/bias is nonzero; {KEEP}"
            )
        if pad_token_id is not None:  # it finds the last real token by the pad id
            config["pad_token_id"] = int(pad_token_id)
        return HfClass(
            f"{NAME[model_type]}ForSequenceClassification",
            "SEQ_CLS",
            BASE_PREFIX[model_type],
            head="score",
            head_bias=False,
            config=config,
        )
    why = {
        "roberta": "RobertaForSequenceClassification's head is dense + tanh + out_proj over <s>, "
        "ftjax's one dense layer",
        "t5": "T5ForSequenceClassification runs the decoder and a two-layer head over the "
        "final </s>, ftjax pools encoder states into one dense layer",
    }[model_type]
    raise ExportError(f"{where}: {why}; {KEEP}")


def _token_class(model_type, task, spec, outputs, label_names) -> HfClass:
    spec = spec or FeatureSpec()
    suffix = "ForTokenClassification" if task == "token_classification" else "ForQuestionAnswering"
    if spec.layers != "last":
        raise ExportError(
            f"task {task} with task.layers={spec.layers!r}: {NAME[model_type]}{suffix} reads "
            f"the last layer only; {KEEP}"
        )
    if task == "extractive_qa":
        if model_type == "t5":
            raise ExportError(
                f"task {task}: T5ForQuestionAnswering reads decoder states, ftjax's QA head "
                f"encoder states; {KEEP}"
            )
        if model_type == "llama":  # its base model sits under "transformer."
            return HfClass(
                "LlamaForQuestionAnswering",
                "QUESTION_ANS",
                "transformer.",
                "model.",
                head="qa_outputs",
            )
        return HfClass(
            f"{NAME[model_type]}{suffix}",
            "QUESTION_ANS",
            BASE_PREFIX[model_type],
            head="qa_outputs",
        )
    config = _labels(outputs, label_names, regression=False)
    if model_type == "t5":  # a T5EncoderModel under "transformer."
        return HfClass(
            "T5ForTokenClassification",
            "TOKEN_CLS",
            "transformer.",
            only=("shared.", "encoder."),
            head="classifier",
            config=config,
        )
    head = "score" if model_type == "llama" else "classifier"
    return HfClass(
        f"{NAME[model_type]}{suffix}",
        "TOKEN_CLS",
        BASE_PREFIX[model_type],
        head=head,
        config=config,
    )


def task_class(task, params: Mapping[str, Any]) -> HfClass:
    """`hf_class` for a bound ftjax task (`ftjax.tasks.Task`) and its params."""
    head = params.get("head")
    flat_head = None
    if head is not None:
        from ftjax.core import partition

        flat_head = partition.flatten(head)
    spec = getattr(task, "spec", None)
    label_names = list(getattr(task.config.data, "label_names", ()) or ())
    if not label_names and task.info.get("label_names"):
        label_names = list(task.info["label_names"])
    outputs = getattr(task, "outputs", 0) if head is not None else 0
    if label_names and len(label_names) != outputs:
        label_names = []
    return hf_class(
        task.model, task.name, spec, outputs, label_names, flat_head, task.tokenizer.pad_token_id
    )


def head_tensors(flat: Mapping[str, np.ndarray], cls: HfClass) -> dict[str, np.ndarray]:
    """The task head's tensors under the class's head module ("classifier.weight", ...)."""
    head = {p[len("head/") :]: np.asarray(v) for p, v in flat.items() if p.startswith("head/")}
    if not head:
        return {}
    if cls.head is None or "dense/kernel" not in head or set(head) - {"dense/kernel", "dense/bias"}:
        raise ExportError(
            f"the task head ({', '.join(sorted(head))}) has no place in {cls.architecture}; "
            "choose --format ftjax"
        )
    out = {f"{cls.head}.weight": np.ascontiguousarray(head["dense/kernel"].T)}
    if cls.head_bias:
        out[f"{cls.head}.bias"] = np.ascontiguousarray(head["dense/bias"])
    return out
