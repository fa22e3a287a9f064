"""Raw corpus files into a dataset asset: train.jsonl, validation.jsonl, test.jsonl
(UTF-8, one JSON object per line) and info.json describing columns, label names, source
and split sizes.

Splits are fixed and deterministic: the rows that survive filtering, in source order (for
bbc_news: sorted by relative path), are permuted with `np.random.default_rng(0)
.permutation(n)`; validation and test get `n // 10` rows each, train the rest (about
80/10/10): train = perm[:n - 2k], validation = perm[n - 2k:n - k], test = perm[n - k:] with
k = n // 10. Each split file lists its rows in source order.

Sentiment assets (VADER ground truth, mean human rating in -4..4): score > 0 is label 1
("positive"), score < 0 is label 0 ("negative"), score == 0 rows are dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ftjax.data.asset_catalog import Asset, AssetError

SEED = 0


SPLIT_RULE = (
    "rows in source order permuted by numpy.random.default_rng(seed).permutation(n); "
    "k = n // 10; train = perm[:n-2k], validation = perm[n-2k:n-k], test = perm[n-k:]; "
    "each split file keeps source order"
)


def split_indices(n: int, seed: int = SEED) -> dict[str, np.ndarray]:
    """The fixed split of n rows (see module docstring); indices sorted within each split."""
    perm = np.random.default_rng(seed).permutation(n)
    k = n // 10
    parts = {
        "train": perm[: n - 2 * k],
        "validation": perm[n - 2 * k : n - k],
        "test": perm[n - k :],
    }
    return {split: np.sort(idx) for split, idx in parts.items()}


def write_dataset(asset: Asset, rows: list[dict], info: dict, out: Path) -> None:
    sizes = {}
    for split, idx in split_indices(len(rows)).items():
        with open(out / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as f:
            for i in idx:
                f.write(json.dumps(rows[i], ensure_ascii=False) + "\n")
        sizes[split] = len(idx)
    source = {
        "package": asset.package,
        "archive": asset.archive,
        "archive_sha256": asset.archive_sha256,
        "inner_archive": asset.inner[0] if asset.inner else None,
        "files": {f"{asset.root}/{rel}": sha for rel, sha in asset.files.items()},
    }
    if asset.tree_sha256:
        source["tree"] = {"root": asset.root, "digest_sha256": asset.tree_sha256}
    info = {
        "name": asset.name,
        "description": asset.description,
        **info,
        "splits": sizes,
        "seed": SEED,
        "split_rule": SPLIT_RULE,
        "source": source,
    }
    (out / "info.json").write_text(json.dumps(info, indent=1, ensure_ascii=False) + "\n")


def _read_text(path: Path, encodings: tuple[str, ...] = ("utf-8",)) -> str:
    data = path.read_bytes()
    for enc in encodings:
        try:
            return data.decode(enc)
        except UnicodeDecodeError:
            continue
    raise AssetError(f"{path}: not decodable as {' or '.join(encodings)}")


def _convert_sentiment(asset: Asset, raw: Path) -> tuple[list[dict], dict]:
    (file,) = asset.files
    rows, dropped = [], 0
    for lineno, line in enumerate(_read_text(raw / file).split("\n"), 1):
        line = line.rstrip("\r")  # the files use CRLF
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        try:
            row_id, score, text = parts[0], float(parts[1]), parts[2].strip()
        except (IndexError, ValueError):
            raise AssetError(
                f"asset {asset.name!r}: {file} line {lineno} is not 'id TAB score TAB text': "
                f"{line[:80]!r}"
            ) from None
        if score == 0:
            dropped += 1
            continue
        rows.append({"id": row_id, "text": text, "label": int(score > 0), "score": score})
    info = {
        "task": "classification",
        "columns": {
            "id": "str, sentence id in the source file",
            "text": "str, the sentence",
            "label": "int, 1 if score > 0 else 0",
            "score": "float, mean human rating in -4..4",
        },
        "text_column": "text",
        "label_column": "label",
        "label_names": ["negative", "positive"],
        "label_rule": "score > 0 -> 1 (positive), score < 0 -> 0 (negative), score == 0 dropped",
        "dropped_rows": {"score == 0": dropped},
    }
    return rows, info


def _convert_bbc_news(asset: Asset, raw: Path) -> tuple[list[dict], dict]:
    paths = sorted(raw.rglob("*.txt"), key=lambda p: p.relative_to(raw).as_posix())
    topics = sorted({p.parent.name for p in paths})
    rows = []
    for p in paths:
        # One article (sports/199.txt) is Windows-1252, the rest UTF-8.
        text = _read_text(p, ("utf-8", "cp1252")).strip()
        rel = p.relative_to(raw).with_suffix("").as_posix()
        title, blank, body = text.split("\n", 2) if text.count("\n") >= 2 else (text, "x", "")
        if blank.strip() or not title.strip() or not body.strip():
            raise AssetError(
                f"asset {asset.name!r}: {rel}.txt is not 'title line, blank line, body': "
                f"{text[:80]!r}"
            )
        rows.append(
            {
                "id": rel,
                "text": text,
                "label": topics.index(p.parent.name),
                "topic": p.parent.name,
                "title": title.strip(),
                "body": body.strip(),
            }
        )
    info = {
        "task": "classification",
        "columns": {
            "id": "str, topic/number of the source file",
            "text": "str, title line, blank line, article body",
            "label": "int, index into label_names",
            "topic": "str, the topic name",
            "title": "str, the title line of text (headline generation: body -> title)",
            "body": "str, text after the title line and the blank line",
        },
        "text_column": "text",
        "label_column": "label",
        "label_names": topics,
        "duplicate_texts": len(rows) - len({r["text"] for r in rows}),
    }
    return rows, info


_BIO_TAG = re.compile(r"^(O|[BI]-\S+)$")


def _convert_wnut16(asset: Asset, raw: Path) -> tuple[list[dict], dict]:
    (file,) = asset.files
    sentences: list[list[tuple[str, str]]] = [[]]
    for lineno, line in enumerate(_read_text(raw / file).split("\n"), 1):
        if not line.strip():  # an empty line or a lone tab ends a tweet
            if sentences[-1]:
                sentences.append([])
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0] or not _BIO_TAG.match(parts[1]):
            raise AssetError(
                f"asset {asset.name!r}: {file} line {lineno} is not 'token TAB BIO-tag': {line!r}"
            )
        sentences[-1].append((parts[0], parts[1]))
    sentences = [s for s in sentences if s]
    types = sorted({tag[2:] for s in sentences for _, tag in s if tag != "O"})
    tag_names = ["O"] + [f"{bi}-{t}" for t in types for bi in "BI"]
    rows = [
        {"id": str(i), "tokens": [t for t, _ in s], "tags": [g for _, g in s]}
        for i, s in enumerate(sentences)
    ]
    info = {
        "task": "token_classification",
        "columns": {
            "id": "str, tweet number in the source file",
            "tokens": "list[str], the tweet's tokens",
            "tags": "list[str], one BIO tag per token, from label_names",
        },
        "text_column": "tokens",
        "label_column": "tags",
        "label_names": tag_names,
    }
    return rows, info


CONVERTERS: dict[str, Callable[[Asset, Path], tuple[list[dict], dict]]] = {
    "sentiment": _convert_sentiment,
    "bbc_news": _convert_bbc_news,
    "wnut16": _convert_wnut16,
}
