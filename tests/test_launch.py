"""Launching on several hosts: when ftjax starts JAX's distributed runtime, and how, on
fake cluster environments (checked against JAX's own detectors), and one fake two-task
SLURM step that really starts it without flags (tests/test_multihost.py trains two
processes started with the explicit flags)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ftjax.training import launch

SLURM_STEP = {  # task 1 of a two-task srun step over two nodes
    "SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_NTASKS": "2",
    "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0",
}  # fmt: skip
OMPI = {  # rank 3 of 4 under Open MPI 4's mpirun
    "OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1,10.148.0.1:34911",
    "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
}  # fmt: skip
GKE_TPU = {  # worker 1 of a two-host slice, the second of two slices
    "TPU_SKIP_MDS_QUERY": "true", "TPU_WORKER_HOSTNAMES": "127.0.0.1,127.0.0.2",
    "TPU_WORKER_ID": "1", "MEGASCALE_NUM_SLICES": "2", "MEGASCALE_SLICE_ID": "1",
    "MEGASCALE_COORDINATOR_ADDRESS": "127.0.0.1",
}  # fmt: skip


@pytest.mark.parametrize(
    "env, tpu_vm, start, reason",
    [
        ({}, False, False, "no cluster: one process"),
        (SLURM_STEP, False, True, "slurm detected (2 processes)"),
        # One srun task (or the batch script's own step): JAX would show it GPU 0 only.
        ({**SLURM_STEP, "SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "1"}, False, False,
         "slurm: one process"),
        ({**SLURM_STEP, "SLURM_STEP_NUM_TASKS": "1"}, False, False, "slurm: one process"),
        ({k: v for k, v in SLURM_STEP.items() if k != "SLURM_STEP_NODELIST"}, False, False,
         "no cluster: one process"),  # salloc's shell: no step, as JAX sees it
        (OMPI, False, True, "ompi detected (4 processes)"),
        ({**OMPI, "OMPI_COMM_WORLD_SIZE": "1"}, False, False, "ompi: one process"),
        (GKE_TPU, True, True, "gketpu detected (4 processes)"),
        ({"TPU_WORKER_HOSTNAMES": "localhost", "TPU_SKIP_MDS_QUERY": "true"}, True, False,
         "gketpu: one process"),
        (GKE_TPU, False, False, "no cluster: one process"),  # no TPU here: JAX ignores it
        # A Cloud TPU VM: the metadata server knows its workers (one on a v5e-8).
        ({}, True, True, "gcetpu detected (processes)"),
        ({"TPU_SKIP_MDS_QUERY": "1"}, True, False, "no cluster: one process"),
        ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, False, False, "no cluster: one process"),
        ({**SLURM_STEP, "SLURM_STEP_NUM_TASKS": "1", "JAX_COORDINATOR_ADDRESS": "gpu07:1234"},
         False, True, "slurm detected (1 processes)"),  # the user asked for the runtime
    ],
)  # fmt: skip
def test_auto_starts_the_runtime_where_a_cluster_runs_several_processes(env, tpu_vm, start, reason):
    plan = launch.decide("auto", env=env, tpu_vm=tpu_vm)
    assert (plan.start, plan.args, plan.reason) == (start, None, reason)


def test_off_never_and_on_always_start_it():
    assert not launch.decide("off", env=SLURM_STEP, tpu_vm=True).start
    plan = launch.decide("on", env={}, tpu_vm=False)
    assert plan.start and plan.args is None


def test_explicit_flags_win_over_detection():
    plan = launch.decide("auto", "127.0.0.1:1234", 2, 1, env=SLURM_STEP, tpu_vm=False)
    assert plan.start and plan.args == ("127.0.0.1:1234", 2, 1)
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}
    assert launch.decide("on", None, 2, 0, env=env, tpu_vm=False).args == ("10.0.0.1:1234", 2, 0)


@pytest.mark.parametrize(
    "mode, flags, env, match",
    [
        ("auto", ("127.0.0.1:1234", None, None), {}, "--num_processes, --process_id missing"),
        ("auto", (None, 2, 0), {}, "--coordinator_address missing"),
        ("off", ("127.0.0.1:1234", 2, 0), {}, "--distributed=off contradicts"),
        ("sometimes", (None, None, None), {}, "--distributed='sometimes'"),
        # JAX would fail: nothing gives it the process count and index.
        ("auto", (None, None, None), {"JAX_COORDINATOR_ADDRESS": "h:1"}, "pass --coordinator"),
        # Open MPI 5 sets no OMPI_MCA_orte_hnp_uri: JAX cannot find a coordinator.
        ("auto", (None, None, None), {"OMPI_COMM_WORLD_SIZE": "8"}, "8 MPI ranks, but"),
        ("auto", (None, None, None), {**SLURM_STEP, "SLURM_STEP_NUM_TASKS": "x"}, "NUM_TASKS='x'"),
    ],
)
def test_what_cannot_start_is_refused_naming_the_flag(mode, flags, env, match):
    with pytest.raises(launch.LaunchError, match=match):
        launch.decide(mode, *flags, env=env, tpu_vm=False)


@pytest.fixture
def cluster_env(monkeypatch):
    """Sets exactly the given cluster variables (any inherited ones removed)."""
    prefixes = ("SLURM_", "OMPI_", "TPU_", "MEGASCALE_", "JAX_", "KUBERNETES_")

    def set_to(values: dict[str, str]) -> None:
        for name in list(os.environ):
            if name.startswith(prefixes):
                monkeypatch.delenv(name)
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return set_to


@pytest.mark.parametrize("env, tpu_vm", [(SLURM_STEP, False), (OMPI, False), (GKE_TPU, True)])
def test_detection_agrees_with_jax_on_process_count(cluster_env, monkeypatch, env, tpu_vm):
    """JAX's own detectors, given the same environment, find the same cluster and count
    (what `initialize()` without arguments will use)."""
    from jax._src.clusters import ClusterEnv, cloud_tpu_cluster

    monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", tpu_vm)
    cluster_env(env)
    ours = launch.detect_cluster(os.environ, tpu_vm)
    detectors = [e for e in ClusterEnv._cluster_types if not e.opt_in_only_method]
    theirs = next(e for e in detectors if e.is_env_present())
    assert theirs.name == ours.name
    coordinator, processes, index, _ = ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, None, None, 10
    )
    assert processes == ours.processes and coordinator and 0 <= index < processes


def test_this_machine_is_a_single_process(cluster_env):
    """The decision as `main.py` makes it here: no cluster, nothing started."""
    cluster_env({})
    assert launch.decide() == launch.Plan(False, None, "no cluster: one process")


def test_initialize_hands_the_explicit_flags_to_jax(monkeypatch):
    import jax

    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda *args: calls.append(args))
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    assert launch.initialize("off") == launch.Plan(False, None, "--distributed=off")
    assert calls == []
    launch.initialize("auto", "127.0.0.1:1234", 2, 1)
    assert calls == [("127.0.0.1:1234", 2, 1)]


def test_accelerator_extras_pin_the_same_jax():
    text = (Path(__file__).resolve().parents[1] / "setup.py").read_text()
    pinned = next(line for line in text.splitlines() if '"jax==' in line).strip().strip('",')
    version = pinned.split("==")[1]
    assert f'"jax[cuda12]=={version}"' in text and f'"jax[tpu]=={version}"' in text


def test_two_srun_tasks_start_one_runtime_without_flags(cluster_env, tmp_path):
    """A fake two-task SLURM step on 127.0.0.1: both processes call `initialize()` as
    main.py does, JAX finds the coordinator, count and index itself, and both see 2."""
    cluster_env({})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    step = {**SLURM_STEP, "SLURM_STEP_NODELIST": "127.0.0.1", "JAX_COORDINATOR_PORT": port}
    code = (
        "import jax; from ftjax.training import launch; plan = launch.initialize(); "
        "print(plan.reason, jax.process_index(), jax.process_count())"
    )
    root = str(Path(__file__).resolve().parents[1])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env={**os.environ, **step, "SLURM_PROCID": str(i), "PYTHONPATH": root},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in (0, 1)
    ]
    outputs = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
        assert proc.returncode == 0, err[-2000:]
        outputs.append(out.strip())
    assert outputs == ["slurm detected (2 processes) 0 2", "slurm detected (2 processes) 1 2"]
