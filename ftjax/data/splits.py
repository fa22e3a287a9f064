"""Datasets for fine-tuning: a bundled asset, local files or a hub id -> a `DatasetDict`.

`load_splits(name_or_path)` accepts, in this order of precedence (see ftjax.data.sources):

- an existing local path:
  - a directory holding split files named `train`, `validation` and/or `test` with one of
    the extensions .jsonl, .json, .csv, .parquet (any subset of the three splits; each
    split may use its own format, but only one file per split);
  - a directory written by `DatasetDict.save_to_disk` (has dataset_dict.json);
  - a single .jsonl/.json/.csv/.parquet file, which becomes the split "train" (as with
    `datasets.load_dataset`); carve evaluation splits out of it explicitly if needed;
- a bundled dataset asset name (ftjax.data.assets): fetched once, then read from its jsonl splits;
- a Hugging Face hub id, loaded with `datasets.load_dataset`; when the hub is marked
  offline this fails at once with a SourceError instead of waiting on the network.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from pathlib import Path

import datasets
import numpy as np

from ftjax.data import assets
from ftjax.data.sources import SourceError, classify_source, require_hub

SPLITS = ("train", "validation", "test")
# File extension -> the `datasets` builder that reads it.
FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class DataError(ValueError):
    """Local data that cannot be read as a dataset; the message names the file or split."""


def load_splits(name_or_path: str) -> datasets.DatasetDict:
    """Loads a dataset's splits from a bundled asset, a local directory/file or a hub id."""
    name_or_path = os.path.expanduser(name_or_path)
    kind = classify_source(name_or_path, assets.asset_names)
    if kind == "asset":
        if name_or_path not in assets.asset_names("dataset"):
            raise SourceError(
                f"{name_or_path!r} is a bundled model, not a dataset; bundled datasets: "
                f"{', '.join(sorted(assets.asset_names('dataset')))}"
            )
        return _load_dir(assets.fetch(name_or_path))
    if kind == "hub":
        require_hub(name_or_path, "dataset")
        loaded = datasets.load_dataset(name_or_path)
        if not isinstance(loaded, datasets.DatasetDict):
            raise DataError(f"hub dataset {name_or_path!r} did not load as a DatasetDict")
        return loaded
    path = Path(name_or_path)
    if path.is_dir():
        return _load_dir(path)
    return datasets.DatasetDict({"train": _load_file(path, "train")})


def dataset_info(name_or_path: str) -> dict:
    """The `info.json` beside a dataset asset's or local folder's splits (label names,
    columns), or {} where there is none (files, hub ids)."""
    import json

    name_or_path = os.path.expanduser(name_or_path)
    if os.path.isdir(name_or_path):
        path = Path(name_or_path) / "info.json"
    elif name_or_path in assets.asset_names("dataset"):
        path = assets.fetch(name_or_path) / "info.json"
    else:
        return {}
    return json.loads(path.read_text()) if path.is_file() else {}


def _load_dir(path: Path) -> datasets.DatasetDict:
    if (path / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(path))
    found = {
        split: [path / f"{split}{ext}" for ext in FORMATS if (path / f"{split}{ext}").is_file()]
        for split in SPLITS
    }
    for split, files in found.items():
        if len(files) > 1:
            raise DataError(
                f"{path}: split {split!r} is ambiguous, found {', '.join(f.name for f in files)}; "
                "keep one file per split"
            )
    if not any(found.values()):
        present = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
        raise DataError(
            f"{path}: no split files found; expected one or more of {', '.join(SPLITS)} "
            f"with extension {', '.join(FORMATS)} (e.g. train.jsonl); the directory holds: "
            f"{', '.join(present[:20]) or 'nothing'}{' ...' if len(present) > 20 else ''}"
        )
    return datasets.DatasetDict(
        {split: _load_file(files[0], split) for split, files in found.items() if files}
    )


def _load_file(path: Path, split: str) -> datasets.Dataset:
    builder = FORMATS.get(path.suffix.lower())
    if builder is None:
        raise DataError(
            f"{path}: unsupported file type {path.suffix!r} for split {split!r}; "
            f"use one of {', '.join(FORMATS)}"
        )
    # `datasets` fails on an empty file with a bare StopIteration; say what is wrong instead.
    if path.stat().st_size == 0:
        raise DataError(f"{path}: split {split!r} is an empty file")
    try:
        return datasets.load_dataset(builder, data_files={split: str(path)}, split=split)
    except Exception as e:
        cause = e.__cause__ or e  # DatasetGenerationError hides the parser's message
        raise DataError(f"{path}: could not read split {split!r} as {builder}: {cause}") from e


def stratified_sample(
    strata: Sequence[Hashable] | None, size: int, count: int, seed: int
) -> np.ndarray:
    """Sorted indices of `count` of `size` rows drawn with `seed`: in proportion to each
    stratum's share (largest remainders get the rows left over) when `strata` gives each
    row's class, else uniformly. Each stratum's draw is a prefix of one permutation, so
    with the same seed a smaller sample lies inside a larger one (nested data budgets)."""
    rng = np.random.default_rng(seed)
    if strata is None:
        return np.sort(rng.permutation(size)[:count])
    labels = np.asarray([str(s) for s in strata])  # any hashable class, one order
    classes, members = np.unique(labels, return_inverse=True)
    shares = np.bincount(members, minlength=len(classes)) * count / size
    quotas = np.floor(shares).astype(int)
    leftover = count - quotas.sum()
    quotas[np.argsort(-(shares - quotas), kind="stable")[:leftover]] += 1
    chosen = [
        rng.permutation(np.flatnonzero(members == c))[:quota] for c, quota in enumerate(quotas)
    ]
    return np.sort(np.concatenate(chosen))
