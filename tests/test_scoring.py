"""Metric code against the reference implementations researchers report with."""

import numpy as np
import pytest
from rouge_score import rouge_scorer
from scipy import stats
from seqeval import metrics as seqeval_metrics
from sklearn import metrics as sk

from ftjax.tasks import scoring


def random_labels(seed, n=60, classes=4):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    predictions = np.where(rng.random(n) < 0.6, labels, rng.integers(0, classes + 1, n))
    return predictions, labels


@pytest.mark.parametrize("seed", range(6))
def test_classification_metrics_match_sklearn(seed):
    predictions, labels = random_labels(seed)
    assert scoring.accuracy(predictions, labels) == pytest.approx(
        sk.accuracy_score(labels, predictions)
    )
    assert scoring.macro_f1(predictions, labels) == pytest.approx(
        sk.f1_score(labels, predictions, average="macro", zero_division=0)
    )
    assert scoring.matthews_corrcoef(predictions, labels) == pytest.approx(
        sk.matthews_corrcoef(labels, predictions)
    )


def test_classification_metrics_hand_cases():
    # One class never predicted, one predicted but absent from the gold labels.
    predictions, labels = np.array([0, 0, 2, 2]), np.array([0, 1, 1, 0])
    assert scoring.accuracy(predictions, labels) == 0.25
    # F1 per class: 0 -> 2*1/(2+1+1)=0.5, 1 -> 0, 2 -> 0.
    assert scoring.macro_f1(predictions, labels) == pytest.approx(0.5 / 3)
    constant = np.zeros(4, int)
    assert scoring.matthews_corrcoef(constant, labels) == 0.0
    assert scoring.matthews_corrcoef(labels, labels) == 1.0


@pytest.mark.parametrize("seed", range(4))
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    targets = rng.normal(size=50)
    predictions = targets + rng.normal(scale=0.7, size=50)
    predictions[:5] = predictions[5]  # ties for spearman
    assert scoring.pearson(predictions, targets) == pytest.approx(
        stats.pearsonr(predictions, targets)[0]
    )
    assert scoring.spearman(predictions, targets) == pytest.approx(
        stats.spearmanr(predictions, targets)[0]
    )
    assert scoring.mse(predictions, targets) == pytest.approx(np.mean((predictions - targets) ** 2))
    assert scoring.pearson(np.ones(50), targets) == 0.0  # undefined: reported as 0


def test_perplexity():
    assert scoring.perplexity(np.log(7.0) * 10, 10) == pytest.approx(7.0)
    assert scoring.perplexity(1e6, 1) == float("inf")


BIO_CASES = [
    # well-formed
    (["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "I-PER", "O", "B-LOC"]),
    # boundary wrong, type wrong
    (["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "O", "O", "B-ORG"]),
    # I- after O opens an entity; I- of another type opens a new one
    (["O", "I-PER", "I-PER", "I-LOC"], ["O", "I-PER", "I-PER", "I-LOC"]),
    (["B-PER", "I-PER", "I-PER"], ["B-PER", "I-LOC", "I-PER"]),
    # adjacent entities of one type
    (["B-PER", "B-PER", "I-PER"], ["B-PER", "I-PER", "I-PER"]),
    (["O", "O"], ["B-MISC", "O"]),
]


def test_entity_spans_hand_cases():
    assert scoring.entity_spans(["O", "I-PER", "I-PER", "I-LOC", "B-LOC"]) == [
        ("PER", 1, 2),
        ("LOC", 3, 3),
        ("LOC", 4, 4),
    ]
    assert scoring.entity_spans(["B-PER", "I-LOC"]) == [("PER", 0, 0), ("LOC", 1, 1)]
    with pytest.raises(ValueError, match="not BIO"):
        scoring.entity_spans(["PER"])


def assert_matches_seqeval(true_tags, pred_tags):
    scores = scoring.entity_scores(true_tags, pred_tags)
    assert scores["precision"] == pytest.approx(
        seqeval_metrics.precision_score(true_tags, pred_tags)
    )
    assert scores["recall"] == pytest.approx(seqeval_metrics.recall_score(true_tags, pred_tags))
    assert scores["f1"] == pytest.approx(seqeval_metrics.f1_score(true_tags, pred_tags))
    report = seqeval_metrics.classification_report(true_tags, pred_tags, output_dict=True)
    for kind, row in scores["per_type"].items():
        assert row["f1"] == pytest.approx(report[kind]["f1-score"]), kind
        assert row["support"] == report[kind]["support"], kind


def test_entity_scores_match_seqeval_on_hand_cases():
    true_tags = [t for t, _ in BIO_CASES]
    pred_tags = [p for _, p in BIO_CASES]
    assert_matches_seqeval(true_tags, pred_tags)


@pytest.mark.parametrize("seed", range(5))
def test_entity_scores_match_seqeval_on_random_tags(seed):
    rng = np.random.default_rng(seed)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "I-ORG"]
    true_tags, pred_tags = [], []
    for _ in range(30):
        n = int(rng.integers(1, 12))
        truth = list(rng.choice(tags, n, p=[0.5, 0.15, 0.1, 0.1, 0.1, 0.05]))
        guess = [t if rng.random() < 0.7 else str(rng.choice(tags)) for t in truth]
        true_tags.append(truth)
        pred_tags.append(guess)
    assert_matches_seqeval(true_tags, pred_tags)


def test_entities_do_not_cross_sentences():
    scores = scoring.entity_scores([["B-PER"], ["I-PER"]], [["B-PER"], ["I-PER"]])
    assert scores["f1"] == 1.0 and scores["per_type"]["PER"]["support"] == 2


def test_squad_normalisation_and_scores():
    # Official v1.1 normalisation: case, punctuation, articles, whitespace.
    assert scoring.normalize_answer("  The  Eiffel-Tower, in PARIS! ") == "eiffeltower in paris"
    assert scoring.normalize_answer("an apple a day") == "apple day"
    assert scoring.squad_exact("the Denver Broncos", "Denver Broncos.") == 1.0
    # overlap {denver, broncos}: p = 2/3, r = 2/2
    assert scoring.squad_f1("Denver Broncos team", "The Denver Broncos") == pytest.approx(0.8)
    assert scoring.squad_f1("Carolina", "Denver") == 0.0
    # Repeated tokens count by multiplicity.
    assert scoring.squad_f1("a b b", "b c") == pytest.approx(2 * 0.5 * 0.5 / 1.0)
    scores = scoring.squad_scores(
        ["Denver Broncos", "1990", "", "Paris"],
        [["Denver Broncos", "The Broncos"], ["in 1990s", "1990"], [], ["London"]],
    )
    # Q1 exact; Q2 exact with the second gold; Q3 unanswerable and predicted empty; Q4 wrong.
    assert scores == {"exact_match": 0.75, "f1": 0.75}
    assert scoring.squad_scores(["Paris"], [[]]) == {"exact_match": 0.0, "f1": 0.0}


def test_rouge_l_matches_rouge_score():
    predictions = ["the cats were running home", "stock markets fall sharply", "", "hello"]
    references = ["a cat runs home", "Markets fell sharply on Monday", "empty", "hello"]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = np.mean(
        [
            scorer.score(r, p)["rougeL"].fmeasure
            for p, r in zip(predictions, references, strict=True)
        ]
    )
    assert scoring.rouge_l(predictions, references) == pytest.approx(expected)
    # Stemming matters: "running"/"runs" and "cats"/"cat" match only with it.
    assert scoring.rouge_l(predictions[:1], references[:1]) > scoring.rouge_l(
        predictions[:1], references[:1], use_stemmer=False
    )


def test_exact_match():
    assert scoring.exact_match([" positive", "negative"], ["positive ", "positive"]) == 0.5
