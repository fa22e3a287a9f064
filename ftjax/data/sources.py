"""Where a named model or dataset comes from: a bundled asset, a local path or a hub id.

Every place that takes a model or dataset name goes through `classify_source`, so the
three spellings behave the same everywhere, and an offline machine fails fast on a hub
id with one clear message instead of hanging on the network.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Literal

SourceKind = Literal["asset", "path", "hub"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


class SourceError(ValueError):
    """A model or dataset name that cannot be resolved; the message says what to do."""


def hub_offline() -> bool:
    """True when the user asked Hugging Face libraries to stay offline."""
    return any(
        os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}
        for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def classify_source(name_or_path: str, asset_names: Callable[[], frozenset[str]]) -> SourceKind:
    """Decides whether `name_or_path` names a bundled asset, a local path or a hub id.

    An existing path wins over everything, then asset names, then hub ids; anything
    else (e.g. a path that does not exist) is an error naming what was tried.
    `asset_names` is called only when needed, so a path never touches the asset registry.
    """
    if os.path.exists(name_or_path):
        return "path"
    names = asset_names()
    if name_or_path in names:
        return "asset"
    looks_like_path = name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path.strip(
        "/"
    ).replace("/", "", 1)
    if _HUB_ID.match(name_or_path) and not looks_like_path:
        return "hub"
    raise SourceError(
        f"{name_or_path!r} is neither an existing path, a bundled asset "
        f"({', '.join(sorted(names))}) nor a hub id (owner/name)."
    )


def require_hub(name: str, what: str) -> None:
    """Fails at once when a hub id is used offline, instead of waiting on the network."""
    if hub_offline():
        raise SourceError(
            f"{what} {name!r} looks like a Hugging Face hub id, but the hub is offline "
            "(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set). Use a bundled asset name or a "
            "local directory, or unset the offline variables on a machine with network."
        )
