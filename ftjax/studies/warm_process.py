"""`python -m MODULE ARGS...` for each point of a sweep, without importing the stack anew
for each: every run is a fresh child process (its own JAX runtime, exit code, signals and
memory), forked from one server process that imported the stack once (jax, flax, optax,
orbax, transformers' tokenizers and ftjax's training loop). The server only imports and
never starts a JAX backend or a thread, so forking it is safe.

MODULE must define `main(argv)` to be run by absl's `app.run`, as `python -m MODULE`
runs it (ftjax.main and ftjax.prompt do).
"""

from __future__ import annotations

import importlib
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
from pathlib import Path

# What every run imports (lazily, after its flags are parsed): the server imports it. Not
# the entry modules: they define absl flags, and ftjax.main and ftjax.prompt define the
# same ones, so a server that imported one could not serve the other.
STACK = ("ftjax.training.loop",)


def _run(module: str, argv: list[str], log: str) -> None:
    """In the forked child: output to the log, default signal handling, then the run."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the server ignores it
    from absl import app

    # set before the import: config_flags reads sys.argv for the --config.* overrides
    sys.argv = [f"python -m {module}", *argv]
    app.run(importlib.import_module(module).main, argv=sys.argv)


class WarmRunner:
    """Starts runs of one module. The server starts now and imports while the caller
    goes on (a sweep checks its grid meanwhile); the first run waits for it."""

    def __init__(self, module: str):
        self.module = module
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(list(STACK))
        multiprocessing.forkserver.ensure_running()

    def start(self, argv: list[str], log: Path) -> multiprocessing.process.BaseProcess:
        """The run of `python -m MODULE *argv`, its output appended to `log`, started;
        `.pid`, `.join()` and `.exitcode` as a subprocess's (negative: killed by that
        signal)."""
        sys.stdout.flush()
        process = self.context.Process(target=_run, args=(self.module, argv, str(log)))
        process.start()
        return process
