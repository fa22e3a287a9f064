"""k-shot generation (seq2seq, decoder-only): the demonstrations every prompt starts
with are encoded once as a shared context, and the generated tokens are those of
encoding each row's whole prompt (plain and chat frames, soft prompt and prefix).

Random models with a large initialisation keep the logits well separated, so token
identity tests the computation, not float32 rounding between near-ties.
"""

from __future__ import annotations

import dataclasses

import datasets
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ftjax.data.batching import buckets, pad_batch
from ftjax.models import from_pretrained, load_tokenizer
from ftjax.models.base import PeftConfig
from ftjax.models.hub import complete_params
from ftjax.tasks import seq2seq
from ftjax.tasks.base import labelled_token_losses
from ftjax.training.config import standalone_task
from tests.helpers.tiny import make_checkpoint

CAPITALS = [
    ("california", "sacramento"), ("massachusetts", "boston"), ("ohio", "columbus"),
    ("texas", "austin"), ("oregon", "salem"), ("nevada", "carson city"),
]  # fmt: skip
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
OPTIONS = dict(label_column="", source_prefix="the capital of ", separator=" is",
               target_delimiter=" ", shots=3, shot_separator="; ", max_length=96,
               max_target_length=6)  # fmt: skip
CASES = {
    "gpt2-plain": ("gpt2", "plain", PeftConfig()),
    "gpt2-prompt-prefix": ("gpt2", "plain", PeftConfig(prompt_length=2, prefix_length=2)),
    "llama-chat": ("llama", "chat", PeftConfig()),
}


def rows(pairs):
    return datasets.Dataset.from_list([{"source": s, "target": t} for s, t in pairs])


def separated(family: str, tmp_path, peft: PeftConfig):
    init = {"gpt2": {"initializer_range": 0.5}, "llama": {"initializer_range": 0.5}}[family]
    path = make_checkpoint(tmp_path / family, family, **init)
    model, params = from_pretrained(path)
    if peft != PeftConfig():
        model = type(model)(dataclasses.replace(model.config, peft=peft))
        params = complete_params(model, params, 1)
    return model, params, load_tokenizer(path)


def kshot_batch(tmp_path, case: str, test):
    """(task with 3 demonstrations drawn, params, encoded `test` rows, their padded batch)
    for one of CASES."""
    family, frame, peft = CASES[case]
    model, params, tokenizer = separated(family, tmp_path, peft)
    if frame == "chat":
        tokenizer.chat_template = CHATML
    # The chat template's markers take many WordPiece tokens (rotary Llama has room).
    limit = {"max_length": 160} if frame == "chat" else {}
    task = standalone_task("seq2seq", model, tokenizer, **{**OPTIONS, **limit}, prompt_format=frame)
    task.prepare_data({"train": rows(CAPITALS[:4]), "test": rows(CAPITALS[4:])})
    examples = task.encode(test, "test")
    sizes = {group: buckets(limit) for group, limit in task.group_limits().items()}
    # One slot more than rows: an evaluation batch's masked filler row comes along.
    batch = pad_batch(examples, np.arange(len(examples)), len(examples) + 1, sizes)
    return task, params, examples, batch


@pytest.mark.parametrize("case", list(CASES))
def test_shared_demonstrations_generate_the_same_tokens(tmp_path, case):
    test = rows([("nevada", "x"), ("a long and winding state name", "y"), ("utah", "z")])
    task, params, examples, batch = kshot_batch(tmp_path, case, test)
    head = task.shared_context()
    assert len(head) > 10 and all(
        list(p[: len(head)]) == list(head) for p in examples.arrays["prompt"]
    )

    def generated():  # a new jit each time: the setting is read when it traces
        return np.asarray(jax.jit(lambda p, b: task.generate(p, b))(params, batch))

    shared = generated()
    task.share_context = False
    assert not len(task.shared_context())
    whole = generated()
    np.testing.assert_array_equal(shared[:3], whole[:3])
    assert len({tuple(row) for row in shared[:3]}) > 1  # rows generate different text


def test_without_head_keeps_each_rows_rest_left_padded():
    ids = jnp.array([[0, 0, 7, 8, 1, 2], [7, 8, 3, 4, 5, 6], [0, 0, 0, 0, 0, 0]])
    mask = (ids > 0).astype(jnp.int32)
    rest, rest_mask, context = seq2seq.without_head(ids, mask, np.array([7, 8]), 0)
    assert context.tolist() == [7, 8]
    assert rest.tolist() == [[0, 0, 1, 2], [3, 4, 5, 6], [0, 0, 0, 0]]
    assert rest_mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]]
    same = seq2seq.without_head(ids, mask, np.zeros(0, np.int32), 0)
    assert same[2] is None and same[0] is ids


@pytest.mark.parametrize("case", list(CASES))
def test_decoder_target_loss_reads_only_target_positions_and_equals_the_full_loss(tmp_path, case):
    """The LM head runs on each row's target positions only (at most
    data.max_target_length), and the loss and its per-token values equal those of the
    logits at every position."""
    task, params, _, batch = kshot_batch(tmp_path, case, rows(CAPITALS[:5]))
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    whole, counted = labelled_token_losses(task.logits(params, batch), batch)
    ours, ours_counted = task.token_losses(params, batch)
    assert ours.shape[1] == OPTIONS["max_target_length"] < whole.shape[1]
    np.testing.assert_allclose(
        np.sort(np.asarray(ours)[np.asarray(ours_counted)]),
        np.sort(np.asarray(whole)[np.asarray(counted)]),
        rtol=1e-5,
    )
    expected = float((whole * counted).sum() / counted.sum())
    assert float(task.loss(params, batch)[0]) == pytest.approx(expected, rel=1e-6)
