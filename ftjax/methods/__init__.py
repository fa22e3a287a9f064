"""Fine-tuning methods as data: model hooks to switch on + patterns of what trains.

A `Method` is a `PeftConfig` (LoRA factors, adapters, prefixes or a soft prompt, all off
by default) and a tuple of regexes over parameter paths. `apply` switches the hooks on
and initialises the new parameters; `trainable_mask` turns the patterns (plus `head/.*`
when the task has a head) into the boolean mask the trainer splits params with.

    method = resolve("lora", model, {"rank": 8})
    model, params = apply(method, model, params, rng=0)
    mask = trainable_mask(method, params)

Methods and options (every method also takes `extra_trainable` (list of regexes, e.g.
LoRA + BitFit), `train_embeddings` and `train_head`):

| method | options | trains |
|---|---|---|
| none | | nothing (evaluation only: `ftjax.evaluate --config`, `ftjax.prompt`) |
| probe | cache_features=True | head only (features cached: the backbone runs once) |
| full | | everything |
| top_k | k=2 | the last k layers of each stack |
| layernorm | | every norm's scale (and bias) |
| bitfit | | every bias (Ben Zaken et al. 2022) |
| selective | patterns (required) | what the regexes name |
| lora | rank=8, alpha=16, dropout=0.0, targets=family default, init_from="" | LoRA factors |
| adapter | size=64, train_norms=True | bottleneck adapters (+ norms, as Houlsby et al.) |
| prefix | length=20, hidden=0 (>0: MLP reparameterisation), init_from="" | key/value prefixes |
| prompt | length=20, init="random" / "vocab" / "text", text="", init_from="" | the soft prompt |

`init_from` (lora, prefix, prompt): a PEFT adapter folder whose parameters (rank, alpha, targets /
prompt) start the method (`ftjax.interop.peft_format.start_from_adapter`).

`python -m ftjax.methods --model minilm` prints what each method trains. The package:
`catalog` (the methods by name), `applying` (hooks on, new params, the trainable mask),
`folding` (LoRA merged, prefix MLPs folded), `table` (what each trains).
"""

from ftjax.core.partition import (
    ADAPTER_PATTERN,
    BIAS_PATTERN,
    HEAD_PATTERN,
    LORA_PATTERN,
    NORM_PATTERN,
    PREFIX_PATTERN,
    PROMPT_PATTERN,
    kind_of,
)
from ftjax.methods.applying import apply, init_prompt, trainable_mask
from ftjax.methods.catalog import COMMON_OPTIONS, METHODS, Method, MethodError, resolve
from ftjax.methods.folding import fold_prefix, merge_lora, unmerge_lora
from ftjax.methods.table import method_row, table

__all__ = [
    "ADAPTER_PATTERN",
    "BIAS_PATTERN",
    "COMMON_OPTIONS",
    "HEAD_PATTERN",
    "LORA_PATTERN",
    "METHODS",
    "NORM_PATTERN",
    "PREFIX_PATTERN",
    "PROMPT_PATTERN",
    "Method",
    "MethodError",
    "apply",
    "fold_prefix",
    "init_prompt",
    "kind_of",
    "merge_lora",
    "method_row",
    "resolve",
    "table",
    "trainable_mask",
    "unmerge_lora",
]
