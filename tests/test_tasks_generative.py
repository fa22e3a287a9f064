"""Text-to-text (T5 and a decoder, label words and free targets) and language
modelling end to end on tiny models; `ftjax.evaluate` reproduces the metrics."""

from __future__ import annotations

import pytest

from tests.helpers import synthetic, xla
from tests.helpers.runs import (
    GPT2_LABEL_WORDS,
    SOURCE_TARGET,
    run_and_reproduce,
    tiny_run_config,
)
from tests.helpers.tiny import write_splits

# Minutes, not seconds: outside the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow

# Long runs on a 30,522-word output layer: optimised machine code pays for its compile.
OPTIMISED = {"train__xla_options": xla.XLA_DEFAULTS}
# Label words on the encoder-decoder are the same path as free targets once rows are
# encoded (tests/test_task_data.py checks the encoding), so T5 runs free targets only.
E2E = [
    ("seq2seq", "t5", synthetic.text_to_text_rows, SOURCE_TARGET, "exact_match", 0.85),
    # A 2-layer decoder learns to condition on the cue slowly: 16 epochs, chance is 0.5.
    ("seq2seq", "gpt2", synthetic.sentiment_rows, GPT2_LABEL_WORDS, "exact_match", 0.75),
]


@pytest.mark.parametrize(
    "config_name, family, rows, fields, metric, floor",
    E2E,
    ids=[
        f"{e[0]}-{e[1]}{'-' + e[2].__name__[:-5] if e[2] is not synthetic.sentiment_rows else ''}"
        for e in E2E
    ],
)
def test_task_trains_end_to_end_well_above_chance(
    tmp_path, checkpoints, config_name, family, rows, fields, metric, floor
):
    data = write_splits(tmp_path / "data", synthetic.splits_of(rows))
    config = tiny_run_config(config_name, checkpoints[family], data, **fields, **OPTIMISED)
    test = run_and_reproduce(config, tmp_path / "run")
    assert test[metric] >= floor, test


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_language_modeling_learns_the_text(tmp_path, checkpoints, family):
    """Causal LM on GPT-2, masked LM on BERT (its MLM head initialised, tied)."""
    data = write_splits(tmp_path / "data", synthetic.splits_of(synthetic.sentiment_rows))
    config = tiny_run_config(
        "lm", checkpoints[family], data, optimizer__learning_rate=1e-2, **OPTIMISED
    )
    test = run_and_reproduce(config, tmp_path / "run")
    # Uniform over the 30,522-token vocabulary would be 30,522; the text uses ~30 words.
    assert test["perplexity"] < 40, test
