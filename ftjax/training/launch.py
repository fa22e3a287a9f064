"""Starting JAX's distributed runtime: one program per host (or per GPU), the same command
on every one of them.

- `--coordinator_address/--num_processes/--process_id` given: exactly those
  (two processes on 127.0.0.1, clusters JAX does not know).
- `--distributed=auto` (the default): `jax.distributed.initialize()` without arguments
  when this process is one of several that a cluster JAX can read started together:
  Open MPI's mpirun, a SLURM step (srun), a TPU pod slice (a Cloud TPU VM, whose workers
  JAX asks the metadata server for; GKE's `TPU_WORKER_HOSTNAMES`). JAX then finds the
  coordinator, the process count and this process's index itself
  (`jax/_src/clusters/`; `decide` reads the same variables, in JAX's order, to know
  whether it would). One process alone stays single-process: on SLURM and Open MPI JAX
  would otherwise show it one GPU only (its local rank's).
- `--distributed=on`: always, detection left to JAX (e.g. Kubernetes with `jax[k8s]`,
  which `auto` never assumes: any pod has `KUBERNETES_SERVICE_HOST`).
- `--distributed=off`: never.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping

log = logging.getLogger("ftjax")
MODES = ("auto", "on", "off")
# What JAX's SlurmCluster needs, all of them (srun sets them for every task of a step).
SLURM_VARS = (
    "SLURM_JOB_ID",
    "SLURM_STEP_NODELIST",
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_LOCALID",
)


class LaunchError(ValueError):
    """Launch flags or a cluster environment that cannot start the runtime."""


@dataclasses.dataclass(frozen=True)
class Cluster:
    name: str  # the JAX detector that would read it: ompi, slurm, gketpu, gcetpu
    processes: int | None  # None: only JAX can tell (a Cloud TPU VM's metadata server)


@dataclasses.dataclass(frozen=True)
class Plan:
    start: bool
    args: tuple[str, int, int] | None  # explicit initialize() arguments; None: JAX detects
    reason: str


def on_cloud_tpu_vm() -> bool:
    """JAX's own verdict, made when jax is imported (libtpu installed and TPU chips on the
    PCI bus); its TPU cluster detectors require it too."""
    import jax  # noqa: F401  (importing jax runs cloud_tpu_init, which sets the flag)
    from jax._src import cloud_tpu_init

    return bool(cloud_tpu_init.running_in_cloud_tpu_vm)


def _int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"environment variable {name}={value!r} is not an integer") from None


def detect_cluster(env: Mapping[str, str], tpu_vm: bool) -> Cluster | None:
    """The cluster JAX's `initialize()` would detect in `env`, in JAX's order of detectors
    (Open MPI, SLURM, GCE TPU, GKE TPU; mpi4py is opt-in and Kubernetes left to `on`)."""
    if "OMPI_MCA_orte_hnp_uri" in env:
        return Cluster("ompi", _int(env, "OMPI_COMM_WORLD_SIZE"))
    if all(name in env for name in SLURM_VARS):
        # The step's own task count: a batch script's step is one task of a larger job.
        tasks = _int(env, "SLURM_STEP_NUM_TASKS") or _int(env, "SLURM_NTASKS")
        return Cluster("slurm", tasks)
    if tpu_vm:
        if "TPU_SKIP_MDS_QUERY" not in env:  # GKE sets it; a GCE TPU VM asks its metadata
            return Cluster("gcetpu", None)
        hosts = env.get("TPU_PROCESS_ADDRESSES", env.get("TPU_WORKER_HOSTNAMES"))
        if hosts is not None:
            slices = _int(env, "MEGASCALE_NUM_SLICES") or 1
            return Cluster("gketpu", len(hosts.split(",")) * slices)
    return None


def decide(
    mode: str = "auto",
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    env: Mapping[str, str] | None = None,
    tpu_vm: bool | None = None,
) -> Plan:
    """Whether and how to start the runtime, from the flags and the environment
    (`os.environ` and `on_cloud_tpu_vm()` unless given)."""
    env = os.environ if env is None else env
    if mode not in MODES:
        raise LaunchError(f"--distributed={mode!r}: one of {', '.join(MODES)}")
    flags = {"--num_processes": num_processes, "--process_id": process_id}
    if coordinator is not None or any(v is not None for v in flags.values()):
        if mode == "off":
            raise LaunchError("--distributed=off contradicts --coordinator_address etc.: drop one")
        coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS")
        flags["--coordinator_address"] = coordinator
        missing = [flag for flag, value in flags.items() if value is None]
        if missing:
            raise LaunchError(
                f"{', '.join(missing)} missing: --coordinator_address (or "
                "JAX_COORDINATOR_ADDRESS), --num_processes and --process_id go together; "
                "give none of them and --distributed=auto detects a cluster"
            )
        where = f"process {process_id} of {num_processes}, coordinator {coordinator}"
        return Plan(True, (coordinator, num_processes, process_id), f"explicit: {where}")
    if mode == "off":
        return Plan(False, None, "--distributed=off")
    if mode == "on":
        return Plan(True, None, "--distributed=on: JAX detects the cluster")
    cluster = detect_cluster(env, on_cloud_tpu_vm() if tpu_vm is None else tpu_vm)
    address = env.get("JAX_COORDINATOR_ADDRESS")
    if cluster is None:
        ranks = _int(env, "OMPI_COMM_WORLD_SIZE") or 0
        if address or ranks > 1:
            found = f"JAX_COORDINATOR_ADDRESS={address}" if address else f"{ranks} MPI ranks"
            raise LaunchError(
                f"{found}, but no cluster JAX reads (SLURM, Open MPI's OMPI_MCA_orte_hnp_uri, "
                "a TPU pod) gives the process count and index: pass --coordinator_address, "
                "--num_processes and --process_id (or --distributed=off)"
            )
        return Plan(False, None, "no cluster: one process")
    if cluster.processes == 1 and not address:
        return Plan(False, None, f"{cluster.name}: one process")
    count = "processes" if cluster.processes is None else f"{cluster.processes} processes"
    return Plan(True, None, f"{cluster.name} detected ({count})")


def initialize(
    mode: str = "auto",
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> Plan:
    """Starts the runtime as `decide` says (before anything else touches a device)."""
    plan = decide(mode, coordinator, num_processes, process_id)
    if plan.start:
        import jax

        jax.distributed.initialize(*(plan.args or ()))
        log.info(
            "distributed runtime: %s; this is process %d of %d",
            plan.reason,
            jax.process_index(),
            jax.process_count(),
        )
    return plan
