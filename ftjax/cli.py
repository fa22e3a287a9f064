"""What the command-line entry points share: logging set-up, and errors in the user's
config, data or workdir reported as one line (exit code 2) instead of a traceback."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import TypeVar

from absl import logging as absl_logging

T = TypeVar("T")


def set_up_logging() -> None:
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ftjax").setLevel(logging.INFO)


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
