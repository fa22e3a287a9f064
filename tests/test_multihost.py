"""Multi-host: two processes on 127.0.0.1 (gloo collectives), as on two hosts."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ftjax.training import loop
from tests.helpers import xla
from tests.helpers.tiny import make_checkpoint, make_dataset

# Minutes, not seconds: outside the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # seconds for a whole two-process run; a deadlock fails, never hangs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny")
    # One layer: the tests compile several steps and run few.
    return make_checkpoint(base / "model", num_layers=1), make_dataset(base / "data")


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def env_with(devices_per_process: int) -> dict:
    flags = xla.flags(device_count=devices_per_process)
    return dict(os.environ, PYTHONPATH=str(ROOT), XLA_FLAGS=flags)


def start_pair(command: list[str], env: dict, logs: Path) -> list[subprocess.Popen]:
    """Processes 0 and 1 of `command` ("{pid}" in it: the process id), stdout and stderr
    to files in `logs` (a pipe left unread could fill and stall a process)."""
    procs = []
    for pid in (0, 1):
        out = open(logs / f"{pid}.out", "w")  # noqa: SIM115 (the child holds it)
        err = open(logs / f"{pid}.err", "w")  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                [a.replace("{pid}", str(pid)) for a in command],
                stdout=out,
                stderr=err,
                env=env,
                cwd=ROOT,
            )
        )
        out.close(), err.close()
    return procs


def kill(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def finish(procs: list[subprocess.Popen], logs: Path, timeout: float) -> list[str]:
    """Waits for both (killing both when the time is up); their stdouts. Fails with both
    stderrs unless both exit 0."""
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        pass
    finally:
        kill(procs)
    codes = [p.returncode for p in procs]
    errors = [(logs / f"{pid}.err").read_text()[-3000:] for pid in (0, 1)]
    assert codes == [0, 0], f"exit codes {codes} (negative: killed at the timeout)\n" + (
        "\n".join(f"--- process {i} stderr:\n{e}" for i, e in enumerate(errors))
    )
    return [(logs / f"{pid}.out").read_text() for pid in (0, 1)]


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_layouts_across_processes_train_as_one_device(tiny, tmp_path):
    """Data, tensor and data x tensor (with gradient accumulation) across two processes
    give one device's losses and evaluation: each process feeds the rows its devices'
    shards hold, all of them when the tensor axis spans the processes."""
    command = [sys.executable, "-m", "tests.helpers.multihost", str(tiny[0]), str(tiny[1])]
    procs = start_pair([*command, "{pid}", free_port()], env_with(2), tmp_path)
    outputs = finish(procs, tmp_path, TIMEOUT)
    lines = json_lines(outputs[0]) + json_lines(outputs[1])
    layouts = next(line for line in lines if "reference" not in line)
    reference = {k: v for line in lines for k, v in line.get("reference", {}).items()}
    from tests.helpers.multihost import LAYOUTS

    assert set(layouts) == set(LAYOUTS)
    for name, (_, accumulate, _) in LAYOUTS.items():
        got, want = layouts[name], reference[str(accumulate)]
        np.testing.assert_allclose(got["losses"], want["losses"], atol=1e-5, err_msg=name)
        np.testing.assert_allclose(got["eval_loss"], want["eval_loss"], atol=1e-5, err_msg=name)
        assert got["accuracy"] == want["accuracy"], name


def wait_for(path: Path, pattern: str, procs: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, path.read_text()):
        assert all(p.poll() is None for p in procs), f"a process exited early: {path.read_text()}"
        assert time.monotonic() < deadline, f"no {pattern!r} in {path} after {timeout} s"
        time.sleep(0.2)


def test_sigterm_on_one_process_stops_both_at_one_checkpoint(tiny, tmp_path):
    """A signal that reaches one host only: both processes agree to stop after the same
    step, save that checkpoint together and exit 0; the checkpoint restores."""
    workdir = tmp_path / "run"
    command = [
        sys.executable, "-m", "ftjax.main", "--config", "configs/sentiment.py:method=lora",
        "--workdir", str(workdir), f"--config.model.name={tiny[0]}",
        f"--config.data.name={tiny[1]}", "--config.data.batch_size=8",
        "--config.data.max_length=16", "--config.train.epochs=1000",  # never ends by itself
        "--config.train.eval_every=100000", "--config.train.log_every=1",
        "--config.train.prng_impl=rbg", f"--coordinator_address=127.0.0.1:{free_port()}",
        "--num_processes=2", "--process_id={pid}",
    ]  # fmt: skip
    procs = start_pair(command, env_with(1), tmp_path)
    try:
        wait_for(tmp_path / "0.err", r"step 2/", procs, TIMEOUT)  # both are in the loop
        procs[1].send_signal(signal.SIGTERM)
    except BaseException:
        kill(procs)
        raise
    outputs = finish(procs, tmp_path, TIMEOUT)
    stopped = [re.search(r"stopped by signal 15 after step (\d+)", out) for out in outputs]
    assert all(stopped), outputs
    step = int(stopped[0].group(1))
    assert int(stopped[1].group(1)) == step
    exp, state, _, restored = loop.restore_run(workdir)
    assert restored == int(state.step) == step
