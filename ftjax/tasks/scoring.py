"""Host-side metric functions, each matching a reference implementation.

Every function here is checked in `tests/test_scoring.py` against the logic researchers
report with: scikit-learn for accuracy / macro-F1 / Matthews correlation, scipy for the
correlations, seqeval (default, conlleval-style mode) for entity scores, the official
SQuAD v1.1 / v2.0 evaluation script for exact match and F1, and Google's `rouge-score`
for ROUGE-L. Only scipy and rouge-score are runtime dependencies; the rest are
re-implemented in numpy so that a run does not need scikit-learn or seqeval.
"""

from __future__ import annotations

import collections
import math
import re
import string
from collections.abc import Sequence
from typing import Any

import numpy as np

# ------------------------------------------------------------------ classification


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    return float((predictions == labels).mean()) if labels.size else 0.0


def _confusion(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Confusion matrix over the classes present in either array (rows: true)."""
    classes, codes = np.unique(np.concatenate([labels, predictions]), return_inverse=True)
    true, pred = codes[: len(labels)], codes[len(labels) :]
    matrix = np.zeros((len(classes), len(classes)), np.int64)
    np.add.at(matrix, (true, pred), 1)
    return matrix


def macro_f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes seen in labels or predictions
    (scikit-learn's `f1_score(average="macro")`, classes with no support scoring 0)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if not labels.size:
        return 0.0
    matrix = _confusion(predictions, labels)
    tp = np.diag(matrix).astype(np.float64)
    fp = matrix.sum(axis=0) - tp
    fn = matrix.sum(axis=1) - tp
    return float(np.mean(2 * tp / (2 * tp + fp + fn)))


def matthews_corrcoef(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Matthews correlation (Gorodkin's R_K), 0.0 when undefined."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if not labels.size:
        return 0.0
    matrix = _confusion(predictions, labels).astype(np.float64)
    true_totals, pred_totals = matrix.sum(axis=1), matrix.sum(axis=0)
    n, correct = matrix.sum(), np.trace(matrix)
    covariance = correct * n - true_totals @ pred_totals
    spread = (n * n - pred_totals @ pred_totals) * (n * n - true_totals @ true_totals)
    return float(covariance / math.sqrt(spread)) if spread else 0.0


# ------------------------------------------------------------------ regression


def _correlation(name: str, predictions: np.ndarray, targets: np.ndarray) -> float:
    from scipy import stats  # here: its import is ~0.4 s of every run's start-up

    predictions = np.asarray(predictions, np.float64)
    targets = np.asarray(targets, np.float64)
    # A constant column has no correlation; 0.0 keeps best-checkpoint selection working
    # where scipy would return NaN with a warning.
    if predictions.size < 2 or np.ptp(predictions) == 0 or np.ptp(targets) == 0:
        return 0.0
    return float(getattr(stats, name)(predictions, targets)[0])


def pearson(predictions: np.ndarray, targets: np.ndarray) -> float:
    return _correlation("pearsonr", predictions, targets)


def spearman(predictions: np.ndarray, targets: np.ndarray) -> float:
    return _correlation("spearmanr", predictions, targets)


def mse(predictions: np.ndarray, targets: np.ndarray) -> float:
    difference = np.asarray(predictions, np.float64) - np.asarray(targets, np.float64)
    return float(np.mean(difference**2)) if difference.size else 0.0


def perplexity(loss_sum: float, count: float) -> float:
    """exp of the mean per-token negative log-likelihood (inf when it overflows)."""
    mean = loss_sum / max(count, 1.0)
    return math.exp(mean) if mean < 700 else math.inf


# ------------------------------------------------------------------ entities (BIO)


def _split_tag(tag: str) -> tuple[str, str]:
    """'B-PER' -> ('B', 'PER'); 'O' -> ('O', '')."""
    if tag == "O":
        return "O", ""
    prefix, _, kind = tag.partition("-")
    if prefix not in ("B", "I") or not kind:
        raise ValueError(f"tag {tag!r} is not BIO (expected O, B-<type> or I-<type>)")
    return prefix, kind


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first, last) of every entity in one BIO sentence, read leniently as
    conlleval and seqeval do: an I- after O or after another type opens an entity."""
    spans: list[tuple[str, int, int]] = []
    open_kind, start = "", 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, kind = _split_tag(tag)
        continues = prefix == "I" and kind == open_kind
        if open_kind and not continues:
            spans.append((open_kind, start, i - 1))
            open_kind = ""
        if prefix != "O" and not continues:
            open_kind, start = kind, i
    return spans


def _prf(true_positives: int, predicted: int, gold: int) -> dict[str, float]:
    precision = true_positives / predicted if predicted else 0.0
    recall = true_positives / gold if gold else 0.0
    total = precision + recall
    return {
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / total if total else 0.0,
    }


def entity_scores(
    true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]
) -> dict[str, Any]:
    """Micro-averaged entity precision / recall / F1 (an entity counts only when its type
    and both boundaries match), plus the same per entity type with its support."""
    if len(true_tags) != len(pred_tags):
        raise ValueError(f"{len(true_tags)} gold sentences but {len(pred_tags)} predicted")
    gold: set[tuple[int, str, int, int]] = set()
    predicted: set[tuple[int, str, int, int]] = set()
    for n, (truth, guess) in enumerate(zip(true_tags, pred_tags, strict=True)):
        if len(truth) != len(guess):
            raise ValueError(f"sentence {n}: {len(truth)} gold tags but {len(guess)} predicted")
        gold.update((n, *span) for span in entity_spans(truth))
        predicted.update((n, *span) for span in entity_spans(guess))
    hits = gold & predicted
    scores: dict[str, Any] = _prf(len(hits), len(predicted), len(gold))
    per_type = {}
    for kind in sorted({entity[1] for entity in gold | predicted}):
        hit, guessed, true = (
            sum(entity[1] == kind for entity in entities) for entities in (hits, predicted, gold)
        )
        per_type[kind] = {**_prf(hit, guessed, true), "support": true}
    scores["per_type"] = per_type
    return scores


# ------------------------------------------------------------------ SQuAD

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower case, drop punctuation and articles, squeeze spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_exact(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def squad_f1(prediction: str, gold: str) -> float:
    predicted, truth = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not truth:  # SQuAD 2.0: an empty answer matches only an empty one
        return float(predicted == truth)
    common = sum((collections.Counter(predicted) & collections.Counter(truth)).values())
    if not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(truth)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean of the best exact match and F1 over each question's gold answers, as fractions.
    A question with no gold answer (SQuAD 2.0) is matched only by the empty prediction."""
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} questions")
    exact, f1 = [], []
    for prediction, answers in zip(predictions, golds, strict=True):
        answers = [a for a in answers if normalize_answer(a)] or [""]
        exact.append(max(squad_exact(prediction, a) for a in answers))
        f1.append(max(squad_f1(prediction, a) for a in answers))
    count = max(len(exact), 1)
    return {"exact_match": sum(exact) / count, "f1": sum(f1) / count}


# ------------------------------------------------------------------ generation


def rouge_l(
    predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = True
) -> float:
    """Mean ROUGE-L F-measure (Google's rouge-score, Porter stemming as in most papers)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    scores = [
        scorer.score(reference, prediction)["rougeL"].fmeasure
        for prediction, reference in zip(predictions, references, strict=True)
    ]
    return float(np.mean(scores)) if scores else 0.0


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to their reference after stripping outer whitespace."""
    pairs = list(zip(predictions, references, strict=True))
    return sum(p.strip() == r.strip() for p, r in pairs) / len(pairs) if pairs else 0.0
