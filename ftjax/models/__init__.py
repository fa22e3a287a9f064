"""ftjax's own Flax models for BERT-style encoders, GPT-2 and T5, loaded from HF checkpoints."""

from ftjax.models.base import ModelOutput
from ftjax.models.bert import BertConfig, BertModel
from ftjax.models.gpt2 import GPT2Config, GPT2Model
from ftjax.models.hub import (
    CheckpointError,
    from_pretrained,
    init_params,
    load_tokenizer,
    param_axes,
    save_pretrained,
)
from ftjax.models.llama import LlamaConfig, LlamaModel
from ftjax.models.t5 import T5Config, T5Model

__all__ = [
    "BertConfig",
    "BertModel",
    "CheckpointError",
    "GPT2Config",
    "GPT2Model",
    "LlamaConfig",
    "LlamaModel",
    "ModelOutput",
    "T5Config",
    "T5Model",
    "from_pretrained",
    "init_params",
    "load_tokenizer",
    "param_axes",
    "save_pretrained",
]
