"""benchmarks/accelerator_check.sh on this CPU: it installs nothing, skips the device
parts saying why, and still times a bf16 LoRA and full step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_accelerator_check_runs_on_cpu_and_says_what_it_skipped(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "accelerator_check.sh"), "--fast", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no GPU or TPU found" in proc.stdout
    report = json.loads(out.read_text())
    assert report["platform"] == "cpu"
    for part in ("parity_tests", "default_run"):
        assert report[part].startswith("skipped: no GPU or TPU here")
    for method in ("lora", "full"):
        step = report["steps"][method]
        assert step["step_s"] > 0 and step["flops"] > 0 and step["loss"] > 0
        assert step["mfu"].startswith("skipped")
    # LoRA computes no weight gradients of the frozen matrices: fewer FLOPs than full.
    assert report["steps"]["lora"]["flops"] < report["steps"]["full"]["flops"]
