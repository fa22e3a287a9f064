"""Prompting: label-word log-likelihoods against transformers' PyTorch models on each
scoring path (causal with shared demonstrations, T5's decoder, a masked LM's cloze),
demonstration drawing, bad prompts, and k-shot runs over seeds through `ftjax.prompt`."""

from __future__ import annotations

import json

import datasets
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ftjax import prompt  # noqa: E402
from ftjax.data.batching import pad_batch  # noqa: E402
from ftjax.methods import MethodError  # noqa: E402
from ftjax.models import from_pretrained, load_tokenizer  # noqa: E402
from ftjax.tasks import TaskError, demonstrations  # noqa: E402
from ftjax.training import loop  # noqa: E402
from ftjax.training.config import standalone_task  # noqa: E402
from tests.helpers import synthetic  # noqa: E402
from tests.helpers.runs import config_file  # noqa: E402
from tests.helpers.tiny import make_checkpoint, write_splits  # noqa: E402

TOL = 1e-4
TRAIN = datasets.Dataset.from_dict(
    {"text": ["a fine film", "dull and long", "great fun", "awful", "loved it"],
     "label": [1, 0, 1, 0, 1]}
)  # fmt: skip
TEST = datasets.Dataset.from_dict(
    {"text": ["a truly wonderful movie with heart and wit", "meh", "not good at all, too long"],
     "label": [1, 0, 0]}
)  # fmt: skip
REFERENCE = {
    "gpt2": transformers.AutoModelForCausalLM,
    "llama": transformers.AutoModelForCausalLM,
    "t5": transformers.T5ForConditionalGeneration,
    "bert": transformers.BertForMaskedLM,
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("prompting")
    made = {f: make_checkpoint(base / f, f) for f in ("gpt2", "llama", "t5")}
    made["bert"] = make_checkpoint(base / "bert", "bert", with_mlm_head=True)
    made["gpt2_shallow"] = make_checkpoint(base / "shallow", "gpt2", num_layers=1)  # training
    return made


def prompting(path, **fields):
    model, params = from_pretrained(path)
    fields = {"template": "review: {text} sentiment:", "label_words": ("bad", "good"), **fields}
    return standalone_task("prompting", model, load_tokenizer(path), **fields), params


def scored(task, params, rows=TEST, splits=None):
    task.prepare_data(splits or {"train": TRAIN, "test": rows})
    examples = task.encode(rows, "test")
    limits = task.group_limits()
    index = np.arange(len(examples))
    batch = pad_batch(examples, index, len(index) + 1, {g: [n] for g, n in limits.items()})
    scores = task.scores(params, {k: jnp.asarray(v) for k, v in batch.items()})
    return examples, np.asarray(scores)[: len(index)]


def reference_scores(task, path, family, examples) -> np.ndarray:
    """Each label word's summed log-probability, from transformers' model on the same ids."""
    ref = REFERENCE[family].from_pretrained(path).eval()
    words = [c[m > 0].tolist() for c, m in zip(task.choices, task.choice_mask, strict=True)]
    out = np.zeros((len(examples), len(words)))
    for i in range(len(examples)):
        for c, word in enumerate(words):
            if family == "bert":
                out[i, c] = pet_reference(ref, task, examples, i, word)
                continue
            with torch.no_grad():
                if family in ("gpt2", "llama"):
                    ids = [*task.context, *examples.arrays["query"][i], *word]
                    logits = ref(torch.tensor([ids])).logits[0, len(ids) - len(word) - 1 : -1]
                elif family == "t5":
                    source = torch.tensor(examples.arrays["input_ids"][i][None])
                    logits = ref(input_ids=source, labels=torch.tensor([word])).logits[0]
            logp = torch.log_softmax(logits.double(), -1)
            out[i, c] = float(sum(logp[j, t] for j, t in enumerate(word)))
    return out


def pet_reference(ref, task, examples, i: int, word: list[int]) -> float:
    """PET's score of `word` for row i, one transformers pass per token: the slot cut to
    len(word) [MASK]s, the surest still-masked position filled with its token each time."""
    unit = examples.arrays["input_ids"][i].tolist()
    at, width = int(examples.arrays["mask_position"][i]), task.choices.shape[1]
    ids = unit[: at + len(word)] + unit[at + width :]
    total, todo = 0.0, list(range(len(word)))
    while todo:
        with torch.no_grad():
            logp = torch.log_softmax(ref(input_ids=torch.tensor([ids])).logits[0].double(), -1)
        j = max(todo, key=lambda j: float(logp[at + j, word[j]]))
        total += float(logp[at + j, word[j]])
        ids[at + j] = word[j]
        todo.remove(j)
    return total


@pytest.mark.parametrize(
    "family, shots",
    [("gpt2", 0), ("gpt2", 2), ("llama", 0), ("llama", 3), ("t5", 2), ("bert", 0), ("bert", 2)],
)
def test_label_log_likelihoods_equal_transformers(models, family, shots):
    fields = {"shots": shots, "balanced_shots": False}
    if family == "bert":  # cloze: the word sits at [MASK]s inside the sentence (PET)
        fields.update(template="{text} it was {label}.", label_words=("bad", "not very good"))
    else:  # a two-token word exercises the continuation through the cache
        fields.update(label_words=("bad", "very good"))
    task, params = prompting(models[family], **fields)
    examples, ours = scored(task, params)
    assert task.shots_used == shots
    if family == "bert":  # a one-token word beside a three-token one
        assert task.choice_mask.sum(1).tolist() == [1, 3]
    if family in ("gpt2", "llama"):
        assert examples.layout["query"].left
        assert len(task.context) > 0 if shots else len(task.context) == 0
    theirs = reference_scores(task, models[family], family, examples)
    assert np.abs(ours - theirs).max() <= TOL, (ours, theirs)


def test_length_normalisation_divides_by_word_tokens(models):
    words = ("bad", "very good")
    summed, params = prompting(models["gpt2"], label_words=words)
    mean, _ = prompting(models["gpt2"], label_words=words, length_normalize=True)
    _, total = scored(summed, params)
    _, per_token = scored(mean, params)
    np.testing.assert_allclose(per_token, total / np.array([1, 2]), rtol=1e-6)


def test_demonstrations_are_seeded_and_balanced():
    labels = [0] * 30 + [1] * 10 + [-1] * 5  # -1: unusable rows are never drawn
    first = demonstrations.draw(labels, 8, seed=3, balanced=True)
    assert first == demonstrations.draw(labels, 8, seed=3, balanced=True)
    assert first != demonstrations.draw(labels, 8, seed=4, balanced=True)
    assert sorted(labels[i] for i in first) == [0] * 4 + [1] * 4
    assert len(set(first)) == 8
    odd = demonstrations.draw(labels, 5, seed=0, balanced=True)
    assert sorted(np.bincount([labels[i] for i in odd], minlength=2)) == [2, 3]
    loose = demonstrations.draw(labels, 20, seed=0, balanced=False)
    assert all(labels[i] >= 0 for i in loose) and len(set(loose)) == 20
    with pytest.raises(ValueError, match="41 demonstrations asked, 40 usable rows"):
        demonstrations.draw(labels, 41, seed=0, balanced=False)
    with pytest.raises(ValueError, match="of label 1 asked, 10 rows have it"):
        demonstrations.draw(labels, 24, seed=0, balanced=True)


def test_demonstrations_render_the_whole_template(models):
    task, _ = prompting(models["gpt2"], shots=2, shot_separator=" | ")
    task.prepare_data({"train": TRAIN})
    shown = demonstrations.draw(TRAIN["label"], 2, seed=0, balanced=True)
    expected = "".join(
        f"review: {TRAIN[i]['text']} sentiment: {('bad', 'good')[TRAIN[i]['label']]} | "
        for i in shown
    )
    assert task.demo_text == expected
    assert task.context.tolist() == task.tokenizer(expected, add_special_tokens=False)["input_ids"]


def test_drop_shots_keeps_the_demonstrations_that_fit(models, caplog):
    long_train = TRAIN.map(lambda r: {"text": r["text"] + " and so on" * 4})
    task, _ = prompting(models["gpt2"], shots=4, max_length=48, on_overflow="drop_shots")
    task.prepare_data({"train": long_train, "test": TEST})
    examples = task.encode(TEST, "test")
    assert 0 < task.shots_used < 4
    assert "demonstrations kept" in caplog.text
    assert examples.report["truncated"] == 0 and examples.report["shots"] == task.shots_used


def test_bad_prompts_are_named(models):
    with pytest.raises(TaskError, match=r"must hold the input slot \{text\} once"):
        prompting(models["gpt2"], template="sentiment:")
    with pytest.raises(TaskError, match=r"unknown slot\(s\) \['review'\]"):
        prompting(models["gpt2"], template="{review} {text}")
    with pytest.raises(TaskError, match=r"label_words\[1\]='  ' tokenizes to nothing"):
        prompting(models["gpt2"], label_words=("bad", "  "), target_delimiter="")
    with pytest.raises(TaskError, match="nothing may follow {label}"):
        prompting(models["gpt2"], template="{text} it was {label}.")
    long_train = datasets.Dataset.from_dict({"text": ["word " * 80] * 2, "label": [0, 1]})
    task, _ = prompting(models["gpt2"], shots=1, max_length=64)
    with pytest.raises(TaskError, match="demonstration row [01] of split 'train' does not fit"):
        task.prepare_data({"train": long_train})
    task, _ = prompting(models["gpt2"], shots=2)
    with pytest.raises(TaskError, match="draws demonstrations from split"):
        task.prepare_data({"test": TEST})


@pytest.mark.slow
def test_k_shot_over_seeds_with_calibration(tmp_path, models):
    data = write_splits(tmp_path / "data", synthetic.splits_of(synthetic.sentiment_rows))
    config = config_file("sentiment_prompt", f"model={models['gpt2']}")
    config.data.update(name=str(data), max_length=128)  # the tiny GPT-2's positions
    config.task.update(shots=2, calibrate=True, template="{text} =", label_words=("bad", "good"))
    config.train.prng_impl = "rbg"
    summary = prompt.over_seeds(config, tmp_path / "run", seeds=3)
    written = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert written["test"] == summary["test"]
    runs, test = summary["seeds"], summary["test"]
    assert [r["shot_seed"] for r in runs] == [0, 1, 2] and test["seeds"] == 3
    for key in ("accuracy", "calibrated_accuracy", "macro_f1"):
        values = [r[key] for r in runs]
        assert test[key] == pytest.approx(np.mean(values))
        assert test[f"{key}_std"] == pytest.approx(np.std(values, ddof=1))
    assert all(r["shots"] == 2 and len(r["content_free_probs"]) == 2 for r in runs)
    assert all(sum(r["content_free_probs"]) == pytest.approx(1.0) for r in runs)
    for r in runs:
        assert (tmp_path / "run" / f"seed_{r['shot_seed']}" / "eval.json").is_file()


@pytest.mark.slow
def test_prompting_fine_tunes_through_the_lm_head(tmp_path, models):
    """PET-style: the label words' scores are the logits of a cross-entropy any method
    trains; a method that trains nothing is refused for training."""
    data = write_splits(tmp_path / "data", synthetic.splits_of(synthetic.sentiment_rows))
    config = config_file("sentiment_prompt", f"model={models['gpt2_shallow']},method=full")
    config.data.update(name=str(data), max_length=32, batch_size=16, eval_batch_size=48)
    config.task.update(template="{text} =", label_words=("bad", "good"))
    config.train.update(epochs=6, prng_impl="rbg", log_every=100, eval_every=10**6)
    config.optimizer.update(learning_rate=3e-3, warmup_ratio=0.0)
    assert loop.run(config, tmp_path / "run")["test"]["accuracy"] >= 0.85
    frozen = config_file("sentiment_prompt", f"model={models['gpt2']}")
    frozen.data.update(name=str(data), max_length=32)
    with pytest.raises(MethodError, match="method none trains nothing"):
        loop.run(frozen, tmp_path / "frozen")


def test_prompt_command_line_has_its_flags():
    """`python -m ftjax.prompt` shares ftjax.evaluate's flags and adds --seeds."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "ftjax.prompt", "--helpfull"], capture_output=True, text=True
    )
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]  # e.g. a flag defined twice
    for flag in ("--seeds", "--config", "--workdir", "--data"):
        assert flag in proc.stdout
