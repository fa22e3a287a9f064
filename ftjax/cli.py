"""What the command-line entry points share: logging set-up, the on-disk compilation
cache, and errors in the user's config, data or workdir reported as one line (exit code
2) instead of a traceback."""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
from collections.abc import Callable
from typing import TypeVar

from absl import logging as absl_logging

T = TypeVar("T")


def set_up_logging() -> None:
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ftjax").setLevel(logging.INFO)


def use_compilation_cache() -> str | None:
    """XLA executables kept on disk across processes, so what compiles the same programs
    again loads them instead: a resumed run, `ftjax.evaluate` after training, a rerun
    (~7 s a step shape for the default run here; a learning rate or a seed that changes
    the packed row counts makes other programs). Under $FTJAX_CACHE/xla/, one
    folder per host CPU: XLA:CPU compiles for the host's instruction set, and a shared
    home directory must not hand AVX-512 code to an AVX2 machine. JAX's own
    JAX_COMPILATION_CACHE_DIR, when set, is used as it is; FTJAX_COMPILATION_CACHE=0
    turns caching off. Returns the folder in use (None: off)."""
    import jax

    if os.environ.get("FTJAX_COMPILATION_CACHE", "1") == "0":
        return None
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    from ftjax.data import assets

    folder = assets.cache_dir() / "xla" / host_cpu_key()
    jax.config.update("jax_compilation_cache_dir", str(folder))
    return str(folder)


def host_cpu_key() -> str:
    """The host's architecture and a digest of its CPU model and feature flags."""
    described = platform.processor()
    try:
        with open("/proc/cpuinfo") as info:
            lines = [ln for ln in info if ln.startswith(("model name", "flags", "Features"))]
        described = "".join(dict.fromkeys(lines))  # each distinct line once (per core)
    except OSError:
        pass
    return f"{platform.machine()}-{hashlib.sha256(described.encode()).hexdigest()[:12]}"


def reporting_user_errors(run: Callable[[], T]) -> T:
    """Runs `run`; a config, data, source or resume error exits with its message."""
    from ftjax.core.partition import PatternError
    from ftjax.data.sources import SourceError
    from ftjax.interop.hf_classes import ExportError
    from ftjax.methods import MethodError
    from ftjax.models.hub import CheckpointError
    from ftjax.tasks import DataRowError
    from ftjax.training import loop
    from ftjax.training.checkpoints import ResumeError
    from ftjax.training.config import ConfigError
    from ftjax.training.launch import LaunchError

    kinds = (
        ((ConfigError, MethodError, PatternError, LaunchError), "config error", 2),
        ((ExportError,), "adapter or export error", 2),
        ((DataRowError,), "data error", 2),
        ((CheckpointError, SourceError), "model error", 2),
        ((ResumeError,), "workdir error", 2),
        ((loop.TrainingDiverged,), "training diverged", 1),
    )
    try:
        return run()
    except tuple(k for errors, _, _ in kinds for k in errors) as err:
        label, code = next((lab, c) for errors, lab, c in kinds if isinstance(err, errors))
        print(f"{label}: {err}", file=sys.stderr)
        sys.exit(code)
