"""benchmarks/accelerator_check.sh on this CPU, fast (a tiny random Llama, 2 timed steps):
it installs nothing, skips the device parts saying why, and still times ftjax's bf16
LoRA and full train steps; and the pieces that only a GPU or TPU host reaches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import accelerator_check
from tests.helpers.tiny import make_checkpoint, make_dataset

# Minutes, not seconds: outside the fast tier (pytest -m "not slow").
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_accelerator_check_runs_on_cpu_and_says_what_it_skipped(tmp_path):
    model = make_checkpoint(tmp_path / "llama", "llama")
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "accelerator_check.sh"), "--fast",
         "--model", str(model), "--data", str(data), "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no GPU or TPU found: no extra to install, device parts skipped" in proc.stdout
    report = json.loads(out.read_text())
    assert {"accelerator", "jax", "platform", "device_kind", "devices", "steps"} <= set(report)
    assert (report["accelerator"], report["platform"]) == ("none", "cpu")
    reason = "no GPU or TPU: jax's backend is cpu"
    for part in ("parity_tests", "default_run"):
        assert report[part] == {"status": "skipped", "reason": reason}
    steps = report["steps"]
    assert steps["mfu"] == {"status": "skipped", "reason": reason}
    assert steps["compute_dtype"] == "bfloat16"
    for method in ("lora", "full"):
        step = steps[method]
        assert step["status"] == "ok" and "mfu" not in step
        assert step["step_seconds"] > 0 and step["flops"] > 0 and step["loss"] > 0
        assert step["batch"][1] == 64 and 0 < step["real_tokens"] <= step["batch"][0] * 64
    # LoRA computes no weight gradients of the frozen matrices: fewer FLOPs than full.
    assert steps["lora"]["flops"] < steps["full"]["flops"]
    assert steps["lora"]["batch"] == steps["full"]["batch"]  # the same packed batch


@pytest.mark.parametrize(
    "kind, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA A100-SXM4-40GB", 312e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA A10G", None),  # not the A10's figure
        ("TPU v4", 275e12),
        ("TPU v5 lite", 197e12),
        ("TPU v5", 459e12),
        ("TPU v6 lite", 918e12),
        ("cpu", None),
    ],
)
def test_bf16_peak_by_device_kind(kind, peak):
    assert accelerator_check.peak_flops(kind) == peak


def test_detection_picks_the_extra(tmp_path):
    dev = tmp_path / "dev"
    (dev / "vfio").mkdir(parents=True)
    (dev / "vfio" / "vfio").touch()  # the control node alone is on many hosts
    bare = {"PATH": str(tmp_path / "bin")}
    assert accelerator_check.detect_accelerator(bare, dev) == "none"
    assert accelerator_check.detect_accelerator({**bare, "TPU_WORKER_ID": "0"}, dev) == "tpu"
    (dev / "accel0").touch()
    assert accelerator_check.detect_accelerator(bare, dev) == "tpu"
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3'\n")
    smi.chmod(0o755)
    assert accelerator_check.detect_accelerator(bare, dev) == "cuda12"
    smi.write_text("#!/bin/sh\nexit 9\n")  # a driver that does not answer
    assert accelerator_check.detect_accelerator(bare, tmp_path / "none") == "none"
