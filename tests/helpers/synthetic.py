"""Small synthetic datasets in real words, learnable by a tiny random model in a few dozen
steps, so end-to-end task tests can ask for a metric well above chance."""

from __future__ import annotations

import numpy as np

FILLER = "the a film story plot actor scene music city night day old new long short very".split()
POSITIVE, NEGATIVE = ["good", "great", "fine"], ["bad", "awful", "poor"]
PEOPLE, PLACES = ["john", "mary", "peter", "anna"], ["paris", "london", "berlin", "rome"]
SPLITS = {"train": 192, "validation": 48, "test": 48}


def _words(rng, n):
    return [str(w) for w in rng.choice(FILLER, n)]


def sentiment_rows(n: int, seed: int) -> list[dict]:
    """Label 1 iff the sentence holds a positive word; `score` = positives - negatives."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = i % 2
        words = _words(rng, int(rng.integers(3, 9)))
        cue = str(rng.choice(POSITIVE if label else NEGATIVE))
        words.insert(int(rng.integers(0, len(words) + 1)), cue)
        extra = int(rng.integers(0, 3))
        for _ in range(extra):
            words.insert(int(rng.integers(0, len(words) + 1)), cue)
        score = (1 + extra) * (1 if label else -1)
        rows.append({"text": " ".join(words), "label": label, "score": float(score)})
    return rows


def text_to_text_rows(n: int, seed: int) -> list[dict]:
    """Sentiment sentences whose target is a short sentence saying which."""
    return [
        {"source": r["text"], "target": "it is good" if r["label"] else "it is bad"}
        for r in sentiment_rows(n, seed)
    ]


def pair_rows(n: int, seed: int) -> list[dict]:
    """Label 1 iff the second text says "yes": learnable only if the pair is read."""
    rng = np.random.default_rng(seed)
    return [
        {
            "premise": " ".join(_words(rng, 4)),
            "hypothesis": " ".join([*_words(rng, 3), "yes" if i % 2 else "no"]),
            "label": i % 2,
        }
        for i in range(n)
    ]


def ner_rows(n: int, seed: int) -> list[dict]:
    """Words with people (B-PER) and places (B-LOC, "new york" as B-LOC I-LOC)."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        tokens, tags = [], []
        for _ in range(int(rng.integers(4, 9))):
            kind = rng.random()
            if kind < 0.15:
                tokens.append(str(rng.choice(PEOPLE)))
                tags.append("B-PER")
            elif kind < 0.25:
                tokens.append(str(rng.choice(PLACES)))
                tags.append("B-LOC")
            elif kind < 0.3:
                tokens += ["new", "york"]
                tags += ["B-LOC", "I-LOC"]
            else:
                tokens.append(str(rng.choice(FILLER)))
                tags.append("O")
        rows.append({"id": str(i), "tokens": tokens, "tags": tags})
    return rows


def qa_rows(n: int, seed: int) -> list[dict]:
    """SQuAD-format rows: "who is in it ?" over a context of 6-40 words holding one
    person (answer) and places (distractors); long contexts need several windows."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        words = _words(rng, int(rng.integers(5, 40)))
        for _ in range(2):
            words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(PLACES)))
        position = int(rng.integers(0, len(words) + 1))
        name = str(rng.choice(PEOPLE))
        words.insert(position, name)
        context = " ".join(words)
        start = len(" ".join(words[:position])) + (1 if position else 0)
        rows.append({
            "id": str(i), "question": "who is in it ?", "context": context,
            "answers": {"text": [name], "answer_start": [start]},
        })  # fmt: skip
    return rows


def splits_of(make, seed: int = 0, sizes=SPLITS) -> dict[str, list[dict]]:
    return {name: make(n, seed + k) for k, (name, n) in enumerate(sizes.items())}
