"""Starting JAX's distributed runtime for a run on several hosts.

`--distributed=auto` (the default) calls `jax.distributed.initialize()` without
arguments where JAX itself would detect a cluster (a Cloud TPU VM pod slice, SLURM,
Open MPI, GKE): every host then runs the same command. Explicit
`--coordinator_address/--num_processes/--process_id` win over detection (two processes
on 127.0.0.1, clusters JAX does not know); `--distributed=off` never initialises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("ftjax")
MODES = ("auto", "on", "off")


class LaunchError(ValueError):
    """Launch flags that contradict each other."""


def detected_cluster() -> str | None:
    """The cluster JAX's own auto-detection would use, by name, or None. (JAX keeps its
    detectors in a private registry; this asks the same ones, in the same order.)"""
    from jax._src.clusters import ClusterEnv

    for env in ClusterEnv._cluster_types:
        if not env.opt_in_only_method and env.is_env_present():
            return env.__name__
    return None


def initialize(
    mode: str = "auto",
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    detect: Callable[[], str | None] = detected_cluster,
    start: Callable[..., None] | None = None,
) -> str:
    """Starts the distributed runtime as the flags and the environment say; returns what
    it did ("explicit", "detected <cluster>", "single process")."""
    if mode not in MODES:
        raise LaunchError(f"--distributed={mode!r}: one of {', '.join(MODES)}")
    if start is None:
        import jax

        start = jax.distributed.initialize
    explicit = [coordinator, num_processes, process_id]
    if any(v is not None for v in explicit):
        if mode == "off":
            raise LaunchError("--distributed=off with --coordinator_address etc.: drop one")
        if any(v is None for v in explicit):
            raise LaunchError(
                "--coordinator_address, --num_processes and --process_id go together "
                "(or none of them, and --distributed=auto detects the cluster)"
            )
        start(coordinator, num_processes, process_id)
        return "explicit"
    if mode == "off":
        return "single process"
    cluster = detect()
    if cluster is None and mode == "auto":
        return "single process"
    start()  # JAX reads the cluster's coordinator, process count and index itself
    done = f"detected {cluster}" if cluster else "initialised (--distributed=on)"
    log.info("distributed runtime: %s", done)
    return done
