"""What tasks make of rows: bad input named or dropped, truncation reported, labels
aligned; and which backbone parameters each task reaches."""

from __future__ import annotations

import shutil

import datasets
import numpy as np
import pytest

from ftjax.data.splits import load_splits
from ftjax.models import from_pretrained, load_tokenizer
from ftjax.tasks import DataRowError, TaskError
from ftjax.training.config import standalone_task
from ftjax.training.experiment import build
from tests.helpers import synthetic
from tests.helpers.runs import config_file, tiny_run_config
from tests.helpers.tiny import write_splits

# ----------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def tiny_bert(checkpoints):
    model, _ = from_pretrained(checkpoints["bert"])
    return model, load_tokenizer(checkpoints["bert"])


def rows_of(*rows):
    return datasets.Dataset.from_list(list(rows))


def test_classification_bad_rows_are_named_or_dropped_and_counted(tiny_bert):
    model, tokenizer = tiny_bert
    bad = rows_of(
        {"text": "good film", "label": 1},
        {"text": "  ", "label": 0},
        {"text": "odd film", "label": 2},
        {"text": "fine", "label": 0},
    )
    task = standalone_task("classification", model, tokenizer, num_labels=2)
    with pytest.raises(DataRowError, match=r"split 'train', row 1, field 'text': empty"):
        task.encode(bad, "train")
    task = standalone_task("classification", model, tokenizer, num_labels=2, on_bad_row="drop")
    examples = task.encode(bad, "train")
    assert list(examples.rows) == [0, 3]
    assert examples.report["dropped"] == {
        "text: empty or missing text": 1,
        "label: label 2 outside the label set 0..1": 1,
    }
    with pytest.raises(DataRowError, match=r"row 2, field 'label': label 2 outside the label set"):
        task = standalone_task("classification", model, tokenizer, num_labels=2)
        task.encode(rows_of(bad[0], bad[3], bad[2]), "train")
    with pytest.raises(DataRowError, match=r"no column for config.data.label_column='stars'"):
        standalone_task("classification", model, tokenizer, label_column="stars").encode(
            bad, "train"
        )


def test_truncation_is_reported(tiny_bert):
    model, tokenizer = tiny_bert
    task = standalone_task("classification", model, tokenizer, max_length=8)
    examples = task.encode(
        rows_of({"text": "one two", "label": 0}, {"text": " ".join(["word"] * 20), "label": 1}),
        "train",
    )
    assert examples.report["truncated"] == 1 and examples.report["truncated_share"] == 0.5
    assert [len(x) for x in examples.arrays["input_ids"]] == [4, 8]
    assert examples.arrays["input_ids"][1][-1] == tokenizer.sep_token_id


def test_regression_target_must_be_a_number(tiny_bert):
    model, tokenizer = tiny_bert
    task = standalone_task("regression", model, tokenizer)
    with pytest.raises(DataRowError, match=r"row 1, field 'score': target None is not a finite"):
        task.encode(rows_of({"text": "a", "score": 1.5}, {"text": "b", "score": None}), "test")


def test_ner_tags_must_fit_words_and_tag_set(tiny_bert):
    model, tokenizer = tiny_bert
    task = standalone_task("token_classification", model, tokenizer, label_names=("O", "B-PER"))
    good = {"tokens": ["john", "runs"], "tags": ["B-PER", "O"]}
    with pytest.raises(DataRowError, match=r"row 1, field 'tags': tag 'B-LOC' \(word 0\) not in"):
        task.encode(rows_of(good, {"tokens": ["paris"], "tags": ["B-LOC"]}), "validation")
    with pytest.raises(DataRowError, match=r"row 0, field 'tags': 1 tags for 2 words"):
        task.encode(rows_of({"tokens": ["a", "b"], "tags": ["O"]}), "validation")


def test_ner_labels_the_first_subword_and_maps_predictions_back(tiny_bert):
    model, tokenizer = tiny_bert
    task = standalone_task(
        "token_classification", model, tokenizer, label_names=("O", "B-PER", "I-PER")
    )
    words = ["johnathanson", "smithers", "runs"]  # several sub-words each
    examples = task.encode(rows_of({"tokens": words, "tags": ["B-PER", "I-PER", "O"]}), "t")
    ids, labels = examples.arrays["input_ids"][0], examples.arrays["labels"][0]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert len(pieces) > 5 and pieces[0] == "[CLS]"
    firsts = [
        i for i, p in enumerate(pieces) if p not in ("[CLS]", "[SEP]") and not p.startswith("##")
    ]
    assert [int(labels[i]) for i in firsts] == [1, 2, 0]
    assert all(labels[i] == -100 for i in range(len(labels)) if i not in firsts)
    # Predict the gold label at first sub-words, garbage elsewhere: entity F1 is 1.
    predictions = np.where(labels >= 0, labels, 1)
    metrics = task.finalize({"correct": 3, "count": 3}, {"predictions": [predictions]}, examples)
    assert metrics["entity_f1"] == 1.0


# ----------------------------------------------------------------------------- reach


@pytest.fixture(scope="module")
def tiny_decoders(checkpoints):
    out = {}
    for family in ("gpt2", "t5", "llama"):
        model, _ = from_pretrained(checkpoints[family])
        out[family] = (model, load_tokenizer(checkpoints[family]))
    return out


def test_seq2seq_bad_rows_and_layouts(tiny_decoders):
    model, tokenizer = tiny_decoders["t5"]
    rows = rows_of(
        {"source": "good film", "target": "it is good"},
        {"source": "", "target": "it is bad"},
        {"source": "bad film", "target": " ".join(["word"] * 12)},
    )
    task = standalone_task("seq2seq", model, tokenizer, label_column="", max_target_length=8)
    with pytest.raises(DataRowError, match=r"row 1, field 'source': empty or missing source"):
        task.encode(rows, "train")
    task = standalone_task(
        "seq2seq", model, tokenizer, label_column="", max_target_length=8, on_bad_row="drop"
    )
    examples = task.encode(rows, "train")
    assert list(examples.rows) == [0] and examples.report["dropped"] == {
        "source: empty or missing source": 1,
        "target: target has 13 tokens with EOS, over data.max_target_length=8": 1,
    }
    # T5: decoder inputs are the targets shifted right behind the start token.
    target = examples.arrays["labels"][0]
    assert target[-1] == model.config.eos_token_id
    assert list(examples.arrays["decoder_input_ids"][0]) == [0, *target[:-1]]
    # Label words: a label with no word is named.
    labelled = rows_of({"text": "good film", "label": 1}, {"text": "bad film", "label": 2})
    task = standalone_task(
        "seq2seq", model, tokenizer, source_column="text", label_column="label",
        label_words=("no", "yes"),
    )  # fmt: skip
    with pytest.raises(DataRowError, match=r"row 1, field 'label': label 2 has no word"):
        task.encode(labelled, "train")
    # Decoder-only: prompt + target in one row, the loss on the target (and EOS) only;
    # the prompt alone, padded on the left, is what generation continues.
    model, tokenizer = tiny_decoders["gpt2"]
    task = standalone_task("seq2seq", model, tokenizer, label_column="", max_target_length=8)
    examples = task.encode(rows_of({"source": "good film", "target": "it is good"}), "train")
    ids, labels = examples.arrays["input_ids"][0], examples.arrays["labels"][0]
    prompt = examples.arrays["prompt"][0]
    counted = labels != -100
    assert list(ids[: len(prompt)]) == list(prompt) and examples.layout["prompt"].left
    assert list(labels[len(prompt) - 1 : -1]) == list(ids[len(prompt) :])  # next tokens
    assert counted.sum() == len(ids) - len(prompt) and ids[-1] == model.config.eos_token_id


CAPITALS = [("california", "sacramento"), ("massachusetts", "boston"), ("ohio", "columbus")]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_seq2seq_chat_prompts_follow_the_tokenizers_template(tiny_decoders):
    model, tokenizer = tiny_decoders["llama"]
    rows = rows_of(
        {"source": "good film", "target": "yes"},
        {"source": " ".join(["long"] * 80), "target": "no"},
    )
    options = dict(label_column="", max_length=40, prompt_format="chat")
    with pytest.raises(TaskError, match=r"prompt_format='chat': the tokenizer .* no chat"):
        standalone_task("seq2seq", model, tokenizer, **options).encode(rows, "train")
    tokenizer.chat_template = CHATML
    try:
        task = standalone_task("seq2seq", model, tokenizer, source_prefix="Judge: ", **options)
        examples = task.encode(rows, "train")
        expected = tokenizer.apply_chat_template(
            [{"role": "user", "content": "Judge: good film"}],
            add_generation_prompt=True,
            return_dict=True,
        )["input_ids"]
        assert list(examples.arrays["prompt"][0]) == list(expected)

        # A long source is cut inside the user's turn; the turn markers stay whole.
        def ids(text):
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        cut = list(examples.arrays["prompt"][1])
        assert len(cut) == 40 and examples.report["truncated"] == 1
        head = ids("<|im_start|>user\nJudge: long")
        tail = ids("long<|im_end|>\n<|im_start|>assistant\n")
        assert cut[: len(head)] == head and cut[-len(tail) :] == tail
        t5_model, t5_tokenizer = tiny_decoders["t5"]
        with pytest.raises(TaskError, match=r"prompt_format='chat' is for decoder-only"):
            standalone_task("seq2seq", t5_model, t5_tokenizer, **options)
    finally:
        tokenizer.chat_template = None


def test_seq2seq_demonstrations_precede_every_prompt(tiny_decoders):
    """k-shot generation: the drawn (source, target) pairs come first, rendered as the
    prompt and target are (plain), as earlier turns (chat), or in T5's encoder input."""
    train = rows_of(*[{"source": s, "target": c} for s, c in CAPITALS])
    test = rows_of({"source": "texas", "target": "austin"})
    splits = {"train": train, "test": test}
    options = dict(label_column="", source_prefix="the capital of ", separator=" is",
                   target_delimiter=" ", shots=2, shot_separator="; ", max_length=120)  # fmt: skip
    model, tokenizer = tiny_decoders["gpt2"]
    task = standalone_task("seq2seq", model, tokenizer, **options)
    task.prepare_data(splits)
    shown = [dict(CAPITALS)[source] for source, _ in task.demos]
    assert len(set(shown)) == 2
    examples = task.encode(test, "test")
    demo = "".join(f"the capital of {s} is {dict(CAPITALS)[s]}; " for s, _ in task.demos)

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    expected = ids(demo) + ids("the capital of texas") + ids(" is")
    assert list(examples.arrays["prompt"][0]) == expected
    target = examples.arrays["input_ids"][0][len(examples.arrays["prompt"][0]) :]
    assert tokenizer.decode(target, skip_special_tokens=True) == "austin"
    other = standalone_task("seq2seq", model, tokenizer, **{**options, "shot_seed": 1})
    other.prepare_data(splits)
    assert other.demos != task.demos
    # Generated text is cut at the first stop string.
    stopping = standalone_task("seq2seq", model, tokenizer, **options, stop_at=(";", "\n"))
    assert stopping.decode(np.asarray(ids("austin; the capital of"))) == "austin"
    # Chat: each demonstration is a user turn and the assistant's answer.
    llama, llama_tokenizer = tiny_decoders["llama"]
    llama_tokenizer.chat_template = CHATML
    try:
        chat = standalone_task("seq2seq", llama, llama_tokenizer, **options, prompt_format="chat")
        chat.prepare_data(splits)
        turns = []
        for source, target in chat.demos:
            turns += [{"role": "user", "content": f"the capital of {source}"},
                      {"role": "assistant", "content": target}]  # fmt: skip
        expected = llama_tokenizer.apply_chat_template(
            [*turns, {"role": "user", "content": "the capital of texas"}],
            add_generation_prompt=True,
            return_dict=True,
        )["input_ids"]
        assert list(chat.encode(test, "test").arrays["prompt"][0]) == list(expected)
    finally:
        llama_tokenizer.chat_template = None
    t5, t5_tokenizer = tiny_decoders["t5"]
    encoder = standalone_task("seq2seq", t5, t5_tokenizer, **options)
    encoder.prepare_data(splits)
    source = encoder.encode(test, "test").arrays["input_ids"][0]
    t5_demo = "".join(f"the capital of {s} is {dict(CAPITALS)[s]}; " for s, _ in encoder.demos)
    assert list(source) == t5_tokenizer(t5_demo + "the capital of texas")["input_ids"]
    with pytest.raises(TaskError, match="draws demonstrations from split"):
        encoder.prepare_data({"test": test})


def test_t5_encoder_classification_with_full_trains_no_decoder_parameter(tmp_path, checkpoints):
    data = write_splits(
        tmp_path / "data",
        synthetic.splits_of(
            synthetic.sentiment_rows, sizes={"train": 16, "validation": 16, "test": 16}
        ),
    )
    exp = build(tiny_run_config("sentiment", checkpoints["t5"], data))
    trained = [p for p, on in exp.mask.items() if on]
    assert trained and not [p for p in trained if p.startswith(("decoder/", "lm_head/"))]
    assert any(p.startswith("encoder/layer_0/") for p in trained)
    assert "unreached by the task (frozen)" in exp.table
    bert = build(tiny_run_config("sentiment", checkpoints["bert"], data))
    assert not any(bert.mask[p] for p in bert.mask if p.startswith("pooler/"))
    pooled = build(tiny_run_config("sentiment", checkpoints["bert"], data, task__pooling="pooler"))
    assert all(pooled.mask[p] for p in pooled.mask if p.startswith("pooler/"))
    inner = build(tiny_run_config("sentiment", checkpoints["bert"], data, task__layers="1"))
    assert not any(inner.mask[p] for p in inner.mask if p.startswith("encoder/layer_1/"))
    assert all(inner.mask[p] for p in inner.mask if p.startswith("encoder/layer_0/"))


def test_decoder_pooling_that_reads_no_whole_input_is_refused(tmp_path, checkpoints):
    data = write_splits(
        tmp_path / "data",
        synthetic.splits_of(
            synthetic.sentiment_rows, sizes={"train": 16, "validation": 16, "test": 16}
        ),
    )
    with pytest.raises(TaskError, match="pooling='cls' on a causal decoder"):
        build(tiny_run_config("sentiment", checkpoints["gpt2"], data, task__pooling="cls"))


def test_headlines_config_turns_bbc_news_into_body_to_title(tmp_path, checkpoints):
    """configs/headlines.py on the real bbc_news asset, a tiny Llama with a chat template:
    prompts are the instruction + body in the user's turn, targets are the titles."""
    model_dir = tmp_path / "llama"
    shutil.copytree(checkpoints["llama"], model_dir)
    tokenizer = load_tokenizer(model_dir)
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(model_dir)
    config = config_file("headlines", "method=lora")
    config.model.name = str(model_dir)
    exp = build(config)
    test = exp.loader.examples("test")
    titles = load_splits("bbc_news")["test"]["title"]
    assert test.host["references"] == titles and len(test) == 222
    assert len(exp.loader.examples("validation")) == config.data.eval_examples == 64
    head = tokenizer("<|im_start|>user\n" + config.task.source_prefix, add_special_tokens=False)[
        "input_ids"
    ]
    for prompt in test.arrays["prompt"][:20]:
        assert len(prompt) <= config.data.max_length and list(prompt[: len(head)]) == head


def test_generation_evaluation_pads_to_few_coarse_widths(tiny_decoders):
    """Each eval width pair compiles the whole generation loop: seq2seq pads its groups to
    doubling widths, so prompts of 1..120 tokens come in at most 4 widths (not 8 of 16)."""
    from ftjax.data import batching
    from ftjax.training.loaders import TokenLoader

    assert batching.coarse_buckets(256) == [32, 64, 128, 256]
    assert batching.coarse_buckets(100) == [32, 64, 100]
    model, tokenizer = tiny_decoders["gpt2"]
    task = standalone_task("seq2seq", model, tokenizer, label_column="", max_length=120)
    rows = rows_of(*[{"source": "word " * n, "target": "x"} for n in range(1, 115, 3)])
    examples = task.encode(rows, "test")
    loader = TokenLoader(
        {"test": examples}, 8, 4, task.group_limits(), 0, 16, eval_widths=task.eval_widths()
    )
    widths = {b["prompt"].shape[1] for b, _ in loader.eval_batches("test")}
    assert widths <= set(batching.coarse_buckets(120)) and len(widths) > 1, widths
