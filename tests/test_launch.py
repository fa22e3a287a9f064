"""Launching on several hosts: when ftjax starts JAX's distributed runtime, and how."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ftjax import launch


class Calls:
    def __init__(self):
        self.calls = []

    def __call__(self, *args):
        self.calls.append(args)


@pytest.mark.parametrize(
    "mode, flags, cluster, want, called",
    [
        ("auto", (None, None, None), None, "single process", []),
        ("auto", (None, None, None), "SlurmCluster", "detected SlurmCluster", [()]),
        ("auto", (None, None, None), "GceTpuCluster", "detected GceTpuCluster", [()]),
        ("on", (None, None, None), None, "initialised (--distributed=on)", [()]),
        ("off", (None, None, None), "SlurmCluster", "single process", []),
        ("auto", ("127.0.0.1:1234", 2, 1), "SlurmCluster", "explicit", [("127.0.0.1:1234", 2, 1)]),
    ],
)
def test_the_runtime_starts_as_flags_and_cluster_say(mode, flags, cluster, want, called):
    start = Calls()
    assert launch.initialize(mode, *flags, detect=lambda: cluster, start=start) == want
    assert start.calls == called


@pytest.mark.parametrize(
    "mode, flags, match",
    [
        ("auto", ("127.0.0.1:1234", None, None), "go together"),
        ("off", ("127.0.0.1:1234", 2, 0), "drop one"),
        ("sometimes", (None, None, None), "--distributed='sometimes'"),
    ],
)
def test_contradicting_flags_are_refused(mode, flags, match):
    with pytest.raises(launch.LaunchError, match=match):
        launch.initialize(mode, *flags, detect=lambda: None, start=Calls())


def test_this_machine_is_no_cluster_for_jax():
    """JAX's own detectors, asked as `auto` asks them: nothing here (no SLURM, no TPU VM),
    so the default run stays single-process."""
    code = "from ftjax import launch; print(launch.detected_cluster())"
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "None", out.stderr


def test_slurm_job_of_two_tasks_is_detected():
    env = {
        "PATH": "/usr/bin:/bin", "HOME": "/tmp", "SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST":
        "node[1-2]", "SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
    }  # fmt: skip
    code = "from ftjax import launch; print(launch.detected_cluster())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.strip() == "SlurmCluster", out.stderr


def test_accelerator_extras_pin_the_same_jax():
    text = open("setup.py").read()
    pinned = next(line for line in text.splitlines() if '"jax==' in line).strip().strip('",')
    version = pinned.split("==")[1]
    assert f'"jax[cuda12]=={version}"' in text and f'"jax[tpu]=={version}"' in text
