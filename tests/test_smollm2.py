"""The bundled SmolLM2-135M-Instruct (GGUF, Q4_1) against transformers loading the same
file: bit-identical weights, logits of a padded batch within 3e-4, greedy and beam
continuations token for token; saved in the HF layout, transformers loads it back."""

from __future__ import annotations

import functools
import os
import shutil

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers' GGUF loading needs it

from ftjax.data import assets  # noqa: E402
from ftjax.models import (  # noqa: E402
    from_pretrained,
    generation,  # noqa: E402
    load_tokenizer,
    save_pretrained,
)
from tests.helpers import xla  # noqa: E402

# Minutes, not seconds: outside the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "Water boils at a temperature of", "Hello"]
NEW = 8


@pytest.fixture(scope="module")
def smollm2():
    folder = assets.fetch("smollm2")
    (gguf_file,) = folder.glob("*.gguf")
    reference = transformers.LlamaForCausalLM.from_pretrained(
        folder, gguf_file=gguf_file.name, dtype=torch.float32
    ).eval()
    model, params = from_pretrained("smollm2")
    return model, params, load_tokenizer("smollm2"), reference


def encode(tokenizer, side: str):
    tokenizer.padding_side = side
    batch = tokenizer(PROMPTS, return_tensors="np", padding=True)
    return batch["input_ids"], batch["attention_mask"]


# Measured 1.4e-4 on logits near 15: SmolLM2's residual stream reaches |x| ~ 2.4e4
# (its "massive activations", from layer 12 on), where float32 rounds at ~2e-3. Against
# transformers run in float64 (the same weights), transformers' float32 logits are off by
# 6.0e-5 and ftjax's by 1.8e-4: XLA:CPU's float32 matmul sums in another order, with ~1.6x
# torch's rounding error on a 16x1536 @ 1536x576 product (1.24e-5 vs 7.7e-6 max), and the
# error grows with the activations. The weights are bit-identical (checked below).
LOGIT_TOL = 3e-4


def test_weights_equal_transformers_dequantisation(smollm2):
    model, params, _, reference = smollm2
    theirs = reference.state_dict()
    layer = params["decoder"]["layer_0"]
    pairs = {
        "model.embed_tokens.weight": params["word_embeddings"]["embedding"],
        "model.layers.0.self_attn.q_proj.weight": layer["attention"]["query"]["kernel"].T,
        "model.layers.0.self_attn.k_proj.weight": layer["attention"]["key"]["kernel"].T,
        "model.layers.0.mlp.down_proj.weight": layer["mlp"]["output"]["kernel"].T,
        "model.norm.weight": params["decoder"]["final_norm"]["scale"],
    }
    for name, ours in pairs.items():
        assert np.array_equal(np.asarray(ours), theirs[name].numpy()), name


def test_logits_match_transformers_on_a_padded_batch(smollm2):
    model, params, tokenizer, reference = smollm2
    assert model.config.num_kv_heads == 3 and model.config.tie_word_embeddings
    ids, mask = encode(tokenizer, "right")
    assert len(set(mask.sum(1))) > 1  # prompts of unequal lengths
    apply = jax.jit(model.apply, compiler_options=xla.default_options())
    ours = np.asarray(apply({"params": params}, ids, mask).logits)
    with torch.no_grad():
        theirs = reference(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    real = mask.astype(bool)
    assert np.abs(ours[real] - theirs[real]).max() <= LOGIT_TOL


@pytest.mark.parametrize("beams", [1, 3], ids=["greedy", "beam3"])
def test_continuations_match_transformers_generate(smollm2, beams):
    model, params, tokenizer, reference = smollm2
    ids, mask = encode(tokenizer, "left")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    options = {"strategy": "beam", "num_beams": beams} if beams > 1 else {}
    run = jax.jit(
        functools.partial(
            generation.generate, model, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=pad,
            **options,
        ),
        compiler_options=xla.default_options(),  # a real-size model: optimised code pays
    )  # fmt: skip
    ours = np.asarray(run(params, ids, mask))
    with torch.no_grad():
        theirs = reference.generate(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=NEW,
            do_sample=False, num_beams=beams, early_stopping=False, eos_token_id=eos,
            pad_token_id=pad,
        ).numpy()[:, ids.shape[1]:]  # fmt: skip
    np.testing.assert_array_equal(ours[:, : theirs.shape[1]], theirs)
    assert tokenizer.decode(ours[0]).startswith(" Paris")


def test_saved_folder_loads_in_transformers(smollm2, tmp_path):
    model, params, tokenizer, reference = smollm2
    save_pretrained(model, params, tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    theirs, ours = reference.state_dict(), loaded.state_dict()
    assert theirs.keys() == ours.keys()
    for name, tensor in theirs.items():
        assert torch.equal(ours[name], tensor), name
    again = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert again(PROMPTS)["input_ids"] == tokenizer(PROMPTS)["input_ids"]


def test_gguf_tokenizer_is_converted_once_and_read_back_the_same(monkeypatch, tmp_path):
    """transformers converts the file's tokenizer (~11 s); ftjax keeps the result, and a
    later load reads it (models/gguf_tokenizer.py): the same tokenizer, not converted
    again, until the file changes."""
    from ftjax.models import gguf_tokenizer

    (original,) = assets.fetch("smollm2").glob("*.gguf")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    gguf_file = model_dir / original.name
    shutil.copyfile(original, gguf_file)  # its own file: its own cache entry
    monkeypatch.setenv("FTJAX_CACHE", str(tmp_path / "cache"))
    converted = load_tokenizer(model_dir)
    assert gguf_tokenizer.cache_folder(gguf_file).is_dir()

    def no_conversion(path):
        raise AssertionError(f"converted {path} again")

    with monkeypatch.context() as patch:
        patch.setattr(gguf_tokenizer, "convert", no_conversion)
        cached = load_tokenizer(model_dir)
    assert type(cached) is type(converted) and cached.get_vocab() == converted.get_vocab()
    texts = [*PROMPTS, "héllo wörld 🤖\n\t  two  spaces", "<|im_start|>user\nhi<|im_end|>"]
    assert [cached(t)["input_ids"] for t in texts] == [converted(t)["input_ids"] for t in texts]
    for attribute in ("bos_token", "eos_token", "pad_token", "all_special_tokens"):
        assert getattr(cached, attribute) == getattr(converted, attribute), attribute
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    assert cached.apply_chat_template(chat, tokenize=False) == converted.apply_chat_template(
        chat, tokenize=False
    )
    stat = gguf_file.stat()
    os.utime(gguf_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # "edited"
    assert not gguf_tokenizer.cache_folder(gguf_file).is_dir()
